//! Compiling uploads under a time and a memory limit.
//!
//! Cranelift cannot be cancelled or capped once a compile starts, and wasmtime treats
//! compile-time denial of service as out of scope. A component crafted to take minutes or
//! gigabytes to compile must not take the server with it, so by default the server compiles in
//! a child process, the compile worker: the `handoff` binary itself run as
//! `handoff __compile-worker` ([`Compiler::Worker`]). The worker reads the component on stdin,
//! caps its own writable memory (`RLIMIT_DATA`) and CPU time (`RLIMIT_CPU`, a backstop), compiles
//! with the settings of the server's engine for the component's WASI (0.2 or 0.3, passed by
//! environment), and writes the serialized artifact to stdout.
//! The server kills it when the compile deadline passes and loads the artifact it gets back the
//! same way it loads artifacts from the data directory. No guest code runs in the worker.
//!
//! [`Compiler::InProcess`] compiles on a thread of the calling process instead, without limits;
//! it is for embedding the library where no worker binary exists.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{CompileError, Engine, Wasi};
pub use crate::settings::CompileLimits;

/// The argument that turns the `handoff` binary into a compile worker.
pub const WORKER_ARG: &str = "__compile-worker";

/// Environment variable carrying the worker's memory limit in bytes.
const MEMORY_ENV: &str = "HANDOFF_COMPILE_MEMORY_BYTES";
/// Environment variable carrying the worker's CPU-time backstop in seconds.
const CPU_ENV: &str = "HANDOFF_COMPILE_CPU_SECONDS";
/// Environment variable carrying the server's `--opt-level`, so the worker's code loads into
/// the server's engine.
const OPT_LEVEL_ENV: &str = "HANDOFF_COMPILE_OPT_LEVEL";
/// Environment variable carrying which WASI the component is for (`0.2`, `0.3`): which of the
/// server's engines the artifact must load into.
const WASI_ENV: &str = "HANDOFF_COMPILE_WASI";
/// Exit code of a worker whose input is not a valid component (the reason is on stderr).
const EXIT_INVALID: u8 = 3;
/// Exit code of a worker that ran out of memory in a way it could report.
const EXIT_MEMORY: u8 = 4;
/// The most of a worker's stderr kept for an error message.
const MAX_REASON: usize = 4096;

/// Where components are compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Compiler {
    /// On a thread of this process. The compile limits are not enforced.
    #[default]
    InProcess,
    /// In a child process: `program args…` must run [`worker_main`].
    Worker {
        /// The executable.
        program: PathBuf,
        /// Arguments that select the worker (for the `handoff` binary, [`WORKER_ARG`]).
        args: Vec<OsString>,
    },
}

impl Compiler {
    /// The running `handoff` binary as the worker. On Linux it is started through
    /// `/proc/self/exe`, so replacing the binary on disk while the server runs (an upgrade)
    /// cannot put a different compiler behind the running server.
    pub fn this_binary() -> std::io::Result<Self> {
        let program =
            if cfg!(target_os = "linux") && std::path::Path::new("/proc/self/exe").exists() {
                PathBuf::from("/proc/self/exe")
            } else {
                std::env::current_exe()?
            };
        Ok(Self::Worker {
            program,
            args: vec![WORKER_ARG.into()],
        })
    }
}

/// A compiled component and its serialized artifact (what the data directory stores).
pub struct Compiled {
    /// The component, loaded into the server's engine.
    pub component: wasmtime::component::Component,
    /// `Component::serialize` of it.
    pub artifact: Vec<u8>,
}

/// How many compiles may run at once; more wait their turn (compiling is CPU-bound).
const CONCURRENT_COMPILES: usize = 4;

/// The process's compiler: where it compiles, how many compiles run at once, and counts.
pub struct Compiles {
    compiler: Compiler,
    slots: tokio::sync::Semaphore,
    compiled: AtomicU64,
    workers: Arc<AtomicU64>,
}

