//! How a command fails: the process exit codes and [`Failure`], a code with the one line
//! printed on stderr saying why. Shared by the command line ([`crate::cli`]) and the commands
//! it runs ([`crate::client`], [`crate::scaffold`], [`crate::dev`]), none of which needs the
//! other to say how it failed.

/// The command did what it was asked.
pub const SUCCESS: u8 = 0;
/// The server refused or failed the request (its reason is printed), or the server itself
/// failed (a listener could not be bound).
pub const FAILED: u8 = 1;
/// Bad flags or arguments (clap's own code).
pub const USAGE: u8 = 2;
/// The admin API could not be reached, or what answered is not the admin API.
pub const UNREACHABLE: u8 = 3;
/// A local file or directory problem: a file is missing or unreadable, a directory to
/// create already exists, a directory holds no guest crate.
pub const LOCAL: u8 = 4;
/// The server configuration is invalid: a flag's value or the `--config` file (BSD
/// `EX_USAGE`).
pub const CONFIG: u8 = 64;

/// The `Exit status` section of `--help`, built from the codes above so the two cannot drift.
pub fn help() -> String {
    format!(
        "Exit status:\n  \
         {:<3} success\n  \
         {:<3} the server refused or failed the request (its reason is printed), or the server failed\n  \
         {:<3} usage: bad flags or arguments\n  \
         {:<3} cannot reach the handoff admin API (--admin, $HANDOFF_ADMIN_URL)\n  \
         {:<3} a local file problem: missing or unreadable file, existing directory, no guest crate\n  \
         {:<3} invalid server configuration (a flag or the --config file)",
        SUCCESS, FAILED, USAGE, UNREACHABLE, LOCAL, CONFIG,
    )
}

/// A command's failure: the exit code and the one-line reason printed on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One of the exit codes above.
    pub code: u8,
    /// A sentence saying what went wrong and, where possible, what to do.
    pub message: String,
}

impl Failure {
    /// A failure with exit code `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
