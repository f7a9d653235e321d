//! `GET /v1/events`: the event bus ([`crate::events`]) as Server-Sent Events, and
//! `GET /v1/whoami`: who the caller is and what it may do (the console hides its actions from
//! a `read` token).
//!
//! Each event is one SSE message: `id:` (absent on the `missed` and `dropped` notices, so a
//! client resumes from the last real event), `event:` its kind, `data:` its JSON
//! ([`crate::api::Event`]). `Last-Event-ID` resumes after that id from the buffer; `?route=NAME`
//! keeps only that route's events (and those about no route). A comment line is sent every
//! [`HEARTBEAT`] so proxies and clients see the stream is alive. The stream ends when the
//! server shuts down, or after a `dropped` notice when the client reads too slowly; a client
//! that reads nothing at all is closed once the server's writes to it have waited
//! `--idle-timeout` (`crate::stalled`). At most [`MAX_STREAMS`] streams are open at once (a
//! stream holds one of the admin listener's connections); more are refused with 503.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::Frame;
use serde::Deserialize;

use crate::api::{self, Problem};
use crate::auth::{Caller, Scope};
use crate::events::bus::Refused;
use crate::events::{Event, Replay, Subscription};
use crate::names::RouteName;
use crate::runtime::Runtime;

/// How often an idle stream sends a comment line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long a client should wait before reconnecting (the SSE `retry:` field), milliseconds.
pub const RETRY_MS: u64 = 2000;

/// Event streams open at once, at most (the bus's own bound), counted until their connection
/// is gone: a stream the bus dropped still holds its connection until the client reads or
/// the write to it stalls out. Half the admin listener's connections, so streams held open
/// never lock the admin API out.
pub const MAX_STREAMS: usize = crate::events::bus::MAX_SUBSCRIBERS;

/// Events put in one write when several are ready.
const BATCH: usize = 64;

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    route: Option<String>,
}

/// `GET /v1/events`.
pub(super) async fn stream(
    State(rt): State<Arc<Runtime>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{}; /v1/events takes only `route=NAME`", e.body_text()),
        )
    })?;
    let route = query
        .route
        .map(|name| RouteName::parse(&name).map(|n| n.as_str().to_owned()))
        .transpose()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))?;
    let replay = match headers.get("last-event-id") {
        None => Replay::Live,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Replay::After)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be the `id` of an event this server sent (a number)",
                )
            })?,
    };
    let Ok(slot) = rt.event_streams.clone().try_acquire_owned() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_STREAMS} event streams are open already, the most this server keeps; close one (or reconnect later)"
            ),
        ));
    };
    let subscription = rt.events.subscribe(replay, route)?;
    let mut body = SseBody::new(subscription, HEARTBEAT);
    body.slot = Some(slot);
    let mut response = Body::new(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

impl From<Refused> for Problem {
    fn from(refused: Refused) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, refused.to_string())
    }
}

/// `GET /v1/whoami`: the caller's name and scope.
pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Json<api::Whoami> {
    Json(api::Whoami {
        name: caller.0.clone(),
        scope: match caller.1 {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
        }
        .to_owned(),
    })
}

/// One SSE message for `event`.
pub fn encode(event: &Event, out: &mut BytesMut) {
    if event.id != 0 {
        out.put_slice(format!("id: {}\n", event.id).as_bytes());
    }
    out.put_slice(format!("event: {}\n", event.kind.as_str()).as_bytes());
    out.put_slice(b"data: ");
    // Compact JSON has no newline, so it is one `data:` line.
    serde_json::to_writer((&mut *out).writer(), event).expect("an event serializes");
    out.put_slice(b"\n\n");
}

/// The response body of an event stream.
struct SseBody {
    subscription: Subscription,
    heartbeat: tokio::time::Interval,
    started: bool,
    /// The stream's place among [`MAX_STREAMS`], given back when the body goes.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl SseBody {
    /// The body of `subscription`, with a comment line after every `heartbeat` of silence.
    fn new(subscription: Subscription, heartbeat: Duration) -> Self {
        Self {
            subscription,
            heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
            started: false,
            slot: None,
        }
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let mut out = BytesMut::new();
        if !this.started {
            this.started = true;
            out.put_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
        }
        let mut ended = false;
        for _ in 0..BATCH {
            match this.subscription.poll_next(cx) {
                Poll::Ready(Some(event)) => encode(&event, &mut out),
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() && !ended && this.heartbeat.poll_tick(cx).is_ready() {
            out.put_slice(b": heartbeat\n\n");
        }
        if !out.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
        }
        if ended {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Kind;

    #[tokio::test]
    async fn a_stream_starts_with_retry_then_sends_events_and_heartbeats() {
        use http_body_util::BodyExt as _;
        assert_eq!(HEARTBEAT, Duration::from_secs(15));
        let bus = crate::events::Bus::starting_at(1);
        let subscription = bus.subscribe(Replay::Live, None).unwrap();
        let mut body = SseBody::new(subscription, Duration::from_millis(50));
        let text = |frame: Frame<Bytes>| String::from_utf8(frame.into_data().unwrap().to_vec());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(text(first).unwrap(), "retry: 2000\n\n");
        bus.publish(Event::new(Kind::Drained, "api"));
        let event = text(body.frame().await.unwrap().unwrap()).unwrap();
        assert!(event.starts_with("id: 1\nevent: drained\n"), "{event}");
        let started = std::time::Instant::now();
        let heartbeat = text(body.frame().await.unwrap().unwrap()).unwrap();
        assert_eq!(heartbeat, ": heartbeat\n\n");
        assert!(started.elapsed() >= Duration::from_millis(40));
        bus.close();
        assert!(body.frame().await.is_none(), "a closed bus ends the stream");
    }

    #[test]
    fn an_event_is_one_sse_message() {
        let mut out = BytesMut::new();
        let event = Event {
            id: 7,
            message: Some("two\nlines".into()),
            ..Event::new(Kind::Activated, "api")
        };
        encode(&event, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("id: 7\nevent: activated\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 4, "{text}");
        let mut out = BytesMut::new();
        encode(&Event::new(Kind::Dropped, "api"), &mut out);
        assert!(out.starts_with(b"event: dropped\n"));
    }
}
