//! The key-value endpoints, for a route's own bucket (`/v1/routes/{name}/kv/...`) and for a
//! shared one (`/v1/kv/{bucket}/...`):
//!
//! * `GET    .../keys?cursor=K&limit=N` — a page of keys (at most 1,000), for `read` tokens
//! * `GET    .../keys/{key}`  — the value, its version and expiry (`deploy`: values are data)
//! * `PUT    .../keys/{key}`  — JSON `{"value": "..."}` or `{"base64": "..."}`, optional
//!   `"ttl_ms"`
//! * `DELETE .../keys/{key}`
//! * `GET    .../export`      — every entry as JSON lines (`deploy`), streamed page by page; a
//!   failure part-way ends the body with an error, never as a complete export
//! * `POST   .../import`      — JSON lines as the export writes them
//!   (`Content-Type: application/x-ndjson` or `application/json`), every line checked before
//!   any is written
//!
//! An operator's writes are bounded by the key size and the largest `kv-max-value`
//! ([`MAX_KV_VALUE`]), not by a route's quota.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, FromRequestParts, Path, Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};

use super::input::read_import;
use crate::api::{self, Problem};
use crate::auth::{Caller, Scope};
use crate::kv::backend::{Change, Condition, Outcome, Quota, Start, Write};
use crate::kv::limits::PAGE_KEYS;
use crate::kv::{Bucket, BucketName, Entry, KvError, KvLimits};
use crate::names::RouteName;
use crate::runtime::Runtime;
use crate::settings::MAX_KV_VALUE;

/// The URL's bucket and key, extracted where a handler checks them (some check the token's
/// scope first).
type Params = Result<KvPath, Problem>;

/// What an operator may write.
const OPERATOR: KvLimits = KvLimits {
    max_value: MAX_KV_VALUE,
    max_keys: 0,
    max_bytes: 0,
};

/// Writes an import commits together.
const IMPORT_BATCH: usize = 256;

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// The bucket the URL names, and the key when it names one; the bucket's handle is made when
/// it has none (for writes: a `deploy` token's write may start a bucket).
fn target(rt: &Runtime, params: Params) -> Result<(Arc<Bucket>, Option<String>), Problem> {
    let KvPath(name, key) = params?;
    Ok((rt.kv.bucket(&name), key))
}

/// The bucket the URL names, when it exists (404 otherwise), and the key when it names one.
/// Reads create nothing: no handle, and in a cluster no JetStream bucket.
async fn existing(rt: &Runtime, params: Params) -> Result<(Arc<Bucket>, Option<String>), Problem> {
    let KvPath(name, key) = params?;
    match rt.kv.existing(&name).await.map_err(failed)? {
        Some(bucket) => Ok((bucket, key)),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!(
                "there is no {name}: no route uses it and nothing was written to it (a route's own bucket exists with the route; a shared one once a route is granted it with kv=NAME or a key is written to it)"
            ),
        )),
    }
}

/// The bucket (a route's `{name}`, or a shared `{bucket}`) and the key (`{*key}`, when the URL
/// names one) the URL names, checked; rejected with the problem document.
pub(super) struct KvPath(BucketName, Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for KvPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(format!("the URL is unreadable: {e}")))?;
        let name = match (params.remove("name"), params.remove("bucket")) {
            (Some(route), _) => BucketName::Route(RouteName::parse(&route).map_err(bad)?),
            (None, Some(shared)) => BucketName::shared(&shared).map_err(bad)?,
            (None, None) => return Err(bad("the URL names no bucket")),
        };
        let key = params.remove("key");
        if let Some(key) = &key {
            OPERATOR.check_key(key).map_err(|e| bad(e.to_string()))?;
        }
        Ok(Self(name, key))
    }
}

fn need_deploy(caller: &Caller) -> Result<(), Problem> {
    match caller.1 {
        Scope::Deploy => Ok(()),
        Scope::Read => Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has the `read` scope; reading values needs a `deploy` token (a `read` token may list keys)",
                caller.0
            ),
        )),
    }
}

fn failed(error: KvError) -> Problem {
    match error {
        KvError::Failed(detail) => {
            tracing::error!(error = %detail, "a key-value admin call failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the key-value store failed; the server's log has the details",
            )
        }
        other => bad(other.to_string()),
    }
}

