//! Typed extractors of the admin handlers: each reads one part of the request (the route name
//! or module version in the URL, the query string) and is rejected with the problem document a
//! person can act on (400 and a sentence naming what is wrong), so a handler takes what it
//! needs already checked.

use axum::extract::{FromRequestParts, Path, Query};
use http::StatusCode;
use http::request::Parts;

use super::nodes::Wait;
use crate::api::Problem;
use crate::deploy;
use crate::digest::Digest;
use crate::names::RouteName;

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// The route name in the URL (`/v1/routes/{name}`...), validated.
pub(super) struct Named(pub(super) RouteName);

impl<S: Send + Sync> FromRequestParts<S> for Named {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(format!("the route name in the URL is unreadable: {e}")))?;
        RouteName::parse(&name).map(Self).map_err(bad)
    }
}

/// The route name and the action in the URL (`/v1/routes/{name}/rollout/{action}`); the route
/// name validated, the action as given.
pub(super) struct NamedAction(pub(super) RouteName, pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for NamedAction {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path((name, action)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(format!("the URL is unreadable: {e}")))?;
        let name = RouteName::parse(&name).map_err(bad)?;
        Ok(Self(name, action))
    }
}

/// The module version in the URL (`/v1/modules/{version}`): a full digest.
pub(super) struct ModuleVersion(pub(super) Digest);

impl<S: Send + Sync> FromRequestParts<S> for ModuleVersion {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(version) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(format!("the version in the URL is unreadable: {e}")))?;
        Ok(Self(deploy::parse_digest(&version)?))
    }
}

/// The query string's `key=value` pairs, in order (a key may repeat).
pub(super) struct Pairs(pub(super) Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Pairs {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(format!("the query string is unreadable: {}", e.body_text())))?;
        Ok(Self(pairs))
    }
}

/// The `wait` key of a query string that takes no other key (`wait=all|local|none`).
pub(super) struct WaitOnly(pub(super) Wait);

impl<S: Send + Sync> FromRequestParts<S> for WaitOnly {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Pairs(pairs) = Pairs::from_request_parts(parts, state).await?;
        if let Some((key, _)) = pairs.iter().find(|(k, _)| k != "wait") {
            return Err(bad(format!(
                "unknown query parameter `{}`; this takes only `wait=all|local|none`",
                key.escape_debug()
            )));
        }
        Wait::of_query(&pairs).map(Self)
    }
}
