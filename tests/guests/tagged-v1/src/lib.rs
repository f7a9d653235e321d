//! Version 1 of the tagged guest; its body says which version served it.
const TAG: &str = "v1";
include!("../../tagged.rs");