/// An entry as the API shows it.
fn shown(key: String, entry: Entry) -> api::KvEntry {
    let (value, base64) = match String::from_utf8(entry.value) {
        Ok(text) => (Some(text), None),
        Err(bytes) => (None, Some(BASE64.encode(bytes.as_bytes()))),
    };
    api::KvEntry {
        key,
        value,
        base64,
        revision: Some(entry.revision),
        expires_at_ms: entry.expires_at_ms,
    }
}

/// A value larger than this server keeps: `413`, with the sentence naming the limit.
fn too_large(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, detail)
}

/// The bytes of `value` or `base64` (exactly one); their size is checked by [`sized`].
fn bytes_of(key: &str, value: Option<String>, base64: Option<String>) -> Result<Vec<u8>, String> {
    let bytes = match (value, base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => BASE64.decode(encoded.trim()).map_err(|e| {
            format!(
                "the base64 value of `{}` does not decode: {e}",
                key.escape_debug()
            )
        })?,
        _ => {
            return Err(format!(
                "give `{}` exactly one of `value` (text) and `base64`",
                key.escape_debug()
            ));
        }
    };
    Ok(bytes)
}

/// Checks that `value` is within [`OPERATOR`]'s bound (the largest `kv-max-value`) and that
/// the backend can keep it (a cluster keeps one NATS message's worth): the sentence names the
/// limit. Callers answer `413`.
fn sized(rt: &Runtime, value: &[u8]) -> Result<(), String> {
    if value.len() as u64 > OPERATOR.max_value {
        return Err(format!(
            "a value may be at most {} bytes (the largest kv-max-value); this one has {}",
            OPERATOR.max_value,
            value.len()
        ));
    }
    fits(rt, value).map_err(|e| e.to_string())
}

/// Checks that the backend can keep `value` (a cluster keeps one NATS message's worth): an
/// import checks every line so before it writes any.
fn fits(rt: &Runtime, value: &[u8]) -> Result<(), KvError> {
    match rt.kv.backend().max_value() {
        Some(budget) if value.len() > budget => {
            Err(crate::kv::jetstream::too_large(value.len(), budget))
        }
        _ => Ok(()),
    }
}

/// The query of a listing.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET .../keys`.
pub(super) async fn keys(
    State(rt): State<Arc<Runtime>>,
    params: Params,
    query: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::KvKeys>, Problem> {
    let (bucket, _) = existing(&rt, params).await?;
    let Query(query) = query.map_err(|e| {
        bad(format!(
            "a listing takes `cursor` and `limit` (at most {PAGE_KEYS}): {}",
            e.body_text()
        ))
    })?;
    let limit = query.limit.unwrap_or(PAGE_KEYS).clamp(1, PAGE_KEYS);
    let start = query.cursor.as_deref().map_or(Start::First, Start::After);
    let page = rt
        .kv
        .backend()
        .list(&bucket.id, start, limit)
        .await
        .map_err(failed)?;
    let cursor = page.more.then(|| page.items.last().cloned()).flatten();
    Ok(Json(api::KvKeys {
        bucket: bucket.id.to_string(),
        keys: page.items,
        cursor,
    }))
}

fn no_key(bucket: &Bucket, key: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("{} has no key `{}`", bucket.name, key.escape_debug()),
    )
}

