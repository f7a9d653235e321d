//! The `handoff` command line: flags and subcommands. Doc comments here are the `--help`
//! text. Parsing only: the commands themselves live in [`crate::client`] (the admin-API
//! clients), [`crate::scaffold`] (`new`), [`crate::dev`] (`dev`) and the binary (`serve`).
//! The admin commands' flags are mapped here into the client's plain values (`to_client`,
//! `request`, ...), so the client never sees clap; the exit codes are [`crate::exit`]'s.

mod admin;
mod delivery;
mod file;
pub mod kv;
pub(crate) mod serve;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use admin::{AdminArgs, DEFAULT_ADMIN_URL};
pub use delivery::{RolloutArgs, ShadowArgs, WeightArgs};
pub use serve::{FileExtras, RouteDefaults, ServeArgs};

use file::ConfigFile;

use crate::client::{Deploy, RollbackTo};
use crate::exit;
use crate::settings::SETTINGS;

/// What `handoff --version` says: this release and the wasmtime it embeds (the one that
/// compiles and runs guests, so the one whose compiled artifacts it can load).
pub static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (wasmtime {})",
        env!("CARGO_PKG_VERSION"),
        wasmtime_environ::VERSION
    )
});

/// Serve WebAssembly HTTP handlers and replace them while serving, without failing a request.
#[derive(Debug, Parser)]
#[command(name = "handoff", version = VERSION.as_str(), about, after_help = exit::help())]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments; on bad usage prints clap's message and exits with
    /// [`exit::USAGE`]. Use this rather than `Cli::parse`: it also keeps the command line with
    /// the serve settings, so the `--config` file can be layered under it.
    pub fn parse_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Parses `args` (the first is the program name).
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let matches = command.clone().try_get_matches_from(&argv)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let (name, given) = matches.subcommand().expect("a subcommand is required");
        let path = match &cli.command {
            Command::Serve(serve) => serve.config.clone(),
            Command::Dev(dev) => dev.server.config.clone(),
            _ => None,
        };
        let Some(path) = path else {
            return Ok(cli);
        };
        // The file's settings become flags inserted before the command line's, leaving out
        // what the command line or the environment gave: flags win, the file fills the rest.
        let sub = command
            .find_subcommand(name)
            .expect("the subcommand exists");
        let extras = match ConfigFile::load(&path, sub) {
            Ok(file) => {
                let at = argv
                    .iter()
                    .position(|a| a == name)
                    .expect("the subcommand was given");
                let mut layered = argv.clone();
                layered.splice(at + 1..at + 1, file.args(given, sub));
                match command.try_get_matches_from(layered) {
                    Ok(matches) => {
                        cli = Self::from_arg_matches(&matches)?;
                        FileExtras {
                            tokens: file.tokens,
                            keys: file.keys,
                            error: None,
                            warnings: file.warnings,
                        }
                    }
                    Err(error) => FileExtras {
                        error: Some(format!(
                            "the config file {} does not go with the flags: {}",
                            path.display(),
                            error.kind()
                        )),
                        ..FileExtras::default()
                    },
                }
            }
            Err(error) => FileExtras {
                error: Some(error.to_string()),
                ..FileExtras::default()
            },
        };
        match &mut cli.command {
            Command::Serve(serve) => serve.file = extras,
            Command::Dev(dev) => dev.server.file = extras,
            _ => {}
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
    /// Show one route in detail; with --watch, follow its rollout live.
    Status(StatusArgs),
    /// In a cluster (`serve --cluster`): list its nodes, whether each is alive and ready, and
    /// whether each serves every route's current revision.
    Nodes(NodesArgs),
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
    /// Print what happens on the server as it happens: deploys, activations, drains, rollout
    /// steps and rollbacks, shadow figures (`GET /v1/events`). Runs until interrupted.
    Events(EventsArgs),
    /// Print a route's guest log lines (its guests' stdout and stderr) as they are written,
    /// with their level, version and request id (`GET /v1/routes/{name}/logs`; a `deploy`
    /// token). Runs until interrupted.
    Logs(RouteArgs),
    /// Start a rollout: the candidate serves a growing share of the route, step by step, and
    /// is rolled back by itself when its error rate or p99 breaches a gate.
    Rollout(RolloutArgs),
    /// Make the rollout's candidate the stable version now; the old stable drains.
    Promote(RouteArgs),
    /// Stop the rollout: the candidate's weight goes to 0 and it drains.
    Abort(RouteArgs),
    /// Stop the rollout's automatic stepping (its gates still watch the candidate).
    Pause(RouteArgs),
    /// Let a paused rollout step again.
    Resume(RouteArgs),
    /// Set the rollout candidate's weight by hand (pauses automatic stepping).
    Weight(WeightArgs),
    /// Copy a share of the route's requests to a shadow version and compare its answers with
    /// the stable version's (the client always gets the stable one); `--off` stops it.
    Shadow(ShadowArgs),
    /// Read and write the key-value buckets guests use: keys, get, put, delete, export,
    /// import (`handoff kv --help`).
    Kv(kv::KvArgs),
    /// Make an Ed25519 key pair for signed uploads: writes the private key to FILE (mode
    /// 600) and prints the public key line for the server's --signing-keys file.
    Keygen(KeygenArgs),
}

