//! Request and response bodies: complete bytes, a stream of chunks, or a writer callback. A
//! body is produced only when it is sent (or read), so a streaming body reaches the client
//! chunk by chunk. This module knows nothing of WASI: the glue hands it a `std::io::Write`.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io::{self, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Frame;

use crate::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// A chunk producer: the chunks of a stream, or the request body as it arrives.
type Chunks = Box<dyn Iterator<Item = Result<Bytes, Error>>>;
/// A writer callback, run when the body is sent.
type WriterFn = Box<dyn FnOnce(&mut BodyWriter<'_>) -> Result<(), Error>>;
/// Any `http_body::Body`, e.g. a WASI 0.3 request body as it arrives.
type Frames = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>;
/// The future of a [`Body::stream_async`] producer.
type Producer = Pin<Box<dyn Future<Output = Result<(), Error>>>>;

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

/// A [`Body::stream_async`] body: its producer and the one-chunk slot it sends through.
struct Produced {
    slot: Rc<RefCell<Slot>>,
    task: Option<Producer>,
}

/// The hand-over point between a [`BodySender`] and the body's reader: one chunk at a time, so
/// a producer runs no further ahead of the client than one chunk.
#[derive(Default)]
struct Slot {
    chunk: Option<Bytes>,
    /// The reader has gone (the client left): sends fail.
    closed: bool,
    /// Woken when the reader takes the chunk.
    sender: Option<Waker>,
    /// Woken when a chunk is put in.
    reader: Option<Waker>,
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
        let slot = Rc::new(RefCell::new(Slot::default()));
        let task = produce(BodySender { slot: slot.clone() });
        Self {
            kind: Kind::Produced(Produced {
                slot,
                task: Some(Box::pin(task)),
            }),
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

impl Produced {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(chunk) = self.take(cx) {
            return Poll::Ready(Some(Ok(chunk)));
        }
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(None);
        };
        // The producer runs here, on the reader's polls: it may fill the slot and then wait
        // for it to empty.
        let done = task.as_mut().poll(cx);
        if let Some(chunk) = self.take(cx) {
            if let Poll::Ready(result) = done {
                self.task = None;
                if let Err(error) = result {
                    // The chunk goes first; the error ends the body at the next poll.
                    self.task = Some(Box::pin(async move { Err(error) }));
                }
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        match done {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.task = None;
                Poll::Ready(result.err().map(Err))
            }
        }
    }

    /// Takes the chunk in the slot, if any, waking a sender that waits for room; otherwise
    /// registers to be woken when one is put in.
    fn take(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        let mut slot = self.slot.borrow_mut();
        match slot.chunk.take() {
            Some(chunk) => {
                if let Some(sender) = slot.sender.take() {
                    sender.wake();
                }
                Some(chunk)
            }
            None => {
                slot.reader = Some(cx.waker().clone());
                None
            }
        }
    }
}

impl Drop for Produced {
    fn drop(&mut self) {
        self.slot.borrow_mut().closed = true;
        // The producer goes before the slot it sends into.
        self.task = None;
    }
}

/// Sends the chunks of a [`Body::stream_async`] body to the client.
pub struct BodySender {
    slot: Rc<RefCell<Slot>>,
}

impl BodySender {
    /// Sends `chunk` (anything that converts into [`Bytes`]) to the client; returns once the
    /// body's reader has taken the previous chunk. Fails when the client has gone away:
    /// return the error (`?`) to stop producing. Empty chunks are skipped.
    pub async fn send(&mut self, chunk: impl Into<Bytes>) -> Result<(), Error> {
        let mut chunk = Some(chunk.into());
        poll_fn(|cx| {
            let mut slot = self.slot.borrow_mut();
            if slot.closed {
                return Poll::Ready(Err(Error::msg("the client has gone away")));
            }
            if slot.chunk.is_some() {
                slot.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(chunk) = chunk.take().filter(|c| !c.is_empty()) {
                slot.chunk = Some(chunk);
                if let Some(reader) = slot.reader.take() {
                    reader.wake();
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl fmt::Debug for BodySender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodySender")
    }
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
mod tests {
    use super::*;
    use http::StatusCode;

    /// Reads `body` one chunk per poll, as the WASI 0.3 glue does: the chunks and whether the
    /// body ended or failed.
    fn chunks(mut body: Body) -> (Vec<String>, Option<String>) {
        let mut seen = Vec::new();
        loop {
            match crate::block_on(poll_fn(|cx| body.poll_chunk(cx))) {
                None => return (seen, None),
                Some(Ok(chunk)) => seen.push(String::from_utf8(chunk.to_vec()).unwrap()),
                Some(Err(error)) => return (seen, Some(error.to_string())),
            }
        }
    }

    #[test]
    fn an_async_body_hands_over_each_chunk_before_the_producer_goes_on() {
        let progress = Rc::new(RefCell::new(Vec::new()));
        let seen = progress.clone();
        let mut body = Body::stream_async(move |mut out| async move {
            for i in 0..3 {
                seen.borrow_mut().push(i);
                out.send(format!("{i}")).await?;
                out.send("").await?;
            }
            Ok(())
        });
        // The producer runs only as far as the first chunk the reader has not taken.
        let first = crate::block_on(poll_fn(|cx| body.poll_chunk(cx)));
        assert_eq!(first.unwrap().unwrap(), "0");
        assert_eq!(*progress.borrow(), [0]);
        assert_eq!(chunks(body), (vec!["1".into(), "2".into()], None));
        assert_eq!(*progress.borrow(), [0, 1, 2]);
    }

    #[test]
    fn an_async_body_that_fails_keeps_what_it_sent_then_ends_with_the_error() {
        let body = Body::stream_async(|mut out| async move {
            out.send("sent").await?;
            Err(Error::msg("the database went away"))
        });
        assert_eq!(
            chunks(body),
            (vec!["sent".into()], Some("the database went away".into()))
        );
    }

    #[test]
    fn sends_fail_once_the_reader_is_gone() {
        let result = Rc::new(RefCell::new(None));
        let (out, failed) = (Rc::new(RefCell::new(None)), result.clone());
        let keep = out.clone();
        let mut body = Body::stream_async(move |sender| {
            *keep.borrow_mut() = Some(sender);
            async { std::future::pending::<Result<(), Error>>().await }
        });
        let waiting = crate::block_on(poll_fn(|cx| Poll::Ready(body.poll_chunk(cx).is_pending())));
        assert!(waiting);
        drop(body);
        let mut sender = out.borrow_mut().take().unwrap();
        *failed.borrow_mut() = Some(crate::block_on(sender.send("late")).is_err());
        assert_eq!(*result.borrow(), Some(true));
    }

    #[test]
    fn async_readers_read_every_kind_of_body() {
        let read = |body: Body| crate::block_on(body.read_text()).unwrap();
        assert_eq!(read(Body::from("full")), "full");
        assert_eq!(read(Body::stream(["a", "b"])), "ab");
        assert_eq!(
            read(Body::from_writer(|out| Ok(out.send("written")?))),
            "written"
        );
        let framed = Body::from_http_body(http_body_util::Full::new(Bytes::from("framed")));
        assert_eq!(read(framed), "framed");
        // And the blocking readers wait for async bodies on the host.
        let produced = Body::stream_async(|mut out| async move { out.send("async").await });
        assert_eq!(produced.text().unwrap(), "async");
        let not_utf8 = crate::block_on(Body::from(vec![0xff]).read_text()).unwrap_err();
        assert_eq!(not_utf8.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn conversions_make_complete_bodies() {
        assert_eq!(Body::from("a").as_bytes().unwrap(), "a");
        assert_eq!(Body::from(String::from("b")).as_bytes().unwrap(), "b");
        assert_eq!(Body::from(vec![b'c']).as_bytes().unwrap(), "c");
        assert_eq!(
            Body::from(Bytes::from_static(b"d")).as_bytes().unwrap(),
            "d"
        );
        assert_eq!(Body::from(&b"e"[..]).as_bytes().unwrap(), "e");
        assert_eq!(Body::empty().exact_len(), Some(0));
        assert_eq!(Body::default().bytes().unwrap(), "");
        assert_eq!(format!("{:?}", Body::from("abc")), "Body(3 bytes)");
    }

    #[test]
    fn streams_have_no_length_and_read_in_full() {
        let body = Body::stream(vec!["a", "", "b"]);
        assert_eq!(body.exact_len(), None);
        assert_eq!(format!("{body:?}"), "Body(stream)");
        assert_eq!(body.bytes().unwrap(), "ab");
    }

    /// A sink that records each flush boundary and can fail after some writes.
    #[derive(Default)]
    struct Recorder {
        flushed: Vec<Vec<u8>>,
        pending: Vec<u8>,
        fail_after_flushes: Option<usize>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail_after_flushes == Some(self.flushed.len()) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.pending.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            if !self.pending.is_empty() {
                self.flushed.push(std::mem::take(&mut self.pending));
            }
            Ok(())
        }
    }

    #[test]
    fn each_stream_chunk_is_flushed_on_its_own() {
        let mut sink = Recorder::default();
        assert!(Body::stream(["one", "two"]).write_to(&mut sink).is_ok());
        assert_eq!(sink.flushed, [b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn a_client_that_leaves_stops_the_stream() {
        let produced = std::rc::Rc::new(std::cell::Cell::new(0));
        let counter = produced.clone();
        let chunks = (0..10).map(move |i| {
            counter.set(counter.get() + 1);
            format!("{i}")
        });
        let mut sink = Recorder {
            fail_after_flushes: Some(2),
            ..Recorder::default()
        };
        let result = Body::stream(chunks).write_to(&mut sink);
        assert!(matches!(result, Err(SendError::Write(_))));
        assert_eq!(
            produced.get(),
            3,
            "production stops at the first failed write"
        );
    }

    #[test]
    fn a_failing_chunk_ends_the_stream_as_a_producer_error() {
        let chunks = vec![Ok("fine"), Err(std::io::Error::other("boom"))];
        let mut sink = Recorder::default();
        match Body::try_stream(chunks).write_to(&mut sink) {
            Err(SendError::Produce(error)) => assert_eq!(error.to_string(), "boom"),
            _ => panic!("expected a producer error"),
        }
        let error = Body::try_stream(vec![Err::<&str, _>(std::io::Error::other("boom"))])
            .bytes()
            .unwrap_err();
        assert_eq!(format!("{error:#}"), "reading the body: boom");
    }

    #[test]
    fn writer_errors_tell_a_gone_client_from_a_failing_callback() {
        let mut sink = Recorder {
            fail_after_flushes: Some(1),
            ..Recorder::default()
        };
        let result = Body::from_writer(|out| {
            out.send("first")?;
            out.send("second")?;
            Ok(())
        })
        .write_to(&mut sink);
        assert!(matches!(result, Err(SendError::Write(_))));
        assert_eq!(sink.flushed, [b"first".to_vec()]);

        let result = Body::from_writer(|_| Err(Error::msg("no data"))).write_to(&mut sink);
        assert!(matches!(result, Err(SendError::Produce(_))));
    }

    #[test]
    fn text_that_is_not_utf8_is_a_client_error() {
        let error = Body::from(vec![0xff, 0xfe]).text().unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.to_string().starts_with("the body must be UTF-8 text"));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_that_does_not_fit_is_a_client_error() {
        #[derive(serde::Deserialize, Debug)]
        struct Item {
            #[allow(dead_code)]
            price: u32,
        }
        let error = Body::from(r#"{"price": -1}"#).json::<Item>().unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(
            error.to_string().contains("invalid value: integer `-1`"),
            "{error}"
        );
        let item: Item = Body::stream([r#"{"pri"#, r#"ce": 3}"#]).json().unwrap();
        assert_eq!(item.price, 3);
    }
}
