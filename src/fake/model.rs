//! The fake's data model: apps, groups and their attributes, and the rules the reference sets
//! on them (attribute limits, group IDs, group types, per-app rate limits).
//!
//! Everything here is synchronous and works on plain data; the HTTP layer ([`super::api`]) and
//! the control surface ([`super::Fake`]) lock an [`App`] briefly and call into it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::fault::FaultSlot;
use crate::secret::SecretKey;

/// Invalid parameter.
pub const INVALID_PARAMETER: i64 = 10004;
/// The group type does not support custom attributes (or no permission).
pub const NO_PERMISSION: i64 = 10007;
/// The group does not exist or was destroyed.
pub const GROUP_NOT_FOUND: i64 = 10010;
/// The group ID is invalid.
pub const INVALID_GROUP_ID: i64 = 10015;
/// A page of `get_appid_group_list` would exceed 1 MB.
pub const RESPONSE_TOO_LARGE: i64 = 10018;
/// `create_group`: the group ID is already in use.
pub const GROUP_ID_IN_USE: i64 = 10021;
/// An attribute key is longer than [`MAX_KEY_BYTES`].
pub const KEY_TOO_LONG: i64 = 10045;
/// An attribute value is longer than [`MAX_VALUE_BYTES`].
pub const VALUE_TOO_LONG: i64 = 10046;
/// A group would hold more than [`MAX_KEYS`] attributes.
pub const TOO_MANY_KEYS: i64 = 10047;
/// All values together would exceed [`MAX_TOTAL_VALUE_BYTES`].
pub const TOTAL_TOO_LARGE: i64 = 10048;
/// More than [`MAX_WRITES_PER_SECOND`] writes to one group within a second.
pub const WRITE_FREQUENCY_LIMIT: i64 = 10049;
/// `delete_group_attr` names a key the group does not hold.
pub const KEY_NOT_FOUND: i64 = 10050;
/// The app's REST call rate for this API is exceeded.
pub const REST_FREQUENCY_LIMIT: i64 = 60007;
/// No app with this SDKAppID.
pub const SDKAPPID_NOT_FOUND: i64 = 70020;

pub const MAX_KEY_BYTES: usize = 32;
pub const MAX_KEYS: usize = 16;
pub const MAX_VALUE_BYTES: usize = 4_000;
pub const MAX_TOTAL_VALUE_BYTES: usize = 16_000;
pub const MAX_WRITES_PER_SECOND: usize = 5;
/// Longest group ID the fake accepts (the real limit for custom IDs).
pub const MAX_GROUP_ID_BYTES: usize = 48;
/// Largest `Limit` of `get_appid_group_list`.
pub const MAX_LIST_LIMIT: u64 = 10_000;
/// `get_appid_group_list` answers 10018 rather than send a page larger than this.
pub const MAX_LIST_RESPONSE_BYTES: usize = 1_000_000;
/// `Next` cursors start here, above 2^32, so a client that keeps them in a u32 breaks at once.
pub const NEXT_CURSOR_BASE: u64 = 1 << 33;

/// Documented per-app rate limit of `get_group_attr`.
pub const DEFAULT_GET_GROUP_ATTR_PER_SECOND: u32 = 200;
/// Documented per-app rate limit of `get_appid_group_list`.
pub const DEFAULT_GET_APPID_GROUP_LIST_PER_SECOND: u32 = 1;
/// Rate limit of each write call (the reference gives 200/s for the group calls).
pub const DEFAULT_WRITES_PER_SECOND: u32 = 200;

const WINDOW: Duration = Duration::from_secs(1);

/// The five preset group types. `Work` and `Meeting` (their new names) parse as `Private` and
/// `ChatRoom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupType {
    Private,
    Public,
    ChatRoom,
    AVChatRoom,
    Community,
}

impl GroupType {
    pub const ALL: [GroupType; 5] = [
        GroupType::Private,
        GroupType::Public,
        GroupType::ChatRoom,
        GroupType::AVChatRoom,
        GroupType::Community,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Private => "Private",
            GroupType::Public => "Public",
            GroupType::ChatRoom => "ChatRoom",
            GroupType::AVChatRoom => "AVChatRoom",
            GroupType::Community => "Community",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for GroupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "Private" | "Work" => GroupType::Private,
            "Public" => GroupType::Public,
            "ChatRoom" | "Meeting" => GroupType::ChatRoom,
            "AVChatRoom" => GroupType::AVChatRoom,
            "Community" => GroupType::Community,
            other => {
                return Err(format!(
                    "unknown group type {other:?} (expected Private, Work, Public, ChatRoom, Meeting, AVChatRoom or Community)"
                ));
            }
        })
    }
}

