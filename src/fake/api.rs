//! The HTTP side of the fake: one hyper connection per TCP stream, routing to the control
//! endpoints or to the API, the API's checks in the documented order, and the shaping of
//! answers that faults spoil.
//!
//! [`Fake::decide`] is synchronous: it takes the app's lock, settles the answer and records the
//! request, then lets go; only the delays (latency, hang) and the body streaming are async.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::callback::{AttrOption, Change};
use super::fault::{HANG_MAX, Injected, Spoil};
use super::model::{
    Api, App, GroupType, INVALID_PARAMETER, MAX_LIST_LIMIT, NEXT_CURSOR_BASE, NO_PERMISSION,
    VERIFIED_CACHE_CAP, WriteKind,
};
use super::{Fake, control, lock};
use crate::usersig;

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// Request bodies above this are refused (60002) rather than read.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Chunk size for oversized bodies: the body is streamed, never held whole.
const CHUNK: usize = 64 * 1024;

const HTTP_PARSE_ERROR: i64 = 60002;
const JSON_PARSE_ERROR: i64 = 60003;
const IDENTIFIER_WRONG: i64 = 60004;
const INVALID_SDKAPPID: i64 = 60006;
const RESOURCE_ERROR: i64 = 60009;
const NEEDS_ADMIN: i64 = 60010;
const SDKAPPID_MISSING: i64 = 60012;
const INVALID_QUERY_PARAMETER: i64 = 70402;

/// Serves one connection until it closes or shutdown fires (then gracefully).
pub(super) async fn serve_connection(fake: Fake, stream: TcpStream, stop: watch::Receiver<bool>) {
    // The caller's address is the `ClientIP` of the callbacks its writes cause.
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let svc_stop = stop.clone();
    let service = hyper::service::service_fn(move |req| {
        let fake = fake.clone();
        let stop = svc_stop.clone();
        async move { handle(fake, req, stop, peer).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stop = stop;
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Completes once shutdown has fired (at once if it already has).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens after shutdown.
    let _ = stop.wait_for(|s| *s).await;
}

/// Why a request got no answer at all; hyper closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("request left unanswered (hang fault)")]
pub(super) struct HungUp;

async fn handle(
    fake: Fake,
    req: Request<Incoming>,
    mut stop: watch::Receiver<bool>,
    peer: Option<IpAddr>,
) -> Result<Response<Body>, HungUp> {
    if req.uri().path() == "/fake" || req.uri().path().starts_with("/fake/") {
        return Ok(control::handle(&fake, req).await);
    }
    let arrived = Instant::now();
    let api = Api::from_path(req.uri().path());
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Some(collected.to_bytes()),
        Err(_) => None,
    };
    let reply = fake.decide(api, &method, &query, body, arrived, peer);
    if !reply.delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(reply.delay) => {}
            () = stopped(&mut stop) => {}
        }
    }
    match reply.kind {
        Kind::Json(v) => Ok(json_response(&v)),
        Kind::Spoiled(v, spoil) => Ok(spoiled_response(&v, spoil)),
        Kind::Status(status) => Ok(status_response(status)),
        Kind::Hang => {
            tokio::select! {
                () = tokio::time::sleep(HANG_MAX) => {}
                () = stopped(&mut stop) => {}
            }
            Err(HungUp)
        }
    }
}

/// The answer settled for one request.
pub(super) struct Reply {
    delay: Duration,
    kind: Kind,
}

enum Kind {
    Json(Value),
    /// A JSON answer whose bytes a fault spoils.
    Spoiled(Value, Spoil),
    Status(u16),
    Hang,
}

/// The standard envelope: `ActionStatus`, `ErrorCode`, `ErrorInfo`.
fn envelope(code: i64, info: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "ActionStatus".into(),
        Value::from(if code == 0 { "OK" } else { "FAIL" }),
    );
    m.insert("ErrorCode".into(), Value::from(code));
    m.insert("ErrorInfo".into(), Value::from(info));
    m
}

