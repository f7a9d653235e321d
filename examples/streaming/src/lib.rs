//! Streams a slow chunked body, one line at a time: the drain demo. Start a slow request,
//! deploy a new version mid-stream, and the old version finishes writing its body.
//!
//! * `GET /<route>` — 5 lines, 200 ms apart
//! * `GET /<route>?chunks=N&delay_ms=M` — N lines (at most 1000), M ms apart, at most 20 s in
//!   all; anything else is a 400 that says what to change
//!
//! Each line names the deploy-time config `TAG` (default `streaming`), so a client can tell
//! which version wrote it: `deploy with config=TAG=v2`.

use std::time::Duration;

use handoff_sdk::{Body, Error, Request, RequestExt, Response, Result, config, response};

const DEFAULT_CHUNKS: u32 = 5;
const DEFAULT_DELAY_MS: u64 = 200;
const MAX_CHUNKS: u32 = 1000;
/// The longest stream this guest agrees to produce, well under the host's request timeout.
const MAX_TOTAL_MS: u64 = 20_000;

fn handle(req: Request) -> Result<Response> {
    let query = req.query();
    let chunks: u32 = query.get_or("chunks", DEFAULT_CHUNKS)?;
    let delay_ms: u64 = query.get_or("delay_ms", DEFAULT_DELAY_MS)?;
    if chunks > MAX_CHUNKS {
        return Err(Error::bad_request(format!(
            "`chunks` may be at most {MAX_CHUNKS}; got {chunks}"
        )));
    }
    let total_ms = u64::from(chunks.saturating_sub(1)).saturating_mul(delay_ms);
    if total_ms > MAX_TOTAL_MS {
        return Err(Error::bad_request(format!(
            "`chunks` × `delay_ms` may be at most {MAX_TOTAL_MS} ms; got {total_ms} ms"
        )));
    }

    let tag = config::get_or("TAG", "streaming");
    let delay = Duration::from_millis(delay_ms);
    let lines = (1..=chunks).map(move |i| {
        if i > 1 {
            handoff_sdk::sleep(delay);
        }
        format!("{tag} chunk {i}/{chunks}\n")
    });
    Ok(response::text(Body::stream(lines)))
}

handoff_sdk::export!(handle);