/// Arguments of `handoff keygen`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KeygenArgs {
    /// Where to write the private key (must not exist).
    pub file: PathBuf,
    /// The key's name in the printed `[[key]]` entry.
    #[arg(long, default_value = "deployer")]
    pub name: String,
}

/// Arguments of `handoff deploy`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
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
    /// A shared key-value bucket the route's guests may open besides their own (`default`);
    /// repeat for more. Without any, the route keeps its grants; `--kv ''` alone clears them.
    #[arg(long = "kv", value_name = "BUCKET")]
    pub kv: Vec<String>,
    /// This route's limits (`--max-memory`, `--request-timeout`, ...), from the table in
    /// `crate::settings`; each one left out keeps the route's current value.
    #[command(flatten)]
    pub limits: RouteOverrides,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl From<DeployArgs> for Deploy {
    /// The deploy these flags ask for: the settings as the query pairs the server reads, in
    /// the order given (`--config`, `--dir`, `--allow-outbound`, `--kv`, then the limits).
    fn from(args: DeployArgs) -> Self {
        let mut settings = Vec::new();
        let pairs = |key: &'static str, values: Vec<String>| {
            values.into_iter().map(move |value| (key.to_owned(), value))
        };
        settings.extend(pairs("config", args.config));
        settings.extend(pairs("dir", args.dir.into_iter().collect()));
        settings.extend(pairs("allow-outbound", args.allow_outbound));
        settings.extend(pairs("kv", args.kv));
        settings.extend(
            args.limits
                .0
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
        Deploy {
            route: args.route,
            file: args.file,
            sign: args.sign,
            prefix: args.prefix,
            label: args.label,
            message: args.message,
            settings,
        }
    }
}

/// Arguments of `handoff rollback`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
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

impl RollbackArgs {
    /// Where these flags roll back to.
    pub fn to(&self) -> RollbackTo {
        match (&self.version, &self.label) {
            (Some(version), _) => RollbackTo::Version(version.clone()),
            (None, Some(label)) => RollbackTo::Label(label.clone()),
            (None, None) => RollbackTo::Previous,
        }
    }
}

/// Arguments of `handoff upload`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
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
#[command(after_help = exit::help())]
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
#[command(after_help = exit::help())]
pub struct RoutesArgs {
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff nodes`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct NodesArgs {
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff status` and `handoff delete`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct RouteArgs {
    /// The route.
    pub route: String,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff status`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct StatusArgs {
    /// The route.
    pub route: String,
    /// Redraw the split, the rollout's step and gate values and the draining versions as they
    /// change, until the rollout ends (exit 0 when promoted, 1 when rolled back or aborted) or
    /// ctrl-c. One line per change when stdout is not a terminal.
    #[arg(long)]
    pub watch: bool,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff events`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct EventsArgs {
    /// Only this route's events.
    #[arg(long)]
    pub route: Option<String>,
    /// The admin API and output format (`--json`: one event per line as JSON).
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff new`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
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
    /// Copy one of the checkout's examples (`hello`, `json-api`, `todo-v1`, ...) instead of
    /// the minimal handler, its manifest made to build on its own outside the checkout.
    #[arg(long, value_name = "EXAMPLE")]
    pub from: Option<String>,
    /// The WASI version of the handler: `0.3` writes an `async fn` handler (a
    /// `wasi:http/service` component: one instance can serve several requests at once), `0.2`
    /// a blocking `fn` (a `wasi:http/proxy` component).
    #[arg(long, value_name = "VERSION", default_value = "0.3")]
    pub wasi: Wasi,
}

/// The WASI version `handoff new` writes a handler for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wasi {
    /// WASI 0.2: `fn handle(req: Request) -> Result<Response>`, `export!(handle)`.
    #[value(name = "0.2")]
    P2,
    /// WASI 0.3: `async fn handle(req: Request) -> Result<Response>`, `export!(async handle)`.
    #[value(name = "0.3")]
    P3,
}

/// Arguments of `handoff dev`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct DevArgs {
    /// A guest crate, or a workspace of them: every `cdylib` member becomes route `/NAME`.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The server's settings, as for `serve`.
    #[command(flatten)]
    pub server: ServeArgs,
}

/// The per-route settings as deploy flags, kept as the text given: the server parses and
/// checks them (the CLI decides nothing the server decides).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOverrides(pub Vec<(&'static str, String)>);

impl clap::Args for RouteOverrides {
    fn augment_args(command: clap::Command) -> clap::Command {
        SETTINGS.iter().fold(command, |command, setting| {
            command.arg(
                Arg::new(setting.name)
                    .long(setting.name)
                    .value_name(setting.metavar)
                    .help(format!(
                        "This route's own value (default: its current one, else the server's). {}",
                        setting.help()
                    )),
            )
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for RouteOverrides {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(
            SETTINGS
                .iter()
                .filter_map(|s| Some((s.name, matches.get_one::<String>(s.name)?.clone())))
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_route_setting_is_a_serve_flag_and_a_deploy_flag() {
        let command = Cli::command();
        for sub in ["serve", "dev", "deploy"] {
            let sub = command.find_subcommand(sub).unwrap();
            for setting in SETTINGS {
                assert!(
                    sub.get_arguments()
                        .any(|a| a.get_long() == Some(setting.name)),
                    "{} lacks --{}",
                    sub.get_name(),
                    setting.name
                );
            }
        }
    }
}