impl Serialize for GroupType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GroupType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Requests per second an app accepts per API, in a sliding one-second window; `None` means
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub get_group_attr: Option<u32>,
    pub get_appid_group_list: Option<u32>,
    /// Each write call (`modify_group_attr`, `destroy_group`, ...) separately.
    pub writes: Option<u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            get_group_attr: Some(DEFAULT_GET_GROUP_ATTR_PER_SECOND),
            get_appid_group_list: Some(DEFAULT_GET_APPID_GROUP_LIST_PER_SECOND),
            writes: Some(DEFAULT_WRITES_PER_SECOND),
        }
    }
}

impl RateLimits {
    /// No limit on any API: for benchmarks that measure the client, not the quota.
    pub fn unlimited() -> Self {
        RateLimits {
            get_group_attr: None,
            get_appid_group_list: None,
            writes: None,
        }
    }

    pub fn for_api(&self, api: Api) -> Option<u32> {
        match api {
            Api::GetGroupAttr => self.get_group_attr,
            Api::GetAppidGroupList => self.get_appid_group_list,
            _ => self.writes,
        }
    }
}

/// An app the fake knows: its admin account, key, quotas and which group types support
/// custom attributes.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub sdkappid: u64,
    /// The app admin account; the only identifier the fake accepts.
    pub identifier: String,
    pub secret_key: SecretKey,
    pub rate_limits: RateLimits,
    /// Group types that answer 10007 to attribute calls. All five support them by default,
    /// as the current reference says.
    pub attr_unsupported: Vec<GroupType>,
}

impl AppSpec {
    pub fn new(sdkappid: u64, identifier: impl Into<String>, secret_key: SecretKey) -> Self {
        AppSpec {
            sdkappid,
            identifier: identifier.into(),
            secret_key,
            rate_limits: RateLimits::default(),
            attr_unsupported: Vec::new(),
        }
    }

    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate_limits = limits;
        self
    }
}

/// The API calls the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    GetGroupAttr,
    ModifyGroupAttr,
    SetGroupAttr,
    DeleteGroupAttr,
    ClearGroupAttr,
    DestroyGroup,
    GetAppidGroupList,
    CreateGroup,
}

impl Api {
    pub const ALL: [Api; 8] = [
        Api::GetGroupAttr,
        Api::ModifyGroupAttr,
        Api::SetGroupAttr,
        Api::DeleteGroupAttr,
        Api::ClearGroupAttr,
        Api::DestroyGroup,
        Api::GetAppidGroupList,
        Api::CreateGroup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::GetGroupAttr => "get_group_attr",
            Api::ModifyGroupAttr => "modify_group_attr",
            Api::SetGroupAttr => "set_group_attr",
            Api::DeleteGroupAttr => "delete_group_attr",
            Api::ClearGroupAttr => "clear_group_attr",
            Api::DestroyGroup => "destroy_group",
            Api::GetAppidGroupList => "get_appid_group_list",
            Api::CreateGroup => "create_group",
        }
    }

    /// The URL path the real API serves this call at.
    pub fn path(self) -> &'static str {
        match self {
            Api::GetGroupAttr => "/v4/group_open_attr_http_svc/get_group_attr",
            Api::ModifyGroupAttr => "/v4/group_open_http_svc/modify_group_attr",
            Api::SetGroupAttr => "/v4/group_open_http_svc/set_group_attr",
            Api::DeleteGroupAttr => "/v4/group_open_http_svc/delete_group_attr",
            Api::ClearGroupAttr => "/v4/group_open_http_svc/clear_group_attr",
            Api::DestroyGroup => "/v4/group_open_http_svc/destroy_group",
            Api::GetAppidGroupList => "/v4/group_open_http_svc/get_appid_group_list",
            Api::CreateGroup => "/v4/group_open_http_svc/create_group",
        }
    }

    pub fn from_path(path: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.path() == path)
    }

    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.as_str() == name)
    }

    /// Whether the call changes a group's attributes (and so counts against 5 writes/s).
    pub fn is_attr_write(self) -> bool {
        matches!(
            self,
            Api::ModifyGroupAttr | Api::SetGroupAttr | Api::DeleteGroupAttr | Api::ClearGroupAttr
        )
    }
}

