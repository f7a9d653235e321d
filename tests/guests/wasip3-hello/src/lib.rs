//! A `wasip3` crate guest (`wasi:http/service`, WASI 0.3) written against its `http_compat`
//! layer: answers with its method, path and the size of the request body it read, and a header
//! naming its toolchain.

use http_body_util::BodyExt;
use wasip3::http::types::{self, ErrorCode};
use wasip3::http_compat::{IncomingRequestBody, http_from_wasi_request, http_into_wasi_response};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: types::Request) -> Result<types::Response, ErrorCode> {
        let request = http_from_wasi_request(request)?;
        http_into_wasi_response(serve(request).await?)
    }
}

async fn serve(
    request: http::Request<IncomingRequestBody>,
) -> Result<http::Response<String>, ErrorCode> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let read = request.into_body().collect().await?.to_bytes().len();
    let mut response = http::Response::new(format!("wasip3 {method} {path} {read}\n"));
    response
        .headers_mut()
        .insert("x-guest", http::HeaderValue::from_static("wasip3"));
    Ok(response)
}
