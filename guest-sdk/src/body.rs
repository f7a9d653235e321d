//! Request and response bodies: complete bytes, a stream of chunks, or a writer callback. A
//! body is produced only when it is sent (or read), so a streaming body reaches the client
//! chunk by chunk. This module knows nothing of WASI: the glue hands it a `std::io::Write`.

mod produced;

use std::fmt;
use std::future::{Future, poll_fn};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use crate::Error;
pub use produced::BodySender;
use produced::Produced;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// A chunk producer: the chunks of a stream, or the request body as it arrives.
type Chunks = Box<dyn Iterator<Item = Result<Bytes, Error>>>;
/// A writer callback, run when the body is sent.
type WriterFn = Box<dyn FnOnce(&mut BodyWriter<'_>) -> Result<(), Error>>;
/// Any `http_body::Body`, e.g. a WASI 0.3 request body as it arrives.
type Frames = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>;

/// The body of a [`Request`](crate::Request) or [`Response`](crate::Response).
///
/// * **Complete**: `Body::from("text")`, from a `String`, `Vec<u8>` or [`Bytes`], or
///   [`Body::empty`]. Sent with a `content-length`.
/// * **Streaming**: [`Body::stream`] (an iterator of chunks) or [`Body::from_writer`] (a
///   callback that writes). Sent chunked; each chunk is flushed to the client as soon as it is
///   produced, so a handler can sleep or compute between chunks.
///
/// * **Streaming, async** (for `async` handlers, WASI 0.3): [`Body::stream_async`], a future
///   that sends chunks while it computes them, e.g. between awaits of
///   [`time::sleep`](crate::time::sleep) or of outbound calls; the instance serves other
///   requests meanwhile.
///
/// A request body is streaming: nothing is read until the handler reads it with
/// [`Body::bytes`], [`Body::text`] or [`Body::json`] (in an `async` handler:
/// [`Body::read_bytes`], [`Body::read_text`] or [`Body::read_json`], awaited). A handler that never reads it never
/// waits for it, and a handler can echo it (`Response::new(req.into_body())`) without
/// buffering it.
///
/// ```
/// use handoff_sdk::Body;
///
/// assert_eq!(Body::from("hi").text().unwrap(), "hi");
/// let numbers = Body::stream((1..=3).map(|i| format!("{i}\n")));
/// assert_eq!(numbers.text().unwrap(), "1\n2\n3\n");
/// ```
pub struct Body {
    kind: Kind,
}

enum Kind {
    Full(Bytes),
    Chunks(Chunks),
    Writer(WriterFn),
    Frames(Frames),
    Produced(Produced),
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(bytes),
        }
    }

    /// A streaming body: each item of `chunks` is sent (and flushed) as soon as the iterator
    /// yields it. Items are anything that converts into [`Bytes`]: `String`, `&'static str`,
    /// `Vec<u8>`. Empty chunks are skipped.
    ///
    /// The iterator runs while the response is being sent, after the status and headers are
    /// out, so it may block between chunks, e.g. with [`sleep`](crate::sleep). If the client
    /// goes away, the iterator is dropped without being run to the end.
    ///
    /// ```
    /// use std::time::Duration;
    /// use handoff_sdk::{Body, Response};
    ///
    /// let ticks = (0..3).map(|i| {
    ///     if i > 0 {
    ///         handoff_sdk::sleep(Duration::from_millis(1));
    ///     }
    ///     format!("tick {i}\n")
    /// });
    /// let response = Response::new(Body::stream(ticks));
    /// assert_eq!(response.into_body().text().unwrap(), "tick 0\ntick 1\ntick 2\n");
    /// ```
    pub fn stream<I>(chunks: I) -> Self
    where
        I: IntoIterator + 'static,
        I::Item: Into<Bytes>,
    {
        Self::try_stream(chunks.into_iter().map(Ok::<_, Error>))
    }

    /// A streaming body whose chunks may fail. The first `Err` ends the body: the bytes sent
    /// so far stay sent (the status is already out), the response is aborted so the client
    /// sees an incomplete body rather than a complete-looking one, and the error is written to
    /// stderr.
    pub fn try_stream<I, T, E>(chunks: I) -> Self
    where
        I: IntoIterator<Item = Result<T, E>> + 'static,
        T: Into<Bytes>,
        E: Into<Error>,
    {
        let chunks = chunks
            .into_iter()
            .map(|chunk| chunk.map(Into::into).map_err(Into::into));
        Self {
            kind: Kind::Chunks(Box::new(chunks)),
        }
    }

    /// A streaming body written by `write` when the response is sent. [`BodyWriter`]
    /// implements [`std::io::Write`]; call [`flush`](Write::flush) (or
    /// [`BodyWriter::send`]) to push what was written so far to the client, e.g. before
    /// sleeping. An `Err` from `write` ends the body as in [`Body::try_stream`].
    ///
    /// ```
    /// use std::io::Write;
    /// use handoff_sdk::Body;
    ///
    /// let body = Body::from_writer(|out| {
    ///     for i in 0..3 {
    ///         writeln!(out, "line {i}")?;
    ///         out.flush()?;
    ///     }
    ///     Ok(())
    /// });
    /// assert_eq!(body.text().unwrap(), "line 0\nline 1\nline 2\n");
    /// ```
    pub fn from_writer<F>(write: F) -> Self
    where
        F: FnOnce(&mut BodyWriter<'_>) -> Result<(), Error> + 'static,
    {
        Self {
            kind: Kind::Writer(Box::new(write)),
        }
    }

    /// A streaming body produced by an async function, for `async` (WASI 0.3) handlers: `produce`
    /// gets a [`BodySender`] and sends chunks with [`BodySender::send`]`(..).await` while it
    /// computes them. It runs while the response is being sent, after the status and headers
    /// are out; each chunk reaches the client before the next is asked for. An `Err` ends the
    /// body as in [`Body::try_stream`]. If the client goes away, `send` fails and the producer
    /// is dropped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use handoff_sdk::{Body, time};
    ///
    /// let body = Body::stream_async(|mut out| async move {
    ///     for i in 0..3 {
    ///         time::sleep(Duration::from_millis(1)).await;
    ///         out.send(format!("tick {i}\n")).await?;
    ///     }
    ///     Ok(())
    /// });
    /// let text = handoff_sdk::block_on(body.read_text()).unwrap();
    /// assert_eq!(text, "tick 0\ntick 1\ntick 2\n");
    /// ```
    pub fn stream_async<F, Fut>(produce: F) -> Self
    where
        F: FnOnce(BodySender) -> Fut,
        Fut: Future<Output = Result<(), Error>> + 'static,
    {
        Self {
            kind: Kind::Produced(Produced::new(produce)),
        }
    }

    /// A body read from any [`http_body::Body`] (data frames only; trailers are dropped).
    pub fn from_http_body<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Self {
            kind: Kind::Frames(Box::pin(body.map_err(Into::into))),
        }
    }

    /// Reads the whole body, awaiting each chunk: the way to read a request body in an
    /// `async` (WASI 0.3) handler, where the instance serves other requests while this one
    /// waits for its client.
    pub async fn read_bytes(mut self) -> Result<Bytes, Error> {
        if let Kind::Full(bytes) = self.kind {
            return Ok(bytes);
        }
        let mut buffer = Vec::new();
        while let Some(chunk) = poll_fn(|cx| self.poll_chunk(cx)).await {
            buffer.extend_from_slice(&chunk.map_err(|e| e.context("reading the body"))?);
        }
        Ok(buffer.into())
    }

    /// [`Body::read_bytes`] as UTF-8 text; text that is not UTF-8 is a 400 Bad Request.
    pub async fn read_text(self) -> Result<String, Error> {
        utf8(self.read_bytes().await?)
    }

    /// [`Body::read_bytes`] as JSON into `T`; the errors are [`Body::json`]'s.
    #[cfg(feature = "json")]
    pub async fn read_json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        parse_json(&self.read_bytes().await?)
    }

    /// The next chunk of the body (never an empty one), `None` at its end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            let chunk = match &mut self.kind {
                Kind::Full(bytes) if bytes.is_empty() => return Poll::Ready(None),
                Kind::Full(bytes) => std::mem::take(bytes),
                Kind::Chunks(chunks) => match chunks.next() {
                    Some(Ok(chunk)) => chunk,
                    other => return Poll::Ready(other),
                },
                Kind::Writer(_) => {
                    // A blocking writer runs to its end here; its flushes are not separate
                    // chunks. (`Body::stream_async` streams from an async handler.)
                    let Kind::Writer(write) =
                        std::mem::replace(&mut self.kind, Kind::Full(Bytes::new()))
                    else {
                        unreachable!()
                    };
                    let mut buffer = Vec::new();
                    match (Body {
                        kind: Kind::Writer(write),
                    })
                    .write_to(&mut buffer)
                    {
                        Ok(()) => buffer.into(),
                        Err(SendError::Produce(error)) => return Poll::Ready(Some(Err(error))),
                        Err(SendError::Write(error)) => {
                            return Poll::Ready(Some(Err(Error::from(error))));
                        }
                    }
                }
                Kind::Frames(frames) => match frames.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Some(Err(Error::from_boxed(error))));
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(chunk) => chunk,
                        // Trailers: not passed on.
                        Err(_) => continue,
                    },
                },
                Kind::Produced(produced) => return produced.poll_chunk(cx),
            };
            if !chunk.is_empty() {
                return Poll::Ready(Some(Ok(chunk)));
            }
        }
    }

    /// The bytes of a complete body, without consuming it; `None` for a streaming body (read
    /// those with [`Body::bytes`]).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes),
            Kind::Chunks(_) | Kind::Writer(_) | Kind::Frames(_) | Kind::Produced(_) => None,
        }
    }

    /// Reads the whole body. For a request body this waits for the client to send all of it.
    ///
    /// In an `async` (WASI 0.3) handler read with [`Body::read_bytes`]`().await` instead: a
    /// WASI 0.3 request body or a [`Body::stream_async`] body can only be awaited there
    /// (on the host, in unit tests, this method waits for them too).
    pub fn bytes(self) -> Result<Bytes, Error> {
        match self.kind {
            Kind::Full(bytes) => Ok(bytes),
            kind => {
                let mut buffer = Vec::new();
                match (Body { kind }).write_to(&mut buffer) {
                    Ok(()) => Ok(buffer.into()),
                    Err(SendError::Produce(error)) => Err(error.context("reading the body")),
                    Err(SendError::Write(error)) => Err(Error::from(error)),
                }
            }
        }
    }

    /// Reads the whole body as UTF-8 text. Text that is not UTF-8 is a 400 Bad Request.
    pub fn text(self) -> Result<String, Error> {
        utf8(self.bytes()?)
    }

    /// Reads the whole body as JSON into `T`. A body that is not JSON, or not the JSON `T`
    /// expects, is a 400 Bad Request whose message names the problem and its position.
    ///
    /// ```
    /// #[derive(Debug, serde::Deserialize)]
    /// struct NewItem {
    ///     name: String,
    /// }
    ///
    /// let item: NewItem = handoff_sdk::Body::from(r#"{"name":"lamp"}"#).json().unwrap();
    /// assert_eq!(item.name, "lamp");
    ///
    /// let error = handoff_sdk::Body::from("{}").json::<NewItem>().unwrap_err();
    /// assert_eq!(error.status(), handoff_sdk::StatusCode::BAD_REQUEST);
    /// assert_eq!(
    ///     error.to_string(),
    ///     "the body is not the JSON this endpoint expects: missing field `name` at line 1 column 2"
    /// );
    /// ```
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        parse_json(&self.bytes()?)
    }

    /// The exact length of a complete body, for `content-length`; `None` when streaming.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn exact_len(&self) -> Option<usize> {
        self.as_bytes().map(Bytes::len)
    }

    /// Produces the body into `sink`, flushing after every chunk.
    pub(crate) fn write_to(self, sink: &mut dyn Write) -> Result<(), SendError> {
        match self.kind {
            Kind::Full(bytes) => {
                sink.write_all(&bytes).map_err(SendError::Write)?;
                sink.flush().map_err(SendError::Write)
            }
            Kind::Chunks(chunks) => {
                for chunk in chunks {
                    let chunk = chunk.map_err(SendError::Produce)?;
                    if chunk.is_empty() {
                        continue;
                    }
                    sink.write_all(&chunk).map_err(SendError::Write)?;
                    sink.flush().map_err(SendError::Write)?;
                }
                Ok(())
            }
            Kind::Frames(_) | Kind::Produced(_) => {
                let mut body = Body { kind: self.kind };
                loop {
                    let chunk = match crate::exec::poll_to_end(poll_fn(|cx| body.poll_chunk(cx))) {
                        Some(chunk) => chunk,
                        None => {
                            return Err(SendError::Produce(Error::msg(
                                "this body waits on something only an async handler can await: \
                                 export the handler with `handoff_sdk::export!(async handle)` \
                                 and read it with `read_bytes().await`",
                            )));
                        }
                    };
                    match chunk {
                        None => return Ok(()),
                        Some(Err(error)) => return Err(SendError::Produce(error)),
                        Some(Ok(chunk)) => {
                            sink.write_all(&chunk).map_err(SendError::Write)?;
                            sink.flush().map_err(SendError::Write)?;
                        }
                    }
                }
            }
            Kind::Writer(write) => {
                let mut writer = BodyWriter { sink, failed: None };
                let result = write(&mut writer).and_then(|()| Ok(writer.flush()?));
                match (result, writer.failed) {
                    (Ok(()), _) => Ok(()),
                    // The callback failed because the sink did: the client went away.
                    (Err(_), Some(kind)) => Err(SendError::Write(kind.into())),
                    (Err(error), None) => Err(SendError::Produce(error)),
                }
            }
        }
    }
}