/// Whether the fake accepts `id` as a group ID: 1..=48 bytes of printable ASCII without spaces
/// (`!`..=`~`). Anything else answers 10015.
pub fn valid_group_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_GROUP_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug)]
pub struct Group {
    pub group_type: GroupType,
    /// The group's name, for callbacks: `create_group`'s `Name`, else the group ID.
    pub name: String,
    /// In insertion order, as the API returns them; at most 16, so linear search is fine.
    pub attrs: Vec<(String, String)>,
    /// Position in the app's creation order, for `get_appid_group_list` cursors.
    seq: u64,
    /// Accepted attribute writes of the last second, for the 5/s limit.
    writes: VecDeque<Instant>,
}

/// What a write does to the attribute set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Set,
    Modify,
}

/// One app's state. Held behind its own mutex, never across an await.
#[derive(Debug)]
pub struct App {
    pub spec: AppSpec,
    attr_supported: [bool; 5],
    pub groups: HashMap<String, Group>,
    /// Creation order: seq -> group ID, so paging is stable while groups come and go.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    /// Accepted requests of the last second, per API, for the app's rate limits.
    windows: HashMap<Api, VecDeque<Instant>>,
    pub app_fault: Option<FaultSlot>,
    pub group_faults: HashMap<String, FaultSlot>,
    /// UserSigs already verified with the current key: UserSig -> (identifier, expires_at).
    /// Saves a zlib inflate and an HMAC per request; cleared when the key changes.
    pub verified: HashMap<String, (String, u64)>,
    /// Sequence number of IDs `create_group` makes up when the request has none.
    pub created: u64,
}

/// Entries kept in [`App::verified`] before it is cleared.
pub const VERIFIED_CACHE_CAP: usize = 4096;

impl App {
    pub fn new(spec: AppSpec) -> App {
        let mut attr_supported = [true; 5];
        for t in &spec.attr_unsupported {
            attr_supported[t.index()] = false;
        }
        App {
            spec,
            attr_supported,
            groups: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            windows: HashMap::new(),
            app_fault: None,
            group_faults: HashMap::new(),
            verified: HashMap::new(),
            created: 0,
        }
    }

    pub fn attr_supported(&self, group_type: GroupType) -> bool {
        self.attr_supported[group_type.index()]
    }

    pub fn set_attr_support(&mut self, group_type: GroupType, supported: bool) {
        self.attr_supported[group_type.index()] = supported;
    }

    pub fn set_secret_key(&mut self, key: SecretKey) {
        self.spec.secret_key = key;
        self.verified.clear();
    }

    /// Counts a request against the API's per-app limit: `Err(60007)` when the last second
    /// already holds the limit. Rejected requests do not fill the window.
    pub fn admit(&mut self, api: Api, now: Instant) -> Result<(), i64> {
        let Some(limit) = self.spec.rate_limits.for_api(api) else {
            return Ok(());
        };
        let window = self.windows.entry(api).or_default();
        if !slide(window, now, limit as usize) {
            return Err(REST_FREQUENCY_LIMIT);
        }
        Ok(())
    }

