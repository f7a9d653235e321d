//! The `handoff` command line: flags, subcommands and exit codes. Doc comments here are the
//! `--help` text. Parsing only: the commands themselves live in [`crate::client`] (the admin-API
//! clients), [`crate::scaffold`] (`new`), [`crate::dev`] (`dev`) and the binary (`serve`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Config, ConfigFile};

/// The process exit codes. Every failure prints one line on stderr saying why.
pub mod exit {
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
}

/// The `Exit status` section of `--help`, built from [`exit`] so the two cannot drift.
fn exit_codes_help() -> String {
    format!(
        "Exit status:\n  \
         {:<3} success\n  \
         {:<3} the server refused or failed the request (its reason is printed), or the server failed\n  \
         {:<3} usage: bad flags or arguments\n  \
         {:<3} cannot reach the handoff admin API (--admin, $HANDOFF_ADMIN_URL)\n  \
         {:<3} a local file problem: missing or unreadable file, existing directory, no guest crate\n  \
         {:<3} invalid server configuration (a flag or the --config file)",
        exit::SUCCESS,
        exit::FAILED,
        exit::USAGE,
        exit::UNREACHABLE,
        exit::LOCAL,
        exit::CONFIG,
    )
}

/// A command's failure: the exit code and the one-line reason printed on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One of the [`exit`] codes.
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

/// Serve WebAssembly HTTP handlers and replace them while serving, without failing a request.
#[derive(Debug, Parser)]
#[command(name = "handoff", version, about, after_help = exit_codes_help())]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments; on bad usage prints clap's message and exits with
    /// [`exit::USAGE`]. Use this rather than `Cli::parse`: it also records which serve settings
    /// were given as flags, so they win over the `--config` file.
    pub fn parse_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Parses `args` (the first is the program name).
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let Some((_, sub)) = matches.subcommand() {
            match &mut cli.command {
                Command::Serve(serve) => serve.note_given(sub),
                Command::Dev(dev) => dev.server.note_given(sub),
                _ => {}
            }
        }
        Ok(cli)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: guest traffic on --listen, the admin API on --admin-listen.
    Serve(ServeArgs),
    /// Build the guest crate(s) in DIR, serve them, and rebuild and redeploy on every change.
    Dev(DevArgs),
    /// Create a guest crate that builds and serves as it is.
    New(NewArgs),
    /// Deploy a component to a route: created if new, its version replaced if not.
    Deploy(DeployArgs),
    /// List the routes: prefix, active version, traffic, draining versions.
    Routes(RoutesArgs),
    /// Show one route in detail.
    Status(RouteArgs),
    /// Delete a route: stop routing to it at once, let its in-flight requests finish.
    Delete(RouteArgs),
    /// Show a route's version history (newest last), the active one marked.
    Versions(RouteArgs),
    /// Roll a route back: to the previous version, or to VERSION (a digest, or a unique
    /// prefix of one from `handoff versions`), or to --label. No recompile.
    Rollback(RollbackArgs),
    /// Upload a component without activating it; prints its version for `handoff activate`.
    Upload(UploadArgs),
    /// Serve an uploaded (or earlier) version on a route, creating the route if needed.
    Activate(ActivateArgs),
    /// Make an Ed25519 key pair for signed uploads: writes the private key to FILE (mode
    /// 600) and prints the public key line for the server's --signing-keys file.
    Keygen(KeygenArgs),
}

/// Arguments of `handoff keygen`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct KeygenArgs {
    /// Where to write the private key (must not exist).
    pub file: PathBuf,
    /// The key's name in the printed `[[key]]` entry.
    #[arg(long, default_value = "deployer")]
    pub name: String,
}

