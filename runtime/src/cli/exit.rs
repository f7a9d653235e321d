//! The process exit codes. Every failure prints one line on stderr saying why.

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
