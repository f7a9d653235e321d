//! The bus: a ring buffer of the latest [`BUFFER`] events and a bounded queue per subscriber.
//!
//! [`Bus::publish`] takes one short lock, gives the event its id, keeps it in the buffer and
//! offers it to each subscriber's queue without waiting (`try_send`): a subscriber whose queue
//! is full is removed there and then, so a slow client costs the publisher nothing. The
//! subscriber's side ([`Subscription`]) still yields what was queued, then a [`Kind::Dropped`]
//! notice, then ends. Subscribing takes the same lock, so the events it replays from the buffer
//! and the events it is handed afterwards join without a gap or a repeat.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::event::{Event, Kind, unix_ms};

/// Events the bus keeps for clients that resume (`Last-Event-ID`).
pub const BUFFER: usize = 1024;

/// Events one subscriber may have waiting; past this it is dropped.
pub const QUEUE: usize = 256;

/// Event streams open at once; more are refused (503) until one ends.
pub const MAX_SUBSCRIBERS: usize = 32;

/// The event bus of one server. Cheap to clone (all clones are the same bus).
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Mutex<State>>,
}

struct State {
    next_id: u64,
    buffer: VecDeque<Arc<Event>>,
    subscribers: Vec<Subscriber>,
    closed: bool,
}

struct Subscriber {
    route: Option<String>,
    queue: mpsc::Sender<Arc<Event>>,
    dropped: Arc<AtomicBool>,
}

impl Subscriber {
    fn wants(&self, event: &Event) -> bool {
        wanted(self.route.as_deref(), event)
    }
}