/// Flags of `handoff serve` (and of the server `handoff dev` runs).
///
/// Precedence: a flag (or its `HANDOFF_*` environment variable) wins over the `--config` file,
/// which wins over the defaults.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct ServeArgs {
    /// A TOML file with any of these settings, keys spelled like the flags
    /// (`admin-listen = "127.0.0.1:8081"`, `request-timeout = "10s"`). Flags and their
    /// environment variables win over it; it wins over the defaults.
    #[arg(long, value_name = "FILE", env = "HANDOFF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address for guest traffic. Port 0 picks a free port (the ready line shows it).
    #[arg(long, default_value = config::DEFAULT_LISTEN, env = "HANDOFF_LISTEN")]
    pub listen: SocketAddr,
    /// Address for the admin API. Keep it on loopback: it accepts code.
    #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN, env = "HANDOFF_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Where deployed modules, their compiled artifacts, the routes and their version history
    /// are kept, so a restart serves everything again at once. Default:
    /// `$XDG_DATA_HOME/handoff`, else `~/.local/share/handoff` (`handoff dev`: --ephemeral).
    #[arg(long, env = "HANDOFF_DATA_DIR", conflicts_with = "ephemeral")]
    pub data_dir: Option<PathBuf>,
    /// Keep nothing across restarts: state lives in a temporary directory deleted at exit
    /// (history and rollback still work while the server runs).
    #[arg(long, env = "HANDOFF_EPHEMERAL")]
    pub ephemeral: bool,
    /// Check Ed25519 signatures on uploads (the `Handoff-Signature` header): `off`, `warn`
    /// (deploy and log unsigned ones) or `require` (refuse them with 403).
    #[arg(long, value_enum, default_value = "off")]
    pub signatures: crate::signing::Mode,
    /// A TOML file of trusted public keys: `[[key]]` tables with `name` and `public` (base64),
    /// as `handoff keygen` prints them.
    #[arg(long, value_name = "FILE")]
    pub signing_keys: Option<PathBuf>,
    /// A directory whose subdirectories a deploy may mount, read-only, at a route's `/data`
    /// (`dir=NAME`). Without it, guests see no files.
    #[arg(long, value_name = "ROOT")]
    pub guest_dirs: Option<PathBuf>,
    /// Serve guest traffic over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API over TLS with this PEM certificate chain (with --admin-tls-key).
    #[arg(long, value_name = "PEM")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The PEM private key for --admin-tls-cert.
    #[arg(long, value_name = "PEM")]
    pub admin_tls_key: Option<PathBuf>,
    /// A TOML file of admin tokens: `[[token]]` tables with `name`, `token` (the secret) and
    /// `scope` (`read` or `deploy`). $HANDOFF_ADMIN_TOKEN adds a `deploy` token named `env`.
    /// Without any token the admin API is open and must stay on loopback.
    #[arg(long, value_name = "FILE", env = "HANDOFF_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Activations each route's history keeps for rollback; older versions' files are
    /// garbage-collected.
    #[arg(long, default_value_t = config::DEFAULT_HISTORY_LIMIT)]
    pub history: usize,
    /// Deadline per request, guest CPU and wall clock (e.g. 500ms, 30s, 2m). Past it: 504.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub request_timeout: Duration,
    /// How long a replaced version may finish its in-flight requests before they are cut off;
    /// also the graceful-shutdown grace period.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub drain_timeout: Duration,
    /// Linear-memory cap per guest instance (e.g. 128MiB). A guest that grows past it traps.
    #[arg(long, default_value = "128MiB", value_parser = config::parse_bytes)]
    pub max_memory: u64,
    /// Largest accepted component upload (e.g. 50MiB).
    #[arg(long, default_value = "50MiB", value_parser = config::parse_bytes)]
    pub max_upload: u64,
    /// Guest instances that may exist at once (pooling allocator slots); 0 allocates on demand.
    #[arg(long, default_value_t = config::DEFAULT_MAX_INSTANCES)]
    pub max_instances: u32,
    /// Requests one route may run at once; more get 503 with Retry-After (0: only the
    /// instance pool bounds it). A deploy may set its route's own.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONCURRENCY)]
    pub max_concurrency: u32,
    /// Largest request body a route accepts (e.g. 64MiB; 0: no limit); larger gets 413.
    #[arg(long, default_value = "64MiB", value_parser = config::parse_bytes)]
    pub max_request_body: u64,
    /// Largest response body a route may send (0: no limit); longer ones are cut off.
    #[arg(long, default_value = "0", value_parser = config::parse_bytes)]
    pub max_response_body: u64,
    /// Guest-traffic connections served at once; more wait in the listen backlog until one
    /// closes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long a guest-traffic connection may go without a request in progress before it is
    /// closed: a client that connects and sends nothing, trickles its request head
    /// (slowloris), or leaves a keep-alive or HTTP/2 connection idle.
    #[arg(long, default_value = "10s", value_parser = config::parse_duration)]
    pub idle_timeout: Duration,
    /// How long compiling one upload may take (e.g. 30s, 2m); a slower compile is stopped and
    /// the deploy refused with 422. A deploy may set a lower one for its route.
    #[arg(long, default_value = "60s", value_parser = config::parse_duration)]
    pub compile_timeout: Duration,
    /// How much memory compiling one upload may use (e.g. 512MiB, 2GiB); a compile that needs
    /// more is stopped and the deploy refused with 422. A deploy may set a lower one.
    #[arg(long, default_value = "2GiB", value_parser = config::parse_bytes)]
    pub compile_memory: u64,
    /// Let guests reach loopback, private (10/8, 192.168/16, fc00::/7, ...) and link-local
    /// addresses through names in their allow-lists. Without it, outbound requests connect
    /// only to public addresses unless a rule names the IP address itself. Cloud metadata
    /// addresses (169.254.169.254) stay refused unless a rule names them.
    #[arg(long)]
    pub outbound_private: bool,
    /// Admin tokens from the `--config` file's `[[token]]` tables.
    #[arg(skip)]
    pub file_tokens: Vec<crate::auth::Token>,
    /// Trusted keys from the `--config` file's `[[key]]` tables.
    #[arg(skip)]
    pub file_keys: Vec<crate::signing::TrustedKey>,
    /// The settings given as flags or environment variables (clap ids); the file fills the rest.
    #[arg(skip)]
    pub given: BTreeSet<&'static str>,
}

