//! What the old and the new process say to each other over `takeover.sock`: length-prefixed
//! JSON messages, and once the listening sockets themselves (one byte carrying the file
//! descriptors as `SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::kv::KvError;
use crate::kv::switch::{Op, Reply};

/// The largest message accepted (a key-value call carries at most one batch of values).
const MAX_MESSAGE: usize = 1 << 30;

/// The version of this conversation; both sides must speak the same.
pub const VERSION: u32 = 1;

/// One message.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Message {
    /// New → old: "I want to take over" (with the conversation's version).
    Hello {
        /// [`VERSION`].
        version: u32,
        /// The new process's id.
        pid: u32,
    },
    /// Old → new: what it would hand over.
    Offer {
        /// The old process's id.
        pid: u32,
        /// Its data-plane address.
        data: SocketAddr,
        /// Its admin address.
        admin: SocketAddr,
        /// Whether it serves its data listener over TLS (`None`: a release that did not say).
        #[serde(default)]
        data_tls: Option<bool>,
        /// Whether it serves its admin listener over TLS (`None`: a release that did not say).
        #[serde(default)]
        admin_tls: Option<bool>,
    },
    /// Old → new: no takeover now, and why.
    Refused {
        /// A sentence.
        reason: String,
    },
    /// New → old: hand it over (the old process then closes its state and sends the sockets).
    Begin,
    /// New → old: loaded and about to serve; hand over the key-value store.
    KvRelease,
    /// Old → new: the key-value store is closed here (calls wait); open it.
    KvReleased,
    /// New → old: the new process has opened the key-value store; send calls here.
    KvOpen,
    /// Old → new: a key-value call of a request still running on the old process.
    Kv {
        /// Pairs the answer with the call.
        id: u64,
        /// The call.
        op: Op,
    },
    /// New → old: the answer to [`Message::Kv`].
    KvReply {
        /// The call's id.
        id: u64,
        /// What it answered.
        result: Result<Reply, KvError>,
    },
    /// New → old: loaded and serving; stop accepting, drain and exit.
    Ready,
}

/// Writes one message.
pub async fn send(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &Message,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// Reads one message; `None` when the other side closed the connection between messages.
pub async fn recv(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Message>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_MESSAGE {
        return Err(std::io::Error::other("a takeover message is too large"));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Sends `fds` (one byte carrying them).
pub async fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many sockets to hand over"));
    }
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            sendmsg(
                stream,
                &[IoSlice::new(b"L")],
                &mut control,
                SendFlags::empty(),
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(std::io::Error::other("the sockets were not sent")),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Receives the file descriptors [`send_fds`] sent (close-on-exec).
pub async fn recv_fds(stream: &UnixStream) -> std::io::Result<Vec<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)
        });
        match received {
            Ok(message) if message.bytes == 1 => break,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the running server closed the connection before sending its sockets",
                ));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn an_offer_from_a_release_that_does_not_say_which_listener_speaks_tls_is_read() {
        let older = r#"{"Offer":{"pid":7,"data":"127.0.0.1:1","admin":"127.0.0.1:2"}}"#;
        match serde_json::from_str::<Message>(older).unwrap() {
            Message::Offer {
                pid,
                data_tls,
                admin_tls,
                ..
            } => assert_eq!((pid, data_tls, admin_tls), (7, None, None)),
            other => panic!("{other:?}"),
        }
    }
}
