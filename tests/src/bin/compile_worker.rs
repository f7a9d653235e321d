//! The compile worker for servers the tests and the benchmark run in-process: the same
//! [`handoff::compile::worker_main`] the `handoff` binary runs as `handoff __compile-worker`.

fn main() -> std::process::ExitCode {
    handoff::compile::worker_main()
}