fn error_info(code: i64) -> &'static str {
    match code {
        10002 => "Internal server error. Try again.",
        10004 => "Invalid parameter.",
        10007 => "No operation permission: this group type does not support custom attributes.",
        10010 => "The group does not exist or has been deleted.",
        10015 => "Invalid group ID.",
        10018 => "The response exceeds 1 MB.",
        10021 => "The group ID is already used.",
        10045 => "The attribute key exceeds 32 bytes.",
        10046 => "The attribute value exceeds 4000 bytes.",
        10047 => "The group has more than 16 attribute keys.",
        10048 => "The attribute values exceed 16000 bytes in all.",
        10049 => "Attribute writes to this group exceed 5 per second.",
        10050 => "The attribute key does not exist.",
        60002 => "HTTP parse error.",
        60003 => "JSON parse error in the request.",
        60004 => "The identifier or UserSig is wrong.",
        60006 => "Invalid SDKAppID.",
        60007 => "REST API call frequency limit exceeded.",
        60009 => "Request resource error: check the URL.",
        60010 => "The request needs app admin permissions.",
        60012 => "The SDKAppID is missing.",
        70001 => "The UserSig has expired.",
        70002 => "The UserSig is empty.",
        70003 => "UserSig verification failed.",
        70009 => "The key does not match the SDKAppID.",
        70013 => "The identifier differs from the one in the UserSig.",
        70014 => "The SDKAppID differs from the one in the UserSig.",
        70016 => "The verification key is missing.",
        70020 => "The SDKAppID was not found.",
        70402 => "Invalid parameter.",
        _ => "Fault injected by the fake API.",
    }
}

fn fail(code: i64) -> Value {
    Value::Object(envelope(code, error_info(code)))
}

