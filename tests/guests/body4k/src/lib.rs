//! The bench's second component: reads the request body (a small one, up to 64 KiB) and
//! answers with a 4 KiB body whose first line says how many bytes it read.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The response body's size.
const RESPONSE: usize = 4096;
/// The most request body it reads.
const MAX_READ: usize = 64 << 10;

struct Body4k;

wasip2::http::proxy::export!(Body4k);

impl Guest for Body4k {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let mut read = 0;
        if let Ok(body) = request.consume()
            && let Ok(stream) = body.stream()
        {
            while read < MAX_READ {
                match stream.blocking_read((MAX_READ - read) as u64) {
                    Ok(chunk) => read += chunk.len(),
                    Err(_) => break,
                }
            }
        }
        let mut text = format!("read {read} bytes\n").into_bytes();
        text.resize(RESPONSE - 1, b'x');
        text.push(b'\n');
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let _ = headers.set("content-length", &[RESPONSE.to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("response body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("body stream");
        stream.blocking_write_and_flush(&text).expect("write");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}
