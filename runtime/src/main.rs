//! The `handoff` binary: parse flags, set up logging, run the command, turn its outcome into an
//! exit code (see `handoff --help`). The first ctrl-c or SIGTERM stops `serve` and `dev`
//! gracefully; a second one exits at once.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use handoff::cli::{Cli, Command, RouteArgs};
use handoff::client;
use handoff::exit::{self, Failure};
use handoff::server::Server;
use handoff::state::private::UntrustedDataDir;

/// mimalloc instead of the system allocator: per request, hyper, wasmtime and the host allocate
/// and free small objects across two threads, where glibc's malloc cost about twice as much
/// (measured with `perf` under the bench's load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // `RUST_BACKTRACE=1` is for panics. Without this, it also makes every error a library
    // creates capture a backtrace, and wasmtime creates one each time a store is dropped, once
    // per request: the capture walks the stack through every loaded component's unwind tables,
    // so with 1,000 components loaded a request cost 4x (measured with `just bench`'s 1,000 routes). Library
    // backtraces stay available with `RUST_LIB_BACKTRACE=1`.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: `set_var` is unsound only while another thread may read or write the
        // environment. This is the first statement of `main`: no thread has been spawned yet
        // (the async runtime, the log writer and the compile worker all start below).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // The server runs this binary as its compile worker; that mode talks only over stdio.
    if std::env::args_os().nth(1).as_deref() == Some(handoff::compile::WORKER_ARG.as_ref()) {
        return handoff::compile::worker_main();
    }
    let cli = Cli::parse_args();
    // `dev` prints its own progress; the server's lifecycle logs would repeat it.
    let default_log = match cli.command {
        Command::Dev(_) => "warn,guest=info",
        _ => "info",
    };
    handoff::telemetry::init_with_default(default_log);
    let outcome = match tokio::runtime::Runtime::new() {
        Ok(runtime) => {
            let outcome = runtime.block_on(run(cli.command));
            // Whatever is still running (a connection, a compile being waited for) must not
            // keep the process alive once the command is done.
            runtime.shutdown_timeout(Duration::from_millis(500));
            outcome
        }
        Err(error) => Err(Failure::new(
            exit::FAILED,
            format!("cannot start the async runtime: {error}"),
        )),
    };
    // Logs are written by a thread of their own: let it finish (a stuck stderr gets 5 s).
    handoff::telemetry::flush(std::time::Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("handoff: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(args) => {
            let config = args
                .into_config()
                .map_err(|e| Failure::new(exit::CONFIG, e))?;
            let signals = Signals::listen()?;
            tokio::select! {
                served = serve(config, signals.first.clone()) => served,
                () = signals.second.cancelled() => Err(Signals::forced()),
            }
        }
        Command::Dev(args) => {
            let signals = Signals::listen()?;
            let first = signals.first.clone();
            tokio::select! {
                done = handoff::dev::run(args, async move { first.cancelled().await }) => done,
                () = signals.second.cancelled() => Err(Signals::forced()),
            }
        }
        // The admin commands: their flags become the client's plain values here.
        Command::Deploy(args) => client::deploy(&args.admin.to_client(), args.into()).await,
        Command::Routes(args) => client::routes(&args.admin.to_client()).await,
        Command::Status(args) => {
            client::status(&args.admin.to_client(), &args.route, args.watch).await
        }
        Command::Nodes(args) => client::nodes::nodes(&args.admin.to_client()).await,
        Command::Events(args) => {
            client::events::events(&args.admin.to_client(), args.route.as_deref()).await
        }
        Command::Logs(args) => client::events::logs(&args.admin.to_client(), &args.route).await,
        Command::Delete(args) => client::delete(&args.admin.to_client(), &args.route).await,
        Command::Versions(args) => client::versions(&args.admin.to_client(), &args.route).await,
        Command::Rollback(args) => {
            client::rollback(&args.admin.to_client(), &args.route, args.to()).await
        }
        Command::Upload(args) => {
            client::upload(&args.admin.to_client(), &args.file, args.sign.as_deref()).await
        }
        Command::Activate(args) => {
            let admin = args.admin.to_client();
            client::activate(&admin, &args.route, &args.version, args.prefix).await
        }
        Command::Keygen(args) => client::keygen(&args.file, &args.name),
        Command::Rollout(args) => {
            let admin = args.admin.to_client();
            client::delivery::rollout(&admin, &args.route, &args.candidate(), args.request()).await
        }
        Command::Promote(args) => act(args, "promote").await,
        Command::Abort(args) => act(args, "abort").await,
        Command::Pause(args) => act(args, "pause").await,
        Command::Resume(args) => act(args, "resume").await,
        Command::Weight(args) => {
            client::delivery::weight(&args.admin.to_client(), &args.route, args.weight).await
        }
        Command::Shadow(args) => {
            client::delivery::shadow(&args.admin.to_client(), &args.route, args.change()).await
        }
        Command::Kv(args) => {
            let (admin, bucket, op) = args.to_client()?;
            client::kv::run(&admin, &bucket, op).await
        }
        Command::New(args) => {
            let created = handoff::scaffold::run(args)?;
            let dir = created.dir.display();
            let wasi = match created.wasi {
                handoff::cli::Wasi::P2 => "WASI 0.2",
                handoff::cli::Wasi::P3 => "WASI 0.3, async",
            };
            println!(
                "created guest crate {dir} ({wasi}; SDK: {})\n  test:   cd {dir} && cargo test\n  build:  cd {dir} && cargo build --release --target wasm32-wasip2\n  serve:  handoff dev {dir}",
                created.sdk.display(),
            );
            Ok(())
        }
    }
}

