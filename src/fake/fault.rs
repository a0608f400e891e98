//! Faults the fake can be told to inject, per app or per group, at run time.
//!
//! A fault is data ([`Fault`]); [`FaultSlot`] adds the request counter `Intermittent` needs;
//! [`FaultSlot::decide`] turns it into what this one request gets ([`Injected`]), and the
//! HTTP layer shapes the answer from that.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// What goes wrong. In YAML and JSON a fault is written as its snake_case name, with its
/// argument when it has one: `hang`, `{latency: 2s}`, `{http_status: 502}`,
/// `{intermittent: {code: 10002, every: 3}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer normally, this much later.
    Latency(#[serde(with = "super::scenario::duration_serde")] Duration),
    /// Never answer: hold the connection until the client gives up (ended at shutdown or
    /// after [`HANG_MAX`]).
    Hang,
    /// Answer this HTTP status with a small HTML body, as a proxy in front of the API would.
    HttpStatus(u16),
    /// The normal JSON answer cut in half.
    TruncatedJson,
    /// HTTP 200 with a body that is not JSON.
    InvalidJson,
    /// HTTP 200 with JSON holding bytes that are not UTF-8.
    InvalidUtf8,
    /// HTTP 200 with a valid JSON body of exactly this many bytes, streamed in chunks.
    OversizedBody(usize),
    /// Answer every request with this `ErrorCode`.
    ErrorCode(i64),
    /// Every `every`-th request answers `code`; the others are served normally.
    Intermittent { code: i64, every: u32 },
    /// Each request answers 10002 with probability `p_error`, or hangs with `p_timeout`.
    Flaky { p_error: f64, p_timeout: f64 },
    /// `get_group_attr` lists one key twice (with different values).
    DuplicateKey,
    /// `ActionStatus` "OK" together with a non-zero `ErrorCode` (10002).
    StatusMismatch,
    /// `get_appid_group_list` answers a `Next` that cycles whatever the groups: 0 → A, A → B,
    /// B (or anything else) → A, as a broken proxy or upstream might. Other calls are served
    /// normally.
    CyclingNext,
}

/// Where a fault applies: every request of an app, or requests naming one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FaultTarget {
    App(u64),
    Group(u64, String),
}

impl FaultTarget {
    pub fn sdkappid(&self) -> u64 {
        match self {
            FaultTarget::App(app) | FaultTarget::Group(app, _) => *app,
        }
    }
}

/// A hanging request is let go after this long even if no one shuts the fake down, so a
/// client that never gives up does not pin a task forever.
pub const HANG_MAX: Duration = Duration::from_secs(300);

/// The code `Flaky` and `StatusMismatch` answer with: internal error, try again.
pub const INTERNAL_ERROR: i64 = 10002;

/// An installed fault and the number of requests it has seen.
#[derive(Debug, Clone)]
pub struct FaultSlot {
    pub fault: Fault,
    seen: u64,
}

/// What one request gets from a fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Injected {
    /// Nothing: serve normally.
    None,
    Delay(Duration),
    Hang,
    HttpStatus(u16),
    /// Answer this `ErrorCode` instead of serving.
    Code(i64),
    /// Serve, then spoil the body this way.
    Spoil(Spoil),
}

/// Ways to spoil an otherwise normal answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spoil {
    TruncatedJson,
    InvalidJson,
    InvalidUtf8,
    Oversized(usize),
    DuplicateKey,
    StatusMismatch,
    CyclingNext,
}

impl Spoil {
    /// The `outcome` label the fake's counters use for it.
    pub fn outcome(self) -> &'static str {
        match self {
            Spoil::TruncatedJson => "truncated_json",
            Spoil::InvalidJson => "invalid_json",
            Spoil::InvalidUtf8 => "invalid_utf8",
            Spoil::Oversized(_) => "oversized_body",
            Spoil::DuplicateKey => "duplicate_key",
            Spoil::StatusMismatch => "status_mismatch",
            Spoil::CyclingNext => "cycling_next",
        }
    }
}

impl FaultSlot {
    pub fn new(fault: Fault) -> Self {
        FaultSlot { fault, seen: 0 }
    }

    pub fn decide(&mut self) -> Injected {
        self.seen += 1;
        match self.fault {
            Fault::Latency(d) => Injected::Delay(d),
            Fault::Hang => Injected::Hang,
            Fault::HttpStatus(s) => Injected::HttpStatus(s),
            Fault::TruncatedJson => Injected::Spoil(Spoil::TruncatedJson),
            Fault::InvalidJson => Injected::Spoil(Spoil::InvalidJson),
            Fault::InvalidUtf8 => Injected::Spoil(Spoil::InvalidUtf8),
            Fault::OversizedBody(n) => Injected::Spoil(Spoil::Oversized(n)),
            Fault::ErrorCode(code) => Injected::Code(code),
            Fault::Intermittent { code, every } => {
                if every <= 1 || self.seen % u64::from(every) == 0 {
                    Injected::Code(code)
                } else {
                    Injected::None
                }
            }
            Fault::Flaky { p_error, p_timeout } => {
                let roll: f64 = rand::thread_rng().r#gen();
                if roll < p_error {
                    Injected::Code(INTERNAL_ERROR)
                } else if roll < p_error + p_timeout {
                    Injected::Hang
                } else {
                    Injected::None
                }
            }
            Fault::DuplicateKey => Injected::Spoil(Spoil::DuplicateKey),
            Fault::StatusMismatch => Injected::Spoil(Spoil::StatusMismatch),
            Fault::CyclingNext => Injected::Spoil(Spoil::CyclingNext),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intermittent_hits_every_nth() {
        let mut slot = FaultSlot::new(Fault::Intermittent {
            code: 10002,
            every: 3,
        });
        let got: Vec<Injected> = (0..6).map(|_| slot.decide()).collect();
        assert_eq!(got[2], Injected::Code(10002));
        assert_eq!(got[5], Injected::Code(10002));
        assert_eq!(got.iter().filter(|i| **i == Injected::None).count(), 4);
    }

    fn yaml(s: &str) -> Result<Fault, serde_yaml::Error> {
        serde_yaml::with::singleton_map_recursive::deserialize(serde_yaml::Deserializer::from_str(
            s,
        ))
    }

    #[test]
    fn faults_read_as_yaml_and_json() {
        let f: Fault = yaml("hang").unwrap();
        assert_eq!(f, Fault::Hang);
        let f: Fault = yaml("latency: 1500ms").unwrap();
        assert_eq!(f, Fault::Latency(Duration::from_millis(1500)));
        let f: Fault = yaml("{intermittent: {code: 10002, every: 3}}").unwrap();
        assert_eq!(
            f,
            Fault::Intermittent {
                code: 10002,
                every: 3
            }
        );
        let f: Fault = serde_json::from_str(r#"{"http_status":502}"#).unwrap();
        assert_eq!(f, Fault::HttpStatus(502));
        let f: Fault = serde_json::from_str(r#"{"latency":"2s"}"#).unwrap();
        assert_eq!(f, Fault::Latency(Duration::from_secs(2)));
        assert!(yaml("explode").is_err());
        assert_eq!(yaml("cycling_next").unwrap(), Fault::CyclingNext);
        let json = serde_json::to_string(&Fault::OversizedBody(10)).unwrap();
        assert_eq!(json, r#"{"oversized_body":10}"#);
    }
}
