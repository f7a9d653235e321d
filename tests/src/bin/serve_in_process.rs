//! `handoff serve` (the same flags) compiling in this process instead of in a compile worker,
//! for `tests/instructions-per-request`: under valgrind, the `handoff` binary's worker
//! (`/proc/self/exe`) would be valgrind itself, and an artifact compiled outside valgrind does
//! not load inside it (the CPU features valgrind presents are part of the engine's
//! compatibility key). Stops gracefully on SIGTERM, as `handoff serve` does.

use std::io::Write;
use std::time::Duration;

use handoff::cli::{Cli, Command};

/// The allocator of the `handoff` binary, so instructions counted here are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse_args();
    let Command::Serve(args) = cli.command else {
        panic!("only `serve` runs here");
    };
    handoff::telemetry::init_with_default("info");
    let mut config = args.into_config().expect("the flags of `handoff serve`");
    config.compiler = handoff::compile::Compiler::InProcess;
    let runtime = tokio::runtime::Runtime::new().expect("an async runtime");
    runtime.block_on(async {
        let server = handoff::server::Server::start(config)
            .await
            .expect("the server starts");
        println!("{}", server.ready_line());
        let _ = std::io::stdout().flush();
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        terminate.recv().await;
        server.shutdown().await;
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    handoff::telemetry::flush(Duration::from_secs(5));
}
