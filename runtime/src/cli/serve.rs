//! `handoff serve` (and the server `handoff dev` runs): its flags, the `--config` file layered
//! under them, and the mapping to a [`Config`].
//!
//! Precedence: a flag (or its `HANDOFF_*` environment variable) wins over the `--config` file,
//! which wins over the built-in defaults. Defaults are the `DEFAULT_*` constants, never
//! restated as text; the per-route settings are the table in [`crate::settings`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::ValueHint;
use clap::{Arg, ArgMatches, FromArgMatches};

use crate::config::{self, Config, Limits};
use crate::settings::SETTINGS;
use crate::units::{Dur, Size};

/// Flags of `handoff serve` (and of the server `handoff dev` runs).
///
/// Precedence: a flag (or its `HANDOFF_*` environment variable) wins over the `--config` file,
/// which wins over the defaults.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct ServeArgs {
    /// A TOML file with any of these settings, keys spelled like the flags
    /// (`admin-listen = "127.0.0.1:8081"`, `request-timeout = "10s"`). Flags and their
    /// environment variables win over it; it wins over the defaults.
    #[arg(long, value_name = "FILE", env = "HANDOFF_CONFIG", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Address for guest traffic. Port 0 picks a free port (the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = config::DEFAULT_LISTEN, env = "HANDOFF_LISTEN")]
    pub listen: SocketAddr,
    /// Address for the admin API. Keep it on loopback: it accepts code.
    #[arg(long, value_name = "ADDR", default_value = config::DEFAULT_ADMIN_LISTEN, env = "HANDOFF_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// A host name the admin API answers to besides its address and the loopback names
    /// (repeatable). Requests naming any other host are refused (a web page using DNS
    /// rebinding). Give the name you reach the server by, e.g. behind a proxy.
    #[arg(long = "admin-host", value_name = "NAME")]
    pub admin_host: Vec<String>,
    /// Let guests reach loopback, private (10/8, 192.168/16, fc00::/7, ...) and link-local
    /// addresses through names in their allow-lists. Without it, outbound requests connect
    /// only to public addresses unless a rule names the IP address itself. Cloud metadata
    /// addresses (169.254.169.254) stay refused unless a rule names them.
    #[arg(long)]
    pub outbound_private: bool,
    /// A request header that pins a request to one version of its route (stable, candidate or
    /// shadow): its value is the version's digest, or a unique prefix of at least 8 hex
    /// digits; a value that names no version serving the route is ignored. Off by default.
    #[arg(long, value_name = "NAME", value_parser = parse_header_name)]
    pub pin_header: Option<http::header::HeaderName>,
    /// Where deployed modules, their compiled artifacts, the routes and their version history
    /// are kept, so a restart serves everything again at once. Default:
    /// `$XDG_DATA_HOME/handoff`, else `~/.local/share/handoff` (`handoff dev`: --ephemeral).
    #[arg(long, value_name = "DIR", env = "HANDOFF_DATA_DIR", conflicts_with = "ephemeral", value_hint = ValueHint::DirPath)]
    pub data_dir: Option<PathBuf>,
    /// Keep nothing across restarts: state lives in a temporary directory deleted at exit
    /// (history and rollback still work while the server runs).
    #[arg(long, env = "HANDOFF_EPHEMERAL")]
    pub ephemeral: bool,
    /// Check Ed25519 signatures on uploads (the `Handoff-Signature` header): `off`, `warn`
    /// (deploy and log unsigned ones) or `require` (refuse them with 403).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = crate::signing::Mode::Off)]
    pub signatures: crate::signing::Mode,
    /// A TOML file of trusted public keys: `[[key]]` tables with `name` and `public` (base64),
    /// as `handoff keygen` prints them.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub signing_keys: Option<PathBuf>,
    /// A directory whose subdirectories a deploy may mount, read-only, at a route's `/data`
    /// (`dir=NAME`). Without it, guests see no files.
    #[arg(long, value_name = "ROOT", value_hint = ValueHint::DirPath)]
    pub guest_dirs: Option<PathBuf>,
    /// Serve guest traffic over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM", value_hint = ValueHint::FilePath)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", value_hint = ValueHint::FilePath)]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API over TLS with this PEM certificate chain (with --admin-tls-key).
    #[arg(long, value_name = "PEM", value_hint = ValueHint::FilePath)]
    pub admin_tls_cert: Option<PathBuf>,
    /// The PEM private key for --admin-tls-cert.
    #[arg(long, value_name = "PEM", value_hint = ValueHint::FilePath)]
    pub admin_tls_key: Option<PathBuf>,
    /// A TOML file of admin tokens: `[[token]]` tables with `name`, `token` (the secret) and
    /// `scope` (`read` or `deploy`). $HANDOFF_ADMIN_TOKEN adds a `deploy` token named `env`.
    /// Without any token the admin API is open and must stay on loopback.
    #[arg(long, value_name = "FILE", env = "HANDOFF_TOKENS_FILE", value_hint = ValueHint::FilePath)]
    pub tokens_file: Option<PathBuf>,
    /// Activations each route's history keeps for rollback; older versions' files are
    /// garbage-collected.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_HISTORY_LIMIT)]
    pub history: usize,
    /// How long a replaced version may finish its in-flight requests before they are cut off;
    /// also the graceful-shutdown grace period.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(config::DEFAULT_DRAIN_TIMEOUT))]
    pub drain_timeout: Dur,
    /// Largest accepted component upload (e.g. 50MiB).
    #[arg(long, value_name = "SIZE", default_value_t = Size(config::DEFAULT_MAX_UPLOAD_BYTES as u64))]
    pub max_upload: Size,
    /// Guest instances that may exist at once (pooling allocator slots); 0 allocates on demand.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_INSTANCES)]
    pub max_instances: u32,
    /// How hard Cranelift optimises guest code: `speed`, `speed-and-size`, or `none` (compiles
    /// faster, runs slower). An engine setting: changing it recompiles every version on the
    /// next start.
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = crate::engine::OptLevel::Speed)]
    pub opt_level: crate::engine::OptLevel,
    /// Guest-traffic connections served at once; more wait in the listen backlog until one
    /// closes.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long a guest-traffic connection may go without a request in progress before it is
    /// closed: a client that connects and sends nothing, trickles its request head
    /// (slowloris), or leaves a keep-alive or HTTP/2 connection idle.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(config::DEFAULT_IDLE_TIMEOUT))]
    pub idle_timeout: Dur,
    /// Join a cluster: keep routes, history and module bytes in NATS JetStream (2.12 or newer)
    /// at this URL (`nats://HOST:PORT`; several, comma-separated, for a NATS cluster) and serve
    /// the same routes as every other node. Without it the node stands alone.
    #[arg(long, value_name = "URL", env = "HANDOFF_CLUSTER")]
    pub cluster: Option<String>,
    /// A NATS credentials file (`.creds`) for --cluster.
    #[arg(long, value_name = "FILE", env = "HANDOFF_CLUSTER_CREDS", value_hint = ValueHint::FilePath)]
    pub cluster_creds: Option<PathBuf>,
    /// This node's name in the cluster, unique among its nodes (default: the host name).
    #[arg(long, value_name = "NAME", env = "HANDOFF_NODE_NAME")]
    pub node_name: Option<String>,
    /// How long a change waits for every live node of the cluster to activate it before it is
    /// answered as partial, naming the nodes that did not.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(crate::cluster::DEFAULT_CLUSTER_TIMEOUT))]
    pub cluster_timeout: Dur,
    /// Copies JetStream keeps of handoff's buckets (0: 3 when the NATS server is in a cluster
    /// of three or more, else 1).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub cluster_replicas: usize,
    /// Take over from the server running on the same --data-dir, without a refused connection
    /// or a failed request: receive its listening sockets (through `takeover.sock` in the data
    /// directory) and its state, load every route, then serve while the old process finishes
    /// its requests and exits. --listen and --admin-listen, if given, must name its addresses.
    /// If this process fails before it is ready, the old one serves on. Not in a config file.
    #[arg(long)]
    pub takeover: bool,
    /// The per-route settings (`--max-memory`, `--request-timeout`, ...): every route's
    /// defaults, from the table in `crate::settings`.
    #[command(flatten)]
    pub limits: RouteDefaults,
    /// What the `--config` file held besides flags, or why it could not be used (filled by
    /// `Cli::try_parse_args`, which layers the file's flags under the command line's).
    #[arg(skip)]
    pub file: FileExtras,
}

