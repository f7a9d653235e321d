//! Outbound HTTP for `async` (WASI 0.3) handlers: [`send`] a [`Request`] to another service and
//! await its [`Response`], whose body streams in as it is read.
//!
//! The host lets a route reach only what its allow-list names (`allow-outbound`), and by default
//! only public addresses. A refused call fails with a [`SendError`] that says which rule refused
//! it; as a handler error it answers 502 Bad Gateway and its message goes to the route's log.
//!
//! ```
//! use handoff_sdk::{Request, Response, Result, client, response};
//!
//! async fn handle(_req: Request) -> Result<Response> {
//!     let upstream = client::get("http://api.example.com/price").await?;
//!     let price = upstream.into_body().read_text().await?;
//!     Ok(response::text(format!("price: {price}\n")))
//! }
//!
//! // On the host, a test answers for the other service:
//! client::testing::serve("api.example.com", |_req| async { Ok(response::text("42")) });
//! let req = http::Request::get("/").body(handoff_sdk::Body::empty()).unwrap();
//! let answer = handoff_sdk::block_on(handle(req)).unwrap();
//! assert_eq!(answer.into_body().text().unwrap(), "price: 42\n");
//! ```
//!
//! The client is for `async` handlers ([`export!`](crate::export)`(async ..)`): it imports
//! `wasi:http/client@0.3`, which a WASI 0.2 component cannot.

use std::fmt;

use http::StatusCode;

use crate::{Body, Error, Request, Response, Result};

/// Why an outbound call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The route's allow-list (`allow-outbound`) does not name the destination.
    NotAllowed,
    /// The destination resolves only to loopback, private or other non-public addresses, which
    /// the server does not let guests reach.
    PrivateAddress,
    /// The request itself is not one the client can send (e.g. no absolute URL).
    BadRequest,
    /// The destination could not be reached or answered with something that is not HTTP
    /// (DNS, connection, TLS or protocol errors, timeouts).
    Unreachable,
}

/// An outbound call that failed: where it went, why, and the host's detail. As a handler
/// [`Error`] it answers 502 Bad Gateway (400 for [`Refusal::BadRequest`]); find it again with
/// `error.as_std().downcast_ref::<SendError>()`.
#[derive(Debug, Clone)]
pub struct SendError {
    destination: String,
    refusal: Refusal,
    detail: String,
}

impl SendError {
    pub(crate) fn new(
        destination: impl Into<String>,
        refusal: Refusal,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            destination: destination.into(),
            refusal,
            detail: detail.into(),
        }
    }

    /// Why the call failed.
    pub fn refusal(&self) -> Refusal {
        self.refusal
    }

    /// The destination (`scheme://authority`) the call was for.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            destination,
            detail,
            ..
        } = self;
        match self.refusal {
            Refusal::NotAllowed => write!(
                f,
                "outbound HTTP to {destination} denied: the route's allow-list does not name it \
                 (deploy with allow-outbound={destination})"
            ),
            Refusal::PrivateAddress => write!(
                f,
                "outbound HTTP to {destination} refused: it resolves only to loopback, private or \
                 other non-public addresses (name the IP address in allow-outbound, or start the \
                 server with --outbound-private)"
            ),
            Refusal::BadRequest => write!(f, "outbound request not sent: {detail}"),
            Refusal::Unreachable => write!(f, "outbound HTTP to {destination} failed: {detail}"),
        }
    }
}

impl std::error::Error for SendError {}

