//! How many WebSocket calls one connection has in flight, read off the wire, so the edge can
//! stop reading a client that pipelines faster than keyguard answers.
//!
//! jsonrpsee reads every WebSocket message as it arrives and spawns a task for it, with no
//! bound per connection: a client writing 800 KB typed-data messages back to back on a busy
//! machine had 120 of them (210 MB) held at once. Counting the client's messages (final data
//! frames) against keyguard's answers (final data frames the other way), the edge stops reading
//! at [`MAX_PIPELINED`] unanswered messages; the rest wait in the kernel's socket buffer and
//! the client's own.
//!
//! What a hostile client sends next, and what happens:
//! - frames before the handshake's `101` (so the HTTP server, not this counter, would read
//!   their start, and the counter would begin mid-frame and could be steered to count nothing):
//!   the upgrade must be the connection's first request and nothing may follow its head before
//!   the `101`, or the connection is closed ([`Handshake::aligned`]);
//! - unmasked frames, reserved bits, unknown opcodes, non-minimal lengths, fragmented or long
//!   control frames: the connection is closed (soketto refuses them too);
//! - messages in fragments: counted once, at their final frame; pings and pongs: not counted;
//! - notifications (no `id`, no answer): each holds a place until the idle timeout closes the
//!   connection; signing clients never send them.

/// Unanswered messages one WebSocket connection may have before the edge stops reading it.
pub(crate) const MAX_PIPELINED: u64 = 32;

/// The longest HTTP request head kept in view while waiting for an upgrade.
const MAX_HEAD: u64 = 64 * 1024;

/// Finds the end of the first HTTP head (`\r\n\r\n`) in a byte stream fed in pieces.
#[derive(Default, Debug)]
pub(crate) struct Handshake {
    seen: u64,
    matched: u8,
    /// Stream offset just past the first `\r\n\r\n`.
    end: Option<u64>,
}

impl Handshake {
    /// Feeds bytes the HTTP side read or wrote.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() && self.end.is_none() && self.seen < MAX_HEAD {
            let b = bytes[i];
            i += 1;
            self.seen += 1;
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') | (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.matched == 4 {
                self.end = Some(self.seen);
            }
        }
        self.seen += (bytes.len() - i) as u64;
    }

    /// Whether everything read so far is exactly one request head: then the WebSocket stream
    /// starts with the next byte read.
    pub(crate) fn aligned(&self) -> bool {
        self.end == Some(self.seen)
    }

    /// Bytes of `bytes` that belong to the head (for the answer side: `101` head, then frames).
    pub(crate) fn head_part(&mut self, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            self.feed(&[b]);
            if self.end.is_some() {
                return i + 1;
            }
        }
        bytes.len()
    }

    /// Whether the head has ended.
    pub(crate) fn done(&self) -> bool {
        self.end.is_some()
    }
}

/// A frame that breaks RFC 6455 as a server must receive it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadFrame(pub(crate) &'static str);

/// Follows frame boundaries in one direction and counts completed data messages.
#[derive(Debug)]
pub(crate) struct FrameCounter {
    /// Frames from the client are masked; the server's are not.
    from_client: bool,
    head: [u8; 14],
    have: usize,
    need: usize,
    payload_left: u64,
}

impl FrameCounter {
    pub(crate) fn new(from_client: bool) -> FrameCounter {
        FrameCounter {
            from_client,
            head: [0; 14],
            have: 0,
            need: 2,
            payload_left: 0,
        }
    }

    /// Feeds the next bytes of the stream; returns how many data messages ended in them.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<u64, BadFrame> {
        let mut messages = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let k = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= k;
                bytes = &bytes[k as usize..];
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have == 2 {
                let ext = match self.head[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let masked = self.head[1] & 0x80 != 0;
                if masked != self.from_client {
                    return Err(BadFrame(if masked {
                        "masked server frame"
                    } else {
                        "unmasked client frame"
                    }));
                }
                self.need = 2 + ext + if masked { 4 } else { 0 };
            }
            if self.have == self.need {
                messages += self.header_done()?;
            }
        }
        Ok(messages)
    }

    fn header_done(&mut self) -> Result<u64, BadFrame> {
        let (b0, b1) = (self.head[0], self.head[1]);
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(BadFrame("reserved bits set"));
        }
        let len = match b1 & 0x7f {
            126 => {
                let n = u64::from(u16::from_be_bytes([self.head[2], self.head[3]]));
                if n < 126 {
                    return Err(BadFrame("length not minimally encoded"));
                }
                n
            }
            127 => {
                let n = u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes"));
                if n < 65_536 || n >> 63 != 0 {
                    return Err(BadFrame("length not minimally encoded"));
                }
                n
            }
            n => u64::from(n),
        };
        let data = match opcode {
            0..=2 => true,
            8..=10 => {
                if !fin || len > 125 {
                    return Err(BadFrame("fragmented or long control frame"));
                }
                false
            }
            _ => return Err(BadFrame("unknown opcode")),
        };
        self.payload_left = len;
        self.have = 0;
        self.need = 2;
        Ok(u64::from(fin && data))
    }
}

