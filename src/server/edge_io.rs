//! The byte stream of one listener connection: closed after an idle timeout, and with
//! jsonrpsee's own "request too big" WebSocket error rewritten to keyguard's.
//!
//! jsonrpsee answers an oversized WebSocket message with code `-32007`, which keyguard
//! documents as "backend failure" (an HSM down): a client or alert keyed on the code would
//! page the wrong team, and an attacker could fake outages in dashboards. That error is sent
//! from inside jsonrpsee's connection loop, past every middleware, so it is replaced here, on
//! the wire: a server text frame whose payload is exactly jsonrpsee's oversize error becomes
//! keyguard's `-32600` with `data.field = "body"`, the answer HTTP gets for the same request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::ws_frames::WsGate;

/// jsonrpsee's oversize error, as its WebSocket loop serializes it.
fn jsonrpsee_oversize(max_body: usize) -> Vec<u8> {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{{\"code\":-32007,\"message\":\"Request is too big\",\"data\":\"Exceeded max limit of {max_body}\"}}}}"
    )
    .into_bytes()
}

/// keyguard's answer to an oversized message (as `http_edge` gives it on HTTP).
fn keyguard_oversize(max_body: usize) -> Vec<u8> {
    let reason = format!("request body exceeds {max_body} bytes");
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32600, "message": reason, "data": {"field": "body", "reason": reason}},
    })
    .to_string()
    .into_bytes()
}

/// An unmasked, final text frame around `payload`.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n @ 0..=125 => f.push(n as u8),
        n => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Length of a server text-frame header at the start of `buf`, when `buf` starts with one
/// whose payload is small (the only frames rewritten).
fn header_len(buf: &[u8]) -> Option<(usize, usize)> {
    match buf {
        [0x81, n, ..] if *n < 126 => Some((2, *n as usize)),
        [0x81, 126, a, b, ..] => Some((4, u16::from_be_bytes([*a, *b]) as usize)),
        _ => None,
    }
}

/// See the module docs.
pub(crate) struct EdgeIo<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// A lone frame header written just before, held to see the payload that follows.
    held: Vec<u8>,
    /// Bytes accepted from the writer and still to go out.
    pending: Vec<u8>,
    sent: usize,
    from: Vec<u8>,
    to: Vec<u8>,
    /// Unanswered WebSocket messages: reading stops at a bound (`ws_frames`).
    ws: WsGate,
}

impl<T> EdgeIo<T> {
    pub(crate) fn new(inner: T, idle: Duration, max_body: usize) -> Self {
        EdgeIo {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            held: Vec::new(),
            pending: Vec::new(),
            sent: 0,
            from: text_frame(&jsonrpsee_oversize(max_body)),
            to: text_frame(&keyguard_oversize(max_body)),
            ws: WsGate::new(),
        }
    }

