//! The flags every admin-API command shares: where the API is and how to print its answers.

use crate::client::Admin;

/// Where the client commands look for the admin API unless `--admin` or `HANDOFF_ADMIN_URL`
/// says otherwise (the default of `serve --admin-listen`).
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8081";

/// Where the admin API is and how to print its answers; shared by the client commands.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin API of the handoff server to talk to (plain http).
    #[arg(
        long,
        value_name = "URL",
        env = "HANDOFF_ADMIN_URL",
        default_value = DEFAULT_ADMIN_URL
    )]
    pub admin: String,
    /// Print the server's JSON instead of a table (for scripts); on failure, the problem document.
    #[arg(long)]
    pub json: bool,
}

impl AdminArgs {
    /// The client's [`Admin`] these flags name.
    pub fn to_client(&self) -> Admin {
        Admin {
            url: self.admin.clone(),
            json: self.json,
        }
    }
}
