//! Version 1 of the tagged guest; its body says which version served it.
const TAG: &str = "v1";
const SLEEP_MS: u64 = 0;
const NOISY: bool = false;
const CHANGED_ON: &str = "";
include!("../../tagged.rs");
