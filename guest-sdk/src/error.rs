//! The handler error: any `std::error::Error` converts into it with `?`, and it knows the
//! status it answers with (500 unless made otherwise). It renders itself as a response; it
//! never writes logs (the export glue does that, once per failed request).

use std::fmt;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::{Body, Response};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler error, and the status it becomes.
///
/// Every `std::error::Error + Send + Sync + 'static` converts into it, so `?` works on the
/// results of most libraries; [`Error::msg`] makes one from a message. Returned from a
/// handler, it becomes a response ([`Error::into_response`]):
///
/// * a **5xx** (the default is 500) answers with the status's reason phrase only and nothing
///   internal; the export glue writes the full error chain to stderr, which the host logs
///   under the route and version;
/// * a **4xx** ([`Error::bad_request`], [`Error::with_status`]) answers with the message, which
///   should say exactly what the client must fix.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself (that would conflict
/// with the blanket conversion).
///
/// ```
/// use handoff_sdk::{Error, Result, StatusCode};
///
/// fn port(text: &str) -> Result<u16> {
///     let port: u16 = text.parse()?; // ParseIntError → Error (500)
///     if port == 0 {
///         return Err(Error::bad_request("port must not be 0"));
///     }
///     Ok(port)
/// }
///
/// assert_eq!(port("8080").unwrap(), 8080);
/// assert_eq!(port("0").unwrap_err().status(), StatusCode::BAD_REQUEST);
/// assert_eq!(port("x").unwrap_err().status(), StatusCode::INTERNAL_SERVER_ERROR);
/// ```
pub struct Error {
    status: StatusCode,
    /// Extra response headers, e.g. `Allow` on a 405 (empty, and unallocated, by default).
    headers: HeaderMap,
    inner: BoxError,
}

impl Error {
    /// An error with `message` that answers 500.
    pub fn msg(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers: HeaderMap::new(),
            inner: Box::new(Message(message)),
        }
    }

    /// An error that answers `status` with `message`. For 4xx statuses the message is the
    /// response body, so say what the client must change; for 5xx it is only logged.
    pub fn with_status(
        status: StatusCode,
        message: impl fmt::Display + fmt::Debug + Send + Sync + 'static,
    ) -> Self {
        Self::msg(message).set_status(status)
    }

    /// A 400 Bad Request whose body is `message`.
    pub fn bad_request(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, message)
    }

    /// A 404 Not Found whose body is `message`.
    pub fn not_found(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Self::with_status(StatusCode::NOT_FOUND, message)
    }

    /// The same error, answering `status` instead. A status outside 400..=599 is not an error
    /// status and is replaced by 500.
    pub fn set_status(mut self, status: StatusCode) -> Self {
        self.status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        self
    }

    /// The same error, with a header for its response, e.g. `Retry-After` on a 503 or
    /// `WWW-Authenticate` on a 401.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Wraps the error in a message that says what was being done; status and headers are kept.
    /// `{:#}` prints the whole chain, outermost first: `loading items: file not found`.
    pub fn context(self, context: impl fmt::Display + Send + Sync + 'static) -> Self {
        Self {
            status: self.status,
            headers: self.headers,
            inner: Box::new(WithContext {
                context: context.to_string(),
                source: self.inner,
            }),
        }
    }

    /// A 500 from a boxed error (what `http_body` bodies fail with).
    pub(crate) fn from_boxed(inner: BoxError) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers: HeaderMap::new(),
            inner,
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers its response will carry besides `content-type`.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The underlying error, e.g. to `downcast_ref` it. After [`Error::context`] this is the
    /// context wrapper; its `source()` chain leads to the original.
    pub fn as_std(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// The response this error becomes: its status and headers, `text/plain`, and as body the
    /// message (4xx) or only the status's reason phrase (5xx). Pure: it writes no logs.
    ///
    /// ```
    /// use handoff_sdk::{Error, StatusCode};
    ///
    /// let response = Error::msg("database password rejected").into_response();
    /// assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// assert_eq!(response.into_body().text().unwrap(), "internal server error\n");
    ///
    /// let response = Error::bad_request("`limit` must be a number").into_response();
    /// assert_eq!(response.into_body().text().unwrap(), "`limit` must be a number\n");
    /// ```
    pub fn into_response(self) -> Response {
        let text = if self.status.is_client_error() {
            format!("{:#}\n", self)
        } else {
            let reason = self.status.canonical_reason().unwrap_or("server error");
            format!("{}\n", reason.to_ascii_lowercase())
        };
        let mut response = http::Response::new(Body::from(text));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers: HeaderMap::new(),
            inner: Box::new(error),
        }
    }
}

impl From<Error> for Box<dyn std::error::Error + Send + Sync + 'static> {
    fn from(error: Error) -> Self {
        error.inner
    }
}

/// `{}` is the outermost message; `{:#}` adds each source, separated by `: `.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)?;
        if f.alternate() {
            let mut source = self.inner.source();
            while let Some(error) = source {
                write!(f, ": {error}")?;
                source = error.source();
            }
        }
        Ok(())
    }
}

