//! The control endpoints under `/fake/` (listed in the module docs of [`super`]): the same
//! operations as [`Fake`]'s methods, for the end-to-end test and for shell users.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Body, json_response};
use super::model::{GroupType, RateLimits};
use super::{AppSpec, CallbackEvent, CallbackTarget, Fake, Fault, FaultTarget, SentCallback};
use crate::secret::SecretKey;

/// Control bodies are small; a scenario's worth of attributes fits easily.
const MAX_CONTROL_BODY: usize = 4 * 1024 * 1024;

type Answer = Result<Value, (StatusCode, Value)>;

fn bad(msg: impl std::fmt::Display) -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, json!({ "error": msg.to_string() }))
}

fn rejected(code: i64) -> (StatusCode, Value) {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "error_code": code }),
    )
}

fn ok() -> Answer {
    Ok(json!({ "ok": true }))
}

pub(super) async fn handle(fake: &Fake, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = match Limited::new(req.into_body(), MAX_CONTROL_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return respond(Err(bad(format!("cannot read the body: {e}")))),
    };
    // The one control request that waits on the network; `route` stays synchronous.
    if method == Method::POST && path.trim_end_matches('/') == "/fake/callback/raw" {
        return respond(raw_callback(fake, &body).await);
    }
    respond(route(fake, &method, &path, &query, &body))
}

/// `POST /fake/callback/raw`: `{"status":N}` from the receiver, or `{"error":..}` for a
/// transport error (both HTTP 200: the send was done, whatever came of it).
async fn raw_callback(fake: &Fake, body: &Bytes) -> Answer {
    let raw: RawCallback = parse(body)?;
    match fake
        .send_raw_callback(&raw.url, &raw.query, raw.body.into_bytes())
        .await
    {
        Ok(status) => Ok(json!({ "status": status })),
        Err(error) => Ok(json!({ "error": error })),
    }
}

fn set_callback(fake: &Fake, body: &Bytes) -> Answer {
    let c: SetCallback = parse(body)?;
    let target = match c.url {
        None => None,
        Some(url) => {
            let url = url::Url::parse(&url).map_err(|e| bad(format!("invalid url: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad("the url must be http or https"));
            }
            let mut target = CallbackTarget::new(url);
            if let Some(token) = c.token {
                target = target.with_token(SecretKey::new(token));
            }
            if let Some(events) = c.events {
                target = target.with_events(events);
            }
            Some(target)
        }
    };
    match c.sdkappid {
        Some(app) => fake.set_callback(app, target),
        None => fake.set_default_callback(target),
    }
    ok()
}

fn sent_callback_json(c: &SentCallback) -> Value {
    let mut v = json!({
        "seconds": c.at.as_secs_f64(),
        "sdkappid": c.sdkappid,
        "command": c.command,
        "group_id": c.group_id,
        "url": c.url,
    });
    match &c.answer {
        Ok(status) => v["status"] = Value::from(*status),
        Err(error) => v["error"] = Value::from(error.as_str()),
    }
    v
}

fn respond(answer: Answer) -> Response<Body> {
    let (status, v) = match answer {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => e,
    };
    let mut resp = json_response(&v);
    *resp.status_mut() = status;
    resp
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, (StatusCode, Value)> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

fn route(fake: &Fake, method: &Method, path: &str, query: &str, body: &Bytes) -> Answer {
    let rest = path.trim_start_matches("/fake").trim_start_matches('/');
    let get = method == Method::GET;
    let post = method == Method::POST;
    match rest {
        "healthy" if get => Ok(Value::from("ok")),
        "counts" if get => Ok(serde_json::to_value(fake.counts()).expect("counts serialize")),
        "requests" if get => {
            let params: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let sdkappid = params
                .get("sdkappid")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("sdkappid (a number) is required"))?;
            let api = params.get("api").ok_or_else(|| bad("api is required"))?;
            if params.get("groups").is_some_and(|g| g == "1") {
                // Parallel arrays: the group each request named (null for none).
                let (secs, groups): (Vec<f64>, Vec<Option<String>>) = fake
                    .request_times_with_groups(sdkappid, api)
                    .into_iter()
                    .map(|(d, g)| (d.as_secs_f64(), g))
                    .unzip();
                return Ok(
                    json!({ "sdkappid": sdkappid, "api": api, "seconds": secs, "groups": groups }),
                );
            }
            let secs: Vec<f64> = fake
                .request_times(sdkappid, api)
                .iter()
                .map(|d| d.as_secs_f64())
                .collect();
            Ok(json!({ "sdkappid": sdkappid, "api": api, "seconds": secs }))
        }
        "reset" if post => {
            fake.reset_counts();
            ok()
        }
        "apps" if post => {
            let app: NewApp = parse(body)?;
            let mut spec =
                AppSpec::new(app.sdkappid, app.identifier, SecretKey::new(app.secret_key));
            spec.rate_limits = app.rate_limits;
            spec.attr_unsupported = app.attr_unsupported;
            fake.add_app(spec);
            ok()
        }
        "groups" if post => {
            let g: NewGroup = parse(body)?;
            fake.create_group(g.sdkappid, &g.group_id, g.group_type)
                .map_err(rejected)?;
            ok()
        }
        "attrs" if post => {
            let w: AttrWrite = parse(body)?;
            write_attrs(fake, w.sdkappid, &w.group_id, w.mode, w.attrs)
        }
        "destroy" if post => {
            let g: GroupRef = parse(body)?;
            fake.destroy_group(g.sdkappid, &g.group_id)
                .map_err(rejected)?;
            ok()
        }
        "fault" if post => {
            let f: SetFault = parse(body)?;
            let target = match f.group_id {
                Some(id) => FaultTarget::Group(f.sdkappid, id),
                None => FaultTarget::App(f.sdkappid),
            };
            fake.set_fault(target, f.fault);
            ok()
        }
        "key" if post => {
            let k: NewKey = parse(body)?;
            fake.set_secret_key(k.sdkappid, SecretKey::new(k.secret_key));
            ok()
        }
        "callback" if post => set_callback(fake, body),
        "callbacks" if get => {
            let sent: Vec<Value> = fake
                .sent_callbacks()
                .iter()
                .map(sent_callback_json)
                .collect();
            Ok(json!({ "sent": sent, "dropped": fake.dropped_callbacks() }))
        }
        "attr_support" if post => {
            let s: AttrSupport = parse(body)?;
            fake.set_attr_support(s.sdkappid, s.group_type, s.supported);
            ok()
        }
        _ => match rest.strip_prefix("groups/") {
            Some(tail) => group_attrs(fake, method, tail, query, body),
            None => Err((
                StatusCode::NOT_FOUND,
                json!({ "error": "no such control endpoint" }),
            )),
        },
    }
}

/// `GET|POST /fake/groups/{sdkappid}/{group_id}/attrs`.
fn group_attrs(fake: &Fake, method: &Method, tail: &str, query: &str, body: &Bytes) -> Answer {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            json!({ "error": "no such control endpoint" }),
        )
    };
    let (app, rest) = tail.split_once('/').ok_or_else(not_found)?;
    let id = rest.strip_suffix("/attrs").ok_or_else(not_found)?;
    let sdkappid: u64 = app
        .parse()
        .map_err(|_| bad("the SDKAppID must be a number"))?;
    let id =
        percent_decode(id).ok_or_else(|| bad("the group ID is not valid percent-encoded UTF-8"))?;
    if method == Method::GET {
        let attrs = fake.attrs(sdkappid, &id).map_err(rejected)?;
        let map: serde_json::Map<String, Value> = attrs
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        return Ok(json!({ "attrs": map }));
    }
    if method != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": "use GET or POST" }),
        ));
    }
    let mode = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.into_owned());
    let mode = match mode.as_deref() {
        None | Some("set") => Mode::Set,
        Some("modify") => Mode::Modify,
        Some("delete") => Mode::Delete,
        Some("clear") => Mode::Clear,
        Some(other) => return Err(bad(format!("unknown mode {other:?}"))),
    };
    let attrs: Value = if body.is_empty() {
        Value::Null
    } else {
        parse(body)?
    };
    write_attrs(fake, sdkappid, &id, mode, attrs)
}

