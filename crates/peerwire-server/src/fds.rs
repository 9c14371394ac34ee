//! The server's descriptor budget: no peer, admitted or not, can make it run out of file
//! descriptors and so lock others out.
//!
//! - Every descriptor a connection can hold is bounded: an admitted connection holds
//!   [`PER_CONNECTION`] (its socket and the duplicate its writer uses), up to `max_connections`;
//!   a connection not yet admitted holds one, up to [`PRE_ADMISSION`] at once (the accept loop
//!   waits for a place; meanwhile the kernel's backlog holds the rest); a refused one lingers
//!   (so that it can read its `Reject`) only while fewer than [`LINGERING`] do, else it is
//!   closed at once.
//! - [`ensure_nofile`] checks at start that the sum fits in `RLIMIT_NOFILE`, after raising the
//!   soft limit to the hard one, and refuses a configuration that cannot fit, naming both.
//! - [`Reserve`]: should `accept` still fail with `EMFILE` (something else in the process holds
//!   descriptors), a spare descriptor is given up to accept and close one connection, instead of
//!   sleeping while the backlog fills.
//! - [`Penalty`]: a uid whose connections the access policy keeps denying is, past a burst,
//!   closed right after `SO_PEERCRED` (no `Reject`, no linger) for the rest of the window, so it
//!   cannot out-run admitted uids.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Descriptors an admitted connection holds (its socket and its writer's duplicate).
pub(crate) const PER_CONNECTION: u64 = 2;
/// Connections accepted and not yet admitted or refused, at most, at once.
pub(crate) const PRE_ADMISSION: usize = 256;
/// Refused connections left open briefly so that they can read their `Reject`, at most.
pub(crate) const LINGERING: usize = 64;
/// How long a refused connection lingers at most.
pub(crate) const LINGER: Duration = Duration::from_millis(100);
/// Descriptors the rest of the process may use (runtime, listener, reserve, logs, files,
/// transient pidfds and registrations).
pub(crate) const BASE: u64 = 64;

/// Descriptors a server with these limits may need at once.
pub(crate) fn needed(limits: &Limits) -> u64 {
    (limits.max_connections as u64)
        .saturating_mul(PER_CONNECTION)
        .saturating_add((PRE_ADMISSION + LINGERING) as u64)
        .saturating_add(BASE)
}

/// The descriptor limit is too low for the configuration.
#[derive(Debug, thiserror::Error)]
#[error(
    "max_connections = {max_connections} needs up to {needed} file descriptors, but RLIMIT_NOFILE's hard limit is {limit} (fix: raise it, e.g. LimitNOFILE={needed} in the systemd unit, or lower max_connections)"
)]
pub struct DescriptorLimit {
    /// The configured `max_connections`.
    pub max_connections: usize,
    /// Descriptors needed.
    pub needed: u64,
    /// The hard limit.
    pub limit: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and checks that what `limits` may need
/// fits. Returns the limit now in force.
pub(crate) fn ensure_nofile(limits: &Limits) -> Result<u64, DescriptorLimit> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = needed(limits);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((needed, needed));
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        tracing::debug!("RLIMIT_NOFILE raised from {soft} to {hard}");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((soft, hard));
    if soft < needed {
        return Err(DescriptorLimit {
            max_connections: limits.max_connections,
            needed,
            limit: soft,
        });
    }
    Ok(soft)
}

/// A spare descriptor (`/dev/null`), given up to accept and close a connection when the
/// process is out of descriptors.
pub(crate) struct Reserve(Option<OwnedFd>);

impl Reserve {
    pub(crate) fn new() -> Self {
        Self(Self::open())
    }

    fn open() -> Option<OwnedFd> {
        std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
    }

    /// Frees the spare descriptor for `f` (which accepts and closes one connection), then takes
    /// it again.
    pub(crate) fn spend<T>(&mut self, f: impl FnOnce() -> T) -> T {
        drop(self.0.take());
        let out = f();
        self.0 = Self::open();
        out
    }
}

/// Identity denials of a uid within a window, past which its connections are closed at once.
pub(crate) const PENALTY_AFTER: u32 = 20;
/// The penalty's window.
pub(crate) const PENALTY_WINDOW: Duration = Duration::from_secs(1);
/// Uids tracked at once.
const MAX_TRACKED: usize = 4096;

/// Per-uid count of recent denials by the access policy's uids and groups (not executables:
/// a uid that may connect must not be locked out by another program of the same uid).
#[derive(Default)]
pub(crate) struct Penalty {
    denials: Mutex<HashMap<u32, (Instant, u32)>>,
}

impl Penalty {
    /// Records a denial of `uid` by identity.
    pub(crate) fn denied(&self, uid: u32) {
        let now = Instant::now();
        let mut d = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() >= MAX_TRACKED && !d.contains_key(&uid) {
            d.retain(|_, (start, _)| now.duration_since(*start) < PENALTY_WINDOW);
            if d.len() >= MAX_TRACKED {
                return;
            }
        }
        let (start, count) = d.entry(uid).or_insert((now, 0));
        if now.duration_since(*start) >= PENALTY_WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
    }

    /// True while `uid` is past its burst of denials in the current window.
    pub(crate) fn active(&self, uid: u32) -> bool {
        let d = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        d.get(&uid).is_some_and(|(start, count)| {
            *count >= PENALTY_AFTER && start.elapsed() < PENALTY_WINDOW
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_penalised_after_a_burst_of_denials_and_only_that_uid() {
        let p = Penalty::default();
        for _ in 0..PENALTY_AFTER - 1 {
            p.denied(7);
        }
        assert!(!p.active(7));
        p.denied(7);
        assert!(p.active(7));
        assert!(!p.active(8));
    }

    #[test]
    fn the_default_limits_fit_the_default_hard_limit_of_systemd() {
        // systemd's default hard limit is 524288; the shipped unit sets LimitNOFILE=4096.
        assert!(needed(&Limits::default()) <= 4096);
    }
}
