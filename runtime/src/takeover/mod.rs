//! `serve --takeover`: a new process takes over from the server running on the same data
//! directory, without a refused connection or a failed request.
//!
//! Every server with a data directory listens on `takeover.sock` there (a Unix socket, mode
//! 0600 in the private data directory; only the same user may talk to it). The conversation
//! ([`wire`]):
//!
//! 1. The new process says `Hello`; the old one `Offer`s its addresses and which of them it
//!    serves over TLS. The new one checks them against its flags and says `Begin` (or hangs
//!    up: nothing happened).
//! 2. The old process refuses admin requests from now on (503, `Retry-After`), waits for the
//!    admin changes in progress, closes its state log and key-value store (redb locks their
//!    files) and sends its listening sockets with `SCM_RIGHTS`. Key-value calls of its running
//!    requests wait meanwhile.
//! 3. The new process opens the state and the store and says `KvOpen`: from then the old
//!    process sends its key-value calls to the new one, which applies them to the store it
//!    owns and answers (`Kv` / `KvReply`). It loads every route (recompiling what its engine
//!    key needs), starts accepting on the inherited sockets, and says `Ready`.
//! 4. The old process stops accepting, tells its keep-alive connections to close after their
//!    current response (`Connection: close`, then HTTP/2 `GOAWAY`), finishes its requests (up
//!    to `--drain-timeout`) and exits 0.
//!
//! If the connection ends before `Ready` (the new process failed: a bad flag, unreadable state,
//! a crash), the old process reopens its state and store and takes admin changes again: the
//! "switch back". Connections never notice: the listening sockets were never closed, and the
//! old process never stopped accepting.
//!
//! In a cluster the state and the store live in JetStream, which both processes reach; the
//! conversation is the same without the closing and reopening.

mod files;
mod taking;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedRwLockWriteGuard, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kv::KvError;
use crate::kv::switch::{Forward, Held, Op, Place, Reply};
use crate::runtime::Runtime;
use files::reopen;
pub use files::{SOCKET, socket_path};
pub use taking::{Offered, Predecessor, Taken, connect, take_over};
use wire::Message;

/// A running server's takeover socket: it hands the server over to one new process.
pub struct Listening {
    handed_over: CancellationToken,
    successor: Arc<AtomicU32>,
    path: PathBuf,
    id: (u64, u64),
    accepting: JoinHandle<()>,
}