/// Reads query parameters as the real API does: case sensitive, first occurrence wins.
fn query_params(query: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        params
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    params
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a fault does to a request: `Err` ends it here, `Ok` lets it go on (maybe delayed or
/// with a spoiled body).
fn apply_fault(
    injected: Injected,
    delay: &mut Duration,
    spoil: &mut Option<Spoil>,
) -> Result<(), Kind> {
    match injected {
        Injected::None => Ok(()),
        Injected::Delay(d) => {
            *delay += d;
            Ok(())
        }
        Injected::Hang => Err(Kind::Hang),
        Injected::HttpStatus(s) => Err(Kind::Status(s)),
        Injected::Code(c) => Err(Kind::Json(fail(c))),
        Injected::Spoil(s) => {
            *spoil = Some(s);
            Ok(())
        }
    }
}

impl Fake {
    /// Settles the answer to one API request, records it and queues the callback a successful
    /// change calls for.
    fn decide(
        &self,
        api: Option<Api>,
        method: &Method,
        query: &str,
        body: Option<Bytes>,
        arrived: Instant,
        peer: Option<IpAddr>,
    ) -> Reply {
        let params = query_params(query);
        let app_label = params
            .get("sdkappid")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let api_label = api.map_or("unknown", Api::as_str);
        let mut delay = Duration::ZERO;
        let mut spoil = None;
        let mut group = None;
        let kind = self.decide_inner(
            api, method, &params, body, arrived, peer, &mut delay, &mut spoil, &mut group,
        );
        let kind = match (kind, spoil) {
            (Kind::Json(v), Some(s)) => spoil_value(v, s, api),
            (kind, _) => kind,
        };
        let outcome = match &kind {
            Kind::Json(v) => v
                .get("ErrorCode")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
            Kind::Spoiled(_, s) => s.outcome().to_owned(),
            Kind::Status(s) => format!("http_{s}"),
            Kind::Hang => "hang".to_owned(),
        };
        self.record(app_label, api_label, group.as_deref(), &outcome, arrived);
        Reply { delay, kind }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_inner(
        &self,
        api: Option<Api>,
        method: &Method,
        params: &HashMap<String, String>,
        body: Option<Bytes>,
        arrived: Instant,
        peer: Option<IpAddr>,
        delay: &mut Duration,
        spoil: &mut Option<Spoil>,
        group_label: &mut Option<String>,
    ) -> Kind {
        let Some(api) = api else {
            return Kind::Json(fail(RESOURCE_ERROR));
        };
        if method != Method::POST {
            return Kind::Json(fail(HTTP_PARSE_ERROR));
        }
        let Some(raw_app) = params.get("sdkappid").filter(|s| !s.is_empty()) else {
            return Kind::Json(fail(SDKAPPID_MISSING));
        };
        let Ok(sdkappid) = raw_app.parse::<u64>() else {
            return Kind::Json(fail(INVALID_SDKAPPID));
        };
        let Some(app) = self.app(sdkappid) else {
            return Kind::Json(fail(super::model::SDKAPPID_NOT_FOUND));
        };
        let mut app = lock(&app);
        if let Some(slot) = app.app_fault.as_mut() {
            if let Err(kind) = apply_fault(slot.decide(), delay, spoil) {
                return kind;
            }
        }
        if let Err(code) = check_caller(&mut app, api, params) {
            return Kind::Json(fail(code));
        }
        if let Err(code) = app.admit(api, arrived) {
            return Kind::Json(fail(code));
        }
        let Some(body) = body else {
            return Kind::Json(fail(HTTP_PARSE_ERROR));
        };
        let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&body) else {
            // Empty, not JSON, or JSON that is not an object.
            return Kind::Json(fail(JSON_PARSE_ERROR));
        };
        if api != Api::GetAppidGroupList && api != Api::CreateGroup {
            let Some(id) = req.get("GroupId").and_then(Value::as_str) else {
                return Kind::Json(fail(INVALID_PARAMETER));
            };
            *group_label = Some(id.to_owned());
            if let Some(slot) = app.group_faults.get_mut(id) {
                if let Err(kind) = apply_fault(slot.decide(), delay, spoil) {
                    return kind;
                }
            }
        }
        match operate(&mut app, api, &req, arrived, group_label) {
            Ok((mut extra, change)) => {
                if *spoil == Some(Spoil::CyclingNext) {
                    if let Some(next) = extra.get_mut("Next") {
                        *next = Value::from(cycling_next(req.get("Next")));
                    }
                }
                // A fault that spoils the answer does not undo the change: Tencent would still
                // call back.
                if let Some(change) = change {
                    self.changed(&app, change, peer);
                }
                let mut v = envelope(0, "");
                v.extend(extra);
                Kind::Json(Value::Object(v))
            }
            Err(code) => Kind::Json(fail(code)),
        }
    }
}

/// The query-string checks after the SDKAppID: content type, random, identifier, UserSig, admin.
fn check_caller(app: &mut App, api: Api, params: &HashMap<String, String>) -> Result<(), i64> {
    if params.get("contenttype").map(String::as_str) != Some("json") {
        return Err(HTTP_PARSE_ERROR);
    }
    if params
        .get("random")
        .and_then(|r| r.parse::<u32>().ok())
        .is_none()
    {
        return Err(INVALID_QUERY_PARAMETER);
    }
    let identifier = match params.get("identifier") {
        Some(id) if !id.is_empty() => id.as_str(),
        _ => return Err(IDENTIFIER_WRONG),
    };
    let sig = params.get("usersig").map_or("", String::as_str);
    let now = now_unix();
    let cached = app
        .verified
        .get(sig)
        .is_some_and(|(id, expires)| id == identifier && now <= *expires);
    if !cached {
        let doc = usersig::verify(
            sig,
            &app.spec.secret_key,
            app.spec.sdkappid,
            identifier,
            now,
        )
        .map_err(|e| e.error_code())?;
        if app.verified.len() >= VERIFIED_CACHE_CAP {
            app.verified.clear();
        }
        app.verified
            .insert(sig.to_owned(), (identifier.to_owned(), doc.expires_at()));
    }
    if identifier != app.spec.identifier {
        return Err(if api == Api::GetAppidGroupList {
            NO_PERMISSION
        } else {
            NEEDS_ADMIN
        });
    }
    Ok(())
}

fn str_field<'a>(req: &'a Map<String, Value>, name: &str) -> Result<&'a str, i64> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or(INVALID_PARAMETER)
}

/// `GroupAttr` as (key, value) pairs; `with_values` false for delete, which sends keys only.
fn attr_list(req: &Map<String, Value>, with_values: bool) -> Result<Vec<(&str, &str)>, i64> {
    let list = req
        .get("GroupAttr")
        .and_then(Value::as_array)
        .ok_or(INVALID_PARAMETER)?;
    list.iter()
        .map(|item| {
            let key = item
                .get("key")
                .and_then(Value::as_str)
                .ok_or(INVALID_PARAMETER)?;
            let value = if with_values {
                item.get("value")
                    .and_then(Value::as_str)
                    .ok_or(INVALID_PARAMETER)?
            } else {
                ""
            };
            Ok((key, value))
        })
        .collect()
}