/// `handoff promote|abort|pause|resume ROUTE`.
async fn act(args: RouteArgs, action: &str) -> Result<(), Failure> {
    client::delivery::act(&args.admin.to_client(), &args.route, action).await
}

async fn serve(
    config: handoff::config::Config,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), Failure> {
    let takeover = config.takeover;
    // A signal while taking over calls the takeover off: the running server serves on.
    let started = tokio::select! {
        started = Server::start(config) => started,
        () = stop.cancelled(), if takeover => {
            return Err(Failure::new(
                exit::FAILED,
                "the takeover was called off by a signal before this process was ready; the running server serves on",
            ));
        }
    };
    let server = started.map_err(|e| {
        // A data directory other users could write is a configuration error (exit 64).
        let code = if e.downcast_ref::<UntrustedDataDir>().is_some() {
            exit::CONFIG
        } else {
            exit::FAILED
        };
        Failure::new(code, format!("{e:#}"))
    })?;
    println!("{}", server.ready_line());
    let _ = std::io::stdout().flush();
    // A signal stops the server; so does a new process taking over (`serve --takeover`).
    tokio::select! {
        () = stop.cancelled() => {}
        () = server.handed_over() => {}
    }
    server.shutdown().await;
    Ok(())
}

/// Ctrl-c and SIGTERM, counted: the first cancels `first` (stop gracefully), the second
/// `second` (exit now, whatever is still running).
struct Signals {
    first: tokio_util::sync::CancellationToken,
    second: tokio_util::sync::CancellationToken,
}

impl Signals {
    /// Installs the handlers (before anything is served, so no signal is missed).
    fn listen() -> Result<Self, Failure> {
        let failed = |e: std::io::Error| {
            Failure::new(
                exit::FAILED,
                format!("cannot install the signal handlers: {e}"),
            )
        };
        let first = tokio_util::sync::CancellationToken::new();
        let second = tokio_util::sync::CancellationToken::new();
        #[cfg(unix)]
        let mut signals = {
            use tokio::signal::unix::{SignalKind, signal};
            (
                signal(SignalKind::interrupt()).map_err(failed)?,
                signal(SignalKind::terminate()).map_err(failed)?,
            )
        };
        let (on_first, on_second) = (first.clone(), second.clone());
        tokio::spawn(async move {
            for token in [on_first, on_second] {
                #[cfg(unix)]
                tokio::select! {
                    _ = signals.0.recv() => {}
                    _ = signals.1.recv() => {}
                }
                #[cfg(not(unix))]
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                token.cancel();
            }
        });
        #[cfg(not(unix))]
        let _ = failed;
        Ok(Self { first, second })
    }

    /// What a second signal makes of the command.
    fn forced() -> Failure {
        Failure::new(
            exit::FAILED,
            "stopped by a second signal without waiting for the requests in flight",
        )
    }
}
