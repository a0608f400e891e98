//! Shutdown signalling, after mini-redis: one `watch` channel; every long-running task holds a
//! [`Shutdown`] and stops when it fires. A `watch` rather than a `broadcast` so that a task created
//! after the signal still sees it.
//!
//! The process's signals come in here too ([`spawn_signal_handler`]): SIGTERM and SIGINT fire the
//! [`Trigger`], SIGHUP asks for a reload (SPEC "Behaviour").

use std::io;

use futures::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::{mpsc, watch};
use tracing::info;

/// The sending side, held by whoever decides to stop (signals, tests).
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// The listening side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once shutdown has been triggered (or every trigger was dropped).
    pub async fn fired(&mut self) {
        // An error means every Trigger is gone: nobody can ask us to keep running either.
        let _ = self.0.wait_for(|&fired| fired).await;
    }

    /// Consumes the listener: for APIs that take an owned `impl Future + 'static`.
    pub async fn done(mut self) {
        self.fired().await
    }
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP and spawns the task that acts on them:
/// SIGTERM and SIGINT fire `trigger`; SIGHUP sends a reload request on `reloads`, dropped when
/// one is already waiting (the reload it waits for will read the new config anyway). Call it
/// within a tokio runtime; it fails only when the handlers cannot be installed.
pub fn spawn_signal_handler(trigger: Trigger, reloads: mpsc::Sender<()>) -> io::Result<()> {
    let signals = signal_hook_tokio::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    tokio::spawn(act_on_signals(signals, trigger, reloads));
    Ok(())
}

/// What [`spawn_signal_handler`]'s task does with each signal number, until the stream ends.
async fn act_on_signals(
    mut signals: impl Stream<Item = i32> + Unpin,
    trigger: Trigger,
    reloads: mpsc::Sender<()>,
) {
    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => {
                info!("SIGHUP: reloading the config");
                let _ = reloads.try_send(());
            }
            _ => {
                info!(signal, "stopping");
                trigger.fire();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The real signals reach the real binary in tests/binary.rs; here a stream of signal numbers
    // stands in for them, so the test process keeps its own handlers.
    #[tokio::test]
    async fn sighup_asks_for_a_reload_and_leaves_the_daemon_running() {
        let (trigger, stop) = channel();
        let (tx, mut rx) = mpsc::channel(4);
        act_on_signals(futures::stream::iter([SIGHUP, SIGHUP]), trigger, tx).await;
        assert_eq!(rx.recv().await, Some(()));
        assert_eq!(rx.recv().await, Some(()));
        assert!(!stop.is_fired());
    }

    #[tokio::test]
    async fn sigterm_and_sigint_fire_the_trigger() {
        for signal in [SIGTERM, SIGINT] {
            let (trigger, stop) = channel();
            let (tx, mut rx) = mpsc::channel(4);
            act_on_signals(futures::stream::iter([signal]), trigger, tx).await;
            assert!(stop.is_fired(), "{signal}");
            assert_eq!(rx.recv().await, None, "{signal}: no reload");
        }
    }

    #[tokio::test]
    async fn reload_requests_beyond_the_channel_are_merged() {
        let (trigger, _stop) = channel();
        let (tx, mut rx) = mpsc::channel(1);
        act_on_signals(futures::stream::iter([SIGHUP; 3]), trigger, tx).await;
        assert_eq!(rx.recv().await, Some(()));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn late_subscribers_see_the_signal() {
        let (trigger, mut early) = channel();
        assert!(!early.is_fired());
        trigger.fire();
        early.fired().await;
        let mut late = trigger.subscribe();
        assert!(late.is_fired());
        late.fired().await;
    }
}
