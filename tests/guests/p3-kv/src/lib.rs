//! A WASI 0.3 handler (`wasip3`'s `wasi:http/service` export) that uses key-value storage
//! through plain `wit-bindgen` bindings of the repository's `wit/`: both `wasi:keyvalue` drafts
//! and `handoff:kv`, as a 0.3 guest built for another runtime imports them. The last path
//! segment picks the operation, on the route's own bucket (`default`):
//!
//! * `incr?key=K`       — `wasi:keyvalue/atomics@0.2.0-draft2.increment`; the new value
//! * `incr-draft?key=K` — the same through `wasi:keyvalue@0.2.0-draft` (unsigned)
//! * `get?key=K`        — `wasi:keyvalue/store@0.2.0-draft2.get`: the value, or 404
//! * `vset?key=K&value=V` — `handoff:kv/versioned.set`: answers the new version
//! * `vget?key=K`       — `handoff:kv/versioned.get`: `VALUE VERSION`, or 404
//!
//! A refusal is answered with status 400 and the error; never a trap.

mod draft {
    wit_bindgen::generate!({
        path: "../../../wit/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports@0.2.0-draft",
    });
}

mod kv {
    wit_bindgen::generate!({
        path: ["../../../wit/keyvalue-0.2.0-draft2", "../../../wit/handoff-kv"],
        world: "handoff:kv/imports",
        generate_all,
    });
}

use kv::handoff::kv::versioned;
use kv::wasi::keyvalue::{atomics, store};
use wasip3::http::types::{self, ErrorCode};
use wasip3::http_compat::{http_from_wasi_request, http_into_wasi_response};

wasip3::http::service::export!(Kv);

struct Kv;

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn refused(error: store::Error) -> (u16, String) {
    (400, format!("{error:?}"))
}

fn run(op: &str, query: &str) -> Result<(u16, String), (u16, String)> {
    let key = param(query, "key").unwrap_or("k");
    if op == "incr-draft" {
        use draft::wasi::keyvalue::{atomics, store};
        let failed = |error: store::Error| (400, format!("{error:?}"));
        let bucket = store::open("default").map_err(failed)?;
        let value = atomics::increment(&bucket, key, 1).map_err(failed)?;
        return Ok((200, value.to_string()));
    }
    let bucket = store::open("default").map_err(refused)?;
    match op {
        "incr" => Ok((
            200,
            atomics::increment(&bucket, key, 1)
                .map_err(refused)?
                .to_string(),
        )),
        "get" => match bucket.get(key).map_err(refused)? {
            Some(value) => Ok((200, String::from_utf8_lossy(&value).into_owned())),
            None => Ok((404, "absent".into())),
        },
        "vset" => {
            let value = param(query, "value").unwrap_or("");
            let version = versioned::set(&bucket, key, value.as_bytes(), None).map_err(refused)?;
            Ok((200, version.to_string()))
        }
        "vget" => match versioned::get(&bucket, key).map_err(refused)? {
            Some(entry) => Ok((
                200,
                format!(
                    "{} {}",
                    String::from_utf8_lossy(&entry.value),
                    entry.version
                ),
            )),
            None => Ok((404, "absent".into())),
        },
        _ => Ok((200, "p3-kv: incr, incr-draft, get, vset, vget".into())),
    }
}

impl wasip3::exports::http::handler::Guest for Kv {
    async fn handle(request: types::Request) -> Result<types::Response, ErrorCode> {
        let request = http_from_wasi_request(request)?;
        let op = request.uri().path().rsplit('/').next().unwrap_or_default();
        let query = request.uri().query().unwrap_or_default();
        let (status, text) = run(op, query).unwrap_or_else(|refused| refused);
        let mut response = http::Response::new(text);
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        http_into_wasi_response(response)
    }
}
