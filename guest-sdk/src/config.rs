//! The route's deploy-time configuration. The host hands each route's `KEY=VALUE` pairs
//! (`PUT /v1/routes/{name}?config=KEY=VALUE`) to the guest as its environment variables, and
//! nothing else: these functions read them and never write them.
//!
//! Keys starting with `HANDOFF_` are read by the SDK itself: [`HANDOFF_ROUTE_PREFIX`]
//! (the route's prefix, for the router) and [`HANDOFF_LOG`] (the lowest log level written).
//!
//! [`HANDOFF_ROUTE_PREFIX`]: ROUTE_PREFIX_KEY
//! [`HANDOFF_LOG`]: crate::log::LEVEL_KEY
//!
//! ```
//! let greeting = handoff_sdk::config::get_or("GREETING", "Hello");
//! # assert_eq!(greeting, "Hello");
//! ```

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The key that tells the SDK the route's path prefix, e.g. `HANDOFF_ROUTE_PREFIX=/api/v1`, for
/// [`RequestExt::route_path`](crate::RequestExt::route_path) and the [`Router`](crate::Router).
/// Without it, the prefix is the path's first segment, which is right for a route deployed at
/// its default prefix `/{name}`; set it for a longer prefix, or `/`.
pub const ROUTE_PREFIX_KEY: &str = "HANDOFF_ROUTE_PREFIX";

/// The value of `key`, if the route was deployed with it (and it is valid UTF-8).
pub fn get(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The value of `key`, or `default` when the route was deployed without it.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_owned())
}

/// The value of `key`, or an error (a 500: the deployment is incomplete, not the request)
/// that says how to set it.
pub fn require(key: &str) -> Result<String> {
    get(key).ok_or_else(|| {
        Error::msg(format!(
            "config `{key}` is not set; deploy the route with `config={key}=...`"
        ))
    })
}

/// The value of `key` parsed as `T`; `Ok(None)` when unset, a 500 naming the key when it does
/// not parse.
pub fn get_as<T>(key: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    get(key)
        .map(|value| {
            value.parse().map_err(|e| {
                Error::msg(format!(
                    "config `{key}` has an invalid value `{}`: {e}",
                    value.escape_debug()
                ))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test process's environment stands in for the route's config: cargo sets
    // CARGO_PKG_NAME when it runs tests, and nothing sets the UNSET key.
    const SET: &str = "CARGO_PKG_NAME";
    const UNSET: &str = "HANDOFF_SDK_TEST_SURELY_UNSET";

    #[test]
    fn reads_the_environment() {
        assert_eq!(get(SET).as_deref(), Some("handoff-sdk"));
        assert_eq!(get(UNSET), None);
        assert_eq!(get_or(UNSET, "default"), "default");
        assert_eq!(require(SET).unwrap(), "handoff-sdk");
    }

    #[test]
    fn missing_or_invalid_config_is_a_server_error_that_names_the_key() {
        let error = require(UNSET).unwrap_err();
        assert_eq!(error.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error.to_string().contains(&format!("config={UNSET}=")));
        assert_eq!(get_as::<u32>(UNSET).unwrap(), None);
        let error = get_as::<u32>(SET).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("config `CARGO_PKG_NAME` has an invalid value")
        );
    }
}
