//! Reading what an admin request sends: the route name in its URL, component uploads (content
//! type, size, time, signature) and the JSON bodies of rollback and activate.

use axum::body::Body;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use crate::api::{self, Problem};
use crate::runtime::Runtime;

/// Labels: 1-64 of `A-Z a-z 0-9 - _ .`.
pub(super) fn parse_label(label: &str) -> Result<String, Problem> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(label.to_owned())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a label is 1 to 64 of letters, digits, `-`, `_` and `.`; got `{}`",
                label.escape_debug()
            ),
        ))
    }
}

/// Checks an upload's `Handoff-Signature` against the trusted keys, as the server's
/// `--signatures` mode says.
/// Returns the signature to keep with the module (`None` if there was none).
pub(super) fn check_signature(
    rt: &Runtime,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Option<String>, Problem> {
    use crate::signing::{self, Mode};
    let signature = headers.get(signing::HEADER).and_then(|v| v.to_str().ok());
    if rt.config.signature_mode == Mode::Off {
        return Ok(signature.map(str::to_owned));
    }
    let signer = signature.and_then(|s| signing::signer(&rt.config.signing_keys, bytes, s));
    match (signer, rt.config.signature_mode) {
        (Some(key), _) => {
            tracing::info!(target: "audit", key = %key.name, "upload signature verified");
            Ok(signature.map(str::to_owned))
        }
        (None, Mode::Warn) => {
            tracing::warn!(target: "audit", signed = signature.is_some(), "upload not signed by a trusted key; accepted (--signatures warn)");
            Ok(signature.map(str::to_owned))
        }
        (None, _) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            if signature.is_some() {
                "the upload's Handoff-Signature does not verify against any trusted key; sign these exact bytes (handoff deploy --sign KEY)"
            } else {
                "this server requires signed uploads: send an Ed25519 signature of the bytes in Handoff-Signature (handoff deploy --sign KEY)"
            },
        )),
    }
}

/// Reads a component upload within its size limit (its content type was checked by
/// [`super::guard::content_type`]).
pub(super) async fn read_upload(
    rt: &Runtime,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, Problem> {
    let limit = rt.config.max_upload_bytes;
    let too_large = format!(
        "the upload is larger than the limit of {limit} bytes; raise `--max-upload` if the component is really this large"
    );
    read_body(headers, body, limit, rt.config.upload_timeout, too_large).await
}

/// The longest a key-value import may take to arrive.
const IMPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Reads a key-value import: as large as an export of the fullest bucket the server allows
/// (twice `kv-max-bytes`, room for base64 and JSON, plus 1 MiB), and never less than
/// `--max-upload`; within ten minutes, or the upload timeout if longer.
pub(super) async fn read_import(
    rt: &Runtime,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, Problem> {
    let bucket = usize::try_from(rt.config.limits.kv_max_bytes).unwrap_or(usize::MAX);
    let limit = bucket
        .saturating_mul(2)
        .saturating_add(1 << 20)
        .max(rt.config.max_upload_bytes);
    let too_large = format!(
        "the import is larger than the limit of {limit} bytes (twice the server's `--kv-max-bytes`, plus 1 MiB); split it, or raise `--kv-max-bytes`"
    );
    let timeout = IMPORT_TIMEOUT.max(rt.config.upload_timeout);
    read_body(headers, body, limit, timeout, too_large).await
}

async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    too_large: String,
) -> Result<bytes::Bytes, Problem> {
    let too_large = || Problem::new(StatusCode::PAYLOAD_TOO_LARGE, too_large.clone());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let reading = Limited::new(body, limit).collect();
    let Ok(read) = tokio::time::timeout(timeout, reading).await else {
        return Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the upload did not arrive within {} s; send it whole at once",
                timeout.as_secs()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the upload could not be read to its end: {error}"),
        )),
    }
}

/// The JSON body of a rollback or an activation (empty: no target).
pub(super) async fn target_body(rt: &Runtime, body: Body) -> Result<api::Target, Problem> {
    json_body(
        rt,
        body,
        r#"{"version": "sha256:..."} or {"label": "stable"}"#,
    )
    .await
    .map(Option::unwrap_or_default)
}

/// The longest a small admin body (JSON, one key-value entry) may take to arrive, unless
/// `--upload-timeout` is shorter: a client that sends its head and then holds the body back
/// must not hold an admin connection, or a route's change lock, for long.
pub(super) const SMALL_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a small body, at most `limit` bytes, within [`SMALL_BODY_TIMEOUT`] (or the upload
/// timeout if shorter).
pub(super) async fn small_body(
    rt: &Runtime,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, Problem> {
    let timeout = SMALL_BODY_TIMEOUT.min(rt.config.upload_timeout);
    let reading = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, reading).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body could not be read: {e}"),
        )),
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} ms; send it whole at once",
                timeout.as_millis()
            ),
        )),
    }
}

/// A small JSON body (`None` when it is empty or `null`), read as [`small_body`] does; the
/// error names `example`.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
    rt: &Runtime,
    body: Body,
    example: &str,
) -> Result<Option<T>, Problem> {
    let bytes = small_body(rt, body, 64 << 10).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {example}: {e}"),
        )
    })
}