impl Compiles {
    /// Compiles with `compiler`, at most [`CONCURRENT_COMPILES`] at once.
    pub fn new(compiler: Compiler) -> Self {
        Self {
            compiler,
            slots: tokio::sync::Semaphore::new(CONCURRENT_COMPILES),
            compiled: AtomicU64::new(0),
            workers: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many components this process has compiled (loading an artifact does not count).
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// How many compile worker processes are running now. A worker counts until it has exited
    /// and been reaped (or, on its deadline, killed and reaped).
    pub fn workers(&self) -> u64 {
        self.workers.load(Ordering::Relaxed)
    }

    /// Compiles `bytes` for `engine`'s engine of `wasi` under `limits`, waiting for a compile
    /// slot first.
    pub async fn compile(
        &self,
        engine: &Arc<Engine>,
        bytes: Bytes,
        wasi: Wasi,
        limits: CompileLimits,
    ) -> Result<Compiled, CompileError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| CompileError::Failed(e.to_string()))?;
        let compiled = match &self.compiler {
            Compiler::InProcess => {
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || {
                    let component = engine.compile(&bytes, wasi)?;
                    let artifact = component
                        .serialize()
                        .map_err(|e| CompileError::Failed(format!("serializing: {e:#}")))?;
                    Ok(Compiled {
                        component,
                        artifact,
                    })
                })
                .await
                .map_err(|e| CompileError::Failed(format!("the compile thread failed: {e}")))?
            }
            Compiler::Worker { program, args } => {
                let _running = WorkerGauge::enter(&self.workers);
                let artifact =
                    run_worker(program, args, engine.opt_level(), wasi, bytes, limits).await?;
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || {
                    // Loading checks what compiling in process would have: that the component
                    // fits the engine (its memories and tables within the instance pool's
                    // limits).
                    let component = engine
                        .load_compiled(&artifact, wasi)
                        .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
                    Ok(Compiled {
                        component,
                        artifact,
                    })
                })
                .await
                .map_err(|e| CompileError::Failed(format!("the load thread failed: {e}")))?
            }
        };
        if compiled.is_ok() {
            self.compiled.fetch_add(1, Ordering::Relaxed);
        }
        compiled
    }
}

/// Runs one compile worker: the component on its stdin, the artifact from its stdout. When
/// the deadline passes the worker is killed and reaped before this returns.
async fn run_worker(
    program: &PathBuf,
    args: &[OsString],
    opt_level: crate::engine::OptLevel,
    wasi: Wasi,
    bytes: Bytes,
    limits: CompileLimits,
) -> Result<Vec<u8>, CompileError> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from) as u64;
    // The CPU backstop only matters if this process dies and leaves the worker behind: every
    // compile thread busy for the whole deadline, plus a second.
    let cpu_seconds = limits
        .timeout
        .as_secs()
        .saturating_add(1)
        .saturating_mul(threads);
    let mut child = tokio::process::Command::new(program)
        .args(args)
        // Nothing of the server's environment (admin tokens among it): only the limits.
        .env_clear()
        .env(MEMORY_ENV, limits.memory_bytes.to_string())
        .env(CPU_ENV, cpu_seconds.to_string())
        .env(OPT_LEVEL_ENV, opt_level.as_str())
        .env(WASI_ENV, wasi.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            CompileError::Failed(format!(
                "cannot start the compile worker {}: {e}",
                program.display()
            ))
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Feed stdin while the output is read, or a large component and a large artifact would
    // each wait for the other's pipe to drain.
    let feed = async move {
        let _ = stdin.write_all(&bytes).await;
        let _ = stdin.shutdown().await;
    };
    let collect = async move {
        let mut artifact = Vec::new();
        let mut reason = Vec::new();
        let (out, err) = tokio::join!(
            stdout.read_to_end(&mut artifact),
            stderr.read_to_end(&mut reason)
        );
        out.and(err).map(|_| (artifact, reason))
    };
    let run = async {
        let ((), collected, status) = tokio::join!(feed, collect, child.wait());
        (collected, status)
    };
    let outcome = tokio::time::timeout(limits.timeout, run).await;
    let (collected, status) = match outcome {
        Ok(done) => done,
        Err(_) => {
            // Kill and reap it, so no compile outlives its deadline.
            let _ = child.kill().await;
            return Err(CompileError::TooSlow(limits.timeout));
        }
    };
    let status =
        status.map_err(|e| CompileError::Failed(format!("waiting for the compile worker: {e}")))?;
    let (artifact, stderr) = collected
        .map_err(|e| CompileError::Failed(format!("reading the compile worker's output: {e}")))?;
    let reason = reason(&stderr);
    if status.success() {
        return Ok(artifact);
    }
    match status.code() {
        Some(code) if code == i32::from(EXIT_INVALID) => Err(CompileError::Invalid(reason)),
        Some(code) if code == i32::from(EXIT_MEMORY) => {
            Err(CompileError::TooMuchMemory(limits.memory_bytes))
        }
        _ if reason.contains("memory allocation of") => {
            Err(CompileError::TooMuchMemory(limits.memory_bytes))
        }
        _ if killed_by_cpu_limit(&status) => Err(CompileError::TooSlow(limits.timeout)),
        _ => Err(CompileError::Failed(format!(
            "the compile worker failed ({status}): {reason}"
        ))),
    }
}

