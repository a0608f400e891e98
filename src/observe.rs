//! The events the API client reports about each HTTP attempt, and the trait that receives them.
//!
//! The client knows nothing about Prometheus: it reports every attempt to an [`ApiObserver`],
//! which [`crate::metrics`] implements (and tests implement with a recorder).

use std::time::Duration;

use crate::outcome::Outcome;

/// The upstream calls the exporter makes; the `api` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    GetGroupAttr,
    GetAppidGroupList,
}

impl Api {
    pub const ALL: [Api; 2] = [Api::GetGroupAttr, Api::GetAppidGroupList];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::GetGroupAttr => "get_group_attr",
            Api::GetAppidGroupList => "get_appid_group_list",
        }
    }

    /// The path under the API's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Api::GetGroupAttr => "v4/group_open_attr_http_svc/get_group_attr",
            Api::GetAppidGroupList => "v4/group_open_http_svc/get_appid_group_list",
        }
    }
}

/// Receives one call per HTTP attempt (retries included), after it ends.
pub trait ApiObserver: Send + Sync + 'static {
    fn on_attempt(&self, api: Api, duration: Duration, ended: &Outcome<()>);
    /// The UserSig in use changed; `expires_at` is `TLS.time + TLS.expire` in Unix seconds.
    fn on_usersig(&self, expires_at: u64);
}

/// An observer that ignores everything, for tools and tests that do not care.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl ApiObserver for NoopObserver {
    fn on_attempt(&self, _: Api, _: Duration, _: &Outcome<()>) {}
    fn on_usersig(&self, _: u64) {}
}
