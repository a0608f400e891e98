//! `timattr_exporter`: a Prometheus exporter for Tencent Cloud Chat group custom attributes.
//!
//! The binary (`src/main.rs`) only parses flags and wires these modules together:
//! - [`config`]: the YAML config, parsed strictly and validated once into typed values.
//! - [`secret`], [`usersig`]: the SecretKey newtype and TLSSigAPIv2 UserSigs.
//! - [`error_code`]: what each upstream `ErrorCode` means.
//! - [`client`], [`ratelimit`]: the Tencent Chat REST client, its retry policy and quota.
//! - [`schedule`], [`shard`]: when each group is due, and which replica polls it.
//! - [`snapshot`]: the value and set hashes, the snapshot kept per group, and its diff.
//! - [`store`]: the latest snapshot per group, change counts, and read-only views for rendering.
//! - [`state_file`]: the state file's format, its checked read and atomic write.
//! - [`metrics`]: every metric name and HELP text, and the `/metrics` rendering.
//! - [`http`], [`web_config`]: the HTTP server and its TLS / basic auth.
//! - [`daemon`]: the pollers, reload and shutdown.
//! - [`fake`]: a faithful fake of the Tencent Chat API, for tests, benchmarks and `--demo`.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod error_code;
pub mod fake;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod outcome;
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
