//! Starting and stopping a route's shadow: a stored module that sees a copy of a share of the
//! route's requests (`crate::shadow` compares). The shadow runs with the stable version's
//! settings, but with outbound HTTP denied unless the request allows it: by default a copy of a
//! request has no side effects.

use std::sync::Arc;

use super::apply::{self, Current, Plan, Planned};
use super::error::{DeployError, internal, parse_digest};
use super::prepare::check_stored_signature;
use crate::api;
use crate::names::RouteName;
use crate::route::{Route, Weight};
use crate::runtime::Runtime;
use crate::state::ShadowRecord;

/// Response headers a shadow compares unless told otherwise.
pub const DEFAULT_COMPARED: [&str; 1] = ["content-type"];

/// Copies `request.percent` of route `name`'s requests to the stored module `request.version`.
pub async fn set(
    rt: &Arc<Runtime>,
    name: &RouteName,
    request: api::ShadowRequest,
) -> Result<Route, DeployError> {
    let attributes = vec![
        crate::trace::KeyValue::new("handoff.route", name.as_str().to_owned()),
        crate::trace::KeyValue::new("handoff.version", request.version.clone()),
    ];
    crate::trace::change(
        rt.trace.as_deref(),
        "shadow start",
        attributes,
        set_now(rt, name, request),
    )
    .await
}

/// [`set`], within its span.
async fn set_now(
    rt: &Arc<Runtime>,
    name: &RouteName,
    request: api::ShadowRequest,
) -> Result<Route, DeployError> {
    let digest = parse_digest(&request.version)?;
    let percent = request.percent.unwrap_or(100.0);
    Weight::from_percent(percent).map_err(DeployError::InvalidLimits)?;
    let compare_headers = match request.compare_headers {
        Some(names) => names,
        None => DEFAULT_COMPARED.iter().map(|n| (*n).to_owned()).collect(),
    };
    for header in &compare_headers {
        http::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            DeployError::InvalidLimits(format!(
                "`{}` in compare_headers is not a header name",
                header.escape_debug()
            ))
        })?;
    }
    let applied = apply::change(rt, name, async |current: Current| {
        let record = current
            .stored()
            .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
        let mut module = rt.state.module(&digest).await.map_err(internal)?.ok_or_else(|| {
            DeployError::UnknownVersion(format!(
                "no module {digest} is stored; upload it first (POST /v1/modules, handoff upload)"
            ))
        })?;
        check_stored_signature(rt, &digest, &module).await?;
        module.pinned = false;
        let allow_outbound = request.allow_outbound.unwrap_or(false);
        let mut settings = record.settings.clone();
        if !allow_outbound {
            settings.outbound.clear();
        }
        let mut next = record.clone();
        next.shadow = Some(ShadowRecord {
            version: digest.to_string(),
            settings,
            percent,
            compare_headers: compare_headers.clone(),
            allow_outbound,
        });
        Ok(Planned::Change(Box::new(Plan {
            next: Some(next),
            modules: vec![(digest.clone(), module)],
            built: Vec::new(),
        })))
    })
    .await?;
    tracing::info!(route = name.as_str(), shadow = %digest, percent, "shadow started");
    applied
        .route
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))
}

/// Stops route `name`'s shadow; returns the route as it stood (with the shadow's last figures).
pub async fn clear(rt: &Arc<Runtime>, name: &RouteName) -> Result<Route, DeployError> {
    let route = vec![crate::trace::KeyValue::new(
        "handoff.route",
        name.as_str().to_owned(),
    )];
    crate::trace::change(
        rt.trace.as_deref(),
        "shadow stop",
        route,
        clear_now(rt, name),
    )
    .await
}

/// [`clear`], within its span.
async fn clear_now(rt: &Arc<Runtime>, name: &RouteName) -> Result<Route, DeployError> {
    let applied = apply::change(rt, name, async |current: Current| {
        let record = current
            .stored()
            .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
        if record.shadow.is_none() {
            return Ok(Planned::Unchanged);
        }
        let mut next = record.clone();
        next.shadow = None;
        Ok(Planned::Change(Box::new(Plan {
            next: Some(next),
            modules: Vec::new(),
            built: Vec::new(),
        })))
    })
    .await?;
    tracing::info!(route = name.as_str(), "shadow stopped");
    applied
        .previous
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))
}
