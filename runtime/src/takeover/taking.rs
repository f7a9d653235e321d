//! The new process's side of a takeover: find the running server ([`connect`]), check its
//! addresses against this one's flags ([`take_over`]), receive its listeners ([`Offered::begin`]),
//! take its key-value store over once everything is loaded and tell it this one serves
//! ([`Predecessor`]); meanwhile answer its key-value calls from the store taken over.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::files::{reopen, socket_path};
use super::wire::{self, Message};
use crate::config::Config;
use crate::kv::switch::Place;
use crate::kv::{Backend, KvError};
use crate::runtime::Runtime;

/// `--listen`/`--admin-listen` against the running server's address: the same, left at the
/// default (not given), or port 0 on the same IP.
fn same_address(
    flag: &str,
    given: SocketAddr,
    default: &str,
    theirs: SocketAddr,
) -> anyhow::Result<()> {
    let left_out = default.parse::<SocketAddr>().ok() == Some(given);
    let any_port = given.port() == 0 && given.ip() == theirs.ip();
    anyhow::ensure!(
        given == theirs || left_out || any_port,
        "{flag} {given} is not the address the running server listens on ({theirs}); a takeover keeps the addresses: leave {flag} out or give {theirs}"
    );
    Ok(())
}

/// Whether this process's TLS flags for one listener keep what its clients speak: a takeover
/// cannot add or remove TLS under connections the clients already make (every one would
/// fail). `theirs` is `None` from a release that did not say.
fn same_tls(listener: &str, flags: &str, ours: bool, theirs: Option<bool>) -> anyhow::Result<()> {
    match (theirs, ours) {
        (Some(true), false) => anyhow::bail!(
            "the running server serves its {listener} listener over TLS; give {flags} (the same files, or renewed ones): without them every client of that listener would fail"
        ),
        (Some(false), true) => anyhow::bail!(
            "the running server serves its {listener} listener without TLS, and a takeover keeps what its clients speak: leave out {flags} (to add TLS, stop the running server and start this one)"
        ),
        _ => Ok(()),
    }
}

/// Finds the server running on the data directory and takes its listeners (its state follows
/// when this process opens it).
pub async fn take_over(config: &Config) -> anyhow::Result<Taken> {
    let dir = config
        .data_dir
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--takeover needs the --data-dir of the running server"))?;
    let offered = connect(dir).await?;
    same_address(
        "--listen",
        config.listen,
        crate::config::DEFAULT_LISTEN,
        offered.data,
    )?;
    same_address(
        "--admin-listen",
        config.admin_listen,
        crate::config::DEFAULT_ADMIN_LISTEN,
        offered.admin,
    )?;
    same_tls(
        "data",
        "--tls-cert and --tls-key",
        config.tls.is_some(),
        offered.data_tls,
    )?;
    same_tls(
        "admin",
        "--admin-tls-cert and --admin-tls-key",
        config.admin_tls.is_some(),
        offered.admin_tls,
    )?;
    tracing::info!(old_pid = offered.pid, data = %offered.data, admin = %offered.admin, "taking over from the running server");
    offered.begin().await
}

/// A running server found on the data directory, and what it offers.
pub struct Offered {
    /// Its process id.
    pub pid: u32,
    /// Its data-plane address.
    pub data: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Whether it serves its data listener over TLS (`None`: an older release that did not
    /// say).
    pub data_tls: Option<bool>,
    /// Whether it serves its admin listener over TLS (`None`: an older release that did not
    /// say).
    pub admin_tls: Option<bool>,
    stream: UnixStream,
}

/// Finds the server running on the data directory `dir` and asks what it would hand over.
/// Nothing changes on the running server until [`Offered::begin`].
pub async fn connect(dir: &Path) -> anyhow::Result<Offered> {
    let path = socket_path(dir);
    let mut stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "--takeover found no running server on the data directory {} ({}: {e}); start it without --takeover",
            dir.display(),
            path.display()
        )
    })?;
    let hello = Message::Hello {
        version: wire::VERSION,
        pid: std::process::id(),
    };
    wire::send(&mut stream, &hello).await?;
    match wire::recv(&mut stream).await? {
        Some(Message::Offer {
            pid,
            data,
            admin,
            data_tls,
            admin_tls,
        }) => Ok(Offered {
            pid,
            data,
            admin,
            data_tls,
            admin_tls,
            stream,
        }),
        Some(Message::Refused { reason }) => {
            anyhow::bail!("the running server refused the takeover: {reason}")
        }
        _ => anyhow::bail!("the running server closed the takeover connection without an offer"),
    }
}

