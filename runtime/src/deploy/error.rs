//! What a change reports: its outcome ([`Deployed`]) and why it was refused ([`DeployError`],
//! each a sentence a person can act on, with the HTTP status it is answered with).

use std::time::Duration;

use http::StatusCode;

use crate::digest::Digest;
use crate::engine::CompileError;
use crate::route::Route;

/// What a deploy, rollback or activation did.
#[derive(Clone)]
pub struct Deployed {
    /// The route as it now stands.
    pub route: Route,
    /// The stable version it replaced, if any.
    pub previous: Option<Digest>,
    /// Whether what serves changed (false: the same bytes and settings were already serving).
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
    #[error(
        "the component cannot be linked: {0}. handoff provides WASI 0.2 and wasi:http 0.2 to every component, and also wasi:http 0.3 and the WASI 0.3 clocks, random and cli to a WASI 0.3 `wasi:http/service` component"
    )]
    Unlinkable(String),
    /// It has no HTTP handler.
    #[error(
        "the component exports neither `wasi:http/incoming-handler@0.2.x` (a WASI 0.2 `wasi:http/proxy` component) nor `wasi:http/handler@0.3.x` (a WASI 0.3 `wasi:http/service` component), so it cannot serve requests: {0}"
    )]
    NoHandler(String),
    /// Compiling it took longer than the compile deadline; the compile was stopped.
    #[error(
        "compiling the component took longer than the compile-timeout of {}; nothing changed. Upload a smaller component, or raise the limit (`compile-timeout=` on the deploy, up to the server's --compile-timeout)",
        crate::units::format_duration(*.0)
    )]
    CompileTimeout(Duration),
    /// Compiling it needed more memory than allowed; the compile was stopped.
    #[error(
        "compiling the component needed more than the compile-memory limit of {}; nothing changed. Upload a smaller component, or raise the limit (`compile-memory=` on the deploy, up to the server's --compile-memory)",
        crate::units::format_bytes(*.0)
    )]
    CompileMemory(u64),
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
    /// The route has a rollout running; it must be promoted or aborted first.
    #[error(
        "route `{route}` has a rollout running (candidate {candidate}); promote or abort it first (handoff promote|abort {route})"
    )]
    RolloutRunning {
        /// The route.
        route: String,
        /// The rollout's candidate.
        candidate: String,
    },
    /// The route has no rollout running.
    #[error("route `{0}` has no rollout running; start one with POST /v1/routes/{0}/rollout")]
    NoRollout(String),
    /// No such version in the route's history or among uploaded modules.
    #[error("{0}")]
    UnknownVersion(String),
    /// A rollback with nothing to roll back to.
    #[error("route `{0}` has no earlier version to roll back to")]
    NothingToRollBackTo(String),
    /// A stored module can no longer be loaded.
    #[error("the stored module {0}; deploy it again")]
    ModuleUnavailable(String),
    /// It compiles but cannot be instantiated under the route's limits.
    #[error(
        "the component cannot be instantiated under this route's limits (max-memory, the instance pool's table size): {0}"
    )]
    Uninstantiable(String),
    /// A limit or setting asked for is out of range or unusable.
    #[error("{0}")]
    InvalidLimits(String),
    /// The server requires signed modules and this one has no valid signature.
    #[error(
        "this server requires signed modules and {0} was not stored with a signature by a trusted key; upload it again signed (handoff upload --sign KEY)"
    )]
    Unsigned(String),
    /// A module a route or its history still uses cannot be deleted.
    #[error(
        "module {0} is used by route {1} (serving or in its history); roll the route away from it and let its history move on, or delete the route"
    )]
    ModuleInUse(String, String),
    /// Another change to the route was recorded while this one was planned.
    #[error(
        "route `{0}` was changed by another request at the same moment; nothing changed, try again"
    )]
    Conflict(String),
    /// The cluster (NATS JetStream) cannot be reached, so nothing can be recorded.
    #[error(
        "this node cannot reach the cluster (NATS): {0}. It keeps serving what it has; nothing changed. Try again once the cluster is back"
    )]
    ClusterUnavailable(String),
    /// A host failure.
    #[error("the server failed while deploying; its log has the details")]
    Internal(String),
}

impl DeployError {
    /// The HTTP status this error is reported with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotWasm | Self::InvalidLimits(_) => StatusCode::BAD_REQUEST,
            Self::CoreModule
            | Self::Invalid(_)
            | Self::Unlinkable(_)
            | Self::NoHandler(_)
            | Self::CompileTimeout(_)
            | Self::CompileMemory(_)
            | Self::Uninstantiable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PrefixTaken { .. }
            | Self::NothingToRollBackTo(_)
            | Self::ModuleUnavailable(_)
            | Self::ModuleInUse(..)
            | Self::RolloutRunning { .. }
            | Self::NoRollout(_)
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unsigned(_) => StatusCode::FORBIDDEN,
            Self::UnknownRoute(_) | Self::UnknownVersion(_) => StatusCode::NOT_FOUND,
            Self::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<CompileError> for DeployError {
    fn from(error: CompileError) -> Self {
        match error {
            // A component that uses the component model's async without exporting a 0.3
            // handler was compiled for the 0.2 engine, which has no async: say what runs.
            CompileError::Invalid(e) if e.contains("component model async") => {
                Self::Invalid(format!(
                    "{e}. The component uses the component model's async but does not export `wasi:http/handler@0.3.x`: handoff runs WASI 0.2 `wasi:http/proxy` components (exporting `wasi:http/incoming-handler@0.2.x`) and WASI 0.3 `wasi:http/service` components (exporting `wasi:http/handler@0.3.x`)"
                ))
            }
            CompileError::Invalid(e) => Self::Invalid(e),
            CompileError::Unlinkable(e) => Self::Unlinkable(e),
            CompileError::NoHandler(e) => Self::NoHandler(e),
            CompileError::TooSlow(limit) => Self::CompileTimeout(limit),
            CompileError::TooMuchMemory(limit) => Self::CompileMemory(limit),
            CompileError::Failed(e) => Self::Internal(format!("compiling: {e}")),
        }
    }
}

/// A host failure, with its context for the log.
pub(crate) fn internal(error: impl std::fmt::Display) -> DeployError {
    DeployError::Internal(format!("{error:#}"))
}

/// Parses `sha256:<64 hex>`.
pub fn parse_digest(text: &str) -> Result<Digest, DeployError> {
    Digest::parse(text).ok_or_else(|| {
        DeployError::UnknownVersion(format!(
            "`{}` is not a version; versions look like sha256:<64 hex digits>",
            text.escape_debug()
        ))
    })
}
