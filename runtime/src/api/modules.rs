//! Stored modules: what `POST /v1/modules` answers, and the module list.

use serde::{Deserialize, Serialize};

/// What `POST /v1/modules` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Uploaded {
    /// The module's version, to activate.
    pub version: String,
    /// Its size.
    pub size_bytes: usize,
    /// Compile time (`null`: it was stored already).
    pub compile_ms: Option<f64>,
}

/// A stored module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleStatus {
    /// Its version (digest).
    pub version: String,
    /// Its size.
    pub size_bytes: u64,
    /// Uploaded and kept until a route activates it or it is deleted.
    pub pinned: bool,
    /// Whether it was stored with a signature.
    pub signed: bool,
    /// Routes serving it or keeping it in their history.
    pub used_by: Vec<String>,
}

/// `GET /v1/modules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleList {
    /// Every stored module.
    pub modules: Vec<ModuleStatus>,
}

/// What `DELETE /v1/modules/{version}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleDeleted {
    /// The module's version.
    pub version: String,
    /// Always true.
    pub deleted: bool,
}