/// One connection's WebSocket accounting, fed by the edge's reads and writes.
#[derive(Debug)]
pub(crate) struct WsGate {
    open: bool,
    asked_head: Handshake,
    /// The `101` head still being written, once the upgrade answer has started.
    answer_head: Option<Handshake>,
    inbound: FrameCounter,
    outbound: FrameCounter,
    asked: u64,
    answered: u64,
    broken: Option<&'static str>,
    reader: Option<std::task::Waker>,
}

impl WsGate {
    pub(crate) fn new() -> WsGate {
        WsGate {
            open: false,
            asked_head: Handshake::default(),
            answer_head: None,
            inbound: FrameCounter::new(true),
            outbound: FrameCounter::new(false),
            asked: 0,
            answered: 0,
            broken: None,
            reader: None,
        }
    }

    /// Why the connection must close, if it must.
    pub(crate) fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    /// Whether the reader must wait for answers; keeps its waker when it must.
    pub(crate) fn must_wait(&mut self, waker: &std::task::Waker) -> bool {
        let wait = self.open && self.asked.saturating_sub(self.answered) >= MAX_PIPELINED;
        if wait {
            self.reader = Some(waker.clone());
        }
        wait
    }

    /// Bytes the client sent, as read.
    pub(crate) fn read(&mut self, bytes: &[u8]) {
        if !self.open {
            self.asked_head.feed(bytes);
            return;
        }
        match self.inbound.feed(bytes) {
            Ok(n) => self.asked += n,
            Err(BadFrame(why)) => self.break_with(why),
        }
    }

    /// Bytes keyguard's side wrote, as accepted (before any rewrite).
    pub(crate) fn wrote(&mut self, bytes: &[u8]) {
        if !self.open {
            if !bytes.starts_with(b"HTTP/1.1 101 ") {
                return;
            }
            self.open = true;
            if !self.asked_head.aligned() {
                self.break_with(
                    "data before the WebSocket handshake completed (the upgrade must be the \
                     connection's first request)",
                );
            }
            self.answer_head = Some(Handshake::default());
        }
        let mut frames = bytes;
        if let Some(head) = &mut self.answer_head {
            frames = &bytes[head.head_part(bytes)..];
            if !head.done() {
                return;
            }
            self.answer_head = None;
        }
        match self.outbound.feed(frames) {
            Ok(0) => {}
            Ok(n) => {
                self.answered += n;
                self.wake();
            }
            Err(BadFrame(why)) => self.break_with(why),
        }
    }

    fn break_with(&mut self, why: &'static str) {
        if self.broken.is_none() {
            tracing::debug!(reason = why, "WebSocket connection closed");
            self.broken = Some(why);
        }
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_messages_at_their_final_frame_in_any_split() {
        let stream = [
            frame(true, 1, &[b'x'; 10], true),
            frame(false, 1, &[b'a'; 300], true),
            frame(true, 9, b"ping", true),
            frame(true, 0, &[b'b'; 70_000], true),
            frame(true, 2, &[], true),
        ]
        .concat();
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut c = FrameCounter::new(true);
            let n: u64 = stream.chunks(chunk).map(|p| c.feed(p).unwrap()).sum();
            assert_eq!(n, 3, "chunk {chunk}");
        }
        let mut s = FrameCounter::new(false);
        assert_eq!(s.feed(&frame(true, 1, b"{}", false)), Ok(1));
    }

    #[test]
    fn frames_a_server_must_refuse_are_refused() {
        let c = || FrameCounter::new(true);
        assert!(c().feed(&frame(true, 1, b"x", false)).is_err(), "unmasked");
        assert!(c().feed(&frame(true, 3, b"x", true)).is_err(), "opcode");
        assert!(
            c().feed(&frame(false, 9, b"x", true)).is_err(),
            "fragmented ping"
        );
        assert!(
            c().feed(&frame(true, 9, &[0; 126], true)).is_err(),
            "long ping"
        );
        let mut rsv = frame(true, 1, b"x", true);
        rsv[0] |= 0x40;
        assert!(c().feed(&rsv).is_err(), "reserved bit");
        // 5 bytes in the 16-bit form.
        let long_form = [0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4];
        assert!(c().feed(&long_form).is_err(), "non-minimal length");
        let mut s = FrameCounter::new(false);
        assert!(
            s.feed(&frame(true, 1, b"x", true)).is_err(),
            "masked server frame"
        );
    }

    #[test]
    fn the_upgrade_must_be_the_first_request_and_alone() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
        for split in [1, 5, get.len()] {
            let mut h = Handshake::default();
            get.chunks(split).for_each(|p| h.feed(p));
            assert!(h.aligned(), "split {split}");
        }
        // A frame sent before the 101: the HTTP side read its start.
        let mut h = Handshake::default();
        h.feed(&[get.as_slice(), &frame(true, 1, b"x", true)].concat());
        assert!(!h.aligned());
        // A request before the upgrade on the same connection.
        let mut h = Handshake::default();
        h.feed(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        h.feed(get);
        assert!(!h.aligned());
        // The answer side: the 101 head, then frames.
        let mut out = Handshake::default();
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let both = [resp.as_slice(), b"\x81\x00"].concat();
        assert_eq!(out.head_part(&both), resp.len());
        assert!(out.done());
    }
}
