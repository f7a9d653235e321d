//! A guest that counts the calls its instance has served, in a global, and says so: what
//! proves that a route with `reuse` serves several requests from one instance (and that
//! without it every request starts from scratch).
//!
//! * any path: `200`, body `calls N instance ID`, where N counts this call and the ones this
//!   instance served before it, and ID is a random number the instance drew on its first call
//! * a path ending in `/trap`: counts the call, then panics before responding (a trap)
//! * a path ending in `/leak`: counts the call, sends headers and `partial`, then returns
//!   without finishing its body
//! * a path ending in `/no-response`: counts the call, then returns without a response
//! * a path ending in `/hold`: waits 2 s (in a host call), then answers as any path does

use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Calls this instance has served.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// This instance's random identity, drawn on its first call (0: not drawn yet).
static INSTANCE: AtomicU64 = AtomicU64::new(0);

struct Counter;

wasip2::http::proxy::export!(Counter);

impl Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if INSTANCE.load(Ordering::Relaxed) == 0 {
            INSTANCE.store(
                wasip2::random::random::get_random_u64().max(1),
                Ordering::Relaxed,
            );
        }
        let path = request.path_with_query().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        if path.ends_with("/trap") {
            panic!("asked to trap on call {calls}");
        }
        if path.ends_with("/hold") {
            wasip2::clocks::monotonic_clock::subscribe_duration(2_000_000_000).block();
        }
        if path.ends_with("/no-response") {
            return;
        }
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("response body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("body stream");
        if path.ends_with("/leak") {
            stream.blocking_write_and_flush(b"partial").expect("write");
            drop(stream);
            std::mem::forget(body);
            return;
        }
        let text = format!(
            "calls {calls} instance {}",
            INSTANCE.load(Ordering::Relaxed)
        );
        stream
            .blocking_write_and_flush(text.as_bytes())
            .expect("write");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}
