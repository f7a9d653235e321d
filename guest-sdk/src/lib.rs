//! Write a handoff request handler as a plain Rust function and export it with one line.
//!
//! A handoff guest is a `wasi:http/proxy` component. This crate hides the component plumbing
//! (no WIT, no wit-bindgen in your crate): you write `fn(Request) -> Result<Response>` with the
//! [`http`] crate's types, and [`export!`] turns it into the component's
//! `wasi:http/incoming-handler` export.
//!
//! ```
//! use handoff_sdk::{Request, RequestExt, Response, Result, response};
//!
//! fn handle(req: Request) -> Result<Response> {
//!     let query = req.query();
//!     let name = query.get("name").unwrap_or("world");
//!     Ok(response::text(format!("Hello, {name}!\n")))
//! }
//!
//! handoff_sdk::export!(handle);
//!
//! // The same function, unit-tested on the host:
//! let req = http::Request::get("/hello?name=Ada").body(handoff_sdk::Body::empty()).unwrap();
//! assert_eq!(handle(req).unwrap().into_body().text().unwrap(), "Hello, Ada!\n");
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-wasip2` and deploy the `.wasm` file to a route.
//!
//! # What the SDK does for you
//!
//! * **Requests**: the method, URI, headers and a lazily read [`Body`]
//!   ([`Body::bytes`], [`Body::text`], [`Body::json`]). [`RequestExt`] adds [`query`] parsing,
//!   [router](Router) path parameters and the path relative to the route.
//! * **Responses**: [`response::text`], [`response::json`], [`response::status`], and
//!   streaming bodies ([`Body::stream`], [`Body::from_writer`]) whose chunks reach the client
//!   as they are produced.
//! * **Errors**: anything that implements `std::error::Error` converts into [`Error`] with `?`.
//!   An `Err` from the handler becomes a response: a 5xx with a short body that says nothing
//!   internal (the error chain goes to stderr, which the host logs under the route and
//!   version), or a 4xx whose body says what the client must fix ([`Error::bad_request`]).
//! * **Logs**: [`log::info!`] and friends write level-tagged lines to stderr.
//! * **Configuration**: [`config::get`] reads the route's deploy-time config.
//! * **Key-value storage**: [`kv::Bucket`], the route's own bucket (shared by all its versions)
//!   and shared buckets it was granted; counters, compare-and-swap, TTL, and typed JSON
//!   documents with a schema version for two live versions on one set of data.
//! * **Time**: [`sleep`] blocks the guest without burning CPU time.
//! * **Outbound HTTP** (`async` handlers): [`client::send`] and [`client::get`] call other
//!   services, bodies streamed both ways, within the route's allow-list.
//!
//! Each request runs in a fresh instance of the component unless the route is deployed with
//! `reuse`: then globals may outlive a request, so keep nothing in memory that one request
//! must not see from another.
//!
//! # WASI 0.2 and WASI 0.3
//!
//! `export!(handle)` exports a blocking `fn` as a WASI 0.2 `wasi:http/proxy` component.
//! `export!(async handle)` exports an `async fn(Request) -> Result<Response>` as a WASI 0.3
//! `wasi:http/service` component: it awaits its request body ([`Body::read_bytes`]), timers
//! ([`time::sleep`]) and any other futures, joins several at once, streams a body while
//! computing it ([`Body::stream_async`]), and routes to async handlers ([`Router::serve`]).
//! Config, logs and key-value work the same in both; outbound HTTP ([`client`]) is for async
//! handlers. Both build for `wasm32-wasip2`, and a unit
//! test runs an async handler on the host with [`block_on`].
//!
//! # Testing on the host
//!
//! Everything except the wasm glue compiles for the host, so handler logic is unit-testable
//! with plain `cargo test`: build an [`http::Request`] with a [`Body`], call your handler, and
//! read the response body with [`Body::text`]. (Add `crate-type = ["cdylib", "rlib"]` if your
//! crate is a `cdylib` with tests in another crate.)
//!
//! [`query`]: RequestExt::query
#![deny(missing_docs)]

mod body;
pub mod client;
pub mod config;
mod error;
mod exec;
pub mod kv;
pub mod log;
mod request;
pub mod response;
mod router;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod wasi;
#[cfg(target_arch = "wasm32")]
mod wasi3;

use std::time::Duration;

pub use body::{Body, BodySender, BodyWriter};
pub use bytes::{self, Bytes};
pub use error::{Context, Error};
#[cfg(not(target_arch = "wasm32"))]
pub use exec::block_on;
pub use http::{self, HeaderMap, HeaderValue, Method, StatusCode, header};
pub use request::{Params, Query, RequestExt};
pub use response::ResponseExt;
pub use router::Router;

/// An incoming HTTP request. Its body is read lazily, when the handler asks for it.
pub type Request = http::Request<Body>;

/// An HTTP response. Its body can be complete ([`Body::from`]) or produced while it is sent
/// ([`Body::stream`]).
pub type Response = http::Response<Body>;

/// The result of a handler: `Ok` with a response, or an [`Error`] the SDK turns into one.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What most handlers need, for `use handoff_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Body, Context, Error, Method, Request, RequestExt, Response, ResponseExt, Result, Router,
        StatusCode, response,
    };
}

