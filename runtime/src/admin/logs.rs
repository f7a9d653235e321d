//! `GET /v1/routes/{name}/logs`: a live tail of the lines the route's guests write (stdout and
//! stderr, within each version's log budget, whatever the log's own level filter), as
//! Server-Sent Events: one `data:` line of [`api::LogLine`] JSON per line, from the moment
//! of the request on (nothing is kept for later). A follower that reads too slowly is sent an
//! `event: missed` message with `{"missed": N}` and goes on with the newest lines. A comment
//! line is sent every [`super::events::HEARTBEAT`] of silence; the stream ends when the server
//! shuts down. Guest output may hold data, so it needs a `deploy` token, as reading values
//! does.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};

use super::events::{HEARTBEAT, RETRY_MS};
use super::extract::Named;
use crate::api::{self, Problem};
use crate::auth::{Caller, Scope};
use crate::guest_log::{Followed, Follower};
use crate::runtime::Runtime;

/// `GET /v1/routes/{name}/logs`.
pub(super) async fn tail(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    // Checked after the token's scope.
    named: Result<Named, Problem>,
) -> Result<Response, Problem> {
    if caller.1 != Scope::Deploy {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has the `read` scope; following a route's guest log lines needs a `deploy` token (guest output may hold data)",
                caller.0
            ),
        ));
    }
    let Named(name) = named?;
    if rt.routes.snapshot().get(&name).is_none() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("there is no route named `{}`", name.as_str()),
        ));
    }
    let route = name.as_str().to_owned();
    let follower = rt.guest_logs.follow();
    let first = Bytes::from(format!("retry: {RETRY_MS}\n\n"));
    let lines =
        futures_util::stream::unfold((follower, route), |(mut follower, route)| async move {
            let frame = next_frame(&mut follower, &route).await?;
            Some((Ok::<_, std::convert::Infallible>(frame), (follower, route)))
        });
    let stream =
        futures_util::StreamExt::chain(futures_util::stream::once(async { Ok(first) }), lines);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The next message for a follower of `route`'s lines: a line, a `missed` notice or, after a
/// silence, a heartbeat; `None` once the server shuts down.
async fn next_frame(follower: &mut Follower, route: &str) -> Option<Bytes> {
    let heartbeat = tokio::time::sleep(HEARTBEAT);
    tokio::pin!(heartbeat);
    loop {
        let followed = tokio::select! {
            followed = follower.next() => followed?,
            () = &mut heartbeat => return Some(Bytes::from_static(b": heartbeat\n\n")),
        };
        let mut out = BytesMut::new();
        match followed {
            Followed::Line(line) if line.route == route => encode(&line, &mut out),
            Followed::Line(_) => continue,
            Followed::Missed(missed) => {
                out.put_slice(
                    format!("event: missed\ndata: {{\"missed\":{missed}}}\n\n").as_bytes(),
                );
            }
        }
        return Some(out.freeze());
    }
}

/// One SSE message for `line`.
fn encode(line: &api::LogLine, out: &mut BytesMut) {
    out.put_slice(b"data: ");
    // Compact JSON has no newline (a guest's line has none either): one `data:` line.
    serde_json::to_writer(out.writer(), line).expect("a log line serializes");
    out.put_slice(b"\n\n");
}
