//! Admission: a connection's place in the connection limits, from admission to close.

use std::sync::Arc;

use peerwire_proto::Status;
use peerwire_proto::v1::Code;
use tokio_util::sync::CancellationToken;

use crate::registry::Shared;

/// A connection's place in the connection limits, from admission to close.
///
/// A uid at its `max_unauthenticated_per_uid` limit does not lock itself out: the newcomer
/// evicts that uid's oldest connection still in its handshake (which is refused
/// `RESOURCE_EXHAUSTED`), so silent connections cannot keep out a client that completes its
/// handshake promptly.
pub(super) struct Admission {
    pub(super) shared: Arc<Shared>,
    pub(super) uid: u32,
    pub(super) id: u64,
    /// Cancelled when a newer connection of the same uid evicts this one from its handshake.
    pub(super) evicted: CancellationToken,
}

impl Admission {
    /// Takes a place, or says which limit is full (and its value).
    pub(super) fn new(shared: &Arc<Shared>, uid: u32, id: u64) -> Result<Self, Status> {
        let l = &shared.limits;
        let mut a = shared.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let full = |what: &str, limit: usize| {
            Err(Status::new(
                Code::ResourceExhausted,
                format!("{what} limit of {limit} reached"),
            ))
        };
        if a.total >= l.max_connections {
            return full("max_connections", l.max_connections);
        }
        let (open, handshaking) = a
            .per_uid
            .get(&uid)
            .map_or((0, 0), |u| (u.open, u.handshaking.len()));
        if open >= l.max_connections_per_uid {
            return full(
                &format!("max_connections_per_uid (uid {uid})"),
                l.max_connections_per_uid,
            );
        }
        let at_uid_limit = handshaking >= l.max_unauthenticated_per_uid;
        if !at_uid_limit && a.unauthenticated >= l.max_unauthenticated {
            return full("max_unauthenticated", l.max_unauthenticated);
        }
        let evicted = CancellationToken::new();
        let entry = a.per_uid.entry(uid).or_default();
        if at_uid_limit {
            // The uid's oldest connection still in its handshake makes room.
            if let Some((old, token)) = entry.handshaking.pop_front() {
                tracing::info!(
                    evicted = old,
                    "max_unauthenticated_per_uid limit of {} reached: evicting this uid's oldest connection still in its handshake",
                    l.max_unauthenticated_per_uid
                );
                token.cancel();
                a.unauthenticated = a.unauthenticated.saturating_sub(1);
            }
        }
        let entry = a.per_uid.entry(uid).or_default();
        entry.open += 1;
        entry.handshaking.push_back((id, evicted.clone()));
        a.total += 1;
        a.unauthenticated += 1;
        Ok(Self {
            shared: shared.clone(),
            uid,
            id,
            evicted,
        })
    }

    /// Takes the connection out of the handshaking ones. True if it was still there.
    pub(super) fn leave_handshake(&self, a: &mut crate::registry::Admitted) -> bool {
        let Some(u) = a.per_uid.get_mut(&self.uid) else {
            return false;
        };
        let Some(i) = u.handshaking.iter().position(|(id, _)| *id == self.id) else {
            return false;
        };
        u.handshaking.remove(i);
        a.unauthenticated = a.unauthenticated.saturating_sub(1);
        true
    }

    /// The handshake succeeded: no longer counted as unauthenticated. False if the connection
    /// was evicted meanwhile (it must then be refused).
    pub(super) fn authenticated(&mut self) -> bool {
        let mut a = self
            .shared
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.leave_handshake(&mut a)
    }

    /// The status an evicted connection is refused with.
    pub(super) fn eviction(&self) -> Status {
        let limit = self.shared.limits.max_unauthenticated_per_uid;
        Status::new(
            Code::ResourceExhausted,
            format!(
                "max_unauthenticated_per_uid (uid {}) limit of {limit} reached: this connection was the oldest still in its handshake, and a newer one took its place",
                self.uid
            ),
        )
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut a = self
            .shared
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.leave_handshake(&mut a);
        a.total = a.total.saturating_sub(1);
        let gone = match a.per_uid.get_mut(&self.uid) {
            Some(u) => {
                u.open = u.open.saturating_sub(1);
                u.open == 0
            }
            None => false,
        };
        if gone {
            a.per_uid.remove(&self.uid);
        }
    }
}
