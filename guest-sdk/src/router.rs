//! A small router for guests that serve several paths: method + path pattern → handler.
//! Patterns are relative to the route's prefix (see [`crate::RequestExt::route_path`]).
//! Matching is pure; the router never touches WASI.

use std::future::Future;
use std::pin::Pin;

use http::{HeaderValue, Method, StatusCode, header};

use crate::config::{self, ROUTE_PREFIX_KEY};
use crate::request::{self, Params};
use crate::{Error, Request, Response, Result};

mod pattern;

use pattern::Pattern;

type Reply = Pin<Box<dyn Future<Output = Result<Response>>>>;

/// A route's handler: a `fn`, or an `async fn` (for WASI 0.3 guests).
enum Handler {
    Blocking(Box<dyn Fn(Request) -> Result<Response>>),
    Async(Box<dyn Fn(Request) -> Reply>),
}

impl Handler {
    fn blocking<F>(handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        Self::Blocking(Box::new(handler))
    }

    fn future<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        Self::Async(Box::new(move |req| Box::pin(handler(req))))
    }

    /// Calls a blocking handler; an async one is a 500 that says how to call it.
    fn call(&self, req: Request) -> Result<Response> {
        match self {
            Self::Blocking(handler) => handler(req),
            Self::Async(_) => Err(Error::msg(format!(
                "the handler for {} {} is async: dispatch with `Router::serve(req).await` \
                 from an async handler",
                req.method(),
                req.uri().path()
            ))),
        }
    }

    async fn call_async(&self, req: Request) -> Result<Response> {
        match self {
            Self::Blocking(handler) => handler(req),
            Self::Async(handler) => handler(req).await,
        }
    }
}

/// Sends each request to the handler whose method and path pattern match it.
///
/// **Patterns are relative to the route.** The host passes the full path (`/shop/items/7` for
/// a route at `/shop`); the router matches patterns against the path below the route's prefix
/// (`/items/7`), as [`RequestExt::route_path`](crate::RequestExt::route_path) computes it:
/// the prefix is the deploy-time config `HANDOFF_ROUTE_PREFIX` when set, else the first path
/// segment (right for a route at its default prefix `/{name}`). [`Router::with_prefix`] fixes
/// the prefix in code instead.
///
/// **Pattern syntax**: segments separated by `/`; `:name` matches one segment and captures
/// it; `*name`, last only, matches the rest of the path (zero or more segments). Matching
/// ignores empty segments, so `/items/` matches `/items`. Captured values are
/// percent-decoded; read them with [`RequestExt::param`](crate::RequestExt::param).
///
/// **Priority**: when several patterns match, the most specific wins, segment by segment: a
/// literal beats `:param`, which beats `*rest`; ties go to the first added. `HEAD` requests
/// fall back to `GET` handlers.
///
/// **No match**: a path that matches no pattern is a 404 (or goes to [`Router::fallback`]); a
/// path that matches only with other methods is a 405 with an `Allow` header. Both are
/// returned as an [`Error`] with that status, so callers can reshape them.
///
/// Each request runs in a fresh instance, so build the router in the handler; it costs a few
/// small allocations.
///
/// **Async handlers** (WASI 0.3 guests, `export!(async handle)`): register them with the
/// `_async` methods ([`Router::get_async`], …) next to blocking ones, and dispatch with
/// [`Router::serve`]`(req).await`:
///
/// ```
/// use handoff_sdk::{Body, Request, RequestExt, Response, Result, Router, response};
///
/// async fn handle(req: Request) -> Result<Response> {
///     Router::new()
///         .get("/", |_| Ok(response::text("index\n")))
///         .post_async("/echo", |req: Request| async move {
///             Ok(response::text(req.into_body().read_text().await?))
///         })
///         .serve(req)
///         .await
/// }
///
/// let post = http::Request::post("/shop/echo").body(Body::from("hi")).unwrap();
/// let response = handoff_sdk::block_on(handle(post)).unwrap();
/// assert_eq!(response.into_body().text().unwrap(), "hi");
/// ```
///
/// ```
/// use handoff_sdk::{Body, Request, RequestExt, Response, Result, Router, StatusCode, response};
///
/// fn handle(req: Request) -> Result<Response> {
///     Router::new()
///         .get("/", |_| Ok(response::text("index\n")))
///         .get("/items/:id", show)
///         .post("/items", |req| Ok(response::text(req.into_body().text()?)))
///         .handle(req)
/// }
///
/// fn show(req: Request) -> Result<Response> {
///     let id: u32 = req.params().get_as("id")?;
///     Ok(response::text(format!("item {id}\n")))
/// }
///
/// let get = |path: &str| http::Request::get(path).body(Body::empty()).unwrap();
/// assert_eq!(handle(get("/shop")).unwrap().into_body().text().unwrap(), "index\n");
/// assert_eq!(handle(get("/shop/items/7")).unwrap().into_body().text().unwrap(), "item 7\n");
/// assert_eq!(handle(get("/shop/items/x")).unwrap_err().status(), StatusCode::BAD_REQUEST);
/// assert_eq!(handle(get("/shop/nothing")).unwrap_err().status(), StatusCode::NOT_FOUND);
/// let delete = http::Request::delete("/shop/items").body(Body::empty()).unwrap();
/// assert_eq!(handle(delete).unwrap_err().status(), StatusCode::METHOD_NOT_ALLOWED);
/// ```
#[derive(Default)]
pub struct Router {
    prefix: Option<String>,
    routes: Vec<Entry>,
    fallback: Option<Handler>,
}

