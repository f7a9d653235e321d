//! A [`Body::stream_async`](super::Body::stream_async) body: its producer runs on the reader's
//! polls and hands chunks over through a one-chunk slot ([`BodySender::send`]), so it runs no
//! further ahead of the client than one chunk.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::Error;

/// The future of a [`Body::stream_async`](super::Body::stream_async) producer.
type Producer = Pin<Box<dyn Future<Output = Result<(), Error>>>>;

/// A [`Body::stream_async`](super::Body::stream_async) body: its producer and the one-chunk slot it sends through.
pub(super) struct Produced {
    slot: Rc<RefCell<Slot>>,
    task: Option<Producer>,
}

/// The hand-over point between a [`BodySender`] and the body's reader: one chunk at a time, so
/// a producer runs no further ahead of the client than one chunk.
#[derive(Default)]
struct Slot {
    chunk: Option<Bytes>,
    /// The reader has gone (the client left): sends fail.
    closed: bool,
    /// Woken when the reader takes the chunk.
    sender: Option<Waker>,
    /// Woken when a chunk is put in.
    reader: Option<Waker>,
}

impl Produced {
    /// A body produced by `produce`, which sends its chunks through the [`BodySender`] it gets.
    pub(super) fn new<F, Fut>(produce: F) -> Self
    where
        F: FnOnce(BodySender) -> Fut,
        Fut: Future<Output = Result<(), Error>> + 'static,
    {
        let slot = Rc::new(RefCell::new(Slot::default()));
        let task = produce(BodySender { slot: slot.clone() });
        Self {
            slot,
            task: Some(Box::pin(task)),
        }
    }

    /// The next chunk: the one in the slot, or what the producer puts there when polled.
    pub(super) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(chunk) = self.take(cx) {
            return Poll::Ready(Some(Ok(chunk)));
        }
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(None);
        };
        // The producer runs here, on the reader's polls: it may fill the slot and then wait
        // for it to empty.
        let done = task.as_mut().poll(cx);
        if let Some(chunk) = self.take(cx) {
            if let Poll::Ready(result) = done {
                self.task = None;
                if let Err(error) = result {
                    // The chunk goes first; the error ends the body at the next poll.
                    self.task = Some(Box::pin(async move { Err(error) }));
                }
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        match done {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.task = None;
                Poll::Ready(result.err().map(Err))
            }
        }
    }

    /// Takes the chunk in the slot, if any, waking a sender that waits for room; otherwise
    /// registers to be woken when one is put in.
    fn take(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        let mut slot = self.slot.borrow_mut();
        match slot.chunk.take() {
            Some(chunk) => {
                if let Some(sender) = slot.sender.take() {
                    sender.wake();
                }
                Some(chunk)
            }
            None => {
                slot.reader = Some(cx.waker().clone());
                None
            }
        }
    }
}

impl Drop for Produced {
    fn drop(&mut self) {
        self.slot.borrow_mut().closed = true;
        // The producer goes before the slot it sends into.
        self.task = None;
    }
}

/// Sends the chunks of a [`Body::stream_async`](super::Body::stream_async) body to the client.
pub struct BodySender {
    slot: Rc<RefCell<Slot>>,
}

impl BodySender {
    /// Sends `chunk` (anything that converts into [`Bytes`]) to the client; returns once the
    /// body's reader has taken the previous chunk. Fails when the client has gone away:
    /// return the error (`?`) to stop producing. Empty chunks are skipped.
    pub async fn send(&mut self, chunk: impl Into<Bytes>) -> Result<(), Error> {
        let mut chunk = Some(chunk.into());
        poll_fn(|cx| {
            let mut slot = self.slot.borrow_mut();
            if slot.closed {
                return Poll::Ready(Err(Error::msg("the client has gone away")));
            }
            if slot.chunk.is_some() {
                slot.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(chunk) = chunk.take().filter(|c| !c.is_empty()) {
                slot.chunk = Some(chunk);
                if let Some(reader) = slot.reader.take() {
                    reader.wake();
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl fmt::Debug for BodySender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodySender")
    }
}
