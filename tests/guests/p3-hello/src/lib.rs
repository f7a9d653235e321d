//! A WASI 0.3 handler (`wasi:http/service`) built with the `wasip3` crate and its `http-compat`
//! conversions, as a user of that crate writes one: what the tests deploy to prove that handoff
//! serves 0.3 guests, and the bench's 0.3 hello. The last path segment picks what it does:
//!
//! * anything else: `200`, `hello from wasi 0.3` followed by ` TAG` when the deploy set the
//!   config `TAG`
//! * `count`: `calls N instance ID`: N counts this call and the ones this instance served
//!   before it (started ones, whether they ended yet or not), ID is a random number the
//!   instance drew on its first call
//! * `stream?n=N&ms=M`: a body of N chunks (`chunk i TAG\n`), M ms apart (defaults 10 and 100);
//!   with `trap=1` the guest panics after the last chunk instead of ending the body
//! * `sleep?ms=M`: waits M ms (an async wait: other requests of the instance go on), then
//!   answers as `count` does
//! * `spin`: runs without end (only its deadline stops it)
//! * `trap`: panics (a trap)
//! * `echo`: answers the request body
//! * `relay`: answers `200` at once, then the request body's bytes as they arrive
//! * `env?name=NAME`: the environment variable NAME, or 404
//! * `log?line=TEXT&n=N`: prints TEXT to stdout and to stderr N times (default 1), then answers
//!   `logged`
//! * `fail?line=TEXT&ms=M`: waits M ms (default 0), prints TEXT to stderr, then answers `500`
//! * `memory?mb=N`: allocates and touches N MiB, then answers `allocated N MiB`
//! * `big?kb=N`: a body of N KiB of `x`, written in 16 KiB chunks
//! * `fetch?url=URL`: GETs URL through `wasi:http/client@0.3` and answers its status and body,
//!   or `502` and the error code

use std::sync::atomic::{AtomicU64, Ordering};

use wasip3::http::types::{self, ErrorCode, Fields};
use wasip3::http_compat::{
    IncomingRequestBody, http_from_wasi_request, http_from_wasi_response, http_into_wasi_request,
    http_into_wasi_response,
};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

/// Calls this instance has started.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// This instance's random identity, drawn on its first call (0: not drawn yet).
static INSTANCE: AtomicU64 = AtomicU64::new(0);

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn text(status: u16, body: String) -> Result<types::Response, ErrorCode> {
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    http_into_wasi_response(response)
}

fn tag() -> String {
    std::env::var("TAG").map(|t| format!(" {t}")).unwrap_or_default()
}

fn count(calls: u64) -> String {
    format!(
        "calls {calls} instance {}",
        INSTANCE.load(Ordering::Relaxed)
    )
}

async fn sleep(ms: u64) {
    wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
}

