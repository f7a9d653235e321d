//! The WASI 0.3 example: an `async` handler that runs several slow lookups at once and
//! streams each answer the moment it is ready.
//!
//! * `GET /<route>` — 3 lookups of 100, 200 and 300 ms
//! * `GET /<route>?n=N&delay_ms=M` — N lookups (at most 20), the i-th taking i × M ms
//!   (at most 5 s each); anything else is a 400 that says what to change
//!
//! Each lookup is a future that waits on [`time::sleep`] (a stand-in for a backend call). The
//! handler starts them all, then sends one line per lookup as it finishes, and a last line with
//! the time the whole answer took: about the slowest lookup, not the sum of them. While the
//! lookups wait, the instance is free: with `instance-concurrency` above 1 it serves other
//! requests meanwhile. A WASI 0.2 handler could only wait for them one after another.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use handoff_sdk::{Body, Error, Request, RequestExt, Response, Result, response, time};

const DEFAULT_LOOKUPS: u32 = 3;
const DEFAULT_DELAY_MS: u64 = 100;
const MAX_LOOKUPS: u32 = 20;
/// The slowest lookup this guest agrees to wait for.
const MAX_LOOKUP_MS: u64 = 5_000;

/// Answers with one line per lookup, in the order they finish, then the total time.
pub async fn handle(req: Request) -> Result<Response> {
    let query = req.query();
    let n: u32 = query.get_or("n", DEFAULT_LOOKUPS)?;
    let delay_ms: u64 = query.get_or("delay_ms", DEFAULT_DELAY_MS)?;
    if n == 0 || n > MAX_LOOKUPS {
        return Err(Error::bad_request(format!(
            "`n` must be between 1 and {MAX_LOOKUPS}; got {n}"
        )));
    }
    let slowest = u64::from(n).saturating_mul(delay_ms);
    if slowest > MAX_LOOKUP_MS {
        return Err(Error::bad_request(format!(
            "`n` × `delay_ms` may be at most {MAX_LOOKUP_MS} ms; got {slowest} ms"
        )));
    }

    let body = Body::stream_async(move |mut out| async move {
        let started = Instant::now();
        // The slowest first, so the answers arrive in another order than they were asked in.
        let mut pending: FuturesUnordered<_> = (1..=n).rev().map(|i| lookup(i, delay_ms)).collect();
        while let Some(answer) = pending.next().await {
            out.send(answer).await?;
        }
        let sum: u64 = (1..=u64::from(n)).map(|i| i * delay_ms).sum();
        out.send(format!(
            "all {n} in {} ms (one after another: {sum} ms)\n",
            started.elapsed().as_millis()
        ))
        .await
    });
    Ok(response::text(body))
}

/// Lookup `i`: waits `i × delay_ms` and answers with a line that says so.
async fn lookup(i: u32, delay_ms: u64) -> String {
    let took = u64::from(i) * delay_ms;
    time::sleep(Duration::from_millis(took)).await;
    format!("lookup {i} answered after {took} ms\n")
}

handoff_sdk::export!(async handle);

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Result<String> {
        let req = handoff_sdk::http::Request::get(path)
            .body(Body::empty())
            .unwrap();
        handoff_sdk::block_on(async { handle(req).await?.into_body().read_text().await })
    }

    #[test]
    fn answers_arrive_as_lookups_finish_and_take_the_slowest_ones_time() {
        let text = get("/lookups?n=3&delay_ms=20").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "lookup 1 answered after 20 ms",
                "lookup 2 answered after 40 ms",
                "lookup 3 answered after 60 ms"
            ]
        );
        assert!(lines[3].starts_with("all 3 in "), "{text}");
        assert!(lines[3].ends_with("(one after another: 120 ms)"), "{text}");
    }

    #[test]
    fn bad_queries_say_what_to_change() {
        for (path, says) in [
            ("/lookups?n=0", "`n` must be between 1 and 20; got 0"),
            (
                "/lookups?n=10&delay_ms=1000",
                "may be at most 5000 ms; got 10000 ms",
            ),
        ] {
            let error = get(path).unwrap_err();
            assert_eq!(error.status(), handoff_sdk::StatusCode::BAD_REQUEST);
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
