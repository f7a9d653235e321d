//! The tagged guest with a random number in every body: a response that differs from run to run.
const TAG: &str = "noisy";
const SLEEP_MS: u64 = 0;
const NOISY: bool = true;
const CHANGED_ON: &str = "";
include!("../../tagged.rs");
