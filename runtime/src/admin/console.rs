//! The web console: `GET /` and its assets under `/console/`, plain HTML, CSS and JavaScript
//! kept in `runtime/console/` and compiled into the binary (no build step, nothing fetched
//! from elsewhere). The page holds no data: it reads the admin API with the token typed into
//! it (kept in the tab's session storage, sent as `Authorization`, never a cookie), so these
//! files are served without a token, behind the same `Host`/`Origin` checks as the API.
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles and connections
//! from this origin only, no inline script or style, no framing.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::api::Problem;

/// The policy every console answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The console's files: name under `/console/`, media type, contents.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
];

const INDEX: &str = include_str!("../../console/index.html");

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the console page.
pub(super) async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`: one of its assets.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => serve(content_type, body),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "no such console file; the console is at /",
        )
        .into_response(),
    }
}