struct Entry {
    /// `None` matches every method.
    method: Option<Method>,
    pattern: Pattern,
    handler: Handler,
}

impl Router {
    /// A router with no handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Matches patterns below `prefix` (e.g. `/api/v1`, or `/` for the full path) instead of
    /// the prefix found from the config or the first segment. Paths outside `prefix` are 404s.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Adds `handler` for `method` requests whose path matches `pattern`.
    ///
    /// # Panics
    ///
    /// If `pattern` does not start with `/`, has a `*rest` segment that is not the last one,
    /// an empty parameter name, or the same parameter name twice.
    pub fn route<F>(mut self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.routes.push(Entry {
            method: Some(method),
            pattern: Pattern::parse(pattern),
            handler: Handler::blocking(handler),
        });
        self
    }

    /// Adds `handler` for requests of any method whose path matches `pattern`. Panics as
    /// [`Router::route`] does.
    pub fn any<F>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.routes.push(Entry {
            method: None,
            pattern: Pattern::parse(pattern),
            handler: Handler::blocking(handler),
        });
        self
    }

    /// Adds a `GET` (and `HEAD`) handler; see [`Router::route`].
    pub fn get<F>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.route(Method::GET, pattern, handler)
    }

    /// Adds a `POST` handler; see [`Router::route`].
    pub fn post<F>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.route(Method::POST, pattern, handler)
    }

    /// Adds a `PUT` handler; see [`Router::route`].
    pub fn put<F>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.route(Method::PUT, pattern, handler)
    }

    /// Adds a `PATCH` handler; see [`Router::route`].
    pub fn patch<F>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.route(Method::PATCH, pattern, handler)
    }

    /// Adds a `DELETE` handler; see [`Router::route`].
    pub fn delete<F>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.route(Method::DELETE, pattern, handler)
    }

    /// Handles requests whose path matches no pattern (instead of a 404).
    pub fn fallback<F>(mut self, handler: F) -> Self
    where
        F: Fn(Request) -> Result<Response> + 'static,
    {
        self.fallback = Some(Handler::blocking(handler));
        self
    }

    /// Calls the handler that matches `req`, with the captured [`Params`] in its extensions.
    /// No match is a 404 or 405 [`Error`] (see the type's documentation).
    pub fn handle(&self, req: Request) -> Result<Response> {
        match self.find(req) {
            Found::Handler(handler, req) => handler.call(req),
            Found::Error(error) => Err(error),
        }
    }

    /// [`Router::handle`] for async handlers: finds the handler for `req` and awaits it
    /// (blocking handlers are called as they are).
    pub async fn serve(&self, req: Request) -> Result<Response> {
        match self.find(req) {
            Found::Handler(handler, req) => handler.call_async(req).await,
            Found::Error(error) => Err(error),
        }
    }

    /// Adds an async handler for `method` requests whose path matches `pattern`; see
    /// [`Router::route`]. Dispatch with [`Router::serve`].
    pub fn route_async<F, Fut>(mut self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.routes.push(Entry {
            method: Some(method),
            pattern: Pattern::parse(pattern),
            handler: Handler::future(handler),
        });
        self
    }

    /// Adds an async handler for every method on `pattern`; see [`Router::any`].
    pub fn any_async<F, Fut>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.routes.push(Entry {
            method: None,
            pattern: Pattern::parse(pattern),
            handler: Handler::future(handler),
        });
        self
    }

    /// `GET` (and `HEAD`) with an async handler.
    pub fn get_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.route_async(Method::GET, pattern, handler)
    }

    /// `POST` with an async handler.
    pub fn post_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.route_async(Method::POST, pattern, handler)
    }

    /// `PUT` with an async handler.
    pub fn put_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.route_async(Method::PUT, pattern, handler)
    }

    /// `PATCH` with an async handler.
    pub fn patch_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.route_async(Method::PATCH, pattern, handler)
    }

    /// `DELETE` with an async handler.
    pub fn delete_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.route_async(Method::DELETE, pattern, handler)
    }

    /// An async handler for requests no pattern matches; see [`Router::fallback`].
    pub fn fallback_async<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = Result<Response>> + 'static,
    {
        self.fallback = Some(Handler::future(handler));
        self
    }

    /// The handler for `req` (with its path parameters inserted), or the 404 / 405 error.
    fn find(&self, mut req: Request) -> Found<'_> {
        let configured = match &self.prefix {
            Some(_) => None,
            None => config::get(ROUTE_PREFIX_KEY),
        };
        let prefix = self.prefix.as_deref().or(configured.as_deref());
        let Some(path) = request::strip_route_prefix(req.uri().path(), prefix) else {
            return self.unmatched(req, Vec::new());
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

        let mut best: Option<(Rank, &Entry, Params)> = None;
        let mut allowed: Vec<&Method> = Vec::new();
        for entry in &self.routes {
            let Some(params) = entry.pattern.matches(&segments) else {
                continue;
            };
            let Some(method_rank) = method_rank(entry.method.as_ref(), req.method()) else {
                allowed.extend(entry.method.as_ref());
                continue;
            };
            let rank = Rank {
                pattern: entry.pattern.rank(),
                method: method_rank,
            };
            if best.as_ref().is_none_or(|(best, _, _)| rank < *best) {
                best = Some((rank, entry, params));
            }
        }

        match best {
            Some((_, entry, params)) => {
                req.extensions_mut().insert(params);
                Found::Handler(&entry.handler, req)
            }
            None => self.unmatched(req, allowed),
        }
    }

    fn unmatched(&self, req: Request, allowed: Vec<&Method>) -> Found<'_> {
        if !allowed.is_empty() {
            return Found::Error(method_not_allowed(&req, allowed));
        }
        if let Some(fallback) = &self.fallback {
            return Found::Handler(fallback, req);
        }
        Found::Error(Error::not_found(format!(
            "no handler for {} {}",
            req.method(),
            req.uri().path()
        )))
    }
}

/// What a request matched.
enum Found<'a> {
    Handler(&'a Handler, Request),
    Error(Error),
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    pattern: Vec<u8>,
    method: u8,
}

/// How an entry's method accepts the request's: exactly (0), as "any method" (1), or as the
/// `GET` handler of a `HEAD` request (2). `None` if it does not.
fn method_rank(entry: Option<&Method>, request: &Method) -> Option<u8> {
    match entry {
        Some(method) if method == request => Some(0),
        None => Some(1),
        Some(&Method::GET) if request == Method::HEAD => Some(2),
        Some(_) => None,
    }
}

fn method_not_allowed(req: &Request, mut allowed: Vec<&Method>) -> Error {
    if allowed.contains(&&Method::GET) {
        allowed.push(&Method::HEAD);
    }
    allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    allowed.dedup();
    let list = allowed
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let error = Error::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; allowed: {list}",
            req.method(),
            req.uri().path()
        ),
    );
    match HeaderValue::from_str(&list) {
        Ok(value) => error.with_header(header::ALLOW, value),
        Err(_) => error,
    }
}

#[cfg(test)]
mod tests;
