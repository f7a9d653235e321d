//! A guest that misbehaves on request, one way per path:
//!
//! * `/hostile/ok`          — 200 `ok` (proves the instance is healthy)
//! * `/hostile/trap`        — panics before responding (a trap)
//! * `/hostile/loop`        — spins forever in wasm (CPU deadline)
//! * `/hostile/sleep`       — blocks in a host call for an hour (wall-clock deadline)
//! * `/hostile/grow`        — allocates without end (memory limit)
//! * `/hostile/no-response` — returns without setting a response
//! * `/hostile/trap-mid-body` — sends headers and part of a body, then traps
//! * `/hostile/env`         — lists the environment it sees, `KEY=VALUE` per line, sorted
//! * `/hostile/files`       — tries to read host files; says what it could read
//! * `/hostile/big`         — a 4 MiB response body, 64 KiB at a time
//! * `/hostile/read-body`   — reads the request body; answers how many bytes, or the error
//! * `/hostile/recurse`     — recurses without end (stack overflow)
//! * `/hostile/fetch?url=http://HOST:PORT/PATH` — an outbound GET (or `https://`); answers
//!   `upstream STATUS BODY` or `error CODE`
//! * `/hostile/fetch-many?url=...` — 100 outbound GETs; answers how many were denied
//! * `/hostile/data`        — reads `/data/hello.txt`, tries to write `/data/new.txt` and to
//!   read `/data/../secret.txt`; says what happened
//! * `/hostile/plant`       — grows memory by 64 pages and fills them with a marker
//! * `/hostile/scan`        — grows memory by 64 pages and counts marker bytes in them (a fresh
//!   instance must see zeros, whatever instance used the pool slot before)
//! * `/hostile/respond-then-loop[?size=N][&content-length]` — a complete response (`ok`, or N
//!   bytes of `x` written 4 KiB at a time; with a `content-length` header if asked), then
//!   spins forever (work after the response)
//! * `/hostile/respond-then-sleep` — a complete `ok`, then blocks in a host call for an hour
//! * `/hostile/respond-then-trap?size=N` — N bytes of `x` (4 KiB at a time), finished, then
//!   traps
//! * `/hostile/leak-body`   — sends headers and `partial`, then returns without finishing (or
//!   dropping) its body
//! * `/hostile/log-flood[?size=N]` — prints 1 KiB lines (about N bytes each, if given) to
//!   stdout and stderr without end (the request deadline stops it)

use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hostile;

wasip2::http::proxy::export!(Hostile);

/// One outbound GET of `url` (`http://authority/path` or `https://...`): `upstream STATUS
/// BODY` or `error CODE`.
fn fetch(url: &str) -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return "error bad url".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => return format!("error {code:?}"),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => {
            let status = response.status();
            let body = response.consume().expect("body");
            let stream = body.stream().expect("stream");
            let mut text = Vec::new();
            while let Ok(chunk) = stream.blocking_read(64 << 10) {
                text.extend(chunk);
            }
            format!("upstream {status} {}", String::from_utf8_lossy(&text))
        }
        Some(Ok(Err(code))) => format!("error {code:?}"),
        other => format!("error {other:?}"),
    }
}

fn url_param(path: &str) -> &str {
    path.split_once("?url=").map(|(_, u)| u).unwrap_or("")
}

/// The value of query parameter `name` (empty for a bare `name`), if present.
fn param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((key, value)) if key == name => Some(value),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// Sends a complete response: `size` bytes of `x` (or `ok`), 4 KiB per write, with a
/// `content-length` header if `declare` is set, and finishes the body.
fn respond_fully(out: ResponseOutparam, size: Option<usize>, declare: bool) {
    let text = match size {
        Some(n) => vec![b'x'; n],
        None => b"ok".to_vec(),
    };
    let headers = Fields::new();
    if declare {
        headers
            .set("content-length", &[text.len().to_string().into_bytes()])
            .expect("content-length");
    }
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream");
    for chunk in text.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("write");
    }
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish");
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn respond(out: ResponseOutparam, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream");
    stream
        .blocking_write_and_flush(text.as_bytes())
        .expect("write");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish");
}

