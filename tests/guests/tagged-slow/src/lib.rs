//! The tagged guest, answering 60 ms late: a candidate the p99 gate must stop.
const TAG: &str = "slow";
const SLEEP_MS: u64 = 60;
const NOISY: bool = false;
const CHANGED_ON: &str = "";
include!("../../tagged.rs");
