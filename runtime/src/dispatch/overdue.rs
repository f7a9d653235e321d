//! Response bodies that outlive their request's deadline because the client does not read them.
//!
//! hyper polls a response body only when it can send: a client that never reads (an HTTP/2
//! client that advertises a zero flow-control window, an HTTP/1.1 client that leaves a large
//! body in its socket) leaves the body unpolled, so the body alone cannot notice its deadline,
//! and it holds its request's in-flight token, and with it the route's concurrency slot and
//! its version, for as long as the client stays connected.
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
use std::time::Instant;

use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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

/// The timer a watched task armed for the body in progress.
struct Armed {
    id: u64,
    sleep: Pin<Box<Sleep>>,
    cut_off: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Watch {
    /// Whether the body in progress is overdue (arming or re-arming its timer, which wakes the
    /// task when it becomes so).
    fn overdue(&self, armed: &mut Option<Armed>, cx: &mut Context<'_>) -> bool {
        let due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, deadline, cut_off)) = due.as_ref() else {
            return false;
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
}

/// Runs `task` (a connection, or an HTTP/2 stream) until it ends, or until the guest response
/// body it is sending is overdue: then drops it and returns `None`.
pub(crate) async fn watched<F: Future>(task: F) -> Option<F::Output> {
    let watch = Arc::new(Watch::default());
    let task = CURRENT.scope(watch.clone(), task);
    let mut task = std::pin::pin!(task);
    let mut armed = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = task.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watch.overdue(&mut armed, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// The executor the data plane gives hyper: it runs each HTTP/2 stream in a task of its own,
/// [`watched`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(watched(task));
    }
}