/// A certificate and key given together, or neither.
fn tls_files(
    cert_flag: &str,
    cert: Option<PathBuf>,
    key_flag: &str,
    key: Option<PathBuf>,
) -> Result<Option<crate::tls::TlsFiles>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles { cert, key })),
        (None, None) => Ok(None),
        _ => Err(format!(
            "{cert_flag} and {key_flag} go together; give both or neither"
        )),
    }
}

/// The clap ids of the serve settings a config file may set.
const FILE_SETTINGS: [&str; 26] = [
    "signatures",
    "signing_keys",
    "max_connections",
    "idle_timeout",
    "compile_timeout",
    "compile_memory",
    "guest_dirs",
    "tls_cert",
    "tls_key",
    "admin_tls_cert",
    "admin_tls_key",
    "max_concurrency",
    "max_request_body",
    "max_response_body",
    "tokens_file",
    "listen",
    "admin_listen",
    "data_dir",
    "ephemeral",
    "history",
    "request_timeout",
    "drain_timeout",
    "max_memory",
    "max_upload",
    "max_instances",
    "outbound_private",
];

impl ServeArgs {
    /// Records which settings `matches` got from the command line or the environment.
    fn note_given(&mut self, matches: &ArgMatches) {
        for id in FILE_SETTINGS {
            if matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                self.given.insert(id);
            }
        }
    }

    /// The validated configuration: flags, then the `--config` file, then the defaults.
    /// The error is a sentence naming what to fix (and the file, if it is the file's fault).
    pub fn into_config(self) -> Result<Config, String> {
        self.into_config_with(false)
    }

    /// As [`Self::into_config`]; with `ephemeral_by_default`, no `--data-dir` means a
    /// temporary data directory instead of the default one (what `handoff dev` wants).
    pub fn into_config_with(mut self, ephemeral_by_default: bool) -> Result<Config, String> {
        let file = self.config.take();
        if let Some(path) = &file {
            let settings = ConfigFile::load(path).map_err(|e| e.to_string())?;
            self.apply(settings);
        }
        if ephemeral_by_default && self.data_dir.is_none() {
            self.ephemeral = true;
        }
        self.build().map_err(|error| match &file {
            Some(path) => format!(
                "{error} (check the flags and the config file {})",
                path.display()
            ),
            None => error,
        })
    }

    fn build(self) -> Result<Config, String> {
        let data_dir = match (self.ephemeral, self.data_dir) {
            (true, Some(dir)) => {
                return Err(format!(
                    "--ephemeral and a data directory ({}) exclude each other; choose one",
                    dir.display()
                ));
            }
            (true, None) => None,
            (false, Some(dir)) => Some(dir),
            (false, None) => Some(config::default_data_dir().ok_or_else(|| {
                "no data directory: set --data-dir (or $HOME), or run with --ephemeral".to_owned()
            })?),
        };
        let mut admin_tokens = match &self.tokens_file {
            Some(path) => crate::auth::load_tokens_file(path)?,
            None => Vec::new(),
        };
        for token in self.file_tokens {
            if admin_tokens.iter().any(|t| t.name == token.name) {
                return Err(format!(
                    "token `{}` is in both the config file and the tokens file; give each token one name",
                    token.name
                ));
            }
            admin_tokens.push(token);
        }
        if let Ok(secret) = std::env::var(crate::auth::TOKEN_ENV)
            && !secret.is_empty()
        {
            if admin_tokens.iter().any(|t| t.name == "env") {
                return Err("the tokens file already has a token named `env`, the name \
                            $HANDOFF_ADMIN_TOKEN's token takes"
                    .into());
            }
            admin_tokens.push(
                crate::auth::Token::new("env", crate::auth::Scope::Deploy, &secret)
                    .map_err(|e| format!("${}: {e}", crate::auth::TOKEN_ENV))?,
            );
        }
        let config = Config {
            admin_tokens,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            upload_timeout: config::DEFAULT_UPLOAD_TIMEOUT,
            guest_dirs: self.guest_dirs,
            signature_mode: self.signatures,
            signing_keys: match &self.signing_keys {
                Some(path) => crate::signing::load_keys(path)?,
                None => Vec::new(),
            }
            .into_iter()
            .chain(self.file_keys)
            .collect(),
            tls: tls_files("--tls-cert", self.tls_cert, "--tls-key", self.tls_key)?,
            admin_tls: tls_files(
                "--admin-tls-cert",
                self.admin_tls_cert,
                "--admin-tls-key",
                self.admin_tls_key,
            )?,
            max_concurrency: self.max_concurrency,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            listen: self.listen,
            admin_listen: self.admin_listen,
            data_dir,
            request_timeout: self.request_timeout,
            drain_timeout: self.drain_timeout,
            max_memory_bytes: self.max_memory,
            max_upload_bytes: usize::try_from(self.max_upload)
                .map_err(|_| "the upload limit is too large for this machine".to_string())?,
            max_instances: self.max_instances,
            history_limit: self.history,
            compiler: crate::compile::Compiler::this_binary()
                .map_err(|e| format!("cannot find this executable to compile uploads with: {e}"))?,
            compile_timeout: self.compile_timeout,
            compile_memory: self.compile_memory,
            outbound_private: self.outbound_private,
        };
        config.validate()?;
        Ok(config)
    }

    /// Takes each setting from `file` unless it was given as a flag.
    fn apply(&mut self, file: ConfigFile) {
        fn fill<T>(given: &BTreeSet<&str>, id: &str, slot: &mut T, value: Option<T>) {
            if let Some(value) = value.filter(|_| !given.contains(id)) {
                *slot = value;
            }
        }
        let given = &self.given;
        fill(given, "listen", &mut self.listen, file.listen);
        fill(
            given,
            "admin_listen",
            &mut self.admin_listen,
            file.admin_listen,
        );
        fill(
            given,
            "data_dir",
            &mut self.data_dir,
            file.data_dir.map(Some),
        );
        let timeout = file.request_timeout;
        fill(given, "request_timeout", &mut self.request_timeout, timeout);
        fill(
            given,
            "drain_timeout",
            &mut self.drain_timeout,
            file.drain_timeout,
        );
        fill(given, "max_memory", &mut self.max_memory, file.max_memory);
        fill(given, "max_upload", &mut self.max_upload, file.max_upload);
        fill(
            given,
            "max_instances",
            &mut self.max_instances,
            file.max_instances,
        );
        fill(given, "ephemeral", &mut self.ephemeral, file.ephemeral);
        fill(given, "history", &mut self.history, file.history);
        fill(
            given,
            "tls_cert",
            &mut self.tls_cert,
            file.tls_cert.map(Some),
        );
        fill(
            given,
            "guest_dirs",
            &mut self.guest_dirs,
            file.guest_dirs.map(Some),
        );
        fill(given, "tls_key", &mut self.tls_key, file.tls_key.map(Some));
        fill(
            given,
            "admin_tls_cert",
            &mut self.admin_tls_cert,
            file.admin_tls_cert.map(Some),
        );
        fill(
            given,
            "admin_tls_key",
            &mut self.admin_tls_key,
            file.admin_tls_key.map(Some),
        );
        fill(
            given,
            "max_concurrency",
            &mut self.max_concurrency,
            file.max_concurrency,
        );
        fill(
            given,
            "max_request_body",
            &mut self.max_request_body,
            file.max_request_body,
        );
        fill(
            given,
            "max_response_body",
            &mut self.max_response_body,
            file.max_response_body,
        );
        fill(
            given,
            "tokens_file",
            &mut self.tokens_file,
            file.tokens_file.map(Some),
        );
        fill(given, "signatures", &mut self.signatures, file.signatures);
        fill(
            given,
            "signing_keys",
            &mut self.signing_keys,
            file.signing_keys.map(Some),
        );
        self.file_tokens = file.tokens;
        self.file_keys = file.keys;
        fill(
            given,
            "max_connections",
            &mut self.max_connections,
            file.max_connections,
        );
        fill(
            given,
            "idle_timeout",
            &mut self.idle_timeout,
            file.idle_timeout,
        );
        fill(
            given,
            "compile_timeout",
            &mut self.compile_timeout,
            file.compile_timeout,
        );
        fill(
            given,
            "compile_memory",
            &mut self.compile_memory,
            file.compile_memory,
        );
        fill(
            given,
            "outbound_private",
            &mut self.outbound_private,
            file.outbound_private,
        );
    }
}

