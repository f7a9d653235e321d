//! The compile worker for servers the tests and the benchmark run in-process: the same
//! [`handoff::compile::worker_main`] the `handoff` binary runs as `handoff __compile-worker`.
//!
//! With `--wait-for FILE` it first waits (up to a minute) until FILE exists: tests use it to
//! hold a deploy in compilation for as long as they need.

use std::time::{Duration, Instant};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, gate, ..] = args.as_slice()
        && flag == "--wait-for"
    {
        let started = Instant::now();
        while !std::path::Path::new(gate).exists() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    handoff::compile::worker_main()
}