impl Listening {
    /// Listens on `takeover.sock` in `dir` for a process that takes over `rt` and the two
    /// listeners. Replaces the socket file of an earlier process (one that crashed, or the one
    /// this process took over from) atomically.
    pub fn start(
        rt: Arc<Runtime>,
        dir: &Path,
        data: &tokio::net::TcpListener,
        admin: &tokio::net::TcpListener,
    ) -> anyhow::Result<Self> {
        let addresses = (data.local_addr()?, admin.local_addr()?);
        let fds = Arc::new([
            data.as_fd().try_clone_to_owned()?,
            admin.as_fd().try_clone_to_owned()?,
        ]);
        let path = socket_path(dir);
        let staging = dir.join(format!("{SOCKET}.{}", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", staging.display()))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staging, &path)?;
        let meta = std::fs::metadata(&path)?;
        let handed_over = CancellationToken::new();
        let successor = Arc::new(AtomicU32::new(0));
        let background = rt.background.clone();
        let accepting = background.spawn(accept(
            rt,
            listener,
            fds,
            addresses,
            handed_over.clone(),
            successor.clone(),
        ));
        Ok(Self {
            handed_over,
            successor,
            path,
            id: (meta.dev(), meta.ino()),
            accepting,
        })
    }

    /// Resolves once a new process has taken over and is serving.
    pub async fn handed_over(&self) {
        self.handed_over.cancelled().await;
    }

    /// The process that took over, once one has.
    pub fn successor(&self) -> Option<u32> {
        match self.successor.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Takes no more takeovers (a conversation in progress goes on) and removes the socket file
    /// unless another process has put its own there.
    pub fn close(&self) {
        self.accepting.abort();
        if let Ok(meta) = std::fs::metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.close();
    }
}

/// Takes one conversation at a time; refuses others meanwhile, and all once handed over.
async fn accept(
    rt: Arc<Runtime>,
    listener: UnixListener,
    fds: Arc<[OwnedFd; 2]>,
    addresses: (SocketAddr, SocketAddr),
    handed_over: CancellationToken,
    successor: Arc<AtomicU32>,
) {
    let busy = Arc::new(AtomicBool::new(false));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let me = rustix::process::geteuid().as_raw();
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
            tracing::warn!("takeover: refused a connection from another user");
            continue;
        }
        if handed_over.is_cancelled() || busy.swap(true, Ordering::SeqCst) {
            let reason = "another takeover of this server is in progress or done".to_string();
            rt.background.spawn(async move {
                let _ = wire::recv(&mut stream).await;
                let _ = wire::send(&mut stream, &Message::Refused { reason }).await;
            });
            continue;
        }
        let conversation = Conversation {
            rt: Arc::downgrade(&rt),
            fds: Some(fds.clone()),
            addresses,
            tls: (rt.config.tls.is_some(), rt.config.admin_tls.is_some()),
            handed_over: handed_over.clone(),
            successor: successor.clone(),
        };
        let busy = busy.clone();
        // Ends with the server at the latest (a conversation forwards the old process's
        // key-value calls for as long as it drains).
        rt.background.spawn(async move {
            if let Err(error) = conversation.run(stream).await {
                tracing::warn!(error = %error, "takeover: the conversation with the new process failed");
            }
            busy.store(false, Ordering::SeqCst);
        });
    }
}

/// The old process's side of one takeover.
struct Conversation {
    /// Weak: the conversation never keeps the runtime alive (the server's background ends it).
    rt: std::sync::Weak<Runtime>,
    fds: Option<Arc<[OwnedFd; 2]>>,
    addresses: (SocketAddr, SocketAddr),
    /// Whether the data and the admin listener are served over TLS.
    tls: (bool, bool),
    handed_over: CancellationToken,
    successor: Arc<AtomicU32>,
}

/// What the old process holds while its state is away.
struct Away {
    /// Admin changes wait on it (and are refused once they get it).
    gate: OwnedRwLockWriteGuard<()>,
    /// The key-value store closed here: calls wait on it until the store is reached again.
    kv: Option<Held>,
    /// Whether the key-value calls go to the new process.
    kv_moved: bool,
}

impl Conversation {
    async fn run(mut self, mut stream: UnixStream) -> anyhow::Result<()> {
        let pid = match wire::recv(&mut stream).await? {
            Some(Message::Hello { version, pid }) if version == wire::VERSION => pid,
            Some(Message::Hello { .. }) => {
                let reason = "the two handoff releases speak different takeover versions; stop the old server and start the new one".to_string();
                wire::send(&mut stream, &Message::Refused { reason }).await?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        let (data, admin) = self.addresses;
        let offer = Message::Offer {
            pid: std::process::id(),
            data,
            admin,
            data_tls: Some(self.tls.0),
            admin_tls: Some(self.tls.1),
        };
        wire::send(&mut stream, &offer).await?;
        if !matches!(wire::recv(&mut stream).await?, Some(Message::Begin)) {
            tracing::info!(
                new_pid = pid,
                "takeover: the new process called it off before it began"
            );
            return Ok(());
        }
        tracing::info!(
            new_pid = pid,
            "takeover: handing the listeners, the state and the key-value store to a new process"
        );
        let mut away = self.release().await?;
        let fds = self.fds.take().expect("sent once");
        let sent = wire::send_fds(&stream, &[fds[0].as_fd(), fds[1].as_fd()]).await;
        drop(fds);
        if let Err(error) = sent {
            self.switch_back(away).await;
            return Err(error.into());
        }
        let (mut read, mut write) = stream.into_split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if wire::send(&mut write, &message).await.is_err() {
                    break;
                }
            }
        });
        let peer = Arc::new(Peer {
            out,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        let kv_switch = self.rt.upgrade().and_then(|rt| rt.handover.kv.clone());
        let mut ready = false;
        loop {
            match wire::recv(&mut read).await {
                Ok(Some(Message::KvRelease)) => {
                    // Calls in progress here finish first; later ones wait for the new place.
                    if let Some(kv) = &kv_switch
                        && away.kv.is_none()
                        && !away.kv_moved
                    {
                        away.kv = Some(kv.release().await);
                    }
                    let _ = peer.out.send(Message::KvReleased);
                }
                Ok(Some(Message::KvOpen)) => {
                    if let Some(mut held) = away.kv.take() {
                        *held = Place::There(peer.clone());
                        away.kv_moved = true;
                    }
                }
                Ok(Some(Message::KvReply { id, result })) => peer.answer(id, result),
                Ok(Some(Message::Ready)) if !ready => {
                    ready = true;
                    tracing::info!(
                        new_pid = pid,
                        "takeover: the new process is ready and serving; this one stops accepting, finishes its requests and exits"
                    );
                    self.successor.store(pid, Ordering::SeqCst);
                    self.handed_over.cancel();
                }
                Ok(Some(other)) => {
                    tracing::warn!(message = ?other, "takeover: unexpected message; closing");
                    break;
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(error = %error, "takeover: the connection to the new process failed");
                    break;
                }
            }
        }
        peer.close();
        writer.abort();
        if ready {
            tracing::info!(
                new_pid = pid,
                "takeover: the new process closed the connection"
            );
        } else {
            tracing::warn!(
                new_pid = pid,
                "takeover: the new process stopped before it was ready; switching back"
            );
            self.switch_back(away).await;
        }
        Ok(())
    }

    /// Refuses admin requests, waits for changes in progress, closes the state log. (The
    /// key-value store goes later, once the new process has loaded: `KvRelease`.)
    async fn release(&self) -> anyhow::Result<Away> {
        let rt = self
            .rt
            .upgrade()
            .ok_or_else(|| anyhow::anyhow!("the server is shutting down"))?;
        let handover = &rt.handover;
        handover.set_released(true);
        let gate = handover.admin.clone().write_owned().await;
        if let Some(state) = &handover.state {
            state.release().await;
        }
        Ok(Away {
            gate,
            kv: None,
            kv_moved: false,
        })
    }

    /// Reopens the state and the store and takes admin changes again, as if nothing happened.
    async fn switch_back(&self, away: Away) {
        let Some(rt) = self.rt.upgrade() else {
            return;
        };
        let handover = &rt.handover;
        let dir = rt.files.dir().to_path_buf();
        let mut whole = true;
        if let Some(state) = &handover.state {
            let dir = dir.clone();
            match reopen(move || crate::state::redb::RedbLog::open(&dir)).await {
                Ok(log) => state.restore(Arc::new(log)).await,
                Err(error) => {
                    whole = false;
                    tracing::error!(error = %format!("{error:#}"), "takeover: cannot reopen the state log after the new process failed; admin changes stay refused");
                }
            }
        }
        if let Some(kv) = handover
            .kv
            .as_ref()
            .filter(|_| away.kv.is_some() || away.kv_moved)
        {
            let path = dir.join("kv.redb");
            let place = match reopen(move || crate::kv::redb::RedbBackend::open(&path)).await {
                Ok(backend) => Place::Here(Arc::new(backend)),
                Err(error) => {
                    whole = false;
                    tracing::error!(error = %format!("{error:#}"), "takeover: cannot reopen the key-value store after the new process failed; key-value calls fail");
                    Place::Closed
                }
            };
            match away.kv {
                Some(mut held) => *held = place,
                None => kv.move_to(place).await,
            }
        }
        if whole {
            handover.set_released(false);
            tracing::info!(
                "takeover: switched back; this process serves and takes changes as before"
            );
        }
        drop(away.gate);
    }
}

/// The new process, as the old one's key-value calls reach it.
struct Peer {
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Reply, KvError>>>>,
    next: AtomicU64,
    closed: AtomicBool,
}

fn gone() -> KvError {
    KvError::Failed(
        "the process this server handed its key-value store to went away before answering; the call may or may not have been applied".into(),
    )
}

impl Peer {
    fn answer(&self, id: u64, result: Result<Reply, KvError>) {
        let waiting = self.pending.lock().expect("not poisoned").remove(&id);
        if let Some(waiting) = waiting {
            let _ = waiting.send(result);
        }
    }

