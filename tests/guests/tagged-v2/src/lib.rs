//! Version 2 of the tagged guest; its body says which version served it.
const TAG: &str = "v2";
include!("../../tagged.rs");
