//! How an upstream call ended: the one type the client returns, the metrics observe and the
//! store records (SPEC "Metrics": `ErrorCode` 0, a non-zero `ErrorCode`, or -1 for no valid
//! answer).
//!
//! A non-zero code is a [`NonZeroI64`], so "an API error with code 0" cannot be built: a
//! success is [`Outcome::Ok`] and nothing else.

use std::fmt;
use std::num::NonZeroI64;

/// The attributes of one `get_group_attr` answer, sorted ascending bytewise by key, keys unique.
pub type Attributes = Vec<(String, String)>;

/// How one call (or one HTTP attempt) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// `ErrorCode` 0, with the answer's payload.
    Ok(T),
    /// A valid API answer with a non-zero `ErrorCode`.
    Api(ApiError),
    /// No valid API answer.
    NoAnswer(FailureReason),
}

impl<T> Outcome<T> {
    /// The `ErrorCode` as `timattr_group_error_code` shows it: 0, the code, or -1.
    pub fn error_code(&self) -> i64 {
        match self {
            Outcome::Ok(_) => 0,
            Outcome::Api(e) => e.code(),
            Outcome::NoAnswer(_) => -1,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Ok(v) => Outcome::Ok(f(v)),
            Outcome::Api(e) => Outcome::Api(e),
            Outcome::NoAnswer(r) => Outcome::NoAnswer(r),
        }
    }

    /// The same ending without its payload (what the metrics observe of an attempt).
    pub fn without_payload(&self) -> Outcome<()> {
        match self {
            Outcome::Ok(_) => Outcome::Ok(()),
            Outcome::Api(e) => Outcome::Api(e.clone()),
            Outcome::NoAnswer(r) => Outcome::NoAnswer(*r),
        }
    }
}

/// A non-zero `ErrorCode` and its `ErrorInfo`. The client scrubs `info` of the UserSig and the
/// key before it hands one out, so it is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: NonZeroI64,
    pub info: String,
}

impl ApiError {
    pub fn new(code: NonZeroI64, info: impl Into<String>) -> ApiError {
        ApiError {
            code,
            info: info.into(),
        }
    }

    /// `None` for code 0, which is a success.
    pub fn from_code(code: i64, info: impl Into<String>) -> Option<ApiError> {
        NonZeroI64::new(code).map(|code| ApiError::new(code, info))
    }

    pub fn code(&self) -> i64 {
        self.code.get()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode {}: {}", self.code, self.info)
    }
}

/// Why a request got no valid API answer; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    Timeout,
    Connect,
    HttpStatus,
    InvalidResponse,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Timeout,
        FailureReason::Connect,
        FailureReason::HttpStatus,
        FailureReason::InvalidResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::HttpStatus => "http_status",
            FailureReason::InvalidResponse => "invalid_response",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<T> fmt::Display for Outcome<T> {
    /// How the call ended, without its payload: for log lines and error texts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(_) => f.write_str("ok"),
            Outcome::Api(e) => e.fmt(f),
            Outcome::NoAnswer(r) => write!(f, "no valid answer ({r})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_as_the_metrics_show_them() {
        assert_eq!(Outcome::Ok(()).error_code(), 0);
        let e = ApiError::from_code(10010, "gone").expect("non-zero");
        assert_eq!(Outcome::<()>::Api(e).error_code(), 10010);
        assert_eq!(
            Outcome::<()>::NoAnswer(FailureReason::Timeout).error_code(),
            -1
        );
        assert!(ApiError::from_code(0, "").is_none(), "0 is a success");
    }
}
