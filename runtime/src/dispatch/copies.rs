//! Copies of requests for a route's shadow, on the data plane's side: the request body is
//! buffered (up to [`MAX_COPIED_BODY`]) so both the stable version and the copy can read it,
//! and once the stable version's response head is out, the copy (and, to learn the stable
//! version's own noise, sometimes a second run of the stable version) runs on a task of its
//! own. The client's request never waits for the copy.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::{Request, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::route::{InFlight, RouteState};
use crate::shadow::MAX_COPIED_BODY;
use crate::shadow::copy::{self, Copy, Summary, Tap};
use crate::state::RouteRecord;
use crate::version::Version;

/// A request body that first yields the frames read ahead of time, then the rest.
pub struct Replay<B: Body> {
    buffered: VecDeque<Frame<Bytes>>,
    error: Option<B::Error>,
    rest: Option<B>,
}

impl<B: Body> Replay<B> {
    /// `body`, nothing read ahead.
    pub fn new(body: B) -> Self {
        Self {
            buffered: VecDeque::new(),
            error: None,
            rest: Some(body),
        }
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            this.rest = None;
            return Poll::Ready(Some(Err(error)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.rest, self.buffered.is_empty()) {
            (Some(rest), true) => rest.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// A copy waiting for the stable version's response head.
pub struct Pending {
    copy: Copy,
    token: InFlight,
    route: Arc<RouteState>,
    record: Arc<RouteRecord>,
    permit: OwnedSemaphorePermit,
    /// With tracing on: the copy's span, linked to its request's.
    span: Option<crate::trace::Change>,
}

/// Reads `req`'s body ahead (until `deadline`) so it can be copied; returns the request for the
/// stable version and the copy, or no copy (counted as skipped) when the body is too large,
/// fails, or the server already runs as many copies as it allows.
pub async fn prepare<B>(
    req: Request<B>,
    shadow: (InFlight, Arc<RouteState>, Arc<RouteRecord>),
    slots: &Arc<tokio::sync::Semaphore>,
    https: bool,
    deadline: Instant,
) -> (Request<Replay<B>>, Option<Pending>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    let (token, route, record) = shadow;
    let skip = |req: Request<Replay<B>>| {
        route.shadow.skip();
        (req, None)
    };
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        return skip(req.map(Replay::new));
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_COPIED_BODY) {
        return skip(req.map(Replay::new));
    }
    let (parts, mut body) = req.into_parts();
    let mut buffered = VecDeque::new();
    let mut copied = BytesMut::new();
    let mut complete = false;
    let mut error = None;
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        copied.extend_from_slice(data);
                    }
                    buffered.push_back(frame);
                    if copied.len() as u64 > MAX_COPIED_BODY {
                        return;
                    }
                }
                Err(failed) => {
                    error = Some(failed);
                    return;
                }
            }
        }
        complete = true;
    };
    let _ = tokio::time::timeout_at(deadline.into(), read).await;
    let copy = Copy {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: copied.freeze(),
        https,
    };
    let req = Request::from_parts(
        parts,
        Replay {
            buffered,
            error,
            rest: Some(body),
        },
    );
    if !complete {
        return skip(req);
    }
    route.shadow.about(&token.version().digest);
    let pending = Pending {
        copy,
        token,
        route,
        record,
        permit,
        span: None,
    };
    (req, Some(pending))
}

/// The names of the headers the shadow compares.
fn compared(record: &RouteRecord) -> Vec<HeaderName> {
    record
        .shadow
        .iter()
        .flat_map(|s| &s.compare_headers)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

impl Pending {
    /// Gives the copy a span of its own, linked to `original`, its request's span.
    pub fn trace(&mut self, original: &mut crate::trace::Server) {
        let version = self.token.version();
        self.span = Some(original.shadow_copy(&version.route, version.digest.shared()));
    }

    /// Starts the copy now that `stable` (the version that serves the client, through a route
    /// at `prefix`) has answered with `head`; returns the tap the client's response body feeds
    /// and the channel its summary goes to when the body is complete.
    pub fn start(
        self,
        engine: &Arc<crate::engine::Engine>,
        stable: &Arc<Version>,
        prefix: &Arc<str>,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> (Tap, oneshot::Sender<Summary>) {
        let names = compared(&self.record);
        let tap = Tap::new(status.as_u16(), headers, &names);
        let (tx, rx) = oneshot::channel();
        let path = self.copy.uri.path().to_owned();
        let second = (self.route.shadow.calibrate(&path)).then(|| InFlight::copy(stable));
        let engine = engine.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let Pending {
                copy,
                token,
                route,
                record,
                permit,
                span,
            } = self;
            let deny = !record.shadow.as_ref().is_some_and(|s| s.allow_outbound);
            let started = Instant::now();
            let shadow = copy::run(&engine, token.version(), &prefix, &copy, &names, deny).await;
            // The shadow version's own figures (its row in the status and the console): what
            // its copies did. (The second run, of the stable version, is not a request of it.)
            token.version().stats.record(
                shadow.as_ref().map_or(0, |s| s.status),
                started.elapsed(),
                shadow.is_none(),
            );
            drop(token);
            if let Some(span) = span {
                match &shadow {
                    Some(summary) => {
                        span.set(vec![crate::trace::KeyValue::new(
                            "http.response.status_code",
                            i64::from(summary.status),
                        )]);
                        let failed = summary.status >= 500;
                        span.end(failed.then_some("the shadow answered with a server error"));
                    }
                    None => span.end(Some("the shadow copy failed")),
                }
            }
            let secondary = match second {
                Some(token) => {
                    copy::run(&engine, token.version(), &prefix, &copy, &names, deny).await
                }
                None => None,
            };
            drop(permit);
            let Ok(primary) = rx.await else {
                route.shadow.skip();
                return;
            };
            let compared: Vec<String> = record
                .shadow
                .as_ref()
                .map(|s| s.compare_headers.clone())
                .unwrap_or_default();
            let target = copy
                .uri
                .path_and_query()
                .map_or(path.clone(), |p| p.as_str().to_owned());
            route.shadow.record(
                copy.method.as_str(),
                &target,
                &compared,
                &primary,
                shadow.as_ref(),
                secondary.as_ref(),
            );
        });
        (tap, tx)
    }
}