async fn read_all(body: &mut IncomingRequestBody) -> Result<Vec<u8>, ErrorCode> {
    use http_body::Body;
    let mut bytes = Vec::new();
    let mut body = std::pin::Pin::new(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: types::Request) -> Result<types::Response, ErrorCode> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if INSTANCE.load(Ordering::Relaxed) == 0 {
            INSTANCE.store(
                wasip3::random::random::get_random_u64().max(1),
                Ordering::Relaxed,
            );
        }
        let request = http_from_wasi_request(request)?;
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let number = |key: &str, default: u64| {
            param(&query, key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        match path.rsplit('/').next().unwrap_or_default() {
            "count" => text(200, count(calls)),
            "sleep" => {
                sleep(number("ms", 100)).await;
                text(200, count(calls))
            }
            "spin" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("asked to trap on call {calls}"),
            "stream" => {
                let (chunks, ms) = (number("n", 10), number("ms", 100));
                let trap = number("trap", 0) == 1;
                let (mut body_tx, body_rx) = wit_stream::new();
                let (body_result_tx, body_result_rx) = wit_future::new(|| Ok(None));
                let (response, _sent) =
                    types::Response::new(Fields::new(), Some(body_rx), body_result_rx);
                let tag = tag();
                wasip3::spawn_local(async move {
                    for i in 0..chunks {
                        if i > 0 {
                            sleep(ms).await;
                        }
                        let rest = body_tx
                            .write_all(format!("chunk {i}{tag}\n").into_bytes())
                            .await;
                        if !rest.is_empty() {
                            return;
                        }
                    }
                    if trap {
                        panic!("asked to trap after {chunks} chunks");
                    }
                    drop(body_tx);
                    let _ = body_result_tx.write(Ok(None)).await;
                });
                Ok(response)
            }
            "relay" => {
                let mut body = request.into_body();
                let (mut body_tx, body_rx) = wit_stream::new();
                let (body_result_tx, body_result_rx) = wit_future::new(|| Ok(None));
                let (response, _sent) =
                    types::Response::new(Fields::new(), Some(body_rx), body_result_rx);
                wasip3::spawn_local(async move {
                    use http_body::Body;
                    let mut body = std::pin::Pin::new(&mut body);
                    while let Some(frame) =
                        std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                    {
                        let Ok(Ok(data)) = frame.map(|f| f.into_data()) else {
                            return;
                        };
                        if !body_tx.write_all(data.to_vec()).await.is_empty() {
                            return;
                        }
                    }
                    drop(body_tx);
                    let _ = body_result_tx.write(Ok(None)).await;
                });
                Ok(response)
            }
            "echo" => {
                let mut body = request.into_body();
                let bytes = read_all(&mut body).await?;
                text(200, String::from_utf8_lossy(&bytes).into_owned())
            }
            "env" => match param(&query, "name").and_then(|name| std::env::var(name).ok()) {
                Some(value) => text(200, value),
                None => text(404, "not set".into()),
            },
            "log" => {
                let line = param(&query, "line").unwrap_or("hello");
                for _ in 0..number("n", 1) {
                    println!("{line}");
                    eprintln!("{line}");
                }
                text(200, "logged".into())
            }
            "fail" => {
                sleep(number("ms", 0)).await;
                eprintln!("{}", param(&query, "line").unwrap_or("failing"));
                text(500, "failed on purpose".into())
            }
            "big" => {
                let kib = number("kb", 64);
                let (mut body_tx, body_rx) = wit_stream::new();
                let (body_result_tx, body_result_rx) = wit_future::new(|| Ok(None));
                let (response, _sent) =
                    types::Response::new(Fields::new(), Some(body_rx), body_result_rx);
                wasip3::spawn_local(async move {
                    let mut left = kib;
                    while left > 0 {
                        let n = left.min(16);
                        left -= n;
                        let rest = body_tx.write_all(vec![b'x'; (n as usize) << 10]).await;
                        if !rest.is_empty() {
                            return;
                        }
                    }
                    drop(body_tx);
                    let _ = body_result_tx.write(Ok(None)).await;
                });
                Ok(response)
            }
            "memory" => {
                let mb = number("mb", 1) as usize;
                let block = vec![1u8; mb << 20];
                let touched: usize = block.iter().step_by(4096).map(|b| *b as usize).sum();
                text(200, format!("allocated {mb} MiB ({touched} pages)"))
            }
            "fetch" => {
                let Some(url) = param(&query, "url") else {
                    return text(400, "fetch needs url=".into());
                };
                let outbound = http::Request::get(url)
                    .body(String::new())
                    .map_err(|e| ErrorCode::InternalError(Some(e.to_string())))?;
                let outbound = http_into_wasi_request(outbound)?;
                match wasip3::http::client::send(outbound).await {
                    Ok(response) => {
                        let response = http_from_wasi_response(response)?;
                        let status = response.status().as_u16();
                        let mut body = response.into_body();
                        let bytes = read_all_response(&mut body).await?;
                        text(
                            200,
                            format!("{status} {}", String::from_utf8_lossy(&bytes)),
                        )
                    }
                    Err(code) => text(502, format!("{code:?}")),
                }
            }
            _ => text(200, format!("hello from wasi 0.3{}", tag())),
        }
    }
}

async fn read_all_response(
    body: &mut wasip3::http_compat::IncomingResponseBody,
) -> Result<Vec<u8>, ErrorCode> {
    use http_body::Body;
    let mut bytes = Vec::new();
    let mut body = std::pin::Pin::new(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}