/// `GET .../keys/{key}`.
pub(super) async fn get(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Json<api::KvEntry>, Problem> {
    need_deploy(&caller)?;
    let (bucket, key) = existing(&rt, params).await?;
    let key = key.unwrap_or_default();
    match rt
        .kv
        .backend()
        .get(&bucket.id, &key)
        .await
        .map_err(failed)?
    {
        Some(entry) => Ok(Json(shown(key, entry))),
        None => Err(no_key(&bucket, &key)),
    }
}

/// `PUT .../keys/{key}`.
pub(super) async fn put(
    State(rt): State<Arc<Runtime>>,
    params: Params,
    body: Body,
) -> Result<Json<api::KvWritten>, Problem> {
    let (bucket, key) = target(&rt, params)?;
    let key = key.unwrap_or_default();
    let example = r#"{"value": "text"} or {"base64": "..."}, with an optional "ttl_ms""#;
    let read = super::input::small_body(&rt, body, (MAX_KV_VALUE as usize) * 2).await?;
    let put: api::KvPut = serde_json::from_slice(&read)
        .map_err(|e| bad(format!("the body must be JSON like {example}: {e}")))?;
    let value = bytes_of(&key, put.value, put.base64).map_err(bad)?;
    sized(&rt, &value).map_err(too_large)?;
    let change = Change::Set {
        value,
        ttl_ms: put.ttl_ms,
    };
    let write = Write::new(key.clone(), change, Quota::default());
    match rt
        .kv
        .backend()
        .write(&bucket.id, write)
        .await
        .map_err(failed)?
    {
        Outcome::Done { revision, .. } => Ok(Json(api::KvWritten { key, revision })),
        Outcome::Conflict => Err(failed(KvError::Failed(
            "an unconditional write conflicted".into(),
        ))),
    }
}

/// `DELETE .../keys/{key}`.
pub(super) async fn delete(
    State(rt): State<Arc<Runtime>>,
    params: Params,
) -> Result<Json<api::KvDeleted>, Problem> {
    let (bucket, key) = existing(&rt, params).await?;
    let key = key.unwrap_or_default();
    let backend = rt.kv.backend();
    let existed = backend.get(&bucket.id, &key).await.map_err(failed)?;
    let deleted = match existed {
        Some(entry) => {
            let mut write = Write::new(key.clone(), Change::Delete, Quota::default());
            write.condition = Condition::Revision(entry.revision);
            matches!(
                backend.write(&bucket.id, write).await.map_err(failed)?,
                Outcome::Done { .. }
            )
        }
        None => false,
    };
    Ok(Json(api::KvDeleted { key, deleted }))
}

/// A response body fed page by page from a task; an error ends it with an error.
struct Lines(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|chunk| chunk.map(http_body::Frame::data)))
    }
}

/// `GET .../export`.
pub(super) async fn export(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Response, Problem> {
    need_deploy(&caller)?;
    let (bucket, _) = existing(&rt, params).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    rt.background.clone().spawn_job(async move {
        let mut after: Option<String> = None;
        loop {
            let start = after.as_deref().map_or(Start::First, Start::After);
            let page = match rt.kv.backend().scan(&bucket.id, start, PAGE_KEYS).await {
                Ok(page) => page,
                Err(error) => {
                    let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                    return;
                }
            };
            let mut chunk = Vec::new();
            for (key, entry) in page.items {
                after = Some(key.clone());
                let mut line = shown(key, entry);
                line.revision = None;
                serde_json::to_writer(&mut chunk, &line).expect("an entry serializes");
                chunk.push(b'\n');
            }
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() || !page.more {
                return;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::new(Lines(rx)),
    )
        .into_response())
}

/// `POST .../import`.
pub(super) async fn import(
    State(rt): State<Arc<Runtime>>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<api::KvImported>, Problem> {
    let (bucket, _) = target(&rt, params)?;
    let text = read_import(&rt, &headers, body).await?;
    let now = crate::kv::backend::now_ms();
    let mut writes = Vec::new();
    let mut expired = 0;
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let line_error = |e: String| bad(format!("line {} of the import: {e}", i + 1));
        let entry: api::KvEntry = serde_json::from_slice(line).map_err(|e| {
            line_error(format!(
                "not an entry like {{\"key\": \"k\", \"value\": \"text\"}}: {e}"
            ))
        })?;
        OPERATOR
            .check_key(&entry.key)
            .map_err(|e| line_error(e.to_string()))?;
        let value = bytes_of(&entry.key, entry.value, entry.base64).map_err(line_error)?;
        sized(&rt, &value).map_err(|e| too_large(format!("line {} of the import: {e}", i + 1)))?;
        let ttl_ms = match entry.expires_at_ms {
            Some(at) if at <= now => {
                expired += 1;
                continue;
            }
            Some(at) => Some(at - now),
            None => None,
        };
        writes.push(Write::new(
            entry.key,
            Change::Set { value, ttl_ms },
            Quota::default(),
        ));
    }
    let mut imported = 0;
    while !writes.is_empty() {
        let rest = writes.split_off(writes.len().min(IMPORT_BATCH));
        let batch = std::mem::replace(&mut writes, rest);
        for outcome in rt
            .kv
            .backend()
            .write_all(&bucket.id, batch)
            .await
            .map_err(failed)?
        {
            outcome.map_err(failed)?;
            imported += 1;
        }
    }
    tracing::info!(target: "audit", bucket = %bucket.id, imported, "key-value import");
    Ok(Json(api::KvImported {
        bucket: bucket.id.to_string(),
        imported,
        expired,
    }))
}