/// Blocks the guest for `duration` without using its CPU budget, e.g. between the chunks of a
/// streaming body. On the host (in unit tests) it is [`std::thread::sleep`].
///
/// ```
/// handoff_sdk::sleep(std::time::Duration::from_millis(1));
/// ```
pub fn sleep(duration: Duration) {
    #[cfg(target_arch = "wasm32")]
    wasi::sleep(duration);
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::sleep(duration);
}

/// Exports a handler function: `export!(handle)` for a `fn` (a WASI 0.2
/// `wasi:http/incoming-handler`), `export!(async handle)` for an `async fn` (a WASI 0.3
/// `wasi:http/handler`).
///
/// The handler is any `fn(Request) -> Result<Response>` (a function path or a closure that
/// captures nothing). Invoke the macro once, at the crate root of a `cdylib` crate built for
/// `wasm32-wasip2`:
///
/// ```
/// fn handle(_req: handoff_sdk::Request) -> handoff_sdk::Result<handoff_sdk::Response> {
///     Ok(handoff_sdk::response::text("ok\n"))
/// }
///
/// handoff_sdk::export!(handle);
/// ```
///
/// Per request, the generated export converts the `wasi:http` request into a [`Request`],
/// calls the handler, turns an `Err` into a response ([`Error::into_response`], logging 5xx
/// errors to stderr), sends the status and headers, then writes the body, chunk by chunk for a
/// streaming body. On other targets than wasm32 the macro only checks the handler's type, so
/// the crate still builds and tests on the host.
///
/// # WASI 0.3: `export!(async handle)`
///
/// With `async`, the handler is an `async fn(Request) -> Result<Response>` and the component
/// is a WASI 0.3 `wasi:http/service`: the handler awaits its request body
/// ([`Body::read_bytes`]), timers ([`time::sleep`]) and other async work while the instance
/// serves other requests (when the host lets one instance serve several at once), and
/// [`Body::stream_async`] sends a body while computing it.
///
/// ```
/// use handoff_sdk::{Request, Response, Result, response};
///
/// async fn handle(req: Request) -> Result<Response> {
///     let body = req.into_body().read_text().await?;
///     Ok(response::text(format!("read {} bytes\n", body.len())))
/// }
///
/// handoff_sdk::export!(async handle);
///
/// let req = http::Request::post("/").body(handoff_sdk::Body::from("hello")).unwrap();
/// let response = handoff_sdk::block_on(handle(req)).unwrap();
/// assert_eq!(response.into_body().text().unwrap(), "read 5 bytes\n");
/// ```
#[macro_export]
macro_rules! export {
    (async $handler:expr $(,)?) => {
        // Checks the handler's shape on every target (and keeps it from being dead code).
        const _: () = {
            #[allow(dead_code)]
            fn check() {
                $crate::__private::async_handler($handler);
            }
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct HandoffExport;

            impl $crate::__private::wasip3::exports::http::handler::Guest for HandoffExport {
                async fn handle(
                    request: $crate::__private::wasip3::http::types::Request,
                ) -> ::std::result::Result<
                    $crate::__private::wasip3::http::types::Response,
                    $crate::__private::wasip3::http::types::ErrorCode,
                > {
                    $crate::__private::serve_async(request, $handler).await
                }
            }

            $crate::__private::wasip3::http::service::export!(
                HandoffExport with_types_in $crate::__private::wasip3
            );
        };
    };
    ($handler:expr $(,)?) => {
        // Checks the handler's shape on every target; on the host, where nothing calls it, this
        // also keeps it from counting as dead code.
        const _: fn($crate::Request) -> $crate::Result<$crate::Response> = $handler;

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct HandoffExport;

            impl $crate::__private::wasip2::exports::http::incoming_handler::Guest
                for HandoffExport
            {
                fn handle(
                    request: $crate::__private::wasip2::http::types::IncomingRequest,
                    out: $crate::__private::wasip2::http::types::ResponseOutparam,
                ) {
                    $crate::__private::serve(request, out, $handler)
                }
            }

            $crate::__private::wasip2::http::proxy::export!(
                HandoffExport with_types_in $crate::__private::wasip2
            );
        };
    };
}

/// What [`export!`] expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasi::serve;
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasi3::serve as serve_async;
    #[cfg(target_arch = "wasm32")]
    pub use wasip2;
    #[cfg(target_arch = "wasm32")]
    pub use wasip3;

    /// Accepts only an `async fn(Request) -> Result<Response>`.
    pub fn async_handler<F, Fut>(_: F)
    where
        F: FnOnce(crate::Request) -> Fut,
        Fut: std::future::Future<Output = crate::Result<crate::Response>>,
    {
    }
}