/// Where the admin API is and how to print its answers; shared by the client commands.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin API of the handoff server to talk to (plain http).
    #[arg(
        long,
        value_name = "URL",
        env = "HANDOFF_ADMIN_URL",
        default_value = crate::client::DEFAULT_ADMIN_URL
    )]
    pub admin: String,
    /// Print the server's JSON instead of a table (for scripts); on failure, the problem document.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `handoff deploy`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct DeployArgs {
    /// The route to create or replace (a-z, 0-9, `-`, `_`, `.`).
    pub route: String,
    /// The component: the `.wasm` file a `wasm32-wasip2` build produced.
    pub file: PathBuf,
    /// The path prefix the route serves (default: its current one; `/ROUTE` for a new route).
    #[arg(long, value_name = "/PATH")]
    pub prefix: Option<String>,
    /// A setting handed to the guest as an environment variable; repeat for more. Without any,
    /// the route keeps its current settings; `--config ''` alone clears them.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Sign the upload with this private key file (from `handoff keygen`).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// A name for this version, to roll back to by name later (`stable`, `v1.2.0`).
    #[arg(long)]
    pub label: Option<String>,
    /// A note kept in the route's history.
    #[arg(long)]
    pub message: Option<String>,
    /// A destination the guest may send HTTP requests to (`https://api.example.com`,
    /// `http://10.0.0.5:8080`, `https://*.example.com`); repeat for more. Without any, the route
    /// keeps its list; `--allow-outbound ''` alone clears it. Default: none.
    #[arg(long = "allow-outbound", value_name = "SCHEME://HOST[:PORT]")]
    pub allow_outbound: Vec<String>,
    /// A directory under the server's --guest-dirs to mount read-only at /data (`''` to unmount).
    #[arg(long, value_name = "NAME")]
    pub dir: Option<String>,
    /// This route's linear-memory cap per instance (e.g. 64MiB; at most the server's).
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// This route's deadline per request (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// This route's concurrent-request limit (0: none); more get 503.
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<String>,
    /// This route's request body limit (e.g. 1MiB; 0: none); larger gets 413.
    #[arg(long, value_name = "SIZE")]
    pub max_request_body: Option<String>,
    /// This route's response body limit (0: none); longer bodies are cut off.
    #[arg(long, value_name = "SIZE")]
    pub max_response_body: Option<String>,
    /// How long compiling this component may take (e.g. 10s; at most the server's).
    #[arg(long, value_name = "DURATION")]
    pub compile_timeout: Option<String>,
    /// How much memory compiling this component may use (e.g. 256MiB; at most the server's).
    #[arg(long, value_name = "SIZE")]
    pub compile_memory: Option<String>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff rollback`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct RollbackArgs {
    /// The route.
    pub route: String,
    /// The version to go to (default: the previous one).
    #[arg(conflicts_with = "label")]
    pub version: Option<String>,
    /// Go to the most recent version deployed with this label.
    #[arg(long)]
    pub label: Option<String>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff upload`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct UploadArgs {
    /// The component to store.
    pub file: PathBuf,
    /// Sign the upload with this private key file (from `handoff keygen`).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff activate`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct ActivateArgs {
    /// The route (created if it does not exist).
    pub route: String,
    /// The version, as `handoff upload` printed it.
    pub version: String,
    /// The path prefix, for a new route or to move one.
    #[arg(long, value_name = "/PATH")]
    pub prefix: Option<String>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff routes`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct RoutesArgs {
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff status` and `handoff delete`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct RouteArgs {
    /// The route.
    pub route: String,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff new`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct NewArgs {
    /// The crate's name, which `handoff dev` also uses as its route name: a lowercase letter,
    /// then lowercase letters, digits, `-` or `_`.
    pub name: String,
    /// The directory to create (default: ./NAME). It must not exist yet.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// The guest SDK (the `guest-sdk` directory of a handoff checkout) the crate depends on.
    /// Default: the SDK of the checkout this binary was built from.
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// Arguments of `handoff dev`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit_codes_help())]
pub struct DevArgs {
    /// A guest crate, or a workspace of them: every `cdylib` member becomes route `/NAME`.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The server's settings, as for `serve`.
    #[command(flatten)]
    pub server: ServeArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["handoff", "serve"].iter().chain(args);
        match Cli::try_parse_args(argv).expect("valid flags").command {
            Command::Serve(serve) => serve,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let help = Cli::command().render_help().to_string();
        for code in [
            exit::SUCCESS,
            exit::FAILED,
            exit::USAGE,
            exit::UNREACHABLE,
            exit::LOCAL,
            exit::CONFIG,
        ] {
            assert!(help.contains(&format!("\n  {code:<3} ")), "{help}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nrequest-timeout = \"2s\"\nmax-instances = 3\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = serve(&["--config", path, "--request-timeout", "5s"])
            .into_config()
            .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.max_instances, 3);
        assert_eq!(
            config.admin_listen,
            config::DEFAULT_ADMIN_LISTEN.parse().unwrap()
        );
        // A flag equal to its default still wins.
        let config = serve(&["--config", path, "--max-instances", "1000"])
            .into_config()
            .unwrap();
        assert_eq!(config.max_instances, 1000);
    }

    #[test]
    fn private_outbound_destinations_come_from_the_flag_or_the_file() {
        assert!(!serve(&[]).into_config().unwrap().outbound_private);
        let flag = serve(&["--outbound-private"]).into_config().unwrap();
        assert!(flag.outbound_private);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.toml");
        std::fs::write(&path, "outbound-private = true\n").unwrap();
        let file = serve(&["--config", path.to_str().unwrap()])
            .into_config()
            .unwrap();
        assert!(file.outbound_private);
    }

    #[test]
    fn a_bad_file_is_refused_with_its_name() {
        let error = serve(&["--config", "/nonexistent/handoff.toml"])
            .into_config()
            .unwrap_err();
        assert!(
            error.starts_with("cannot read the config file /nonexistent/handoff.toml"),
            "{error}"
        );
    }
}
