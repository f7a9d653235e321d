//! The `handoff` binary: parse flags, set up logging, run the command.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use handoff::cli::{Cli, Command};
use handoff::server::Server;

/// Exit code for an invalid configuration (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    handoff::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("handoff: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match args.into_config() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("handoff: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: handoff::config::Config) -> ExitCode {
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("handoff: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", server.ready_line());
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
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
