//! The `handoff` binary: parse flags, set up logging, run the command, turn its outcome into an
//! exit code (see `handoff --help`).

use std::io::Write;
use std::process::ExitCode;

use handoff::cli::{Cli, Command, Failure, exit};
use handoff::server::Server;

fn main() -> ExitCode {
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
        Ok(runtime) => runtime.block_on(run(cli.command)),
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
            serve(config).await
        }
        Command::Dev(args) => handoff::dev::run(args, shutdown_signal()).await,
        Command::Deploy(args) => handoff::client::deploy(args).await,
        Command::Routes(args) => handoff::client::routes(args).await,
        Command::Status(args) => handoff::client::status(args).await,
        Command::Delete(args) => handoff::client::delete(args).await,
        Command::Versions(args) => handoff::client::versions(args).await,
        Command::Rollback(args) => handoff::client::rollback(args).await,
        Command::Upload(args) => handoff::client::upload(args).await,
        Command::Activate(args) => handoff::client::activate(args).await,
        Command::Keygen(args) => handoff::client::keygen(args),
        Command::New(args) => {
            let created = handoff::scaffold::run(args)?;
            let dir = created.dir.display();
            println!(
                "created guest crate {dir} (SDK: {})\n  build:  cd {dir} && cargo build --release\n  serve:  handoff dev {dir}",
                created.sdk.display(),
            );
            Ok(())
        }
    }
}

async fn serve(config: handoff::config::Config) -> Result<(), Failure> {
    let server = Server::start(config)
        .await
        .map_err(|e| Failure::new(exit::FAILED, format!("{e:#}")))?;
    println!("{}", server.ready_line());
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
