//! Response bodies that outlive their request's deadline because the client does not read them.
//!
//! hyper polls a response body only when it can send: a client that never reads (an HTTP/2
//! client that advertises a zero flow-control window, an HTTP/1.1 client that leaves a large
//! body in its socket) leaves the body unpolled, so the body alone cannot notice its deadline,
//! and it holds its request's in-flight token, and with it the route's concurrency slot and
//! its version, for as long as the client stays connected.
//!
//! The host's own bodies (a 404, a 503, a problem document, an admin answer, an event stream
//! or a log tail) hold no token, but an unread one holds its HTTP/2 stream, or its HTTP/1.1
//! connection, and a place among the listener's connections (and the 32 event streams), as
//! long as the client likes. So every response body is also watched for a **stall**
//! ([`stall`]): from the moment it has bytes for its client (when it is made, and after each
//! frame it gives) until hyper asks it for more, the client has `--idle-timeout` to let them
//! through; past that the task is dropped as for an overdue guest body. A body waiting on its
//! own source (an event stream between events) is not stalled. A guest body in progress is
//! bounded by its request's deadline instead (the stall is not checked while one is
//! registered).
//!
//! So the task that drives a response is watched: each HTTP/1.1 connection, and each HTTP/2
//! stream (spawned through [`StreamExecutor`]), runs in [`watched`], which knows, through a
//! task-local [`Watch`], the deadline of the guest response body in progress. When that
//! deadline, or its version's cut-off (drain deadline), passes with the body unfinished, the
//! task is dropped: the HTTP/2 stream is reset (`RST_STREAM`), the HTTP/1.1 connection closed,
//! and the body lets go of its token. The timer is armed only when the task waits with a body
//! in progress: a response that completes in the poll that produced it arms nothing.
//!
//! What this costs a request is kept small, since every response pays it: the timers are kept
//! for the task's next bodies and moved only when they fire early or a deadline comes before
//! theirs (moving a timer takes a lock of tokio's timer wheel; deadlines mostly move later); a
//! frame costs the stall watch two atomic stores (the task reads the clock only when it waits
//! with bytes owed); the version's cut-off is watched through [`Cancelled`], which takes none
//! of the shared token's locks when polled again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use crate::cancelled::Cancelled;
use crate::version::Version;

use crate::background::Background;

tokio::task_local! {
    /// The watch of the connection (HTTP/1.1) or stream (HTTP/2) the running task serves.
    static CURRENT: Arc<Watch>;
}

/// What a watched task is waiting on: the guest response body in progress, if any.
#[derive(Default)]
struct Watch {
    /// The body in progress.
    due: Mutex<Option<Due>>,
    /// The number of the body in progress (0: none), read without the lock whenever the
    /// task waits.
    registered: AtomicU64,
    /// Numbers the bodies registered here.
    next: AtomicU64,
    /// Set when the watch dropped its task for an overdue body.
    expired: AtomicBool,
    /// The number of the response body that has bytes its client has not let through (0:
    /// none), see [`Stall`].
    owing: AtomicU64,
    /// How many times a body has had bytes for its client (each frame it gave): the watched
    /// task times a stall from the poll in which it first sees a count, so a frame costs two
    /// stores and no clock read.
    owed: AtomicU64,
    /// The stall limit, in nanoseconds.
    limit: AtomicU64,
}

/// A guest response body in progress: its number, its request's deadline and its version
/// (whose cut-off ends it).
struct Due {
    id: u64,
    deadline: Instant,
    version: Arc<Version>,
}

/// A guest response body's registration with the task that sends it (see the module docs).
/// Dropping it says the body is done.
pub(crate) struct Registration {
    watch: Arc<Watch>,
    id: u64,
}

/// Registers a response body that must be done by `deadline`, or at `version`'s cut-off, with
/// the watched task running it; `None` outside a watched task.
pub(crate) fn register(deadline: Instant, version: &Arc<Version>) -> Option<Registration> {
    let watch = CURRENT.try_with(Arc::clone).ok()?;
    let id = watch.next.fetch_add(1, Ordering::Relaxed) + 1;
    *watch.due.lock().unwrap_or_else(|e| e.into_inner()) = Some(Due {
        id,
        deadline,
        version: version.clone(),
    });
    watch.registered.store(id, Ordering::Relaxed);
    Some(Registration { watch, id })
}

impl Registration {
    /// Whether the watch dropped the body's task because the body was overdue.
    pub(crate) fn expired(&self) -> bool {
        self.watch.expired.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Only the watched task registers its bodies and drops them: no other writer races.
        if self.watch.registered.load(Ordering::Relaxed) != self.id {
            return;
        }
        self.watch.registered.store(0, Ordering::Relaxed);
        let due = self
            .watch
            .due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_if(|due| due.id == self.id);
        drop(due);
    }
}

/// A response body's stall watch with the task that sends it (see the module docs): the body
/// says when it has bytes for its client ([`Stall::owed`]) and when it waits on its own source
/// or is done ([`Stall::settled`]). Dropping it settles it.
pub(crate) struct Stall {
    watch: Arc<Watch>,
    id: u64,
}

/// Watches a response body for stalls of `limit` in the watched task running it (the body is
/// made with bytes owed: its first frame); `None` outside a watched task.
pub(crate) fn stall(limit: Duration) -> Option<Stall> {
    let watch = CURRENT.try_with(Arc::clone).ok()?;
    let id = watch.next.fetch_add(1, Ordering::Relaxed) + 1;
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    if watch.limit.load(Ordering::Relaxed) != nanos {
        watch.limit.store(nanos, Ordering::Relaxed);
    }
    let stall = Stall { watch, id };
    stall.owed();
    Some(stall)
}

