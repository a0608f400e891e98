//! Callbacks (SPEC "Callbacks (push)"): Tencent Chat's webhooks, checked and handed to the
//! app's owner, which makes the group due now. The poll stays the one source of truth: nothing
//! in a callback's body is trusted beyond "this group changed, went away or was created".
//!
//! Checks, in order, each refusal counted by its reason and answered with a short 4xx:
//! `SdkAppid` is a configured app (`unknown_app`); with a token, `RequestTime` within
//! [`MAX_CLOCK_SKEW`] of now (`stale`) and `Sign` = hex SHA-256(token + RequestTime), compared in
//! constant time (`signature`); then the body, bounded by [`MAX_BODY_BYTES`], must be JSON with a
//! `GroupId` (`bad_request`). The body is not parsed before the signature holds. Nothing here
//! logs the query string (it carries `Sign`) or a token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::{Mailbox, Pushed};
use crate::secret::SecretKey;

/// Bodies above this are refused with 413 and never kept in memory (SPEC).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How far `RequestTime` may be from the exporter's clock, in seconds (SPEC: 300 s). Tencent
/// documents no window; without one a captured callback could be replayed forever.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// The answer Tencent expects to an accepted callback.
pub const ACCEPTED_BODY: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

/// The `command` label: the three callbacks the exporter acts on, and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    AttrChanged,
    Destroyed,
    Created,
    Other,
}

impl Command {
    pub const ALL: [Command; 4] = [
        Command::AttrChanged,
        Command::Destroyed,
        Command::Created,
        Command::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::AttrChanged => "Group.CallbackAfterGroupAttrChanged",
            Command::Destroyed => "Group.CallbackAfterGroupDestroyed",
            Command::Created => "Group.CallbackAfterCreateGroup",
            Command::Other => "other",
        }
    }

    pub fn of(name: &str) -> Command {
        Command::ALL
            .into_iter()
            .find(|c| *c != Command::Other && c.as_str() == name)
            .unwrap_or(Command::Other)
    }
}

/// Why a callback was refused: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    Signature,
    Stale,
    UnknownApp,
    BadRequest,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Signature,
        Refusal::Stale,
        Refusal::UnknownApp,
        Refusal::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Signature => "signature",
            Refusal::Stale => "stale",
            Refusal::UnknownApp => "unknown_app",
            Refusal::BadRequest => "bad_request",
        }
    }

    /// The HTTP status of the refusal, and its short reason (the body).
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::Signature => (403, "signature mismatch\n"),
            Refusal::Stale => (403, "RequestTime outside the accepted window\n"),
            Refusal::UnknownApp => (403, "SdkAppid is not an app of this exporter\n"),
            Refusal::BadRequest => (400, "not a callback: JSON with a GroupId expected\n"),
        }
    }
}

/// `Sign` for a token and a `RequestTime`: lower-case hex SHA-256 of the two concatenated.
pub fn sign(token: &str, request_time: &str) -> String {
    let digest = Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(request_time.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `Sign` and `RequestTime` against an app's token at `now_unix`.
pub fn verify(
    token: &SecretKey,
    sign_given: Option<&str>,
    request_time: Option<&str>,
    now_unix: u64,
) -> Result<(), Refusal> {
    let (Some(given), Some(time)) = (sign_given, request_time) else {
        return Err(Refusal::Signature);
    };
    let Ok(at) = time.parse::<u64>() else {
        return Err(Refusal::Stale);
    };
    if at.abs_diff(now_unix) > MAX_CLOCK_SKEW {
        return Err(Refusal::Stale);
    }
    let expected = sign(token.expose(), time);
    // Hex is case-insensitive to a reader, but the reference says lower case: compare exactly.
    if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(Refusal::Signature)
    }
}

/// The query parameters the checks need; anything else is ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub sdkappid: Option<u64>,
    pub command: Option<String>,
    pub sign: Option<String>,
    pub request_time: Option<String>,
}

