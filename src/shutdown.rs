//! Shutdown signalling, after mini-redis: one `watch` channel; every long-running task holds a
//! [`Shutdown`] and stops when it fires. A `watch` rather than a `broadcast` so that a task created
//! after the signal still sees it.

use tokio::sync::watch;

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

#[cfg(test)]
mod tests {
    use super::*;

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