    fn close(&self) {
        let mut pending = self.pending.lock().expect("not poisoned");
        self.closed.store(true, Ordering::SeqCst);
        pending.clear();
    }
}

impl Forward for Peer {
    fn call(&self, op: Op) -> crate::kv::backend::BoxFuture<'_, Result<Reply, KvError>> {
        Box::pin(async move {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let (answer, answered) = oneshot::channel();
            {
                let mut pending = self.pending.lock().expect("not poisoned");
                if self.closed.load(Ordering::SeqCst) {
                    return Err(gone());
                }
                pending.insert(id, answer);
            }
            if self.out.send(Message::Kv { id, op }).is_err() {
                self.pending.lock().expect("not poisoned").remove(&id);
                return Err(gone());
            }
            answered.await.unwrap_or_else(|_| Err(gone()))
        })
    }
}

/// Tells systemd that this process is ready and is the service's main process, when it runs
/// under a `Type=notify` unit (`$NOTIFY_SOCKET` set): `READY=1` and `MAINPID=`. A process that
/// takes over sends it too, before it tells the old process to exit, so with
/// `NotifyAccess=all` systemd follows the new process as the service's main one before the old
/// one ends. Failures are logged and ignored.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<usize> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        #[cfg(target_os = "linux")]
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return socket.send_to_addr(message.as_bytes(), &address);
        }
        let _ = bytes;
        socket.send_to(message.as_bytes(), &path)
    })();
    if let Err(error) = sent {
        tracing::warn!(error = %error, "cannot tell systemd this server is ready ($NOTIFY_SOCKET)");
    }
}
