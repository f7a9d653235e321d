//! Version 1 of the tagged guest, but answering `v1 changed` on paths containing `/changed`: a shadow that differs on some paths only.
const TAG: &str = "v1";
const SLEEP_MS: u64 = 0;
const NOISY: bool = false;
const CHANGED_ON: &str = "/changed";
include!("../../tagged.rs");