/// What a `--config` file holds besides flags: tokens and keys; or why it was refused.
#[derive(Debug, Default)]
pub struct FileExtras {
    /// `[[token]]` tables.
    pub tokens: Vec<crate::auth::Token>,
    /// `[[key]]` tables.
    pub keys: Vec<crate::signing::TrustedKey>,
    /// Why the file could not be used (reported by `into_config`, exit 64).
    pub error: Option<String>,
    /// Warnings about the file, logged by `into_config` (the log is not set up when the file
    /// is read).
    pub warnings: Vec<String>,
}

/// The per-route settings as server flags: the defaults every route starts from (and, for
/// memory and compiles, the most a route may set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteDefaults(pub Limits);

impl clap::Args for RouteDefaults {
    fn augment_args(command: clap::Command) -> clap::Command {
        SETTINGS.iter().fold(command, |command, setting| {
            command.arg(
                Arg::new(setting.name)
                    .long(setting.name)
                    .value_name(setting.metavar)
                    .help(format!(
                        "{} This is every route's default; a deploy may set its own.",
                        setting.help()
                    ))
                    .default_value((setting.default)())
                    .value_parser(move |text: &str| {
                        (setting.parse)(text).map(|()| text.to_owned())
                    }),
            )
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for RouteDefaults {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut limits = Limits::default();
        for setting in SETTINGS {
            if let Some(text) = matches.get_one::<String>(setting.name) {
                (setting.set)(&mut limits, text)
                    .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e))?;
            }
        }
        Ok(Self(limits))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// A header name for `--pin-header`.
fn parse_header_name(text: &str) -> Result<http::header::HeaderName, String> {
    http::header::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("`{}` is not a header name", text.escape_debug()))
}

/// Why `--takeover` is refused on a platform without Unix domain sockets (Windows).
pub const NO_TAKEOVER_HERE: &str = "--takeover receives the running server's sockets over a Unix domain socket, which this platform lacks: stop the running server (it drains its requests), then start this one without --takeover";

/// `--takeover` where this platform (`unix`: it has Unix domain sockets) can do it, or the
/// sentence refusing it. Decided here, with the flags, so the refusal is the same on every
/// platform and is tested on every platform.
fn takeover_possible(takeover: bool, unix: bool) -> Result<(), String> {
    match takeover && !unix {
        true => Err(NO_TAKEOVER_HERE.into()),
        false => Ok(()),
    }
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

impl ServeArgs {
    /// The validated configuration: flags, then the `--config` file, then the defaults.
    /// The error is a sentence naming what to fix (and the file, if it is the file's fault).
    pub fn into_config(self) -> Result<Config, String> {
        self.into_config_with(false)
    }

    /// As [`Self::into_config`]; with `ephemeral_by_default`, no `--data-dir` means a
    /// temporary data directory instead of the default one (what `handoff dev` wants).
    pub fn into_config_with(mut self, ephemeral_by_default: bool) -> Result<Config, String> {
        if let Some(error) = self.file.error.take() {
            return Err(error);
        }
        let path = self.config.clone();
        self.build(ephemeral_by_default)
            .map_err(|error| match path {
                Some(path) => format!(
                    "{error} (check the flags and the config file {})",
                    path.display()
                ),
                None => error,
            })
    }

    fn build(self, ephemeral_by_default: bool) -> Result<Config, String> {
        let ephemeral = self.ephemeral || (ephemeral_by_default && self.data_dir.is_none());
        takeover_possible(self.takeover, cfg!(unix))?;
        if self.takeover && ephemeral {
            return Err(
                "--takeover takes over from the server running on the same --data-dir; an ephemeral server has none to share: give --data-dir"
                    .into(),
            );
        }
        let FileExtras {
            tokens: file_tokens,
            keys: file_keys,
            warnings,
            ..
        } = self.file;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let config = Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            admin_hosts: self.admin_host,
            pin_header: self.pin_header,
            outbound_private: self.outbound_private,
            data_dir: config::data_dir(ephemeral, self.data_dir)?,
            history_limit: self.history,
            drain_timeout: self.drain_timeout.0,
            max_upload_bytes: usize::try_from(self.max_upload.0)
                .map_err(|_| "the upload limit is too large for this machine".to_string())?,
            max_instances: self.max_instances,
            opt_level: self.opt_level,
            admin_tokens: crate::auth::admin_tokens(self.tokens_file.as_deref(), file_tokens)?,
            idle_timeout: self.idle_timeout.0,
            max_connections: self.max_connections,
            signature_mode: self.signatures,
            signing_keys: crate::signing::trusted_keys(self.signing_keys.as_deref(), file_keys)?,
            guest_dirs: self.guest_dirs,
            tls: tls_files("--tls-cert", self.tls_cert, "--tls-key", self.tls_key)?,
            admin_tls: tls_files(
                "--admin-tls-cert",
                self.admin_tls_cert,
                "--admin-tls-key",
                self.admin_tls_key,
            )?,
            upload_timeout: config::DEFAULT_UPLOAD_TIMEOUT,
            compiler: crate::compile::Compiler::this_binary()
                .map_err(|e| format!("cannot find this executable to compile uploads with: {e}"))?,
            limits: self.limits.0,
            cluster: match (self.cluster, self.node_name) {
                (Some(url), node_name) => Some(crate::cluster::ClusterConfig {
                    url,
                    creds: self.cluster_creds,
                    node_name: node_name.unwrap_or_else(crate::cluster::host_name),
                    timeout: self.cluster_timeout.0,
                    replicas: self.cluster_replicas,
                }),
                (None, Some(_)) => {
                    return Err(
                        "--node-name names this node in a cluster; give --cluster too".into(),
                    );
                }
                (None, None) => None,
            },
            // The OpenTelemetry SDK's standard variables, as every OpenTelemetry user sets them.
            tracing: crate::trace::Settings::from_env(|name| std::env::var(name).ok())?,
            takeover: self.takeover,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::time::Duration;

    use clap::CommandFactory;

    use super::*;
    use crate::cli::file::{ConfigFile, settable};
    use crate::cli::{Cli, Command};

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["handoff", "serve"].iter().chain(args);
        match Cli::try_parse_args(argv).expect("valid flags").command {
            Command::Serve(serve) => serve,
            other => panic!("parsed as {other:?}"),
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
        let config = serve(&["--config", path, "--request-timeout", "5s", "--ephemeral"])
            .into_config()
            .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(config.max_instances, 3);
        assert_eq!(
            config.admin_listen,
            config::DEFAULT_ADMIN_LISTEN.parse().unwrap()
        );
        // A flag equal to its default still wins.
        let config = serve(&["--config", path, "--max-instances", "1000", "--ephemeral"])
            .into_config()
            .unwrap();
        assert_eq!(config.max_instances, 1000);
    }

    #[test]
    fn admin_host_names_come_from_the_flags_or_else_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.toml");
        std::fs::write(&path, "admin-host = [\"from.file\"]\nephemeral = true\n").unwrap();
        let path = path.to_str().unwrap();
        let config = serve(&["--config", path]).into_config().unwrap();
        assert_eq!(config.admin_hosts, ["from.file"]);
        let config = serve(&[
            "--config",
            path,
            "--admin-host",
            "a",
            "--admin-host",
            "b.internal",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.admin_hosts, ["a", "b.internal"]);
        let error = serve(&["--ephemeral", "--admin-host", "a:1"])
            .into_config()
            .unwrap_err();
        assert!(error.contains("--admin-host `a:1`"), "{error}");
    }

    #[test]
    fn private_outbound_destinations_come_from_the_flag_or_the_file() {
        assert!(
            !serve(&["--ephemeral"])
                .into_config()
                .unwrap()
                .outbound_private
        );
        let flag = serve(&["--ephemeral", "--outbound-private"])
            .into_config()
            .unwrap();
        assert!(flag.outbound_private);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.toml");
        std::fs::write(&path, "outbound-private = true\nephemeral = true\n").unwrap();
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

    #[test]
    fn takeover_is_refused_with_a_sentence_where_there_are_no_unix_sockets() {
        assert_eq!(takeover_possible(false, false), Ok(()));
        assert_eq!(takeover_possible(true, true), Ok(()));
        let refused = takeover_possible(true, false).unwrap_err();
        assert_eq!(refused, NO_TAKEOVER_HERE);
        assert!(refused.contains("Unix domain socket"), "{refused}");
        assert!(refused.contains("stop the running server"), "{refused}");
        // On this platform the flags decide as the platform can.
        let dir = tempfile::tempdir().unwrap();
        let parsed =
            serve(&["--data-dir", dir.path().to_str().unwrap(), "--takeover"]).into_config();
        match cfg!(unix) {
            true => assert!(parsed.unwrap().takeover),
            false => assert_eq!(parsed.unwrap_err(), NO_TAKEOVER_HERE),
        }
    }

    #[test]
    fn every_default_is_its_constant() {
        let mut config = serve(&["--ephemeral"]).into_config().unwrap();
        let expected = Config::default();
        config.compiler = expected.compiler.clone();
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
    }

    /// Two valid values of a flag, by its placeholder.
    fn samples(arg: &Arg) -> Option<(String, String)> {
        if let Some(values) = arg
            .get_possible_values()
            .get(..2)
            .map(|v| (v[0].get_name().to_owned(), v[1].get_name().to_owned()))
        {
            return Some(values);
        }
        let name = arg.get_value_names()?.first()?.as_str().to_owned();
        let (a, b) = match name.as_str() {
            "ADDR" => ("127.0.0.1:7001", "127.0.0.1:7002"),
            "DURATION" => ("7s", "9s"),
            "SIZE" => ("3MiB", "5MiB"),
            "N" => ("3", "5"),
            "FILE" | "DIR" | "PEM" | "ROOT" => ("/from/file", "/from/flag"),
            "NAME" => ("from.file", "from.flag"),
            "URL" => ("nats://127.0.0.1:1", "nats://127.0.0.1:2"),
            _ => return None,
        };
        Some((a.to_owned(), b.to_owned()))
    }

    #[test]
    fn for_every_key_a_flag_wins_over_the_file() {
        let command = Cli::command();
        let serve_command = command.find_subcommand("serve").unwrap();
        let mut checked = 0;
        for arg in serve_command.get_arguments().filter(|a| settable(a)) {
            let long = arg.get_long().unwrap();
            if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
                continue;
            }
            let (from_file, from_flag) = samples(arg)
                .unwrap_or_else(|| panic!("--{long}: give it a known value_name for this test"));
            let text = format!("{long} = \"{from_file}\"\n");
            let file = ConfigFile::parse(&text, std::path::Path::new("/"), serve_command)
                .unwrap_or_else(|e| panic!("--{long}: {e}"));
            let given = serve_command
                .clone()
                .try_get_matches_from(["serve", &format!("--{long}"), &from_flag])
                .unwrap();
            assert!(
                file.args(&given, serve_command).is_empty(),
                "--{long}: the flag must win over the file"
            );
            let not_given = serve_command
                .clone()
                .try_get_matches_from(["serve"])
                .unwrap();
            assert_eq!(
                file.args(&not_given, serve_command),
                [OsString::from(format!("--{long}={from_file}"))],
                "--{long}: the file fills what no flag gave"
            );
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} flags checked");
    }
}
