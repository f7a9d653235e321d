// Shared by the tagged guests, which differ only in their constants: `TAG` (what the body
// says), `SLEEP_MS` (how long it waits before answering), `NOISY` (a random number after the
// tag: a response that differs from run to run), `CHANGED_ON` (paths containing it get
// `TAG changed`; empty: none).
//
// * any path: `200`, body `TAG` (see the constants)
// * `?chunks=N&delay_ms=M`: a chunked body of N lines `TAG i`, M ms apart (the drain test's
//   slow stream)

use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Tagged;

wasip2::http::proxy::export!(Tagged);

fn query_param(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

impl Guest for Tagged {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query.split_once('?').map(|(_, q)| q).unwrap_or("");
        let chunks = query_param(query, "chunks");
        let delay_ms = query_param(query, "delay_ms").unwrap_or(0);

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("response body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("body stream");
        // A per-guest constant: 0 in most tagged guests.
        #[allow(clippy::absurd_extreme_comparisons)]
        if SLEEP_MS > 0 {
            monotonic_clock::subscribe_duration(SLEEP_MS * 1_000_000).block();
        }
        match chunks {
            None => {
                let mut text = TAG.to_owned();
                if NOISY {
                    text.push_str(&format!(" {}", wasip2::random::random::get_random_u64()));
                }
                if !CHANGED_ON.is_empty() && path_with_query.contains(CHANGED_ON) {
                    text.push_str(" changed");
                }
                stream.blocking_write_and_flush(text.as_bytes()).expect("write")
            }
            Some(n) => {
                for i in 0..n {
                    let line = format!("{TAG} {i}\n");
                    stream.blocking_write_and_flush(line.as_bytes()).expect("write");
                    if delay_ms > 0 && i + 1 < n {
                        monotonic_clock::subscribe_duration(delay_ms * 1_000_000).block();
                    }
                }
            }
        }
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}
