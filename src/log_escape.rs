//! Log lines an attacker cannot forge: control characters in text-format log output are
//! escaped, whatever field or message carries them.
//!
//! The attack stopped: method names, client names, reasons and decoder errors quote strings a
//! caller chose. Printed raw, a `\n` in one starts a forged line (`... INFO signed ...`) and an
//! ESC sequence rewrites the operator's terminal. Escaping at the writer covers every
//! `tracing` call, including those of libraries, so no call site can forget it. The JSON
//! format escapes by construction and is left as it is.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// `buf` with every control character but the final newline and tabs shown as `\xNN`
/// (C1 controls, U+0080 to U+009F, as `\u{NN}`).
pub fn escape(buf: &[u8]) -> Cow<'_, [u8]> {
    let last = buf.len().saturating_sub(1);
    let unsafe_at = |i: usize, b: u8| {
        (b < 0x20 && b != b'\t' && !(b == b'\n' && i == last))
            || b == 0x7f
            || (b == 0xc2 && buf.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
    };
    if !buf.iter().enumerate().any(|(i, &b)| unsafe_at(i, b)) {
        return Cow::Borrowed(buf);
    }
    let mut out = Vec::with_capacity(buf.len() + 16);
    let mut i = 0;
    while i < buf.len() {
        let b = buf[i];
        if b == 0xc2 && unsafe_at(i, b) {
            let _ = write!(out, "\\u{{{:02x}}}", buf[i + 1]);
            i += 2;
            continue;
        }
        if unsafe_at(i, b) {
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.push(b);
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Standard error, escaped (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedStderr;

/// One event's writer.
#[derive(Debug)]
pub struct EscapedWriter(io::Stderr);

impl Write for EscapedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = EscapedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapedWriter(io::stderr())
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn forged_lines_and_terminal_escapes_are_shown_not_obeyed() {
        let line = "INFO refused method=\"x\nINFO signed\x1b[2J\u{9b}31m\"\n".as_bytes();
        let out = String::from_utf8(escape(line).into_owned()).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        assert!(!out.contains('\x1b') && !out.contains('\u{9b}'), "{out}");
        assert!(out.contains("\\x0aINFO signed\\x1b[2J\\u{9b}31m"), "{out}");
        // Control: ordinary lines, tabs and non-ASCII text pass unchanged.
        let plain = "INFO signed client=\"büro\"\tok\n".as_bytes();
        assert_eq!(&*escape(plain), plain);
    }
}
