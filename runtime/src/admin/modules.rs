//! The module endpoints: upload without activating, list, delete.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use super::extract::ModuleVersion;
use super::input::{check_signature, read_upload};
use crate::api::{self, Problem};
use crate::deploy;
use crate::runtime::Runtime;

/// `POST /v1/modules`: upload without activating.
pub(super) async fn upload(
    State(rt): State<Arc<Runtime>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let bytes = read_upload(&rt, &headers, body).await?;
    let signature = check_signature(&rt, &headers, &bytes)?;
    let uploaded = deploy::upload(&rt, bytes, signature).await?;
    let status = if uploaded.compile_time.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(api::Uploaded {
            version: uploaded.digest.to_string(),
            size_bytes: uploaded.size_bytes,
            compile_ms: uploaded.compile_time.map(|t| t.as_secs_f64() * 1e3),
        }),
    )
        .into_response())
}

/// `GET /v1/modules`: every stored module.
pub(super) async fn list(State(rt): State<Arc<Runtime>>) -> Result<Json<api::ModuleList>, Problem> {
    let modules = deploy::modules(&rt).await?;
    Ok(Json(api::ModuleList {
        modules: modules
            .into_iter()
            .map(|m| api::ModuleStatus {
                version: m.digest.to_string(),
                size_bytes: m.record.size_bytes,
                pinned: m.record.pinned,
                signed: m.record.signature.is_some(),
                used_by: m.used_by,
            })
            .collect(),
    }))
}

/// `DELETE /v1/modules/{version}`: delete a module no route uses.
pub(super) async fn delete(
    State(rt): State<Arc<Runtime>>,
    ModuleVersion(digest): ModuleVersion,
) -> Result<Json<api::ModuleDeleted>, Problem> {
    deploy::delete_module(&rt, &digest).await?;
    Ok(Json(api::ModuleDeleted {
        version: digest.to_string(),
        deleted: true,
    }))
}
