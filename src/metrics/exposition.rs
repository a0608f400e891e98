//! Writing Prometheus text format 0.0.4 by hand: numbers, label escaping, the buffer a render
//! fills.
//!
//! Hot at scrape time (14 lines per group, 1.4 million at 100,000 groups), so bytes are pushed
//! into a `Vec<u8>` rather than a `String` (no UTF-8 check per number) and numbers are written by
//! hand rather than through `write!`, which is several times slower per line. The smallest are
//! `#[inline]`: called from another module they were no longer inlined, which cost the render
//! benchmark ~8% more instructions.

use std::io;

/// Bytes [`Out`] gathers before writing them to its sink: small enough to stay in the CPU's
/// cache, large enough that the sink is called rarely.
pub(super) const FLUSH_AT: usize = 32 * 1024;

/// Text on its way to a sink. Filled while a store lock may be held; written out only when the
/// renderer calls [`Out::maybe_flush`] between chunks, with no lock held, since the sink may
/// block on a slow reader. Only the writers here and ASCII go into `buf`, so it stays UTF-8.
pub(super) struct Out<'a> {
    pub(super) buf: Vec<u8>,
    sink: &'a mut dyn io::Write,
}

impl<'a> Out<'a> {
    pub(super) fn new(sink: &'a mut dyn io::Write) -> Out<'a> {
        Out {
            // A chunk of groups may add a few hundred KiB past the threshold at worst.
            buf: Vec::with_capacity(2 * FLUSH_AT),
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
        self.sink.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// "00" to "99": two digits per division when writing integers.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

#[inline]
pub(super) fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

#[inline]
pub(super) fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Escapes a label value per the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
/// Byte by byte: none of the three occurs inside a multi-byte UTF-8 sequence.
#[inline]
pub(super) fn escape_label_value(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // Group IDs and keys almost never need it: one quick scan, then one copy.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            b => out.push(b),
        }
    }
}

/// Whether `bytes` holds a `\`, `"` or newline. Eight bytes at a time (a byte-by-byte scan of
/// each group ID cost a sixth of a render's instructions): a word has a byte equal to `b` when
/// `word ^ b…b` has a zero byte, which `(x - 0x01…01) & !x & 0x80…80` finds without false
/// positives.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let found = |word: u64| {
        zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\n')))
            != 0
    };
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| matches!(b, b'\\' | b'"' | b'\n'));
    }
    // The last word overlaps the one before it rather than being copied out and padded.
    let last = bytes.len() - 8;
    (0..last).step_by(8).any(|at| found(word(at))) || found(word(last))
}

/// Writes a sample value and the line's end: what Rust's `Display` for f64 writes (the shortest
/// exact round trip, never an exponent; integers without a fraction), Go's spellings for the
/// non-finite values.
#[inline]
pub(super) fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN\n");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf\n" } else { b"-Inf\n" });
    } else {
        write_finite(out, v);
        out.push(b'\n');
    }
}

/// `Display` for a finite f64, several times quicker (two timestamps a group, which through
/// `Display` cost 14% of a render). Integers below 2^53 are their own shortest round trip. Other
/// numbers go through `ryu`, which finds the same shortest round-trip digits as `Display`
/// except on an exact tie, where `ryu` rounds half to even and `Display` half up
/// (2112675656713241.25: `.2` and `.3`); those, and what `ryu` spells otherwise (exponents
/// outside 1e-5..1e16, `.0`), are left to `Display`.
fn write_finite(out: &mut Vec<u8>, v: f64) {
    const TWO_TO_53: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() < TWO_TO_53 {
        if v.is_sign_negative() {
            out.push(b'-');
        }
        push_u64(out, v.abs() as u64);
        return;
    }
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(v).as_bytes();
    let after_point = match text.iter().position(|&b| b == b'.') {
        Some(point) if !text.contains(&b'e') && !text.ends_with(b".0") => text.len() - point - 1,
        _ => return display(out, v),
    };
    // A tie between two shortest spellings means `v` written out in full ends one digit after
    // them (with a 5).
    if exact_digits_after_point(v) == after_point + 1 {
        return display(out, v);
    }
    out.extend_from_slice(text);
}

#[cold]
fn display(out: &mut Vec<u8>, v: f64) {
    use std::io::Write as _;
    let _ = write!(out, "{v}");
}