/// Performs the call on the app; `Ok` holds the fields to add to the success envelope and the
/// change made, if any.
fn operate<'a>(
    app: &mut App,
    api: Api,
    req: &'a Map<String, Value>,
    now: Instant,
    group_label: &mut Option<String>,
) -> Result<(Map<String, Value>, Option<Change<'a>>), i64> {
    let mut out = Map::new();
    let mut change = None;
    match api {
        Api::GetGroupAttr => {
            let group = app.attr_group(str_field(req, "GroupId")?)?;
            let ary: Vec<Value> = group
                .attrs
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            out.insert("GroupAttrAry".into(), Value::Array(ary));
        }
        Api::ModifyGroupAttr | Api::SetGroupAttr => {
            let id = str_field(req, "GroupId")?;
            let attrs = attr_list(req, true)?;
            let (kind, option) = if api == Api::SetGroupAttr {
                (WriteKind::Set, AttrOption::Set)
            } else {
                (WriteKind::Modify, AttrOption::Modify)
            };
            app.write_attrs(id, kind, &attrs, Some(now))?;
            change = Some(Change::Attrs {
                group_id: id,
                option,
                attrs,
            });
        }
        Api::DeleteGroupAttr => {
            let id = str_field(req, "GroupId")?;
            let attrs = attr_list(req, false)?;
            let keys: Vec<&str> = attrs.iter().map(|(k, _)| *k).collect();
            app.delete_attrs(id, &keys, Some(now))?;
            change = Some(Change::Attrs {
                group_id: id,
                option: AttrOption::Delete,
                attrs,
            });
        }
        Api::ClearGroupAttr => {
            let id = str_field(req, "GroupId")?;
            app.clear_attrs(id, Some(now))?;
            change = Some(Change::Attrs {
                group_id: id,
                option: AttrOption::Clear,
                attrs: Vec::new(),
            });
        }
        Api::DestroyGroup => {
            let id = str_field(req, "GroupId")?;
            let group = app.destroy_group(id)?;
            change = Some(Change::Destroyed {
                group_id: id,
                group,
            });
        }
        Api::CreateGroup => {
            let group_type: GroupType = str_field(req, "Type")?
                .parse()
                .map_err(|_| INVALID_PARAMETER)?;
            let id = match req.get("GroupId") {
                None => {
                    app.created += 1;
                    format!("@TGS#fake{}", app.created)
                }
                Some(v) => v.as_str().ok_or(INVALID_PARAMETER)?.to_owned(),
            };
            let name = match req.get("Name") {
                None => None,
                Some(v) => Some(v.as_str().ok_or(INVALID_PARAMETER)?),
            };
            *group_label = Some(id.clone());
            app.create_group(&id, group_type)?;
            if let Some(name) = name {
                app.groups
                    .get_mut(&id)
                    .expect("create_group just made it")
                    .name = name.to_owned();
            }
            out.insert("GroupId".into(), Value::from(id.clone()));
            change = Some(Change::Created { group_id: id });
        }
        Api::GetAppidGroupList => {
            let limit = match req.get("Limit") {
                None => MAX_LIST_LIMIT,
                Some(v) => v
                    .as_u64()
                    .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                    .ok_or(INVALID_PARAMETER)?,
            };
            let next = match req.get("Next") {
                None => 0,
                Some(v) => v.as_u64().ok_or(INVALID_PARAMETER)?,
            };
            let (total, ids, next) = match req.get("GroupType") {
                None => app.list_groups(limit, next, None)?,
                // A documented filter for a type the fake does not model: no such groups.
                Some(Value::String(t)) if t == "BChatRoom" => (0, Vec::new(), 0),
                Some(Value::String(t)) => {
                    let t: GroupType = t.parse().map_err(|_| INVALID_PARAMETER)?;
                    app.list_groups(limit, next, Some(t))?
                }
                Some(_) => return Err(INVALID_PARAMETER),
            };
            out.insert("TotalCount".into(), Value::from(total));
            let list: Vec<Value> = ids.into_iter().map(|id| json!({"GroupId": id})).collect();
            out.insert("GroupIdList".into(), Value::Array(list));
            out.insert("Next".into(), Value::from(next));
        }
    }
    Ok((out, change))
}

/// The `Next` of [`Spoil::CyclingNext`]: 0 → A, A → B, anything else → A. A and B are cursors
/// the fake could have issued, so a client that pages on is served (empty) pages, not 10004.
fn cycling_next(asked: Option<&Value>) -> u64 {
    const A: u64 = NEXT_CURSOR_BASE;
    const B: u64 = NEXT_CURSOR_BASE + 1;
    match asked.and_then(Value::as_u64) {
        Some(A) => B,
        _ => A,
    }
}

