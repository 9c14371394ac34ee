//! Reconnection: the [`Backoff`] policy and the task that reconnects and re-subscribes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::conn;
use crate::{Client, ConnectError, Inner, lock};

/// Reconnection policy: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// First delay. Default 50 ms.
    pub initial: Duration,
    /// Largest delay. Default 5 s.
    pub max: Duration,
    /// Each failed attempt multiplies the delay by this. Default 2.
    pub multiplier: f64,
    /// Each delay is randomised by up to this fraction either way. Default 0.25.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::try_from_secs_f64((base * factor).max(0.0)).unwrap_or(self.max)
    }
}

impl Inner {
    /// Called by a connection's reader when the connection is gone.
    pub(crate) fn connection_lost(self: &Arc<Self>) {
        if self.closed.is_cancelled() {
            return;
        }
        let Some(backoff) = self.config.reconnect else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(reconnect(weak, backoff));
    }
}

async fn reconnect(weak: Weak<Inner>, backoff: Backoff) {
    let mut attempt = 0;
    loop {
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.is_cancelled() {
            return;
        }
        match conn::connect(&inner.config, weak.clone()).await {
            Ok(conn) => {
                let topics: Vec<String> = lock(&inner.subs).keys().cloned().collect();
                inner.install(conn);
                tracing::info!(attempt, "reconnected");
                if !topics.is_empty() {
                    let client = Client { inner };
                    if let Err(e) = client.server_subscribe(topics).await {
                        tracing::warn!("re-subscribing after reconnect failed: {e}");
                    }
                }
                return;
            }
            // Refusals will not go away by themselves: say so loudly, and keep trying (an
            // operator may fix the policy or restart the right server).
            Err(
                e @ (ConnectError::UntrustedServer { .. }
                | ConnectError::Handshake(_)
                | ConnectError::Tls(_)),
            ) => {
                tracing::warn!(attempt, "reconnect refused: {e}")
            }
            Err(e) => tracing::debug!(attempt, "reconnect failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_is_capped() {
        let b = Backoff::default();
        for attempt in 0..12 {
            let base = (0.05 * 2f64.powi(attempt as i32)).min(5.0);
            for _ in 0..50 {
                let d = b.delay(attempt).as_secs_f64();
                assert!(
                    d >= base * 0.75 - 1e-9 && d <= base * 1.25 + 1e-9,
                    "attempt {attempt}: {d}"
                );
            }
        }
        // Jitter really varies the delay (so restarted clients do not reconnect in lockstep).
        let samples: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3)).collect();
        assert!(samples.len() > 1);
        // Huge attempt counts neither overflow nor exceed the cap.
        assert!(b.delay(u32::MAX) <= Duration::from_secs_f64(5.0 * 1.25));
    }
}
