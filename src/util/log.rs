//! Log output that a peer cannot forge: values a peer chose (an AE title, a UID, a file name)
//! reach the log inside records, and a record must stay one line.

use std::borrow::Cow;
use std::io::{self, Write};

/// `s` as written into a log field: unchanged when it is printable ASCII, else escaped as Rust
/// escapes text (`\n`, `\u{1b}`, `\\`...), so that a value never breaks or colours a log line.
pub fn safe(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.escape_default().to_string())
    }
}

/// Writes each log record as one line: the text formatter writes a record with one `write_all`
/// ending in a newline; a newline or carriage return before that end (a value a peer sent) is
/// written as `\n` or `\r`, and with `escape_controls` (no colours: not a terminal) so is every
/// other control character, as `\u{..}`.
pub struct OneLine<W> {
    inner: W,
    escape_controls: bool,
}

impl<W> OneLine<W> {
    pub fn new(inner: W, escape_controls: bool) -> Self {
        OneLine {
            inner,
            escape_controls,
        }
    }
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let escape = |b: u8| match b {
            b'\n' | b'\r' => true,
            b'\t' => false,
            _ => self.escape_controls && (b < 0x20 || b == 0x7f),
        };
        if !body.iter().any(|&b| escape(b)) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b if escape(b) => out.extend_from_slice(format!("\\u{{{b:x}}}").as_bytes()),
                b => out.push(b),
            }
        }
        if body.len() < buf.len() {
            out.push(b'\n');
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_leaves_plain_text_and_escapes_the_rest() {
        assert_eq!(safe("STORESCU"), "STORESCU");
        assert!(matches!(safe("CT 1"), Cow::Borrowed(_)));
        assert_eq!(safe("EV\nFAKE"), "EV\\nFAKE");
        assert_eq!(safe("A\u{1b}[31m"), "A\\u{1b}[31m");
        assert_eq!(safe("A\\B"), "A\\\\B");
        assert_eq!(safe("é"), "\\u{e9}");
    }

    fn written(input: &[u8], escape_controls: bool) -> String {
        let mut w = OneLine::new(Vec::new(), escape_controls);
        assert_eq!(w.write(input).unwrap(), input.len());
        String::from_utf8(w.inner).unwrap()
    }

    #[test]
    fn a_record_stays_one_line() {
        assert_eq!(written(b"plain record\n", true), "plain record\n");
        assert_eq!(
            written(b"calling_ae=EV\nFAKE ERROR x\r\n", true),
            "calling_ae=EV\\nFAKE ERROR x\\r\n"
        );
        assert_eq!(written(b"no newline at all", false), "no newline at all");
        assert_eq!(written(b"tab\tkept\n", true), "tab\tkept\n");
        // Colours are kept for a terminal, escaped otherwise.
        assert_eq!(
            written(b"\x1b[32mINFO\x1b[0m\n", false),
            "\x1b[32mINFO\x1b[0m\n"
        );
        assert_eq!(written(b"a\x1b[31m\n", true), "a\\u{1b}[31m\n");
    }
}