/// Applies the spoils that change the JSON itself; the byte-level ones wait for rendering.
fn spoil_value(mut v: Value, spoil: Spoil, api: Option<Api>) -> Kind {
    match spoil {
        Spoil::DuplicateKey => {
            if api == Some(Api::GetGroupAttr) {
                if let Some(Value::Array(ary)) = v.get_mut("GroupAttrAry") {
                    let dup = match ary.first() {
                        Some(first) => {
                            let key = first.get("key").cloned().unwrap_or(Value::from("dup"));
                            json!({"key": key, "value": "duplicate"})
                        }
                        None => {
                            ary.push(json!({"key": "dup", "value": "first"}));
                            json!({"key": "dup", "value": "second"})
                        }
                    };
                    ary.push(dup);
                    return Kind::Spoiled(v, spoil);
                }
            }
            Kind::Json(v)
        }
        Spoil::StatusMismatch => {
            if let Value::Object(m) = &mut v {
                m.insert("ActionStatus".into(), Value::from("OK"));
                if m.get("ErrorCode").and_then(Value::as_i64) == Some(0) {
                    m.insert(
                        "ErrorCode".into(),
                        Value::from(super::fault::INTERNAL_ERROR),
                    );
                    m.insert("ErrorInfo".into(), Value::from(error_info(10002)));
                }
            }
            Kind::Spoiled(v, spoil)
        }
        // `decide_inner` already cycled `Next`; other calls are served as they are.
        Spoil::CyclingNext if api != Some(Api::GetAppidGroupList) => Kind::Json(v),
        _ => Kind::Spoiled(v, spoil),
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn bytes_response(content_type: &str, status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(content_type).expect("a static content type is valid"),
    );
    resp
}

pub(super) fn json_response(v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).expect("a serde_json Value always serializes");
    bytes_response("application/json", StatusCode::OK, full(bytes))
}

fn status_response(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let html = format!(
        "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n</body>\r\n</html>\r\n"
    );
    bytes_response("text/html", status, full(html))
}

fn spoiled_response(v: &Value, spoil: Spoil) -> Response<Body> {
    let json = serde_json::to_vec(v).expect("a serde_json Value always serializes");
    let body = match spoil {
        Spoil::TruncatedJson => json[..json.len() / 2].to_vec(),
        // A missing comma: near enough to JSON to fool a hopeful parser, but not JSON.
        Spoil::InvalidJson => br#"{"ActionStatus":"OK" "ErrorCode":0,"ErrorInfo":""}"#.to_vec(),
        Spoil::InvalidUtf8 => {
            let mut b = br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""#.to_vec();
            b.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            b.extend_from_slice(br#"","GroupAttrAry":[]}"#);
            b
        }
        Spoil::Oversized(n) => return oversized_response(n),
        Spoil::DuplicateKey | Spoil::StatusMismatch | Spoil::CyclingNext => json,
    };
    bytes_response("application/json", StatusCode::OK, full(body))
}

/// A valid JSON answer of exactly `n` bytes (or the shortest possible, if `n` is smaller),
/// streamed in chunks that all share one buffer of padding.
fn oversized_response(n: usize) -> Response<Body> {
    const HEAD: &[u8] =
        br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupAttrAry":[],"Padding":""#;
    const TAIL: &[u8] = br#""}"#;
    let padding_len = n.saturating_sub(HEAD.len() + TAIL.len());
    let total = HEAD.len() + padding_len + TAIL.len();
    let pad = Bytes::from(vec![b'x'; CHUNK.min(padding_len.max(1))]);
    // States: head, then padding chunks, then the tail.
    let chunks = futures::stream::unfold((0u8, padding_len), move |(stage, left)| {
        let pad = pad.clone();
        async move {
            match stage {
                0 => Some((Bytes::from_static(HEAD), (1, left))),
                1 if left > 0 => {
                    let take = left.min(pad.len());
                    Some((pad.slice(..take), (1, left - take)))
                }
                1 => Some((Bytes::from_static(TAIL), (2, 0))),
                _ => None,
            }
        }
    });
    let body = StreamBody::new(chunks.map(|b| Ok::<_, std::io::Error>(Frame::data(b))));
    let mut resp = bytes_response("application/json", StatusCode::OK, BodyExt::boxed(body));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(total));
    resp
}