/// Whether a subscriber to `route` (all routes if `None`) wants `event`: events about no
/// route in particular go to everyone.
fn wanted(route: Option<&str>, event: &Event) -> bool {
    match (route, event.route.as_deref()) {
        (Some(wanted), Some(route)) => wanted == route,
        _ => true,
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// [`MAX_SUBSCRIBERS`] streams are open.
    #[error("{MAX_SUBSCRIBERS} event streams are open already; close one and try again")]
    TooMany,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Closed,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// With the next event published.
    Live,
    /// After the event with this id (`Last-Event-ID`): first the buffered events after it.
    After(u64),
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// An empty bus. Its ids start at the current time in milliseconds times 1000, so they
    /// keep increasing across restarts (as long as a server publishes fewer than 1000 events
    /// per millisecond it runs) and an id from before a restart is older than the buffer.
    pub fn new() -> Self {
        Self::starting_at(unix_ms().saturating_mul(1000).max(1))
    }

    /// An empty bus whose first event gets id `first`.
    pub fn starting_at(first: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                next_id: first,
                buffer: VecDeque::with_capacity(BUFFER),
                subscribers: Vec::new(),
                closed: false,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the data if something did.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `event` (its `id` and `at_ms` are set here) and returns its id. Never waits:
    /// a subscriber whose queue is full is dropped.
    pub fn publish(&self, mut event: Event) -> u64 {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        event.id = id;
        event.at_ms = unix_ms();
        let event = Arc::new(event);
        if state.buffer.len() == BUFFER {
            state.buffer.pop_front();
        }
        state.buffer.push_back(event.clone());
        state.subscribers.retain(|subscriber| {
            if !subscriber.wants(&event) {
                return !subscriber.queue.is_closed();
            }
            match subscriber.queue.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.dropped.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        id
    }

    /// Subscribes to the events about `route` (every event if `None`), starting as `replay`
    /// says. After an id the buffer no longer holds (or one this bus never gave), the stream
    /// starts with a [`Kind::Missed`] notice and replays the whole buffer.
    pub fn subscribe(
        &self,
        replay: Replay,
        route: Option<String>,
    ) -> Result<Subscription, Refused> {
        let mut state = self.state();
        if state.closed {
            return Err(Refused::Closed);
        }
        state.subscribers.retain(|s| !s.queue.is_closed());
        if state.subscribers.len() >= MAX_SUBSCRIBERS {
            return Err(Refused::TooMany);
        }
        let mut replayed = VecDeque::new();
        if let Replay::After(last) = replay {
            let first = state.buffer.front().map_or(state.next_id, |e| e.id);
            let lost = last.saturating_add(1) < first || last >= state.next_id;
            if lost {
                replayed.push_back(Arc::new(Event {
                    kind: Kind::Missed,
                    at_ms: unix_ms(),
                    first_id: Some(first),
                    ..Event::default()
                }));
            }
            replayed.extend(
                state
                    .buffer
                    .iter()
                    .filter(|e| (lost || e.id > last) && wanted(route.as_deref(), e))
                    .cloned(),
            );
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        state.subscribers.push(Subscriber {
            route,
            queue,
            dropped: dropped.clone(),
        });
        Ok(Subscription {
            replayed,
            receiver,
            dropped,
            ended: false,
        })
    }

    /// Subscribers now (those whose stream has not ended).
    pub fn subscribers(&self) -> usize {
        let mut state = self.state();
        state.subscribers.retain(|s| !s.queue.is_closed());
        state.subscribers.len()
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.state().next_id
    }

    /// Ends every subscription (after what it has queued) and refuses new ones: the server is
    /// shutting down. Publishing still fills the buffer.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.subscribers.clear();
    }
}

/// One subscriber's events: the replayed ones, then the live ones, then (if it fell behind) a
/// [`Kind::Dropped`] notice. Dropping it unsubscribes.
pub struct Subscription {
    replayed: VecDeque<Arc<Event>>,
    receiver: mpsc::Receiver<Arc<Event>>,
    dropped: Arc<AtomicBool>,
    ended: bool,
}

impl Subscription {
    /// The next event; `None` once the stream has ended (dropped, or the bus closed).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Event>>> {
        if let Some(event) = self.replayed.pop_front() {
            return Poll::Ready(Some(event));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(event)),
            Poll::Ready(None) => {
                self.ended = true;
                if self.dropped.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Arc::new(Event {
                        kind: Kind::Dropped,
                        at_ms: unix_ms(),
                        reason: Some(format!(
                            "this client fell {QUEUE} events behind; reconnect with Last-Event-ID to resume"
                        )),
                        ..Event::default()
                    })));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(route: &str) -> Event {
        Event::new(Kind::Activated, route)
    }

    /// Everything the subscription has ready now.
    fn ready(subscription: &mut Subscription) -> Vec<Arc<Event>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(event)) = subscription.poll_next(&mut cx) {
            out.push(event);
        }
        out
    }

    #[test]
    fn resuming_replays_exactly_what_came_after_the_last_id() {
        let bus = Bus::starting_at(100);
        let ids: Vec<u64> = (0..10).map(|_| bus.publish(event("a"))).collect();
        assert_eq!(ids, (100..110).collect::<Vec<_>>());
        let mut resumed = bus.subscribe(Replay::After(104), None).unwrap();
        bus.publish(event("a"));
        let got: Vec<u64> = ready(&mut resumed).iter().map(|e| e.id).collect();
        assert_eq!(got, (105..111).collect::<Vec<_>>());
        // Up to date: nothing replayed, no notice.
        let mut current = bus.subscribe(Replay::After(110), None).unwrap();
        assert!(ready(&mut current).is_empty());
        let mut live = bus.subscribe(Replay::Live, None).unwrap();
        assert!(ready(&mut live).is_empty());
    }

    #[test]
    fn an_id_older_than_the_buffer_or_unknown_gets_a_missed_notice() {
        let bus = Bus::starting_at(1);
        for _ in 0..BUFFER + 10 {
            bus.publish(event("a"));
        }
        let first = 11;
        for stale in [1, 5, 9, 10_000_000] {
            let mut resumed = bus.subscribe(Replay::After(stale), None).unwrap();
            let got = ready(&mut resumed);
            assert_eq!(got[0].kind, Kind::Missed, "after {stale}");
            assert_eq!(got[0].first_id, Some(first));
            assert_eq!(got[1].id, first);
            assert_eq!(got.len(), BUFFER + 1);
        }
        // The last evicted id is not a loss: everything after it is still there.
        let mut resumed = bus.subscribe(Replay::After(first - 1), None).unwrap();
        let got = ready(&mut resumed);
        assert_eq!(got[0].id, first);
        assert_eq!(got.len(), BUFFER);
    }

    #[test]
    fn a_full_queue_drops_the_subscriber_with_a_notice_and_never_blocks() {
        let bus = Bus::starting_at(1);
        let mut slow = bus.subscribe(Replay::Live, None).unwrap();
        let mut other = bus.subscribe(Replay::Live, Some("b".into())).unwrap();
        for _ in 0..QUEUE * 4 {
            bus.publish(event("a"));
        }
        assert_eq!(
            bus.subscribers(),
            1,
            "the slow one is gone, the filtered one stays"
        );
        let got = ready(&mut slow);
        assert_eq!(got.len(), QUEUE + 1);
        assert_eq!(got[QUEUE - 1].id, QUEUE as u64);
        assert_eq!(got[QUEUE].kind, Kind::Dropped);
        assert!(ready(&mut slow).is_empty());
        bus.publish(event("b"));
        let got = ready(&mut other);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].route.as_deref(), Some("b"));
    }

    #[test]
    fn subscribers_are_bounded_and_closing_ends_every_stream() {
        let bus = Bus::starting_at(1);
        let mut open: Vec<Subscription> = (0..MAX_SUBSCRIBERS)
            .map(|_| bus.subscribe(Replay::Live, None).unwrap())
            .collect();
        assert_eq!(
            bus.subscribe(Replay::Live, None).err(),
            Some(Refused::TooMany)
        );
        drop(open.pop());
        let mut last = bus.subscribe(Replay::Live, None).unwrap();
        bus.publish(event("a"));
        bus.close();
        let got = ready(&mut last);
        assert_eq!(
            got.len(),
            1,
            "what was queued is still delivered, then the end"
        );
        assert_eq!(
            bus.subscribe(Replay::Live, None).err(),
            Some(Refused::Closed)
        );
    }
}