impl Offered {
    /// Starts the takeover: the old process lets go of its state log and sends its listening
    /// sockets (data, admin). From here, dropping what this returns before
    /// [`Predecessor::ready`] makes the old process switch back.
    pub async fn begin(mut self) -> anyhow::Result<Taken> {
        wire::send(&mut self.stream, &Message::Begin).await?;
        let fds = wire::recv_fds(&self.stream)
            .await
            .map_err(|e| anyhow::anyhow!("receiving the running server's sockets: {e}"))?;
        let [data, admin]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| anyhow::anyhow!("the running server sent an unexpected set of sockets"))?;
        let listener = |fd: OwnedFd| -> anyhow::Result<std::net::TcpListener> {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        let (data, admin) = (listener(data)?, listener(admin)?);
        let (mut read, mut write) = self.stream.into_split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (control_in, control) = mpsc::unbounded_channel::<Message>();
        let store: Arc<std::sync::OnceLock<Arc<dyn Backend>>> = Arc::default();
        let writer = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if wire::send(&mut write, &message).await.is_err() {
                    break;
                }
            }
        });
        let (answers, serving) = (out.clone(), store.clone());
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = wire::recv(&mut read).await {
                let Message::Kv { id, op } = message else {
                    let _ = control_in.send(message);
                    continue;
                };
                let (backend, answers) = (serving.get().cloned(), answers.clone());
                tokio::spawn(async move {
                    let result = match backend {
                        Some(backend) => crate::kv::switch::apply(backend.as_ref(), op).await,
                        None => Err(KvError::Failed(
                            "the key-value store is not open in the new process yet".into(),
                        )),
                    };
                    let _ = answers.send(Message::KvReply { id, result });
                });
            }
        });
        Ok(Taken {
            data,
            admin,
            predecessor: Predecessor {
                pid: self.pid,
                out,
                control,
                store,
                tasks: vec![writer, reader],
            },
        })
    }
}

/// What a takeover received: the listening sockets and the old process.
pub struct Taken {
    /// The data-plane listener.
    pub data: std::net::TcpListener,
    /// The admin listener.
    pub admin: std::net::TcpListener,
    /// The process taken over from.
    pub predecessor: Predecessor,
}

/// The process taken over from, until it exits.
pub struct Predecessor {
    /// Its process id.
    pub pid: u32,
    out: mpsc::UnboundedSender<Message>,
    control: mpsc::UnboundedReceiver<Message>,
    /// The store the old process's key-value calls are applied to, once taken over.
    store: Arc<std::sync::OnceLock<Arc<dyn Backend>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long the old process may take to close its key-value store (it waits for the calls in
/// progress there, each bounded by its request's deadline).
const KV_RELEASE_WAIT: Duration = Duration::from_secs(60);

impl Predecessor {
    /// Takes the key-value store over (everything is loaded; this process is about to serve):
    /// the old process closes it, this one opens it into `rt`'s store, and from then answers
    /// the old process's key-value calls from it.
    pub async fn take_kv(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        let pending = rt.handover.kv_pending.lock().expect("not poisoned").take();
        let Some(mut held) = pending else {
            return Ok(());
        };
        let backend: Arc<dyn Backend> = rt
            .handover
            .kv
            .clone()
            .expect("a pending store has a switch");
        self.out
            .send(Message::KvRelease)
            .map_err(|_| anyhow::anyhow!("the old process went away"))?;
        let answer = tokio::time::timeout(KV_RELEASE_WAIT, self.control.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the old process did not close its key-value store in time")
            })?;
        match answer {
            Some(Message::KvReleased) => {}
            // It stopped (a signal while this one loaded): the store is free once it has exited.
            None => tracing::warn!(
                old_pid = self.pid,
                "takeover: the old process went away before handing over its key-value store; opening it"
            ),
            Some(other) => {
                anyhow::bail!("the old process answered {other:?} to a key-value handover")
            }
        }
        let path = rt.files.dir().join("kv.redb");
        let opened = reopen(move || {
            crate::state::private::prepare_private_file(&path)?;
            crate::kv::redb::RedbBackend::open(&path)
        })
        .await?;
        *held = Place::Here(Arc::new(opened));
        drop(held);
        let _ = self.store.set(backend);
        self.out
            .send(Message::KvOpen)
            .map_err(|_| anyhow::anyhow!("the old process went away"))?;
        Ok(())
    }

    /// Tells the old process this one is serving: it stops accepting, drains and exits.
    pub fn ready(&self) -> anyhow::Result<()> {
        self.out
            .send(Message::Ready)
            .map_err(|_| anyhow::anyhow!("the connection to the old process is gone"))
    }
}

impl Drop for Predecessor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_tls;

    #[test]
    fn a_takeover_keeps_what_each_listeners_clients_speak() {
        let flags = "--tls-cert and --tls-key";
        assert!(same_tls("data", flags, true, Some(true)).is_ok());
        assert!(same_tls("data", flags, false, Some(false)).is_ok());
        // An older release that did not say: nothing to check against.
        assert!(same_tls("data", flags, true, None).is_ok());
        assert!(same_tls("data", flags, false, None).is_ok());
        let dropped = same_tls("data", flags, false, Some(true)).unwrap_err();
        assert!(
            dropped
                .to_string()
                .starts_with("the running server serves its data listener over TLS; give --tls-cert and --tls-key"),
            "{dropped}"
        );
        let added = same_tls(
            "admin",
            "--admin-tls-cert and --admin-tls-key",
            true,
            Some(false),
        )
        .unwrap_err();
        assert!(
            added.to_string().contains(
                "serves its admin listener without TLS, and a takeover keeps what its clients speak: leave out --admin-tls-cert and --admin-tls-key"
            ),
            "{added}"
        );
    }
}