/// How many digits after the point `v` has written out in full: `m × 2^-k` with `m` odd is
/// `m × 5^k / 10^k`, k digits.
fn exact_digits_after_point(v: f64) -> usize {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = match biased {
        0 => (fraction, -1074),
        _ => (fraction | 1 << 52, biased - 1075),
    };
    if mantissa == 0 {
        return 0;
    }
    (-exponent - i64::from(mantissa.trailing_zeros())).max(0) as usize
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
        let mut out = Vec::new();
        for v in [0, 7, 10, 99, 100, 101, 4_294_967_296, u64::MAX] {
            push_u64(&mut out, v);
            out.push(b' ');
        }
        for v in [-1, -10, i64::MIN] {
            push_i64(&mut out, v);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            "0 7 10 99 100 101 4294967296 18446744073709551615 -1 -10 -9223372036854775808 "
        );
        let mut out = Vec::new();
        for v in [
            0.0,
            -0.0,
            110.5,
            1_700_000_000.0,
            1_765_083_012.123_456_7,
            // Ties between two shortest spellings, where `ryu` and `Display` differ.
            2_112_675_656_713_241.0 + 0.25,
            -2_112_675_656_713_241.0 - 0.25,
            1_765_083_012.0 + 1.0 / 256.0,
            9_007_199_254_740_993.0,
            1e16,
            1e-7,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
        ] {
            write_f64(&mut out, v);
        }
        // Display writes all 309 digits, no exponent.
        let max = f64::MAX.to_string();
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            format!(
                "0\n-0\n110.5\n1700000000\n1765083012.1234567\n\
                 2112675656713241.3\n-2112675656713241.3\n1765083012.0039063\n9007199254740992\n\
                 10000000000000000\n0.0000001\n{max}\nNaN\n+Inf\n-Inf\n"
            )
        );
    }

    #[test]
    fn label_values_are_escaped_byte_by_byte() {
        let mut out = Vec::new();
        for v in ["@TGS#a", "a\"b\\c\nd", "é\"\u{10FFFF}", ""] {
            escape_label_value(&mut out, v);
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "@TGS#a|a\\\"b\\\\c\\nd|é\\\"\u{10FFFF}||"
        );
    }

    proptest::proptest! {
        /// Escaping as the text format spells it, char by char, at every position in a word of
        /// the eight-byte scan.
        #[test]
        fn label_values_are_escaped_as_char_by_char(
            value in "[a-z\\\\\"\né@#]{0,20}|\\PC{0,40}",
        ) {
            let mut out = Vec::new();
            escape_label_value(&mut out, &value);
            let mut expected = String::new();
            for c in value.chars() {
                match c {
                    '\\' => expected.push_str("\\\\"),
                    '"' => expected.push_str("\\\""),
                    '\n' => expected.push_str("\\n"),
                    c => expected.push(c),
                }
            }
            proptest::prop_assert_eq!(String::from_utf8(out).expect("UTF-8"), expected);
        }

        /// The hand-written numbers are `Display`'s, whatever the value: any bit pattern, and
        /// timestamps as `as_secs_f64` makes them.
        #[test]
        fn numbers_are_what_display_writes(
            u in proptest::num::u64::ANY,
            i in proptest::num::i64::ANY,
            bits in proptest::num::u64::ANY,
            nanos in 0u64..4_000_000_000_000_000_000,
            mantissa in 0u64..1 << 52,
            exponent in -30i64..60,
        ) {
            let float = f64::from_bits(bits);
            // Around the range where ryu's spelling changes (1e-5, 1e16), where bits alone
            // rarely land.
            let near = f64::from_bits(mantissa | ((1023 + exponent) as u64) << 52);
            let timestamp = std::time::Duration::from_nanos(nanos).as_secs_f64();
            let mut out = Vec::new();
            push_u64(&mut out, u);
            out.push(b' ');
            push_i64(&mut out, i);
            out.push(b' ');
            write_f64(&mut out, float);
            write_f64(&mut out, near);
            write_f64(&mut out, timestamp);
            let display = |v: f64| match v {
                v if v.is_nan() => "NaN".to_string(),
                v if v.is_infinite() => if v > 0.0 { "+Inf" } else { "-Inf" }.to_string(),
                v => v.to_string(),
            };
            proptest::prop_assert_eq!(
                String::from_utf8(out).expect("ASCII"),
                format!("{u} {i} {}\n{}\n{}\n", display(float), display(near), display(timestamp))
            );
        }
    }
}
