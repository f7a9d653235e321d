//! Building responses: text, JSON and bare-status helpers, and [`ResponseExt`] to adjust a
//! response in a chain. Pure constructors; nothing is sent from here.

use std::fmt;

use http::StatusCode;
use http::header::{self, HeaderValue, IntoHeaderName};

use crate::{Body, Response};

/// A 200 response with `content-type: text/plain; charset=utf-8`. The body may be streaming.
///
/// ```
/// let response = handoff_sdk::response::text("hello\n");
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
/// ```
pub fn text(body: impl Into<Body>) -> Response {
    with_type(body.into(), "text/plain; charset=utf-8")
}

/// A 200 response with `content-type: text/html; charset=utf-8`.
pub fn html(body: impl Into<Body>) -> Response {
    with_type(body.into(), "text/html; charset=utf-8")
}

/// A 200 response with `value` serialized as its JSON body and `content-type:
/// application/json`. Fails (a 500) only if `value` cannot be serialized, e.g. a map with
/// non-string keys.
///
/// ```
/// use handoff_sdk::{ResponseExt, StatusCode};
///
/// let response = handoff_sdk::response::json(&serde_json::json!({"id": 7}))?
///     .with_status(StatusCode::CREATED);
/// assert_eq!(response.status(), StatusCode::CREATED);
/// assert_eq!(response.into_body().text()?, r#"{"id":7}"#);
/// # Ok::<(), handoff_sdk::Error>(())
/// ```
#[cfg(feature = "json")]
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> crate::Result<Response> {
    let bytes = serde_json::to_vec(value)?;
    Ok(with_type(bytes.into(), "application/json"))
}

/// A response with `status` and an empty body, e.g. `204 No Content`.
///
/// ```
/// let response = handoff_sdk::response::status(handoff_sdk::StatusCode::NO_CONTENT);
/// assert_eq!(response.status(), 204);
/// ```
pub fn status(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

fn with_type(body: Body, content_type: &'static str) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Chainable adjustments to an [`http::Response`].
///
/// ```
/// use handoff_sdk::{ResponseExt, StatusCode, response};
///
/// let response = response::text("created\n")
///     .with_status(StatusCode::CREATED)
///     .with_header("location", "/items/7");
/// assert_eq!(response.status(), StatusCode::CREATED);
/// assert_eq!(response.headers()["location"], "/items/7");
/// ```
pub trait ResponseExt: Sized {
    /// The response with `status` instead.
    fn with_status(self, status: StatusCode) -> Self;

    /// The response with header `name` set to `value` (replacing earlier values).
    ///
    /// # Panics
    ///
    /// If `name` (given as a string) or `value` is not a valid header name or value. Use
    /// [`http::HeaderValue::try_from`] first for values that come from the request.
    fn with_header<K, V>(self, name: K, value: V) -> Self
    where
        K: IntoHeaderName,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Debug;
}

impl<B> ResponseExt for http::Response<B> {
    fn with_status(mut self, status: StatusCode) -> Self {
        *self.status_mut() = status;
        self
    }

    fn with_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: IntoHeaderName,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Debug,
    {
        let value = value
            .try_into()
            .unwrap_or_else(|e| panic!("invalid header value: {e:?}"));
        self.headers_mut().insert(name, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_set_content_types() {
        assert_eq!(
            html("<p>").headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let response = text(Body::stream(["a", "b"]));
        assert_eq!(response.into_body().text().unwrap(), "ab");
        let empty = status(StatusCode::ACCEPTED);
        assert!(empty.headers().is_empty());
        assert_eq!(empty.body().as_bytes().unwrap().len(), 0);
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_serializes_and_fails_only_on_unserializable_values() {
        let response = json(&[1, 2]).unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.into_body().text().unwrap(), "[1,2]");

        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1u8], 1);
        let error = json(&map).unwrap_err();
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    #[should_panic(expected = "invalid header value")]
    fn invalid_header_values_panic() {
        let _ = text("x").with_header("x-bad", "line\nbreak");
    }
}
