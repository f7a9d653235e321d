//! Version 2 of the tagged guest; its body says which version served it.
const TAG: &str = "v2";
const SLEEP_MS: u64 = 0;
const NOISY: bool = false;
const CHANGED_ON: &str = "";
include!("../../tagged.rs");
