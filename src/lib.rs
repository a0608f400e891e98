//! `timattr_exporter`: a Prometheus exporter for Tencent Cloud Chat group custom attributes.
//!
//! The binary (`src/main.rs`) only parses flags and wires these modules together
//! (`docs/architecture.md` has the arrows between them):
//! - [`config`]: the YAML config, parsed strictly and validated once into typed values.
//! - [`duration`]: the one Prometheus duration parser, for the config and the web config.
//! - [`secret`], [`usersig`]: the SecretKey newtype and TLSSigAPIv2 UserSigs.
//! - [`error_code`]: what each upstream `ErrorCode` means.
//! - [`outcome`]: how an upstream call ended, the one type for it.
//! - [`pattern`]: full-match regex lists (`ignore_keys`, `exclude_metrics`).
//! - [`client`], [`ratelimit`]: the Tencent Chat REST client, its retry policy; the quota and
//!   the list-call slots.
//! - [`schedule`], [`shard`]: when each group is due, and which replica polls it.
//! - [`snapshot`]: the value and set hashes, the snapshot kept per group, and its diff.
//! - [`store`]: the latest snapshot per group, change counts, and read-only views for rendering.
//! - [`state_file`]: the state file's format, its checked read and atomic write.
//! - [`metrics`]: every metric name and HELP text, and the `/metrics` rendering.
//! - [`http`], [`web_config`]: the HTTP server and its TLS / basic auth.
//! - [`discovery`]: listing an app's groups, and merging them with the configured ones.
//! - [`app`]: one long-lived owner per app: its limiter, lists, scheduler, polls and client.
//! - [`callback`]: Tencent's webhooks, checked and handed to the app's owner (push).
//! - [`daemon`]: starts and stops the owners; reload, the state file, shutdown.
//! - [`observe`]: the trait the client reports each attempt to.
//! - [`fake`]: a faithful fake of the Tencent Chat API, for tests, benchmarks and `--demo`.
#![forbid(unsafe_code)]

pub mod app;
pub mod auto_reload;
pub mod callback;
pub mod client;
pub mod client_tls;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod duration;
pub mod error_code;
pub mod fake;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod outcome;
pub mod pattern;
pub mod ratelimit;
pub mod region;
pub mod schedule;
pub mod secret;
pub mod shard;
pub mod shutdown;
pub mod snapshot;
pub mod state_file;
pub mod store;
pub mod usersig;
pub mod web_config;

/// The crate version, as `timattr_build_info{version}` and the landing page show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
