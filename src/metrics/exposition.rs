//! Writing Prometheus text format 0.0.4 by hand: sample line starts, numbers, label escaping.
//!
//! Hot at scrape time (a dozen lines per group), so built with `push_str` and a hand-rolled
//! integer writer rather than `write!`, which is several times slower per line. The smallest
//! are `#[inline]`: called from another module they were no longer inlined, which cost the
//! render benchmark ~8% more instructions.

use std::fmt::Write as _;
use std::io;

/// Bytes [`Out`] gathers before writing them to its sink: small enough to stay in the CPU's
/// cache, large enough that the sink is called rarely.
pub(super) const FLUSH_AT: usize = 32 * 1024;

/// Text on its way to a sink. Filled while a store lock may be held; written out only when the
/// renderer calls [`Out::maybe_flush`] between chunks, with no lock held, since the sink may
/// block on a slow reader.
pub(super) struct Out<'a> {
    pub(super) buf: String,
    sink: &'a mut dyn io::Write,
}

impl<'a> Out<'a> {
    pub(super) fn new(sink: &'a mut dyn io::Write) -> Out<'a> {
        Out {
            // A chunk of groups may add a few hundred KiB past the threshold at worst.
            buf: String::with_capacity(2 * FLUSH_AT),
            sink,
        }
    }

    /// Writes the buffer out once it holds [`FLUSH_AT`] bytes.
    pub(super) fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffer out.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.sink.write_all(self.buf.as_bytes())?;
        self.buf.clear();
        Ok(())
    }
}

/// Starts a sample line: `name{labels extra} `.
#[inline]
pub(super) fn start(out: &mut String, name: &str, labels: &str, extra: &str) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str(extra);
    out.push_str("} ");
}

pub(super) fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

#[inline]
pub(super) fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Escapes a label value per the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub(super) fn escape_label_value(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a sample value and the line's end: integers without a fraction, Go's spellings for the
/// non-finite values.
#[inline]
pub(super) fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN\n");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf\n" } else { "-Inf\n" });
    } else {
        // Rust's `Display` for f64 is the shortest exact round trip and never uses an exponent.
        let _ = writeln!(out, "{v}");
    }
}

/// A checker for the text format as `/metrics` must produce it: every family has one HELP and
/// one TYPE before its samples, samples of a family are contiguous, label values are quoted
/// with only the three escapes, values parse as floats, and there are no timestamps.
#[cfg(test)]
pub(super) fn check_exposition(text: &str) -> Result<(), String> {
    use std::collections::HashSet;

    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut typed = false;
    for (n, line) in text.lines().enumerate() {
        let err = |what: &str| Err(format!("line {}: {what}: {line:?}", n + 1));
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_string();
            if done.contains(&name) || current.as_deref() == Some(&name) {
                return err("second HELP");
            }
            if let Some(c) = current.take() {
                done.insert(c);
            }
            current = Some(name);
            typed = false;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default();
            let kind = parts.next().unwrap_or_default();
            if current.as_deref() != Some(name) || typed {
                return err("TYPE without its HELP");
            }
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return err("unknown type");
            }
            typed = true;
        } else {
            let Some(family) = current.as_deref() else {
                return err("sample before any HELP");
            };
            if !typed {
                return err("sample before TYPE");
            }
            let (name, rest) = match line.find('{') {
                Some(i) => (&line[..i], &line[i..]),
                None => line.split_at(line.find(' ').unwrap_or(line.len())),
            };
            let base_ok = name == family
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family));
            if !base_ok {
                return err("sample outside its family");
            }
            let value = if let Some(labels) = rest.strip_prefix('{') {
                let mut chars = labels.char_indices().peekable();
                let end = loop {
                    // name="value"
                    let mut lname = String::new();
                    for (_, c) in chars.by_ref() {
                        if c == '=' {
                            break;
                        }
                        lname.push(c);
                    }
                    if lname.is_empty()
                        || !lname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return err("bad label name");
                    }
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return err("unquoted label value");
                    }
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, '\\' | '"' | 'n')) => {}
                                _ => return err("bad escape"),
                            },
                            Some((_, '"')) => break,
                            Some((_, '\n')) => return err("raw newline"),
                            Some(_) => {}
                            None => return err("unterminated label value"),
                        }
                    }
                    match chars.next() {
                        Some((_, ',')) => continue,
                        Some((i, '}')) => break i,
                        _ => return err("bad label separator"),
                    }
                };
                &labels[end + 1..]
            } else {
                rest
            };
            let Some(value) = value.strip_prefix(' ') else {
                return err("no value");
            };
            if value.contains(' ') {
                return err("timestamp or trailing text");
            }
            let ok = matches!(value, "NaN" | "+Inf" | "-Inf") || value.parse::<f64>().is_ok();
            if !ok {
                return err("bad value");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_checker_rejects_what_it_should() {
        let head = "# HELP m h\n# TYPE m gauge\n";
        assert!(check_exposition(&format!("{head}m{{a=\"x\\\"\"}} 1\n")).is_ok());
        for bad in [
            format!("{head}m{{a=\"x\\t\"}} 1\n"),
            format!("{head}m{{a=\"x\"}} 1 1700000000\n"),
            format!("{head}m{{a=x}} 1\n"),
            format!("{head}n 1\n"),
            format!("{head}m 1\n{head}"),
            format!("{head}m one\n"),
            "m 1\n".to_string(),
        ] {
            assert!(check_exposition(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_the_text_format_wants() {
        let mut out = String::new();
        for v in [0, 7, u64::MAX] {
            push_u64(&mut out, v);
            out.push(' ');
        }
        for v in [-1, i64::MIN] {
            push_i64(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, "0 7 18446744073709551615 -1 -9223372036854775808 ");
        let mut out = String::new();
        for v in [
            0.0,
            110.5,
            1_700_000_000.0,
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
        ] {
            write_f64(&mut out, v);
        }
        assert_eq!(out, "0\n110.5\n1700000000\nNaN\n+Inf\n-Inf\n");
    }
}
