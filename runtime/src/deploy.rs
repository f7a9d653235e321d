//! Deploy and delete: upload → validate → compile → pre-instantiate → activate, and the reverse.
//!
//! Everything that can fail does so before the route table is touched, so a failed deploy
//! never disturbs what serves. Compiling runs on the blocking pool, never on the async threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::Runtime;
use crate::engine::CompileError;
use crate::routes::{ActivateError, Prefix, Route, RouteName};
use crate::version::{Digest, Limits, RouteConfig, Version};

/// What a deploy did.
#[derive(Clone)]
pub struct Deployed {
    /// The route as it now stands.
    pub route: Route,
    /// The version it replaced, if any.
    pub previous: Option<Digest>,
    /// Whether the route's version or prefix changed (false: the same bytes were already active).
    pub changed: bool,
    /// Whether the route was new.
    pub created: bool,
    /// Compile and link time, when this deploy compiled.
    pub compile_time: Option<Duration>,
}

/// Why a deploy or delete was refused. Every message is a sentence a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The upload is not WebAssembly at all.
    #[error(
        "the upload is not a WebAssembly binary (it does not start with `\\0asm`); upload the `.wasm` file your build produced"
    )]
    NotWasm,
    /// A core module where a component is needed.
    #[error(
        "the upload is a core WebAssembly module, not a component; build for the `wasm32-wasip2` target, or wrap the module with `wasm-tools component new`"
    )]
    CoreModule,
    /// The engine rejected it.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// It imports something handoff does not provide.
    #[error("the component cannot be linked: {0}. handoff provides WASI 0.2 and wasi:http 0.2")]
    Unlinkable(String),
    /// It has no HTTP handler.
    #[error(
        "the component does not export `wasi:http/incoming-handler` (the `wasi:http/proxy` world), so it cannot serve requests: {0}"
    )]
    NoHandler(String),
    /// Another route serves the requested prefix.
    #[error(
        "the prefix `{prefix}` is already served by route `{owner}`; choose another prefix or delete that route first"
    )]
    PrefixTaken {
        /// The prefix asked for.
        prefix: String,
        /// The route that has it.
        owner: String,
    },
    /// No such route.
    #[error("there is no route named `{0}`")]
    UnknownRoute(String),
    /// A host failure.
    #[error("the server failed while deploying; its log has the details")]
    Internal(String),
}

impl DeployError {
    /// The HTTP status this error is reported with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotWasm => StatusCode::BAD_REQUEST,
            Self::CoreModule | Self::Invalid(_) | Self::Unlinkable(_) | Self::NoHandler(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::PrefixTaken { .. } => StatusCode::CONFLICT,
            Self::UnknownRoute(_) => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<CompileError> for DeployError {
    fn from(error: CompileError) -> Self {
        match error {
            CompileError::Invalid(e) => Self::Invalid(e),
            CompileError::Unlinkable(e) => Self::Unlinkable(e),
            CompileError::NoHandler(e) => Self::NoHandler(e),
        }
    }
}

/// Checks the 8-byte preamble, so the common mistakes get a precise message.
fn check_preamble(bytes: &[u8]) -> Result<(), DeployError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(DeployError::NotWasm);
    }
    if bytes[4..8] == CORE_VERSION {
        return Err(DeployError::CoreModule);
    }
    Ok(())
}

/// What to deploy: the component's bytes and where and how it serves.
pub struct DeployRequest {
    /// The route to create or replace.
    pub name: RouteName,
    /// Its path prefix; `None` keeps the route's current one (`/{name}` for a new route).
    pub prefix: Option<Prefix>,
    /// Its configuration; `None` keeps the route's current one (none for a new route).
    pub config: Option<RouteConfig>,
    /// The component.
    pub bytes: Bytes,
}