impl SendError {
    /// The handler error it becomes: 502 Bad Gateway, or 400 for [`Refusal::BadRequest`].
    fn into_error(self) -> Error {
        let status = match self.refusal {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        Error::from(self).set_status(status)
    }
}

/// Sends `req` and awaits the response's status and headers; its body streams in as the
/// handler reads it ([`Body::read_bytes`], or pass it on as a response body unread). The
/// request's URI must be absolute (`http://host/path`); its body is sent as it is produced
/// (a [`Body::stream_async`] body streams). A status like 404 or 500 from the other service is
/// a response, not an error; errors are calls that got no response ([`SendError`]).
pub async fn send(req: Request) -> Result<Response> {
    let destination = destination(&req).map_err(SendError::into_error)?;
    imp::send(req, destination)
        .await
        .map_err(SendError::into_error)
}

/// `GET url`: [`send`] with an empty body.
pub async fn get(url: impl AsRef<str>) -> Result<Response> {
    let url = url.as_ref();
    let req = http::Request::get(url)
        .body(Body::empty())
        .map_err(|error| {
            SendError::new(
                url,
                Refusal::BadRequest,
                format!("{url:?} is not a URL: {error}"),
            )
            .into_error()
        })?;
    send(req).await
}

/// `scheme://authority` of an absolute request URI, or the error that it is not one.
fn destination(req: &Request) -> Result<String, SendError> {
    let uri = req.uri();
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => Ok(format!("{scheme}://{authority}")),
        _ => Err(SendError::new(
            uri.to_string(),
            Refusal::BadRequest,
            format!("an outbound request needs an absolute URL (http://host/path); got {uri:?}"),
        )),
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use wasip3::http::types::ErrorCode;
    use wasip3::http_compat::{http_from_wasi_response, http_into_wasi_request};

    use super::{Refusal, SendError};
    use crate::{Body, Request, Response};

    pub(super) async fn send(req: Request, destination: String) -> Result<Response, SendError> {
        let failed = |code: ErrorCode| {
            let refusal = match code {
                ErrorCode::HttpRequestDenied => Refusal::NotAllowed,
                ErrorCode::DestinationIpProhibited => Refusal::PrivateAddress,
                ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
                    Refusal::BadRequest
                }
                _ => Refusal::Unreachable,
            };
            SendError::new(destination.clone(), refusal, format!("{code:?}"))
        };
        let req = http_into_wasi_request(req).map_err(failed)?;
        let response = wasip3::http::client::send(req).await.map_err(failed)?;
        let response = http_from_wasi_response(response).map_err(failed)?;
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(parts, Body::from_http_body(body)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Refusal, SendError};
    use crate::{Request, Response};

    pub(super) async fn send(req: Request, destination: String) -> Result<Response, SendError> {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        let Some(handler) = authority.and_then(|a| super::testing::handler(&a)) else {
            return Err(SendError::new(
                destination,
                Refusal::NotAllowed,
                "no test handler serves it (client::testing::serve)",
            ));
        };
        handler(req).await.map_err(|error| {
            SendError::new(destination, Refusal::Unreachable, format!("{error:#}"))
        })
    }
}

/// For unit tests on the host: answer outbound calls with handlers of the test's own.
///
/// Off wasm, [`send`] reaches only authorities given a handler with [`serve`](testing::serve)
/// on the calling thread; any other fails as a destination missing from the allow-list does
/// ([`Refusal::NotAllowed`]). An `Err` from a handler fails the call as an unreachable
/// destination would ([`Refusal::Unreachable`]); answer with an error status instead to test
/// how a handler treats the other service's errors.
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;

    use crate::{Request, Response, Result};

    type Handler = Rc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Result<Response>>>>>;

    thread_local! {
        static SERVED: RefCell<HashMap<String, Handler>> = RefCell::default();
    }

    /// Answers this thread's outbound calls to `authority` (`host` or `host:port`, as in the
    /// URL) with `handler`, replacing the handler it had.
    pub fn serve<F, Fut>(authority: &str, handler: F)
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        let handler: Handler = Rc::new(move |req| Box::pin(handler(req)));
        SERVED.with(|served| served.borrow_mut().insert(authority.to_owned(), handler));
    }

    /// Forgets every handler this thread installed.
    pub fn reset() {
        SERVED.with(|served| served.borrow_mut().clear());
    }

    pub(super) fn handler(authority: &str) -> Option<Handler> {
        SERVED.with(|served| served.borrow().get(authority).cloned())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::{block_on, response};

    #[test]
    fn a_call_reaches_its_test_handler_with_method_path_and_a_streamed_body() {
        testing::serve("upstream.test:8080", |req: Request| async move {
            let line = format!("{} {}", req.method(), req.uri().path());
            let body = req.into_body().read_text().await?;
            Ok(response::text(format!("{line}: {body}")))
        });
        let req = http::Request::post("http://upstream.test:8080/items")
            .body(Body::stream(["a", "b", "c"].map(String::from)))
            .unwrap();
        let response = block_on(send(req)).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            block_on(response.into_body().read_text()).unwrap(),
            "POST /items: abc"
        );
        testing::reset();
    }

    #[test]
    fn a_destination_nobody_serves_is_refused_as_the_allow_list_would() {
        testing::reset();
        let error = block_on(get("http://elsewhere.test/x")).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        let sent = error.as_std().downcast_ref::<SendError>();
        let sent = sent.expect("the SendError is kept");
        assert_eq!(sent.refusal(), Refusal::NotAllowed);
        assert_eq!(sent.destination(), "http://elsewhere.test");
        assert_eq!(
            error.to_string(),
            "outbound HTTP to http://elsewhere.test denied: the route's allow-list does not \
             name it (deploy with allow-outbound=http://elsewhere.test)"
        );
    }

    #[test]
    fn a_relative_url_is_a_bad_request_that_says_so() {
        let error = block_on(get("/only/a/path")).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(
            error.to_string().contains("needs an absolute URL"),
            "{error}"
        );
    }

    #[test]
    fn every_refusal_says_what_to_change() {
        let private = SendError::new("http://db.internal", Refusal::PrivateAddress, "");
        assert!(
            private.to_string().contains("--outbound-private"),
            "{private}"
        );
        let down = SendError::new(
            "http://down.test",
            Refusal::Unreachable,
            "ConnectionRefused",
        );
        assert_eq!(
            down.to_string(),
            "outbound HTTP to http://down.test failed: ConnectionRefused"
        );
    }
}