/// Why a body could not be sent to the end.
pub(crate) enum SendError {
    /// The body's own producer (iterator item or writer callback) failed.
    Produce(Error),
    /// Writing to the sink failed: the client has gone away.
    Write(io::Error),
}

fn utf8(bytes: Bytes) -> Result<String, Error> {
    String::from_utf8(bytes.into())
        .map_err(|e| Error::bad_request(format!("the body must be UTF-8 text: {}", e.utf8_error())))
}

#[cfg(feature = "json")]
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::bad_request(format!(
            "the body is not the JSON this endpoint expects: {e}"
        ))
    })
}

/// A [`Body`] is an [`http_body::Body`]: WASI 0.3 glue and other HTTP libraries read it
/// frame by frame.
impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .poll_chunk(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data).map_err(BoxError::from)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            Kind::Full(bytes) => http_body::SizeHint::with_exact(bytes.len() as u64),
            _ => http_body::SizeHint::default(),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(bytes) => write!(f, "Body({} bytes)", bytes.len()),
            Kind::Chunks(_) => f.write_str("Body(stream)"),
            Kind::Writer(_) => f.write_str("Body(writer)"),
            Kind::Frames(_) => f.write_str("Body(incoming)"),
            Kind::Produced(_) => f.write_str("Body(async stream)"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::full(text.into())
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Self::full(Bytes::from_static(text.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self::full(bytes.into())
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Self {
        Self::full(Bytes::from_static(bytes))
    }
}

/// Where a [`Body::from_writer`] callback writes: a [`std::io::Write`] to the client.
///
/// Writes may be buffered by the host until [`flush`](Write::flush); flush whenever the
/// client should see what was written so far. When the client has gone away, writes fail
/// with an [`io::Error`]; return it (`?`) to stop producing.
pub struct BodyWriter<'a> {
    sink: &'a mut dyn Write,
    /// Set once the sink has failed, so a callback error is known to be the client's leaving.
    failed: Option<io::ErrorKind>,
}

impl BodyWriter<'_> {
    /// Writes `chunk` and flushes it to the client.
    pub fn send(&mut self, chunk: impl AsRef<[u8]>) -> io::Result<()> {
        self.write_all(chunk.as_ref())?;
        self.flush()
    }

    fn track<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(error) = &result {
            self.failed.get_or_insert(error.kind());
        }
        result
    }
}

impl Write for BodyWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.sink.write(buf);
        self.track(result)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.sink.write_all(buf);
        self.track(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.sink.flush();
        self.track(result)
    }
}

#[cfg(test)]
mod tests;