/// Counts a running compile worker in [`Compiles::workers`] while alive (until the worker
/// is reaped).
struct WorkerGauge(Arc<AtomicU64>);

impl WorkerGauge {
    fn enter(workers: &Arc<AtomicU64>) -> Self {
        workers.fetch_add(1, Ordering::Relaxed);
        Self(workers.clone())
    }
}

impl Drop for WorkerGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last [`MAX_REASON`] bytes of a worker's stderr, trimmed.
fn reason(stderr: &[u8]) -> String {
    let tail = &stderr[stderr.len().saturating_sub(MAX_REASON)..];
    String::from_utf8_lossy(tail).trim().to_owned()
}

#[cfg(unix)]
fn killed_by_cpu_limit(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    // SIGXCPU is 24 on Linux and the BSDs.
    status.signal() == Some(24)
}

#[cfg(not(unix))]
fn killed_by_cpu_limit(_: &std::process::ExitStatus) -> bool {
    false
}

/// The compile worker: call it from `main` when the first argument is [`WORKER_ARG`]. Reads a
/// component on stdin and writes its serialized artifact to stdout. Exit codes: 0 compiled,
/// 3 not a valid component (the reason on stderr), 4 out of memory, anything else a failure.
pub fn worker_main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    use std::process::ExitCode;

    if let Err(error) = apply_limits() {
        eprintln!("cannot apply the compile limits: {error}");
        return ExitCode::FAILURE;
    }
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("reading the component: {error}");
        return ExitCode::FAILURE;
    }
    let opt_level = match std::env::var(OPT_LEVEL_ENV) {
        Err(_) => crate::engine::OptLevel::default(),
        Ok(name) => match crate::engine::OptLevel::parse(&name) {
            Some(level) => level,
            None => {
                eprintln!("{OPT_LEVEL_ENV}: no optimisation level is named `{name}`");
                return ExitCode::FAILURE;
            }
        },
    };
    let wasi = match std::env::var(WASI_ENV) {
        Err(_) => Wasi::default(),
        Ok(name) => match Wasi::parse(&name) {
            Some(wasi) => wasi,
            None => {
                eprintln!("{WASI_ENV}: no WASI is named `{name}`");
                return ExitCode::FAILURE;
            }
        },
    };
    let engine = match crate::engine::compile_engine(opt_level, wasi) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("{error:#}");
            return exit_for(&error);
        }
    };
    let component = match wasmtime::component::Component::new(&engine, &bytes) {
        Ok(component) => component,
        Err(error) => {
            eprintln!("{error:#}");
            return if out_of_memory(&error) {
                ExitCode::from(EXIT_MEMORY)
            } else {
                ExitCode::from(EXIT_INVALID)
            };
        }
    };
    drop(bytes);
    let artifact = match component.serialize() {
        Ok(artifact) => artifact,
        Err(error) => {
            eprintln!("serializing: {error:#}");
            return exit_for(&error);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(&artifact).and_then(|()| stdout.flush()) {
        eprintln!("writing the artifact: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn exit_for(error: &wasmtime::Error) -> std::process::ExitCode {
    if out_of_memory(error) {
        std::process::ExitCode::from(EXIT_MEMORY)
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Whether an error chain bottoms out in the OS refusing memory (`ENOMEM`), which under the
/// worker's `RLIMIT_DATA` is the limit being hit.
fn out_of_memory(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            e.kind() == std::io::ErrorKind::OutOfMemory || e.raw_os_error() == Some(12)
        }) || cause.to_string().contains("Cannot allocate memory")
    })
}

/// Caps this process's writable memory and CPU time from the environment the server set. A
/// lower limit the process inherited (a `ulimit` on the server) stays in force.
#[cfg(unix)]
fn apply_limits() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let read = |name: &str| -> Option<u64> { std::env::var(name).ok()?.parse().ok() };
    let lower = |resource: Resource, soft: u64, hard: u64| {
        let inherited = getrlimit(resource).maximum.unwrap_or(u64::MAX);
        setrlimit(
            resource,
            Rlimit {
                current: Some(soft.min(inherited)),
                maximum: Some(hard.min(inherited)),
            },
        )
    };
    if let Some(bytes) = read(MEMORY_ENV) {
        lower(Resource::Data, bytes, bytes)?;
    }
    if let Some(seconds) = read(CPU_ENV) {
        lower(Resource::Cpu, seconds, seconds.saturating_add(1))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn apply_limits() -> std::io::Result<()> {
    Ok(())
}