/// The status (when it is not 500) and the whole chain, so `unwrap()` failures read well.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status != StatusCode::INTERNAL_SERVER_ERROR {
            write!(f, "{}: ", self.status)?;
        }
        write!(f, "{self:#}")
    }
}

/// Adds context to a failed `Result` or a `None`, as [`Error::context`] does.
///
/// ```
/// use handoff_sdk::{Context, Result};
///
/// fn limit(raw: Option<&str>) -> Result<u32> {
///     let raw = raw.context("no limit given")?;
///     raw.parse::<u32>().context("parsing the limit")
/// }
///
/// assert_eq!(format!("{:#}", limit(Some("x")).unwrap_err()),
///            "parsing the limit: invalid digit found in string");
/// assert_eq!(limit(None).unwrap_err().to_string(), "no limit given");
/// ```
pub trait Context<T> {
    /// Wraps the error (or `None`) in `context`.
    fn context(self, context: impl fmt::Display + Send + Sync + 'static) -> Result<T, Error>;

    /// Wraps the error (or `None`) in the context `f` returns; `f` runs only on failure.
    fn with_context<C, F>(self, f: F) -> Result<T, Error>
    where
        C: fmt::Display + Send + Sync + 'static,
        F: FnOnce() -> C;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, context: impl fmt::Display + Send + Sync + 'static) -> Result<T, Error> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C, F>(self, f: F) -> Result<T, Error>
    where
        C: fmt::Display + Send + Sync + 'static,
        F: FnOnce() -> C,
    {
        self.map_err(|e| e.into().context(f()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl fmt::Display + Send + Sync + 'static) -> Result<T, Error> {
        self.ok_or_else(|| Error::msg(context.to_string()))
    }

    fn with_context<C, F>(self, f: F) -> Result<T, Error>
    where
        C: fmt::Display + Send + Sync + 'static,
        F: FnOnce() -> C,
    {
        self.ok_or_else(|| Error::msg(f().to_string()))
    }
}

/// A plain message as a `std::error::Error`.
struct Message<M>(M);

impl<M: fmt::Display> fmt::Display for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<M: fmt::Debug> fmt::Debug for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<M: fmt::Display + fmt::Debug> std::error::Error for Message<M> {}

/// An error with a message saying what was being done when it happened.
#[derive(Debug)]
struct WithContext {
    context: String,
    source: BoxError,
}

impl fmt::Display for WithContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for WithContext {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_errors_convert_with_question_mark_and_answer_500() {
        fn parse() -> Result<u8, Error> {
            Ok("300".parse::<u8>()?)
        }
        let error = parse().unwrap_err();
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.to_string(), "number too large to fit in target type");
    }

    #[test]
    fn server_errors_hide_the_message_from_the_client() {
        let response = Error::msg("secret: db password wrong")
            .context("loading items")
            .into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let body = response.into_body().text().unwrap();
        assert_eq!(body, "internal server error\n");

        let response =
            Error::with_status(StatusCode::SERVICE_UNAVAILABLE, "db down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.into_body().text().unwrap(),
            "service unavailable\n"
        );
    }

    #[test]
    fn client_errors_tell_the_client_what_to_fix() {
        let response = Error::bad_request("`id` must be a number").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.into_body().text().unwrap(),
            "`id` must be a number\n"
        );

        let error = Error::not_found("no item 7").context("looking up the item");
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            error.into_response().into_body().text().unwrap(),
            "looking up the item: no item 7\n"
        );
    }

    #[test]
    fn headers_survive_context_and_reach_the_response() {
        let response = Error::with_status(StatusCode::SERVICE_UNAVAILABLE, "busy")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .context("serving")
            .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers().len(), 2);
    }

    #[test]
    fn a_non_error_status_becomes_500() {
        let error = Error::with_status(StatusCode::OK, "not really fine");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn the_chain_prints_outermost_first() {
        let error: Error = std::io::Error::other("disk on fire").into();
        let error = error.context("reading config").context("starting");
        assert_eq!(error.to_string(), "starting");
        assert_eq!(
            format!("{error:#}"),
            "starting: reading config: disk on fire"
        );
        assert_eq!(
            format!("{error:?}"),
            "starting: reading config: disk on fire"
        );
        let error = error.set_status(StatusCode::CONFLICT);
        assert_eq!(
            format!("{error:?}"),
            "409 Conflict: starting: reading config: disk on fire"
        );
    }

    #[test]
    fn options_and_results_take_context() {
        let missing: Option<u8> = None;
        assert_eq!(
            missing.context("no value").unwrap_err().to_string(),
            "no value"
        );
        let failed: Result<u8, std::num::ParseIntError> = "x".parse();
        let error = failed
            .with_context(|| format!("parsing {}", "x"))
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "parsing x: invalid digit found in string"
        );
        assert!(error.as_std().source().is_some());
    }
}
