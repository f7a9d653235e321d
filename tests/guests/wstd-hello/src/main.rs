//! A `wstd` guest: answers with its method, path and the size of the request body it read,
//! and a header naming its toolchain.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut body = request.into_body();
    let read = body.contents().await?.len();
    let mut response = Response::new(format!("wstd {method} {path} {read}\n").into());
    response
        .headers_mut()
        .insert("x-guest", "wstd".parse().expect("a valid header value"));
    Ok(response)
}