    pub fn create_group(&mut self, id: &str, group_type: GroupType) -> Result<(), i64> {
        if !valid_group_id(id) {
            return Err(INVALID_GROUP_ID);
        }
        if self.groups.contains_key(id) {
            return Err(GROUP_ID_IN_USE);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.to_owned());
        self.groups.insert(
            id.to_owned(),
            Group {
                group_type,
                name: id.to_owned(),
                attrs: Vec::new(),
                seq,
                writes: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// Removes the group and hands it back (its type and name go into the callback).
    pub fn destroy_group(&mut self, id: &str) -> Result<Group, i64> {
        let seq = self.group(id)?.seq;
        self.order.remove(&seq);
        Ok(self.groups.remove(id).expect("group() checked it exists"))
    }

    /// The group, or the code the API answers for it (10015, 10010).
    pub fn group(&self, id: &str) -> Result<&Group, i64> {
        if !valid_group_id(id) {
            return Err(INVALID_GROUP_ID);
        }
        self.groups.get(id).ok_or(GROUP_NOT_FOUND)
    }

    /// The group if its type supports attributes, else 10007.
    pub fn attr_group(&self, id: &str) -> Result<&Group, i64> {
        let group = self.group(id)?;
        if !self.attr_supported[group.group_type.index()] {
            return Err(NO_PERMISSION);
        }
        Ok(group)
    }

    /// Applies an attribute write. `now` is `Some` for API calls, which are held to 5 writes
    /// per second per group; the control surface passes `None`.
    pub fn write_attrs(
        &mut self,
        id: &str,
        kind: WriteKind,
        attrs: &[(&str, &str)],
        now: Option<Instant>,
    ) -> Result<(), i64> {
        self.attr_group(id)?;
        let group = self
            .groups
            .get_mut(id)
            .expect("attr_group checked it exists");
        let mut next = match kind {
            WriteKind::Set => Vec::with_capacity(attrs.len()),
            WriteKind::Modify => group.attrs.clone(),
        };
        for (key, value) in attrs {
            if key.is_empty() {
                return Err(INVALID_PARAMETER);
            }
            if key.len() > MAX_KEY_BYTES {
                return Err(KEY_TOO_LONG);
            }
            if value.len() > MAX_VALUE_BYTES {
                return Err(VALUE_TOO_LONG);
            }
            match next.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = (*value).to_owned(),
                None => next.push(((*key).to_owned(), (*value).to_owned())),
            }
        }
        if next.len() > MAX_KEYS {
            return Err(TOO_MANY_KEYS);
        }
        if next.iter().map(|(_, v)| v.len()).sum::<usize>() > MAX_TOTAL_VALUE_BYTES {
            return Err(TOTAL_TOO_LARGE);
        }
        if let Some(now) = now {
            if !slide(&mut group.writes, now, MAX_WRITES_PER_SECOND) {
                return Err(WRITE_FREQUENCY_LIMIT);
            }
        }
        group.attrs = next;
        Ok(())
    }

    /// Removes every attribute. Community groups support the other attribute calls but not
    /// this one (10007), as the reference says.
    pub fn clear_attrs(&mut self, id: &str, now: Option<Instant>) -> Result<(), i64> {
        if self.attr_group(id)?.group_type == GroupType::Community {
            return Err(NO_PERMISSION);
        }
        self.write_attrs(id, WriteKind::Set, &[], now)
    }

    /// Removes the named attributes; a key the group does not hold answers 10050.
    pub fn delete_attrs(
        &mut self,
        id: &str,
        keys: &[&str],
        now: Option<Instant>,
    ) -> Result<(), i64> {
        self.attr_group(id)?;
        let group = self
            .groups
            .get_mut(id)
            .expect("attr_group checked it exists");
        if keys.iter().any(|k| k.is_empty()) {
            return Err(INVALID_PARAMETER);
        }
        // One missing key fails the whole call, so nothing is deleted.
        if !keys.iter().all(|k| group.attrs.iter().any(|(a, _)| a == k)) {
            return Err(KEY_NOT_FOUND);
        }
        if let Some(now) = now {
            if !slide(&mut group.writes, now, MAX_WRITES_PER_SECOND) {
                return Err(WRITE_FREQUENCY_LIMIT);
            }
        }
        group.attrs.retain(|(k, _)| !keys.contains(&k.as_str()));
        Ok(())
    }

    /// One page of `get_appid_group_list`: (total matching, IDs, next cursor or 0).
    pub fn list_groups(
        &self,
        limit: u64,
        next: u64,
        filter: Option<GroupType>,
    ) -> Result<(u64, Vec<&str>, u64), i64> {
        let after = match next {
            0 => None,
            n if n >= NEXT_CURSOR_BASE => Some(n - NEXT_CURSOR_BASE),
            _ => return Err(INVALID_PARAMETER),
        };
        let matches = |id: &String| {
            filter.is_none_or(|t| self.groups.get(id).is_some_and(|g| g.group_type == t))
        };
        let total = match filter {
            None => self.groups.len() as u64,
            Some(_) => self.order.values().filter(|id| matches(id)).count() as u64,
        };
        let range = match after {
            None => self.order.range(..),
            Some(seq) => self.order.range(seq + 1..),
        };
        let mut page = Vec::new();
        let mut bytes = 0usize;
        let mut last_seq = None;
        let mut more = false;
        for (seq, id) in range.filter(|(_, id)| matches(id)) {
            if page.len() as u64 == limit {
                more = true;
                break;
            }
            // `{"GroupId":"..."},` per entry, plus the envelope.
            bytes += id.len() + 15;
            if bytes > MAX_LIST_RESPONSE_BYTES {
                return Err(RESPONSE_TOO_LARGE);
            }
            page.push(id.as_str());
            last_seq = Some(*seq);
        }
        let next = match (more, last_seq) {
            (true, Some(seq)) => NEXT_CURSOR_BASE + seq,
            _ => 0,
        };
        Ok((total, page, next))
    }
}

/// Sliding one-second window: drops entries older than a second, then admits `now` if fewer
/// than `limit` remain.
fn slide(window: &mut VecDeque<Instant>, now: Instant, limit: usize) -> bool {
    while window
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
    {
        window.pop_front();
    }
    if window.len() >= limit {
        return false;
    }
    window.push_back(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::new(AppSpec::new(1, "admin", SecretKey::new("k")))
    }

    #[test]
    fn group_ids() {
        assert!(valid_group_id("@TGS#aC5SZEAEF"));
        assert!(valid_group_id(&"a".repeat(48)));
        assert!(!valid_group_id(&"a".repeat(49)));
        assert!(!valid_group_id(""));
        assert!(!valid_group_id("has space"));
        assert!(!valid_group_id("tab\t"));
        assert!(!valid_group_id("ü"));
    }

    #[test]
    fn group_type_aliases() {
        assert_eq!("Work".parse::<GroupType>().unwrap(), GroupType::Private);
        assert_eq!("Meeting".parse::<GroupType>().unwrap(), GroupType::ChatRoom);
        assert!("public".parse::<GroupType>().is_err());
    }

    #[test]
    fn limits_follow_the_reference() {
        let mut a = app();
        a.create_group("g", GroupType::Public).unwrap();
        let long_key = "k".repeat(33);
        let long_value = "v".repeat(4001);
        let w =
            |a: &mut App, attrs: &[(&str, &str)]| a.write_attrs("g", WriteKind::Set, attrs, None);
        assert_eq!(w(&mut a, &[(&long_key, "v")]), Err(KEY_TOO_LONG));
        assert_eq!(w(&mut a, &[("k", &long_value)]), Err(VALUE_TOO_LONG));
        let keys: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert_eq!(w(&mut a, &many), Err(TOO_MANY_KEYS));
        assert_eq!(w(&mut a, &many[..16]), Ok(()));
        let v4000 = "v".repeat(4000);
        let big: Vec<(&str, &str)> = keys[..5]
            .iter()
            .map(|k| (k.as_str(), v4000.as_str()))
            .collect();
        assert_eq!(w(&mut a, &big), Err(TOTAL_TOO_LARGE));
        assert_eq!(w(&mut a, &big[..4]), Ok(()));
        assert_eq!(w(&mut a, &[("", "v")]), Err(INVALID_PARAMETER));
        assert_eq!((VALUE_TOO_LONG, TOO_MANY_KEYS), (10046, 10047));
        assert_eq!(
            a.delete_attrs("g", &["k0", "nope"], None),
            Err(KEY_NOT_FOUND)
        );
        assert_eq!(a.delete_attrs("g", &["k0"], None), Ok(()));
        a.create_group("c", GroupType::Community).unwrap();
        assert_eq!(a.clear_attrs("c", None), Err(NO_PERMISSION));
        assert_eq!(a.clear_attrs("g", None), Ok(()));
    }

    #[test]
    fn paging_uses_large_cursors() {
        let mut a = app();
        for i in 0..25 {
            let t = if i % 2 == 0 {
                GroupType::Public
            } else {
                GroupType::Private
            };
            a.create_group(&format!("g{i}"), t).unwrap();
        }
        a.destroy_group("g3").unwrap();
        let (total, page, next) = a.list_groups(10, 0, None).unwrap();
        assert_eq!((total, page.len()), (24, 10));
        assert!(next > u32::MAX as u64);
        let (_, page2, next2) = a.list_groups(10, next, None).unwrap();
        assert_eq!(page2[0], "g11");
        let (_, page3, next3) = a.list_groups(10, next2, None).unwrap();
        assert_eq!((page3.len(), next3), (4, 0));
        let (total, public, _) = a.list_groups(100, 0, Some(GroupType::Public)).unwrap();
        assert_eq!((total, public.len()), (13, 13));
        assert_eq!(a.list_groups(10, 5, None), Err(INVALID_PARAMETER));
    }
}