pub fn parse_query(query: &str) -> Query {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "SdkAppid" => q.sdkappid = v.parse().ok(),
            "CallbackCommand" => q.command = Some(v.into_owned()),
            "Sign" => q.sign = Some(v.into_owned()),
            "RequestTime" => q.request_time = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

/// What the exporter reads of a body: the rest of it is the upstream's business.
#[derive(Deserialize)]
struct Body {
    #[serde(rename = "CallbackCommand")]
    command: Option<String>,
    #[serde(rename = "GroupId")]
    group_id: String,
    #[serde(rename = "Type")]
    group_type: Option<String>,
}

/// An accepted callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub command: Command,
    pub group_id: String,
    pub group_type: Option<String>,
}

/// Decodes a body; `CallbackCommand` of the query wins over the body's (Tencent routes by it).
pub fn parse_body(query_command: Option<&str>, body: &[u8]) -> Result<Event, Refusal> {
    let parsed: Body = serde_json::from_slice(body).map_err(|_| Refusal::BadRequest)?;
    if parsed.group_id.is_empty() {
        return Err(Refusal::BadRequest);
    }
    let name = query_command.or(parsed.command.as_deref()).unwrap_or("");
    Ok(Event {
        command: Command::of(name),
        group_id: parsed.group_id,
        group_type: parsed.group_type,
    })
}

/// Receives the counts of accepted and refused callbacks; [`crate::metrics`] implements it.
pub trait CallbackObserver: Send + Sync + 'static {
    fn accepted(&self, sdkappid: u64, command: Command);
    fn refused(&self, reason: Refusal);
}

/// One configured app as the receiver sees it.
pub struct Inbox {
    pub token: Option<SecretKey>,
    pub mailbox: Mailbox,
}

/// The callbacks endpoint's logic: which apps exist (updated on every reload), their tokens,
/// and where their events go.
pub struct Receiver {
    apps: RwLock<HashMap<u64, Inbox>>,
    observer: Arc<dyn CallbackObserver>,
    clock: fn() -> u64,
}

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Receiver {
    pub fn new(observer: Arc<dyn CallbackObserver>) -> Receiver {
        Receiver {
            apps: RwLock::new(HashMap::new()),
            observer,
            clock: system_clock,
        }
    }

    /// Replaces the wall clock (Unix seconds) `RequestTime` is checked against.
    pub fn with_clock(mut self, clock: fn() -> u64) -> Receiver {
        self.clock = clock;
        self
    }

    /// The apps after a (re)load.
    pub fn set_apps(&self, apps: HashMap<u64, Inbox>) {
        *self.apps.write().unwrap_or_else(|p| p.into_inner()) = apps;
    }

    /// A body over [`MAX_BODY_BYTES`], refused without being kept.
    pub fn too_large(&self) {
        self.observer.refused(Refusal::BadRequest);
    }

    /// Handles one `POST /callback`: `Ok` to answer [`ACCEPTED_BODY`], or the refusal.
    pub fn receive(&self, query: &str, body: &[u8]) -> Result<(), Refusal> {
        let result = self.check(query, body);
        if let Err(reason) = result {
            self.observer.refused(reason);
        }
        result
    }

    fn check(&self, query: &str, body: &[u8]) -> Result<(), Refusal> {
        let q = parse_query(query);
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        let (sdkappid, inbox) = q
            .sdkappid
            .and_then(|id| apps.get(&id).map(|inbox| (id, inbox)))
            .ok_or(Refusal::UnknownApp)?;
        if let Some(token) = &inbox.token {
            verify(
                token,
                q.sign.as_deref(),
                q.request_time.as_deref(),
                (self.clock)(),
            )?;
        }
        let event = parse_body(q.command.as_deref(), body)?;
        self.observer.accepted(sdkappid, event.command);
        let pushed = match event.command {
            Command::AttrChanged => Pushed::Changed(event.group_id),
            Command::Destroyed => Pushed::Destroyed(event.group_id),
            Command::Created => Pushed::Created {
                group_id: event.group_id,
                group_type: event.group_type,
            },
            Command::Other => return Ok(()),
        };
        inbox.mailbox.push(pushed);
        Ok(())
    }
}