impl Stall {
    /// The body has bytes for its client: they must be let through within the limit.
    pub(crate) fn owed(&self) {
        // Only the watched task polls its bodies: no other writer races these stores.
        self.watch.owing.store(self.id, Ordering::Relaxed);
        let owed = self.watch.owed.load(Ordering::Relaxed);
        self.watch
            .owed
            .store(owed.wrapping_add(1), Ordering::Relaxed);
    }

    /// The body has nothing for its client now (it waits on its own source, or it is done).
    pub(crate) fn settled(&self) {
        if self.watch.owing.load(Ordering::Relaxed) == self.id {
            self.watch.owing.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.settled();
    }
}

/// The timer a watched task armed for the body in progress, kept for the next ones.
struct Armed {
    /// The body it was last armed for.
    id: u64,
    /// Fires at that body's deadline, or earlier (at an earlier body's): it is moved only when
    /// it fires, and when a body's deadline comes before it.
    sleep: Pin<Box<Sleep>>,
    /// The version whose cut-off `cut_off` waits for (a weak reference keeps its address from
    /// being another version's).
    version: Weak<Version>,
    cut_off: Cancelled,
}

impl Watch {
    /// Whether the body in progress is overdue, or stalled (arming or re-arming its timer,
    /// which wakes the task when it becomes so).
    fn overdue(
        &self,
        armed: &mut Option<Armed>,
        stalled: &mut Option<Stalled>,
        cx: &mut Context<'_>,
    ) -> bool {
        if self.registered.load(Ordering::Relaxed) == 0 {
            return self.stalled(stalled, cx);
        }
        let due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Due {
            id,
            deadline,
            version,
        }) = due.as_ref()
        else {
            drop(due);
            return self.stalled(stalled, cx);
        };
        let deadline = tokio::time::Instant::from_std(*deadline);
        let timer = match armed {
            Some(timer) if timer.id == *id => timer,
            Some(timer) => {
                timer.id = *id;
                if deadline < timer.sleep.deadline() {
                    timer.sleep.as_mut().reset(deadline);
                }
                if !std::ptr::eq(timer.version.as_ptr(), Arc::as_ptr(version)) {
                    timer.version = Arc::downgrade(version);
                    timer.cut_off = Cancelled::new(version.cut_off_token().clone());
                }
                timer
            }
            None => armed.insert(Armed {
                id: *id,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                version: Arc::downgrade(version),
                cut_off: Cancelled::new(version.cut_off_token().clone()),
            }),
        };
        drop(due);
        let mut overdue = false;
        while timer.sleep.as_mut().poll(cx).is_ready() {
            if timer.sleep.deadline() >= deadline {
                overdue = true;
                break;
            }
            // Fired at an earlier body's deadline: on to this one's.
            timer.sleep.as_mut().reset(deadline);
        }
        let overdue = overdue || Pin::new(&mut timer.cut_off).poll(cx).is_ready();
        if overdue {
            self.expired.store(true, Ordering::Release);
        }
        overdue
    }

    /// Whether the response in progress has owed its client bytes past its stall limit
    /// (arming the timer that wakes the task when it has).
    fn stalled(&self, stalled: &mut Option<Stalled>, cx: &mut Context<'_>) -> bool {
        if self.owing.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let owed = self.owed.load(Ordering::Relaxed);
        let timer = match stalled {
            Some(timer) if timer.owed == owed => timer,
            _ => {
                // Owed since this poll of the task (the body gave the frame in it).
                let limit = Duration::from_nanos(self.limit.load(Ordering::Relaxed));
                let by = tokio::time::Instant::now() + limit;
                match stalled {
                    Some(timer) => {
                        timer.owed = owed;
                        timer.by = by;
                        if by < timer.sleep.deadline() {
                            timer.sleep.as_mut().reset(by);
                        }
                        timer
                    }
                    None => stalled.insert(Stalled {
                        owed,
                        by,
                        sleep: Box::pin(tokio::time::sleep_until(by)),
                    }),
                }
            }
        };
        while timer.sleep.as_mut().poll(cx).is_ready() {
            if timer.sleep.deadline() >= timer.by {
                return true;
            }
            // Fired for bytes owed earlier, which the client has taken: on to these.
            timer.sleep.as_mut().reset(timer.by);
        }
        false
    }
}

/// The timer a watched task armed for bytes owed to its client.
struct Stalled {
    /// The count of owed bytes it was armed for ([`Watch::owed`]).
    owed: u64,
    /// When those bytes are overdue.
    by: tokio::time::Instant,
    /// Fires at `by` or earlier (for bytes owed before): it is moved only when it fires, and
    /// when `by` comes before it.
    sleep: Pin<Box<Sleep>>,
}

/// Runs `task` (a connection, or an HTTP/2 stream) until it ends, or until the guest response
/// body it is sending is overdue or stalled: then drops it and returns `None`.
pub(crate) async fn watched<F: Future>(task: F) -> Option<F::Output> {
    let watch = Arc::new(Watch::default());
    let task = CURRENT.scope(watch.clone(), task);
    let mut task = std::pin::pin!(task);
    let mut armed = None;
    let mut stalled = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = task.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watch.overdue(&mut armed, &mut stalled, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// The executor the data plane gives hyper: it runs each HTTP/2 stream in a task of its own,
/// [`watched`], under the server's [`Background`] (a shutdown waits for it).
#[derive(Debug, Clone, Default)]
pub struct StreamExecutor(pub(crate) Background);

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        self.0.spawn_job(watched(task));
    }
}
