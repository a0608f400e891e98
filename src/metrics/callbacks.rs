//! `timattr_callbacks_total` and `timattr_callback_rejections_total` (SPEC "Callbacks").

use std::sync::Arc;

use prometheus::{IntCounterVec, Opts, Registry};

use super::Family;
use crate::callback::{CallbackObserver, Command, Refusal};

pub const CALLBACKS: Family = (
    "timattr_callbacks_total",
    "counter",
    "Callbacks (webhooks) from Tencent Chat accepted, by command (other: commands the exporter does not act on).",
);
pub const CALLBACK_REJECTIONS: Family = (
    "timattr_callback_rejections_total",
    "counter",
    "Callbacks refused, by reason: signature (Sign wrong or missing), stale (RequestTime over 300 s from now), unknown_app (SdkAppid not configured), bad_request (not JSON, no GroupId, or over 1 MiB).",
);

/// The two families; rejections exist at 0 for every reason from the start.
pub struct CallbackMetrics {
    accepted: IntCounterVec,
    refused: IntCounterVec,
}

impl CallbackMetrics {
    pub fn register(registry: &Registry) -> Arc<CallbackMetrics> {
        let accepted = IntCounterVec::new(
            Opts::new(CALLBACKS.0, CALLBACKS.2),
            &["sdkappid", "command"],
        )
        .expect("valid metric definition");
        let refused = IntCounterVec::new(
            Opts::new(CALLBACK_REJECTIONS.0, CALLBACK_REJECTIONS.2),
            &["reason"],
        )
        .expect("valid metric definition");
        for reason in Refusal::ALL {
            refused.with_label_values(&[reason.as_str()]);
        }
        for c in [&accepted, &refused] {
            registry
                .register(Box::new(c.clone()))
                .expect("each family is registered once");
        }
        Arc::new(CallbackMetrics { accepted, refused })
    }

    /// Makes an app's accepted-callback series exist at 0 (known series start at 0).
    pub fn add_app(&self, sdkappid: u64) {
        let id = sdkappid.to_string();
        for command in Command::ALL {
            self.accepted.with_label_values(&[&id, command.as_str()]);
        }
    }

    pub fn remove_app(&self, sdkappid: u64) {
        let id = sdkappid.to_string();
        for command in Command::ALL {
            let _ = self.accepted.remove_label_values(&[&id, command.as_str()]);
        }
    }
}

impl CallbackObserver for CallbackMetrics {
    fn accepted(&self, sdkappid: u64, command: Command) {
        self.accepted
            .with_label_values(&[&sdkappid.to_string(), command.as_str()])
            .inc();
    }

    fn refused(&self, reason: Refusal) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }
}
