//! Problem documents (RFC 9457, `application/problem+json`): how both listeners say what went
//! wrong. The admin API's `detail` says what to fix; the data plane's says nothing internal and
//! carries the request id that the log has too.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

/// The media type of a problem document.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// A sentence a person can act on.
    pub detail: String,
    /// The data plane's request id (16 hex digits), also in the log and `x-request-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    /// A problem with `status` and a sentence saying what to fix.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            request_id: None,
        }
    }

    /// This problem about request `id`.
    pub fn for_request(mut self, id: u64) -> Self {
        self.request_id = Some(request_id(id));
        self
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The document as a response: status, content type, `x-request-id` and body.
    pub fn response<B: From<Bytes>>(&self) -> http::Response<B> {
        let body = serde_json::to_vec(self).expect("a problem serializes");
        let mut response = http::Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(id) = self.request_id.as_deref()
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert("x-request-id", value);
        }
        response
    }
}

/// A request id as responses and logs write it: 16 hex digits.
pub fn request_id(id: u64) -> String {
    RequestId(id).to_string()
}

/// A request id written as responses and logs show it (16 hex digits), without allocating:
/// log fields take it as `request_id = %RequestId(id)`, so the log and the `x-request-id`
/// header read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl RequestId {
    /// The id as an `x-request-id` header value.
    pub fn header(self) -> HeaderValue {
        let mut text = [0u8; 16];
        for (i, byte) in text.iter_mut().enumerate() {
            *byte = b"0123456789abcdef"[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reads_back_and_names_its_request() {
        let problem = Problem::new(StatusCode::NOT_FOUND, "no route").for_request(255);
        let response: http::Response<Bytes> = problem.response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
        assert_eq!(response.headers()["x-request-id"], "00000000000000ff");
        assert_eq!(RequestId(255).to_string(), "00000000000000ff");
        assert_eq!(RequestId(0x9741).header(), "0000000000009741");
        assert_eq!(RequestId(u64::MAX).header(), "ffffffffffffffff");
        let read: Problem = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(read, problem);
        assert_eq!(read.title, "Not Found");
        assert_eq!(read.kind, "about:blank");
    }
}