fn write_attrs(fake: &Fake, sdkappid: u64, id: &str, mode: Mode, attrs: Value) -> Answer {
    let result = match (mode, &attrs) {
        (Mode::Clear, _) => fake.clear_attrs(sdkappid, id),
        (Mode::Delete, Value::Array(keys)) => {
            let keys: Option<Vec<&str>> = keys.iter().map(Value::as_str).collect();
            let keys = keys.ok_or_else(|| bad("delete takes an array of key strings"))?;
            fake.delete_attrs(sdkappid, id, &keys)
        }
        (Mode::Delete, _) => return Err(bad("delete takes an array of key strings")),
        (Mode::Set | Mode::Modify, Value::Object(map)) => {
            let pairs: Option<Vec<(&str, &str)>> = map
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                .collect();
            let pairs = pairs.ok_or_else(|| bad("attribute values must be strings"))?;
            if mode == Mode::Set {
                fake.set_attrs(sdkappid, id, &pairs)
            } else {
                fake.modify_attrs(sdkappid, id, &pairs)
            }
        }
        _ => return Err(bad("set and modify take an object of key: value strings")),
    };
    result.map_err(rejected)?;
    ok()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Set,
    Modify,
    Delete,
    Clear,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    sdkappid: u64,
    identifier: String,
    secret_key: String,
    #[serde(default)]
    rate_limits: RateLimits,
    #[serde(default)]
    attr_unsupported: Vec<GroupType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    sdkappid: u64,
    group_id: String,
    #[serde(rename = "type")]
    group_type: GroupType,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRef {
    sdkappid: u64,
    group_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttrWrite {
    sdkappid: u64,
    group_id: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    attrs: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFault {
    sdkappid: u64,
    #[serde(default)]
    group_id: Option<String>,
    fault: Option<Fault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    sdkappid: u64,
    secret_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttrSupport {
    sdkappid: u64,
    group_type: GroupType,
    supported: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCallback {
    /// Absent: the target of every app without its own.
    #[serde(default)]
    sdkappid: Option<u64>,
    /// `null` or absent clears the target.
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    token: Option<String>,
    /// Absent: all three.
    #[serde(default)]
    events: Option<Vec<CallbackEvent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallback {
    url: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    body: String,
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_group_ids() {
        assert_eq!(percent_decode("%40TGS%23abc").as_deref(), Some("@TGS#abc"));
        assert_eq!(percent_decode("@TGS%23x").as_deref(), Some("@TGS#x"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