    fn touch(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncWrite + Unpin> EdgeIo<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.touch();
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Queues `frame` (header and payload), rewritten if it is jsonrpsee's oversize error.
    fn queue(&mut self, frame: &[u8]) {
        if frame == self.from.as_slice() {
            tracing::debug!("oversized WebSocket message: answered as -32600");
            let to = std::mem::take(&mut self.to);
            self.pending.extend_from_slice(&to);
            self.to = to;
        } else {
            self.pending.extend_from_slice(frame);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(why) = this.ws.broken() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
        }
        if this.ws.must_wait(cx.waker()) {
            // Too many unanswered messages: nothing more is read until answers go out.
            if this.idle_expired(cx) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle connection closed",
                )));
            }
            return Poll::Pending;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touch();
                    this.ws.read(&buf.filled()[before..]);
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if !this.held.is_empty() {
            let mut frame = std::mem::take(&mut this.held);
            frame.extend_from_slice(buf);
            this.queue(&frame);
            this.ws.wrote(buf);
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        if let Some((head, len)) = header_len(buf) {
            let from_len = header_len(&this.from).map_or(0, |(_, n)| n);
            if buf.len() == head && len == from_len {
                // soketto writes the header and the payload separately.
                this.held = buf.to_vec();
                this.ws.wrote(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            if buf.len() == head + len && buf.len() == this.from.len() {
                this.queue(buf);
                this.ws.wrote(buf);
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.touch();
        this.ws.wrote(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() {
            let held = std::mem::take(&mut this.held);
            this.pending.extend_from_slice(&held);
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn jsonrpsee_oversize_frame_becomes_keyguard_invalid_request() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut io = EdgeIo::new(a, Duration::from_secs(60), 1024);
        let frame = text_frame(&jsonrpsee_oversize(1024));
        // As soketto writes it: header, then payload.
        let (head, _) = header_len(&frame).unwrap();
        io.write_all(&frame[..head]).await.unwrap();
        io.write_all(&frame[head..]).await.unwrap();
        // Control: an ordinary frame passes untouched.
        let other = text_frame(br#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#);
        io.write_all(&other).await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        let expected = [text_frame(&keyguard_oversize(1024)), other].concat();
        assert_eq!(out, expected);
        assert!(String::from_utf8_lossy(&out).contains("-32600"));
        assert!(!String::from_utf8_lossy(&out).contains("-32007"));
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = EdgeIo::new(a, Duration::from_millis(200), 1024);
        let mut byte = [0u8; 1];
        let e = io.read(&mut byte).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    fn masked(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    /// Reads what is there now; `None` when the edge would wait.
    async fn read_now(io: &mut EdgeIo<tokio::io::DuplexStream>) -> Option<std::io::Result<usize>> {
        // Eight bytes: one frame of `masked(b"{}")` a read (a read may overshoot the bound by
        // what it holds; soketto reads a few KiB at a time).
        let mut buf = [0u8; 8];
        tokio::time::timeout(Duration::from_millis(100), io.read(&mut buf))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_pipelining_client_is_read_up_to_the_bound_then_as_answers_go_out() {
        use crate::server::ws_frames::MAX_PIPELINED;
        let (a, mut client) = tokio::io::duplex(1 << 20);
        let mut io = EdgeIo::new(a, Duration::from_secs(60), 1024);
        client.write_all(GET).await.unwrap();
        let mut got = 0;
        while got < GET.len() {
            got += read_now(&mut io).await.unwrap().unwrap();
        }
        io.write_all(SWITCH).await.unwrap();
        for _ in 0..MAX_PIPELINED + 5 {
            client.write_all(&masked(b"{}")).await.unwrap();
        }
        let mut read = 0;
        while let Some(r) = read_now(&mut io).await {
            read += r.unwrap();
        }
        assert_eq!(read, 8 * MAX_PIPELINED as usize, "read past the bound");
        // An answer lets the reader go on.
        io.write_all(&text_frame(b"{}")).await.unwrap();
        assert!(matches!(read_now(&mut io).await, Some(Ok(n)) if n > 0));

        // Control: the same bytes without the gate (no `101` written, so it never opens) are
        // all read.
        let (a, mut client) = tokio::io::duplex(1 << 20);
        let mut io = EdgeIo::new(a, Duration::from_secs(60), 1024);
        client.write_all(GET).await.unwrap();
        for _ in 0..MAX_PIPELINED + 5 {
            client.write_all(&masked(b"{}")).await.unwrap();
        }
        let mut read = 0;
        while let Some(r) = read_now(&mut io).await {
            read += r.unwrap();
        }
        assert_eq!(read, GET.len() + 8 * (MAX_PIPELINED as usize + 5));
    }

    #[tokio::test]
    async fn frames_sent_before_the_handshake_answer_close_the_connection() {
        let (a, mut client) = tokio::io::duplex(1 << 16);
        let mut io = EdgeIo::new(a, Duration::from_secs(60), 1024);
        client
            .write_all(&[GET, &masked(b"{}")].concat())
            .await
            .unwrap();
        // The HTTP side reads the request and, ahead, the frame.
        while read_now(&mut io).await.is_some() {}
        io.write_all(SWITCH).await.unwrap();
        let e = read_now(&mut io).await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Control: the same bytes after the answer are read.
        let (a, mut client) = tokio::io::duplex(1 << 16);
        let mut io = EdgeIo::new(a, Duration::from_secs(60), 1024);
        client.write_all(GET).await.unwrap();
        while read_now(&mut io).await.is_some() {}
        io.write_all(SWITCH).await.unwrap();
        client.write_all(&masked(b"{}")).await.unwrap();
        assert!(matches!(read_now(&mut io).await, Some(Ok(8))));
    }
}
