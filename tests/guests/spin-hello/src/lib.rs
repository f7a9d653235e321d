//! A Spin SDK 7 guest (`wasi:http/service`, WASI 0.3): answers with its method, path and the
//! size of the request body it read, and a header naming its toolchain.

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Request, Result};

#[spin_sdk::http_service]
async fn handle(request: Request) -> Result<impl IntoResponse> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let read = request.into_body().bytes().await?.len();
    Ok(http::Response::builder()
        .status(200)
        .header("x-guest", "spin-sdk")
        .header("content-type", "text/plain")
        .body(format!("spin {method} {path} {read}\n"))?)
}
