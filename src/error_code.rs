//! The upstream's `ErrorCode`s and what each means for the exporter, from
//! `reference/tencent-chat-rest-api.md`. One table, shared by the client (retry policy), the
//! fake API (which codes it answers with) and the docs.

/// What an `ErrorCode` tells the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// R: back off and retry (10002, 60008, 60013, 60014, 70169, 70202, 70500).
    Transient,
    /// L: rate limited; slow the app down (10006, 60007, 60011, 60018, 60019).
    RateLimited,
    /// C: credentials or UserSig. 70001 and 70052 regenerate the UserSig and retry once.
    Credentials,
    /// P: permission or plan.
    Permission,
    /// The group is gone or unreadable (10007, 10010, 10015): its attribute series go.
    PerGroup,
    /// B: a request the API rejects as malformed.
    BadRequest,
    /// Not in the reference: kept by number, never retried.
    Unknown,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Credentials => "credentials",
            ErrorClass::Permission => "permission",
            ErrorClass::PerGroup => "per_group",
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Unknown => "unknown",
        }
    }
}

/// Group does not support attributes, or the admin has no permission on it.
pub const NO_PERMISSION: i64 = 10007;
/// The group does not exist or has been deleted.
pub const GROUP_NOT_FOUND: i64 = 10010;
/// The group ID is invalid.
pub const INVALID_GROUP_ID: i64 = 10015;
/// Internal server error, try again.
pub const INTERNAL_ERROR: i64 = 10002;
/// Invalid parameter.
pub const INVALID_PARAMETER: i64 = 10004;
/// Operation frequency limit.
pub const FREQUENCY_LIMIT: i64 = 10006;
/// REST API call frequency limit exceeded.
pub const REST_FREQUENCY_LIMIT: i64 = 60007;
/// UserSig expired: regenerate and retry once.
pub const USERSIG_EXPIRED: i64 = 70001;
/// UserSig expired or invalid: regenerate.
pub const USERSIG_INVALID_REGENERATE: i64 = 70052;

/// Classifies an `ErrorCode` (non-zero) per the reference's tables.
pub fn classify(code: i64) -> ErrorClass {
    use ErrorClass::*;
    match code {
        10002 => Transient,
        // 10018: a `get_appid_group_list` page over 1 MB; the request must ask for less.
        10004 | 10018 => BadRequest,
        10006 => RateLimited,
        10007 | 10010 | 10015 => PerGroup,
        60002 | 60003 | 60009 | 60012 | 60015 | 70206 | 70402 => BadRequest,
        60004..=60006 => Credentials,
        60007 | 60011 | 60018 | 60019 => RateLimited,
        60008 | 60013 | 60014 => Transient,
        60010 | 60016 | 60017 | 60020 | 60021 => Permission,
        70001 | 70002 | 70003 | 70005 | 70009 | 70013 | 70014 | 70016 | 70020 | 70050 | 70052
        | 70107 => Credentials,
        70051 | 70114 | 70398 | 70403 => Permission,
        70169 | 70202 | 70500 => Transient,
        _ => Unknown,
    }
}

/// Whether the code asks for a fresh UserSig and exactly one retry.
pub fn regenerates_usersig(code: i64) -> bool {
    code == USERSIG_EXPIRED || code == USERSIG_INVALID_REGENERATE
}

/// 70016 and 70020 most often mean the SDKAppID is called on another region's domain
/// (reference, "Calling convention"): the text logs and errors add to them. No apostrophes,
/// which logfmt would escape.
pub const WRONG_REGION_HINT: &str = "the SDKAppID may be on the API domain of another region: check the region (or endpoint) of this app";

/// What to tell the operator beyond the code and its class, if anything.
pub fn hint(code: i64) -> Option<&'static str> {
    match code {
        70016 | 70020 => Some(WRONG_REGION_HINT),
        _ => None,
    }
}

/// Every code the reference documents for the calls the exporter makes (the common codes,
/// `get_group_attr`'s and `get_appid_group_list`'s), sorted: for tests, the fake's fault
/// injection, and [`is_documented`].
pub const DOCUMENTED: &[i64] = &[
    10002, 10004, 10006, 10007, 10010, 10015, 10018, 60002, 60003, 60004, 60005, 60006, 60007,
    60008, 60009, 60010, 60011, 60012, 60013, 60014, 60015, 60016, 60017, 60018, 60019, 60020,
    60021, 70001, 70002, 70003, 70005, 70009, 70013, 70014, 70016, 70020, 70050, 70051, 70052,
    70107, 70114, 70169, 70202, 70206, 70398, 70402, 70403, 70500,
];

/// Whether the reference documents `code` (a [`DOCUMENTED`] entry).
pub fn is_documented(code: i64) -> bool {
    DOCUMENTED.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_reference() {
        assert_eq!(classify(10002), ErrorClass::Transient);
        assert_eq!(classify(10006), ErrorClass::RateLimited);
        assert_eq!(classify(10010), ErrorClass::PerGroup);
        assert_eq!(classify(60005), ErrorClass::Credentials);
        assert_eq!(classify(60019), ErrorClass::RateLimited);
        assert_eq!(classify(60021), ErrorClass::Permission);
        assert_eq!(classify(70001), ErrorClass::Credentials);
        assert_eq!(classify(70500), ErrorClass::Transient);
        assert_eq!(classify(70403), ErrorClass::Permission);
        assert_eq!(classify(70402), ErrorClass::BadRequest);
        assert_eq!(classify(12345), ErrorClass::Unknown);
        assert!(regenerates_usersig(70001) && regenerates_usersig(70052));
        assert!(!regenerates_usersig(70003));
    }

    #[test]
    fn every_documented_code_has_a_class() {
        for &code in DOCUMENTED {
            assert_ne!(classify(code), ErrorClass::Unknown, "{code}");
            assert!(is_documented(code), "{code}: DOCUMENTED must stay sorted");
        }
        assert!(DOCUMENTED.windows(2).all(|w| w[0] < w[1]));
        assert!(!is_documented(12345) && !is_documented(0) && !is_documented(-1));
    }

    #[test]
    fn codes_added_to_the_reference_have_its_classes() {
        // 60015: identifier must be a string (B); 70107: account not imported (C);
        // 70206: batch count invalid (B).
        assert_eq!(classify(60015), ErrorClass::BadRequest);
        assert_eq!(classify(70107), ErrorClass::Credentials);
        assert_eq!(classify(70206), ErrorClass::BadRequest);
        assert_eq!(classify(10018), ErrorClass::BadRequest);
    }

    #[test]
    fn wrong_region_codes_say_so() {
        for code in [70016, 70020] {
            let hint = hint(code).expect("70016 and 70020 carry a hint");
            assert!(hint.contains("domain of another region"), "{hint}");
        }
        assert_eq!(hint(70001), None);
        assert_eq!(hint(10010), None);
    }
}
