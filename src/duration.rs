//! Prometheus durations (`500ms`, `15s`, `1h30m`, `0`): the one parser and formatter for every
//! duration the exporter reads, in the config file and in `--web.config.file` alike, so a value
//! means the same wherever it is written.
//!
//! [`parse`] follows Prometheus' `model.ParseDuration`: whole numbers, each followed by one of
//! the units `y` (365 days), `w`, `d`, `h`, `m`, `s`, `ms`, each unit at most once and from the
//! largest to the smallest (`1h30m`, never `30m1h` or `1s1s`), or `0` alone. The total must fit
//! in an int64 of nanoseconds (about 292 years), as in Go. Whether zero makes sense is up to the
//! caller.

use std::time::Duration;

/// Units, largest first, in milliseconds (a year is 365 days, as in Prometheus).
const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Prometheus's limit: a duration must fit in an int64 of nanoseconds.
const MAX_MS: u64 = i64::MAX as u64 / 1_000_000;

/// Why a text is not a duration. The message quotes the text, so callers prefix only the place
/// it came from (`apps[0].timeout: invalid duration "5x": ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration: write one like 60s")]
    Empty,
    #[error("invalid duration {0:?}: cannot be negative")]
    Negative(String),
    #[error(
        "invalid duration {0:?}: expected a whole number and a unit (ms, s, m, h, d, w, y), like \
         90s or 1h30m"
    )]
    Malformed(String),
    #[error("invalid duration {input:?}: missing unit after {digits}, like {digits}s")]
    MissingUnit { input: String, digits: String },
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use ms, s, m, h, d, w, y)")]
    UnknownUnit { input: String, unit: String },
    #[error(
        "invalid duration {0:?}: units must go from largest to smallest, each used once, like \
         1h30m"
    )]
    UnitOrder(String),
    #[error("invalid duration {0:?}: too long")]
    TooLong(String),
}

/// Parses a Prometheus duration (see the module docs).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let input = || s.to_owned();
    if s.starts_with('-') {
        return Err(DurationError::Negative(input()));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    // Index into UNITS of the last unit used: the next one must come after it.
    let mut last: Option<usize> = None;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(DurationError::Malformed(input()));
        }
        let digits = &s[start..i];
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[unit_start..i];
        if unit.is_empty() {
            if i < bytes.len() {
                return Err(DurationError::Malformed(input()));
            }
            return Err(DurationError::MissingUnit {
                input: input(),
                digits: digits.to_owned(),
            });
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit {
                input: input(),
                unit: unit.to_owned(),
            });
        };
        if last.is_some_and(|l| index <= l) {
            return Err(DurationError::UnitOrder(input()));
        }
        last = Some(index);
        let too_long = || DurationError::TooLong(input());
        let n: u64 = digits.parse().map_err(|_| too_long())?;
        total = n
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .filter(|ms| *ms <= MAX_MS)
            .ok_or_else(too_long)?;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way Prometheus does (`1h30m`, `1d`, `500ms`, `0s`), so that [`parse`]
/// reads it back. Sub-millisecond parts are dropped.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let size = u128::from(size);
        // Years and weeks only when exact: 8d reads better than 1w1d.
        if (unit == "y" || unit == "w") && ms % size != 0 {
            continue;
        }
        let n = ms / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms -= n * size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn error(s: &str) -> String {
        match parse(s) {
            Ok(d) => panic!("{s:?} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid() {
        let ok = [
            ("0", 0),
            ("0s", 0),
            ("0ms", 0),
            ("100ms", 100),
            ("500ms", 500),
            ("15s", 15_000),
            ("10m", 600_000),
            ("1m30s", 90_000),
            ("24h", 86_400_000),
            ("1d", 86_400_000),
            ("1w", 7 * 86_400_000),
            ("1y", 365 * 86_400_000),
            ("1h30m", 5_400_000),
            ("1s500ms", 1_500),
            (
                "1y2w3d4h5m6s7ms",
                365 * 86_400_000 + 17 * 86_400_000 + 14_706_007,
            ),
            ("90s", 90_000),
            ("0010s", 10_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        assert!(parse("292y").is_ok());
        assert_eq!(
            parse("9223372036854ms"),
            Ok(Duration::from_millis(MAX_MS)),
            "the largest int64 of nanoseconds, in whole milliseconds"
        );
    }

    #[test]
    fn invalid_with_the_reason() {
        let bad = [
            ("", "empty duration: write one like 60s"),
            ("-5s", "invalid duration \"-5s\": cannot be negative"),
            ("5", "invalid duration \"5\": missing unit after 5, like 5s"),
            (
                "60",
                "invalid duration \"60\": missing unit after 60, like 60s",
            ),
            (
                "00",
                "invalid duration \"00\": missing unit after 00, like 00s",
            ),
            (
                "1x",
                "invalid duration \"1x\": unknown unit \"x\" (use ms, s, m, h, d, w, y)",
            ),
            (
                "5sec",
                "invalid duration \"5sec\": unknown unit \"sec\" (use ms, s, m, h, d, w, y)",
            ),
            (
                "1m1h",
                "invalid duration \"1m1h\": units must go from largest to smallest, each used \
                 once, like 1h30m",
            ),
            (
                "30m1h",
                "invalid duration \"30m1h\": units must go from largest to smallest, each used \
                 once, like 1h30m",
            ),
            (
                "1s1s",
                "invalid duration \"1s1s\": units must go from largest to smallest, each used \
                 once, like 1h30m",
            ),
            (
                "1ms1s",
                "invalid duration \"1ms1s\": units must go from largest to smallest, each used \
                 once, like 1h30m",
            ),
            (
                "1.5h",
                "invalid duration \"1.5h\": expected a whole number and a unit (ms, s, m, h, d, \
                 w, y), like 90s or 1h30m",
            ),
            (
                "5 s",
                "invalid duration \"5 s\": expected a whole number and a unit (ms, s, m, h, d, \
                 w, y), like 90s or 1h30m",
            ),
            (
                "h",
                "invalid duration \"h\": expected a whole number and a unit (ms, s, m, h, d, w, \
                 y), like 90s or 1h30m",
            ),
            ("293y", "invalid duration \"293y\": too long"),
            (
                "9223372036855ms",
                "invalid duration \"9223372036855ms\": too long",
            ),
            (
                "99999999999999999999999s",
                "invalid duration \"99999999999999999999999s\": too long",
            ),
        ];
        for (s, want) in bad {
            assert_eq!(error(s), want, "{s}");
        }
        // What the web config's and the fake's parsers rejected stays rejected.
        for s in [
            "1.5s", "-1s", "1 s", "10x", "s", "30", "+5s", "5S", "1h 30m",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn formats_as_prometheus_does() {
        for (ms, s) in [
            (0, "0s"),
            (1, "1ms"),
            (1_500, "1s500ms"),
            (90_000, "1m30s"),
            (86_400_000, "1d"),
            (8 * 86_400_000, "8d"),
            (14 * 86_400_000, "2w"),
            (366 * 86_400_000, "366d"),
            (730 * 86_400_000, "2y"),
        ] {
            assert_eq!(format(Duration::from_millis(ms)), s);
        }
        assert_eq!(format(Duration::from_nanos(1_999_999)), "1ms");
    }

    proptest! {
        #[test]
        fn format_round_trips(ms in 0u64..=MAX_MS) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_near_valid(
            s in "[0-9]{0,25}(ms|s|m|h|d|w|y|x)?[0-9]{0,3}(ms|s|m)?-?"
        ) {
            let _ = parse(&s);
        }
    }
}
