//! The bodies' tests: complete, streamed, written and produced bodies, read and sent.

use std::cell::RefCell;
use std::rc::Rc;

use http::StatusCode;

use super::*;

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