/// Deploys a component to a route (creating it, or replacing its version). Returns once the new
/// version is compiled, pre-instantiated and active.
pub async fn deploy(rt: &Arc<Runtime>, request: DeployRequest) -> Result<Deployed, DeployError> {
    let DeployRequest {
        name,
        prefix,
        config,
        bytes,
    } = request;
    check_preamble(&bytes)?;
    let digest = Digest::of(&bytes);
    let current = rt.routes.snapshot().get(&name).cloned();
    let config = config
        .or_else(|| current.as_ref().map(|r| r.active.config.clone()))
        .unwrap_or_else(|| Vec::new().into());
    let same_bytes = current.as_ref().filter(|r| r.active.digest == digest);
    let same_version = same_bytes.filter(|r| r.active.config == config);
    if let Some(route) = same_version
        && prefix.as_ref().is_none_or(|p| *p == route.prefix)
    {
        tracing::info!(route = name.as_str(), version = %digest, "deploy unchanged: this version is already active");
        return Ok(Deployed {
            route: route.clone(),
            previous: Some(digest),
            changed: false,
            created: false,
            compile_time: None,
        });
    }
    let (version, compile_time) = match (same_version, same_bytes) {
        // Same version, new prefix: moves as it is.
        (Some(route), _) => (route.active.clone(), None),
        // Same bytes, new config: the compiled component is reused.
        (None, Some(route)) => {
            let old = &route.active;
            let version = Version::new(
                digest,
                name.shared(),
                old.pre.clone(),
                old.limits,
                config,
                old.size_bytes,
                old.compile_time,
            );
            (Arc::new(version), None)
        }
        (None, None) => {
            let (version, took) = compile(rt, &name, digest, config, bytes).await?;
            (version, Some(took))
        }
    };
    let (route, previous) = rt
        .routes
        .activate(&name, prefix.clone(), version)
        .await
        .map_err(
            |ActivateError::PrefixTaken { owner }| DeployError::PrefixTaken {
                prefix: prefix.map(|p| p.as_str().to_owned()).unwrap_or_default(),
                owner,
            },
        )?;
    tracing::info!(
        route = name.as_str(), prefix = route.prefix.as_str(), version = %route.active.digest,
        previous = previous.as_ref().map(|p| p.digest.as_str()),
        compile_ms = compile_time.map(|t| t.as_secs_f64() * 1e3),
        "version activated"
    );
    let previous_digest = previous.as_ref().map(|p| p.digest.clone());
    if let Some(old) = previous {
        rt.retire(name.clone(), old);
    }
    Ok(Deployed {
        route,
        previous: previous_digest,
        changed: true,
        created: current.is_none(),
        compile_time,
    })
}

async fn compile(
    rt: &Arc<Runtime>,
    name: &RouteName,
    digest: Digest,
    config: RouteConfig,
    bytes: Bytes,
) -> Result<(Arc<Version>, Duration), DeployError> {
    let _slot = rt
        .compile_slots
        .acquire()
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))?;
    let started = Instant::now();
    let size = bytes.len();
    let engine_rt = rt.clone();
    let pre = tokio::task::spawn_blocking(move || engine_rt.engine.compile(&bytes))
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))??;
    let took = started.elapsed();
    let limits = Limits {
        max_memory_bytes: usize::try_from(rt.config.max_memory_bytes).unwrap_or(usize::MAX),
        request_timeout: rt.config.request_timeout,
    };
    let version = Version::new(digest, name.shared(), pre, limits, config, size, took);
    tracing::info!(
        route = name.as_str(), version = %version.digest, size_bytes = size,
        compile_ms = took.as_secs_f64() * 1e3, "version compiled"
    );
    Ok((Arc::new(version), took))
}

/// Deletes route `name`: stops routing to it at once, drains its version in the background.
pub async fn delete(rt: &Arc<Runtime>, name: &RouteName) -> Result<Route, DeployError> {
    let route = rt
        .routes
        .remove(name)
        .await
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
    tracing::info!(route = name.as_str(), version = %route.active.digest, "route deleted");
    rt.retire(name.clone(), route.active.clone());
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_catches_common_mistakes() {
        assert!(matches!(check_preamble(b""), Err(DeployError::NotWasm)));
        assert!(matches!(
            check_preamble(b"<html>hello</html>"),
            Err(DeployError::NotWasm)
        ));
        assert!(matches!(
            check_preamble(b"\0asm\x01\0\0\0"),
            Err(DeployError::CoreModule)
        ));
        assert!(check_preamble(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