impl Guest for Hostile {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let action = path
            .split('?')
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("");
        match action {
            "trap" => panic!("hostile guest: trapping on purpose"),
            "loop" => spin(),
            "respond-then-loop" => {
                let size = param(&path, "size").and_then(|n| n.parse().ok());
                respond_fully(out, size, param(&path, "content-length").is_some());
                spin();
            }
            "respond-then-sleep" => {
                respond_fully(out, None, false);
                monotonic_clock::subscribe_duration(3_600 * 1_000_000_000).block();
            }
            "respond-then-trap" => {
                let size = param(&path, "size").and_then(|n| n.parse().ok());
                respond_fully(out, size, false);
                panic!("hostile guest: trapping after a complete response on purpose");
            }
            "leak-body" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("body");
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().expect("stream");
                stream.blocking_write_and_flush(b"partial").expect("write");
                drop(stream);
                // Neither `finish` nor a drop (which would abort the body): the handle leaks.
                std::mem::forget(body);
            }
            "sleep" => {
                monotonic_clock::subscribe_duration(3_600 * 1_000_000_000).block();
                respond(out, "woke up");
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "no-response" => drop(out),
            "trap-mid-body" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("body");
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().expect("stream");
                stream.blocking_write_and_flush(b"partial ").expect("write");
                panic!("hostile guest: trapping mid-body on purpose");
            }
            "env" => {
                let mut vars: Vec<String> = std::env::vars()
                    .map(|(k, v)| format!("{k}={v}\n"))
                    .collect();
                vars.sort();
                respond(out, &vars.concat());
            }
            "files" => {
                let seen: Vec<&str> = ["/etc/passwd", "/", ".", "/proc/self/environ"]
                    .into_iter()
                    .filter(|p| std::fs::metadata(p).is_ok())
                    .collect();
                respond(out, &format!("readable: {seen:?}"));
            }
            "big" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("body");
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().expect("stream");
                let chunk = vec![b'x'; 4096];
                for _ in 0..(4 << 20) / 4096 {
                    if stream.blocking_write_and_flush(&chunk).is_err() {
                        return;
                    }
                }
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
            }
            "read-body" => {
                let body = request.consume().expect("body");
                let stream = body.stream().expect("stream");
                let mut total = 0usize;
                let outcome = loop {
                    match stream.blocking_read(64 << 10) {
                        Ok(chunk) => total += chunk.len(),
                        Err(wasip2::io::streams::StreamError::Closed) => {
                            break format!("read {total} bytes");
                        }
                        Err(e) => break format!("body error after {total} bytes: {e:?}"),
                    }
                };
                drop(stream);
                respond(out, &outcome);
            }
            "recurse" => {
                #[allow(unconditional_recursion)] // the point: overflow the stack
                fn deeper(n: u64) -> u64 {
                    let pad = std::hint::black_box([n; 64]);
                    deeper(pad[7] + 1) + pad[3]
                }
                let n = deeper(0);
                respond(out, &n.to_string());
            }
            "plant" | "scan" => {
                const PAGES: usize = 64;
                const MARKER: u8 = 0xA5;
                let before = core::arch::wasm32::memory_grow(0, PAGES);
                assert_ne!(before, usize::MAX, "memory.grow failed");
                let start = before * 65536;
                let len = PAGES * 65536;
                // SAFETY: `memory.grow` just added these `len` bytes at `start` to linear
                // memory. Nothing else (not the allocator, which only uses memory it grew
                // itself) knows about them, so this is the only reference, and any byte value
                // is a valid u8.
                #[allow(unsafe_code)]
                let fresh = unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len) };
                if action == "plant" {
                    fresh.fill(MARKER);
                    respond(out, "planted");
                } else {
                    let seen = fresh.iter().filter(|b| **b != 0).count();
                    respond(out, &format!("nonzero {seen}"));
                }
            }
            "data" => {
                let read = std::fs::read_to_string("/data/hello.txt")
                    .unwrap_or_else(|e| format!("unreadable ({e})"));
                let write = match std::fs::write("/data/new.txt", b"x") {
                    Ok(()) => "write allowed",
                    Err(_) => "write denied",
                };
                let escape = match std::fs::read_to_string("/data/../secret.txt") {
                    Ok(_) => "escape allowed",
                    Err(_) => "escape denied",
                };
                respond(out, &format!("{}; {write}; {escape}", read.trim()));
            }
            "log-flood" => {
                use std::io::Write;
                let size = param(&path, "size").and_then(|n| n.parse().ok());
                let padding = "x".repeat(size.unwrap_or(1000));
                let mut n: u64 = 0;
                loop {
                    n = n.wrapping_add(1);
                    // Errors are ignored: the point is to keep writing.
                    let _ = writeln!(std::io::stdout(), "flood line {n:>10} {padding}");
                    let _ = writeln!(std::io::stderr(), "WARN flood line {n:>10} {padding}");
                }
            }
            "fetch" => respond(out, &fetch(url_param(&path))),
            // One line on each stream, then an answer (log lines as trace events).
            "log" => {
                println!("hostile says hello on stdout");
                eprintln!("WARN hostile warns on stderr");
                respond(out, "logged");
            }
            "fetch-many" => {
                let url = url_param(&path).to_owned();
                let denied = (0..100)
                    .filter(|_| fetch(&url).contains("HttpRequestDenied"))
                    .count();
                respond(out, &format!("denied {denied}"));
            }
            _ => respond(out, "ok"),
        }
    }
}
