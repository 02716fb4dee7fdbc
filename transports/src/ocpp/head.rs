//! The upgrade request's head, read before the WebSocket handshake.
//!
//! Why: tungstenite decides the upgrade in a synchronous callback, and checking a password
//! costs a PBKDF2 run (see [`super::credentials`]) that must not run on the async runtime. So
//! the CSMS reads the request head itself (at most [`super::server::ServerConfig::max_request_head_bytes`]),
//! takes the path and the `Authorization` header from it, verifies the password off the
//! runtime, and then hands tungstenite a [`Replay`] stream that yields the same bytes again:
//! tungstenite parses and answers exactly the request that was checked.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Most header lines parsed in an upgrade request (a charge point sends about ten).
pub const MAX_REQUEST_HEADERS: usize = 64;
/// Bytes read from the socket at a time while looking for the end of the head.
const READ_CHUNK_BYTES: usize = 1024;

/// What the CSMS needs from the head before the upgrade.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The request target's path.
    pub path: String,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<Vec<u8>>,
}

/// Why the head could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is longer than the limit.
    #[error("request head longer than {0} bytes")]
    TooLarge(usize),
    /// The peer closed before the head ended.
    #[error("connection closed before the request head ended")]
    Closed,
    /// Not an HTTP/1.x request head.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("reading the request head: {0}")]
    Io(String),
}

/// Reads until the blank line that ends the head; returns every byte read (the head and
/// anything after it, which the [`Replay`] gives back).
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| HeadError::Io(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Only the new bytes (and the three before them) can complete the terminator.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge(max));
        }
    }
}

/// The path and `Authorization` of a complete head.
pub fn parse(bytes: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete".into())),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let target = request.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let authorization = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| h.value.to_vec());
    Ok(Head {
        path,
        authorization,
    })
}

/// A stream that first yields `prefix`, then reads from the inner stream; writes go through.
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Replay<S> {
    /// `inner`, with `prefix` to be read again first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Replay {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new(); // free the head once replayed
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_the_head_and_replays_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let request =
            b"GET /ocpp/cp-1?x=1 HTTP/1.1\r\nHost: h\r\nauthorization: Basic eA==\r\n\r\nrest";
        tokio::spawn(async move { b.write_all(request).await });
        let bytes = read(&mut a, 1024).await.unwrap();
        let head = parse(&bytes).unwrap();
        assert_eq!(head.path, "/ocpp/cp-1");
        assert_eq!(head.authorization.as_deref(), Some(&b"Basic eA=="[..]));
        let mut replay = Replay::new(bytes, a);
        let mut all = vec![0u8; request.len()];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..], &request[..]);
    }

    #[tokio::test]
    async fn too_long_closed_and_garbage_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        tokio::spawn(async move { b.write_all(&[b'x'; 3000]).await });
        assert_eq!(read(&mut a, 2048).await, Err(HeadError::TooLarge(2048)));
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        assert_eq!(read(&mut a, 2048).await, Err(HeadError::Closed));
        assert!(matches!(
            parse(b"\x01\x02\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }
}