impl crate::http::CallbackService for Receiver {
    fn callback(&self, query: &str, body: &[u8]) -> (http::StatusCode, &'static str) {
        match self.receive(query, body) {
            Ok(()) => (http::StatusCode::OK, ACCEPTED_BODY),
            Err(reason) => {
                let (status, text) = reason.status();
                (
                    http::StatusCode::from_u16(status).expect("a valid status"),
                    text,
                )
            }
        }
    }

    fn too_large(&self) {
        Receiver::too_large(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_signature() {
        assert_eq!(
            sign("xxxxyyyy", "1669872112"),
            "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
        );
    }

    #[test]
    fn signatures_are_checked_within_the_window() {
        let token = SecretKey::new("xxxxyyyy");
        let good = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061";
        let t = 1_669_872_112;
        assert_eq!(verify(&token, Some(good), Some("1669872112"), t), Ok(()));
        assert_eq!(
            verify(&token, Some(good), Some("1669872112"), t + 300),
            Ok(())
        );
        assert_eq!(
            verify(&token, Some(good), Some("1669872112"), t - 300),
            Ok(())
        );
        assert_eq!(
            verify(&token, Some(good), Some("1669872112"), t + 301),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(&token, Some(good), Some("1669872112"), t - 301),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(&token, Some(good), Some("soon"), t),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(&token, Some(&good.to_uppercase()), Some("1669872112"), t),
            Err(Refusal::Signature)
        );
        assert_eq!(
            verify(&token, Some(&good[1..]), Some("1669872112"), t),
            Err(Refusal::Signature)
        );
        assert_eq!(
            verify(&SecretKey::new("other"), Some(good), Some("1669872112"), t),
            Err(Refusal::Signature)
        );
        // A RequestTime moved by one second with the old Sign.
        assert_eq!(
            verify(&token, Some(good), Some("1669872113"), t),
            Err(Refusal::Signature)
        );
        assert_eq!(
            verify(&token, None, Some("1669872112"), t),
            Err(Refusal::Signature)
        );
        assert_eq!(verify(&token, Some(good), None, t), Err(Refusal::Signature));
    }

    #[test]
    fn queries_and_bodies() {
        let q = parse_query(
            "SdkAppid=1400000001&CallbackCommand=Group.CallbackAfterGroupDestroyed&contenttype=json&ClientIP=1.2.3.4&OptPlatform=RESTAPI&Sign=ab&RequestTime=12",
        );
        assert_eq!(q.sdkappid, Some(1_400_000_001));
        assert_eq!(
            q.command.as_deref(),
            Some("Group.CallbackAfterGroupDestroyed")
        );
        assert_eq!(q.sign.as_deref(), Some("ab"));
        assert_eq!(q.request_time.as_deref(), Some("12"));
        assert_eq!(parse_query("SdkAppid=x").sdkappid, None);

        let e = parse_body(
            None,
            br#"{"CallbackCommand":"Group.CallbackAfterGroupAttrChanged","GroupId":"@TGS#1","Type":"Public","OptionType":"set","GroupAttr":[{"key":"a","value":"b"}],"EventTime":"1669872112000"}"#,
        )
        .unwrap();
        assert_eq!(e.command, Command::AttrChanged);
        assert_eq!(e.group_id, "@TGS#1");
        assert_eq!(e.group_type.as_deref(), Some("Public"));
        let e = parse_body(
            Some("Group.CallbackAfterCreateGroup"),
            br#"{"GroupId":"g"}"#,
        )
        .unwrap();
        assert_eq!(e.command, Command::Created);
        let e = parse_body(
            None,
            br#"{"CallbackCommand":"C2C.CallbackAfterSendMsg","GroupId":"g"}"#,
        )
        .unwrap();
        assert_eq!(e.command, Command::Other);
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"GroupId":""}"#,
            br#"{"GroupId":5}"#,
            br#"{"CallbackCommand":"Group.CallbackAfterGroupDestroyed"}"#,
        ] {
            assert_eq!(parse_body(None, bad), Err(Refusal::BadRequest), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(query in "\\PC{0,64}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_query(&query);
            let _ = parse_body(None, &body);
        }
    }
}
