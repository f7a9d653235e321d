//! A key-value guest on plain `wit-bindgen` bindings (no handoff SDK), generated from the WIT in
//! the repository's `wit/`: both `wasi:keyvalue` drafts, as guests built for Spin or wasmCloud
//! import them. The last path segment picks the operation; `bucket=NAME` opens a bucket other
//! than `default`.
//!
//! * `incr?key=K[&by=N]`       — draft2 `atomics.increment`; answers the new value
//! * `incr-draft?key=K`        — the same through `wasi:keyvalue@0.2.0-draft` (unsigned)
//! * `cas-incr?key=K`          — draft2 `cas` + `swap`, retried until it wins; answers
//!   `VALUE ATTEMPTS`
//! * `get?key=K`               — the value, or 404
//! * `timed-get?key=K` / `timed-set?key=K` — one get (or a set of 100 bytes); answers how
//!   long the call took inside the guest, in nanoseconds (for the bench)
//! * `set?key=K&value=V`       — `ok`, or the error
//! * `big?key=K&bytes=N`       — sets a value of N bytes; `ok`, or the error
//! * `fill?n=N`                — sets keys `fill-0` .. until N or an error; `wrote K` and the
//!   error, if any
//! * `list` / `list-draft`     — every key, one per line, through the string or `u64` cursors
//! * `batch?n=N`               — `set-many` of N keys `b-i`, then `get-many`; answers how many
//!   came back
//!
//! Any other path answers 200 with this list. A refusal is answered as the error with status
//! 400 (`no-such-store`: 404); never a trap.

mod draft {
    wit_bindgen::generate!({
        path: "../../../wit/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports@0.2.0-draft",
    });
}

mod draft2 {
    wit_bindgen::generate!({
        path: "../../../wit/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
    });
}

use draft2::wasi::keyvalue::{atomics, batch, store};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Plain;

wasip2::http::proxy::export!(Plain);

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn error2(error: store::Error) -> (u16, String) {
    match error {
        store::Error::NoSuchStore => (404, "no-such-store".into()),
        store::Error::AccessDenied => (403, "access-denied".into()),
        store::Error::Other(sentence) => (400, format!("other: {sentence}")),
    }
}

fn run(op: &str, query: &str) -> Result<(u16, String), (u16, String)> {
    let name = param(query, "bucket").unwrap_or("default");
    let key = param(query, "key").unwrap_or("k");
    if op == "incr-draft" || op == "list-draft" {
        use draft::wasi::keyvalue::{atomics, store};
        let failed = |error: store::Error| match error {
            store::Error::NoSuchStore => (404, "no-such-store".to_owned()),
            store::Error::AccessDenied => (403, "access-denied".to_owned()),
            store::Error::Other(sentence) => (400, format!("other: {sentence}")),
        };
        let bucket = store::open(name).map_err(failed)?;
        if op == "incr-draft" {
            let value = atomics::increment(&bucket, key, 1).map_err(failed)?;
            return Ok((200, value.to_string()));
        }
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = bucket.list_keys(cursor).map_err(failed)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        return Ok((200, keys.join("\n")));
    }
    let bucket = store::open(name).map_err(error2)?;
    match op {
        "incr" => {
            let by = param(query, "by").and_then(|v| v.parse().ok()).unwrap_or(1);
            let value = atomics::increment(&bucket, key, by).map_err(error2)?;
            Ok((200, value.to_string()))
        }
        "cas-incr" => {
            let mut cas = atomics::Cas::new(&bucket, key).map_err(error2)?;
            for attempt in 1..=10_000 {
                let current = cas.current().map_err(error2)?;
                let number: i64 = current
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let next = (number + 1).to_string();
                match atomics::swap(cas, next.as_bytes()) {
                    Ok(()) => return Ok((200, format!("{next} {attempt}"))),
                    Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
                    Err(atomics::CasError::StoreError(error)) => return Err(error2(error)),
                }
            }
            Err((500, "gave up".into()))
        }
        "timed-get" | "timed-set" => {
            // For the bench: how long one call took, in nanoseconds, as the guest sees it.
            let started = wasip2::clocks::monotonic_clock::now();
            if op == "timed-get" {
                bucket.get(key).map_err(error2)?;
            } else {
                bucket.set(key, &[b'v'; 100]).map_err(error2)?;
            }
            let took = wasip2::clocks::monotonic_clock::now() - started;
            Ok((200, took.to_string()))
        }
        "get" => match bucket.get(key).map_err(error2)? {
            Some(value) => Ok((200, String::from_utf8_lossy(&value).into_owned())),
            None => Ok((404, "absent".into())),
        },
        "set" => {
            let value = param(query, "value").unwrap_or("");
            bucket.set(key, value.as_bytes()).map_err(error2)?;
            Ok((200, "ok".into()))
        }
        "big" => {
            let bytes = param(query, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            bucket.set(key, &vec![b'x'; bytes]).map_err(error2)?;
            Ok((200, "ok".into()))
        }
        "fill" => {
            let n: usize = param(query, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
            for i in 0..n {
                if let Err(error) = bucket.set(&format!("fill-{i}"), b"v") {
                    let (status, text) = error2(error);
                    return Err((status, format!("wrote {i}; {text}")));
                }
            }
            Ok((200, format!("wrote {n}")))
        }
        "list" => {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = bucket.list_keys(cursor.as_deref()).map_err(error2)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Ok((200, keys.join("\n")))
        }
        "batch" => {
            let n: usize = param(query, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
            let pairs: Vec<(String, Vec<u8>)> = (0..n)
                .map(|i| (format!("b-{i}"), i.to_string().into_bytes()))
                .collect();
            batch::set_many(&bucket, &pairs).map_err(error2)?;
            let keys: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
            let found = batch::get_many(&bucket, &keys).map_err(error2)?;
            Ok((200, found.iter().flatten().count().to_string()))
        }
        _ => Ok((
            200,
            "kv-plain: incr, cas-incr, get, set, big, fill, list, batch".into(),
        )),
    }
}

impl Guest for Plain {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let op = path.rsplit('/').next().unwrap_or("");
        let (status, text) = run(op, query).unwrap_or_else(|refused| refused);
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(status);
        let body = response.body().expect("response body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("body stream");
        for chunk in text.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write");
        }
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}
