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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::background::Background;

tokio::task_local! {
    /// The watch of the connection (HTTP/1.1) or stream (HTTP/2) the running task serves.
    static CURRENT: Arc<Watch>;
}

/// What a watched task is waiting on: the guest response body in progress, if any.
#[derive(Default)]
struct Watch {
    /// The body in progress: its number, its request's deadline and its version's cut-off.
    due: Mutex<Option<(u64, Instant, CancellationToken)>>,
    /// Numbers the bodies registered here.
    next: AtomicU64,
    /// Set when the watch dropped its task for an overdue body.
    expired: AtomicBool,
    /// The response in progress has bytes its client has not let through: its number and the
    /// instant by which they must be (see [`Stall`]).
    stall: Mutex<Option<(u64, Instant)>>,
}

/// A guest response body's registration with the task that sends it (see the module docs).
/// Dropping it says the body is done.
pub(crate) struct Registration {
    watch: Arc<Watch>,
    id: u64,
}

/// Registers a response body that must be done by `deadline`, or when `cut_off` is cancelled,
/// with the watched task running it; `None` outside a watched task.
pub(crate) fn register(deadline: Instant, cut_off: &CancellationToken) -> Option<Registration> {
    let watch = CURRENT.try_with(Arc::clone).ok()?;
    let id = watch.next.fetch_add(1, Ordering::Relaxed) + 1;
    *watch.due.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, deadline, cut_off.clone()));
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
        let mut due = self.watch.due.lock().unwrap_or_else(|e| e.into_inner());
        if due.as_ref().is_some_and(|(id, ..)| *id == self.id) {
            *due = None;
        }
    }
}

/// A response body's stall watch with the task that sends it (see the module docs): the body
/// says when it has bytes for its client ([`Stall::owed`]) and when it waits on its own source
/// or is done ([`Stall::settled`]). Dropping it settles it.
pub(crate) struct Stall {
    watch: Arc<Watch>,
    id: u64,
    limit: Duration,
}

/// Watches a response body for stalls of `limit` in the watched task running it (the body is
/// made with bytes owed: its first frame); `None` outside a watched task.
pub(crate) fn stall(limit: Duration) -> Option<Stall> {
    let watch = CURRENT.try_with(Arc::clone).ok()?;
    let id = watch.next.fetch_add(1, Ordering::Relaxed) + 1;
    let stall = Stall { watch, id, limit };
    stall.owed();
    Some(stall)
}

impl Stall {
    /// The body has bytes for its client: they must be let through within the limit.
    pub(crate) fn owed(&self) {
        let by = Instant::now() + self.limit;
        *self.watch.stall.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.id, by));
    }

    /// The body has nothing for its client now (it waits on its own source, or it is done).
    pub(crate) fn settled(&self) {
        let mut stall = self.watch.stall.lock().unwrap_or_else(|e| e.into_inner());
        if stall.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *stall = None;
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.settled();
    }
}

/// The timer a watched task armed for the body in progress.
struct Armed {
    id: u64,
    sleep: Pin<Box<Sleep>>,
    cut_off: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Watch {
    /// Whether the body in progress is overdue, or stalled (arming or re-arming its timer,
    /// which wakes the task when it becomes so).
    fn overdue(
        &self,
        armed: &mut Option<Armed>,
        stalled: &mut Option<(Instant, Pin<Box<Sleep>>)>,
        cx: &mut Context<'_>,
    ) -> bool {
        let due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, deadline, cut_off)) = due.as_ref() else {
            drop(due);
            return self.stalled(stalled, cx);
        };
        let timer = match armed {
            Some(timer) if timer.id == *id => timer,
            Some(timer) => {
                timer.id = *id;
                timer.sleep.as_mut().reset((*deadline).into());
                timer.cut_off.set(cut_off.clone().cancelled_owned());
                timer
            }
            None => armed.insert(Armed {
                id: *id,
                sleep: Box::pin(tokio::time::sleep_until((*deadline).into())),
                cut_off: Box::pin(cut_off.clone().cancelled_owned()),
            }),
        };
        drop(due);
        let overdue =
            timer.sleep.as_mut().poll(cx).is_ready() || timer.cut_off.as_mut().poll(cx).is_ready();
        if overdue {
            self.expired.store(true, Ordering::Release);
        }
        overdue
    }

    /// Whether the response in progress has owed its client bytes past its stall limit
    /// (arming or re-arming the timer that wakes the task when it has).
    fn stalled(
        &self,
        stalled: &mut Option<(Instant, Pin<Box<Sleep>>)>,
        cx: &mut Context<'_>,
    ) -> bool {
        let Some((_, by)) = *self.stall.lock().unwrap_or_else(|e| e.into_inner()) else {
            return false;
        };
        let timer = match stalled {
            Some((at, timer)) if *at == by => timer,
            Some((at, timer)) => {
                *at = by;
                timer.as_mut().reset(by.into());
                timer
            }
            None => {
                &mut stalled
                    .insert((by, Box::pin(tokio::time::sleep_until(by.into()))))
                    .1
            }
        };
        timer.as_mut().poll(cx).is_ready()
    }
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
