//! The server's shared state: open connections, their subscriptions and outbound queues, and
//! statistics. The lock is a `std::sync::Mutex` held only for map updates and non-blocking
//! `try_send`s, never across an `.await` (invariant, enforced by clippy's `await_holding_lock`).

use bytes::Bytes;
use peerwire_transport::plain::PlainWriter;
use peerwire_transport::{FrameSink, SinkError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use peerwire_proto::handshake::ServerOffer;
use peerwire_proto::v1::{Event, Frame, frame::Kind};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::router::{ConnInfo, ConnectionId, Router};

/// A connection's outbound side: the sending task writes its frame itself (through TLS, if the
/// connection has it), unless earlier bytes are still waiting for the socket (then the writer
/// task finishes them). Bounded in bytes and frames; never blocks.
#[derive(Clone)]
pub(crate) struct Outbox(pub(crate) Arc<FrameSink<PlainWriter>>);

/// Why a frame could not be queued.
pub(crate) enum Full {
    /// The queue holds its maximum number of frames, or of bytes.
    Queue,
    /// The connection is closing.
    Closed,
}

impl Outbox {
    /// See [`FrameSink::cork`].
    pub(crate) fn cork(&self) {
        self.0.cork();
    }

    /// See [`FrameSink::uncork`].
    pub(crate) fn uncork(&self) {
        self.0.uncork();
    }

    /// Queues `frame`; a frame is always accepted into an empty queue, whatever its size.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), Full> {
        self.0.try_send(&frame).map_err(|e| match e {
            SinkError::Full => Full::Queue,
            // Frames are checked against the session's limit before they get here.
            _ => Full::Closed,
        })
    }
}

pub(crate) struct ConnEntry {
    pub(crate) info: Arc<ConnInfo>,
    pub(crate) topics: HashSet<String>,
    /// What a push to the connection needs: taken out of the map (an `Arc`), so that events
    /// are encoded, sealed and written after the map's lock is released.
    pub(crate) out: Arc<PushTarget>,
}

/// A connection as a destination of events.
pub(crate) struct PushTarget {
    pub(crate) info: Arc<ConnInfo>,
    pub(crate) tx: Outbox,
    /// The last `seq` per topic. Its lock is held while an event is numbered and queued, so a
    /// connection's events are queued in `seq` order even when several tasks push at once.
    pub(crate) seq: Mutex<HashMap<String, u64>>,
    /// Events of topics with a drop policy.
    pub(crate) events: Arc<crate::outbound::EventQueue>,
    /// Cancelled to make the connection task close the connection (slow consumer).
    pub(crate) kick: CancellationToken,
}

/// Counters the server keeps; read them with [`ServerHandle::stats`](crate::ServerHandle::stats).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted by the listener, before any check.
    pub connections: u64,
    /// Connections admitted by the access policy.
    pub accepted: u64,
    /// Connections refused by the access policy.
    pub denied: u64,
    /// Hellos refused for a missing or invalid session token.
    pub token_failures: u64,
    /// TLS handshakes that failed or timed out (wrong or missing certificate, old TLS...).
    pub tls_failures: u64,
    /// Handshakes that ended in `Welcome`.
    pub sessions: u64,
    /// Connections refused during the handshake (`Reject`, timeout, bad frames).
    pub handshake_failures: u64,
    /// Connections open now.
    pub open: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests that ended past their deadline.
    pub deadline_exceeded: u64,
    /// Handlers that panicked.
    pub handler_panics: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// Events queued for delivery.
    pub events_sent: u64,
    /// Connections closed because their outbound queue was full.
    pub slow_consumers: u64,
    /// Events dropped or replaced by a topic's `DropOldest`/`KeepLatest` policy.
    pub events_dropped: u64,
    /// Connections refused for a connection limit (total, per uid, unauthenticated).
    pub limit_refusals: u64,
    /// Requests refused for a per-connection limit (max_in_flight, max_subscriptions, a response
    /// over max_frame_size).
    pub limit_hits: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
    pub(crate) token_failures: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) deadline_exceeded: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) limit_refusals: AtomicU64,
    pub(crate) limit_hits: AtomicU64,
    /// Drops of closed connections (live ones are summed from their queues).
    pub(crate) events_dropped: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Default)]
pub(crate) struct Admitted {
    pub(crate) total: usize,
    pub(crate) unauthenticated: usize,
    pub(crate) per_uid: HashMap<u32, PerUid>,
}

/// One uid's admitted connections.
#[derive(Default)]
pub(crate) struct PerUid {
    /// Open connections.
    pub(crate) open: usize,
    /// Of which still in their handshake, oldest first, each with its eviction token.
    pub(crate) handshaking: std::collections::VecDeque<(u64, CancellationToken)>,
}

pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) limits: Limits,
    pub(crate) offer: ServerOffer,
    pub(crate) router: Router,
    pub(crate) policy: crate::AccessPolicy,
    pub(crate) topic_policies: HashMap<String, crate::SlowConsumerPolicy>,
    pub(crate) tls: Option<Arc<peerwire_security::tls::ServerTls>>,
    pub(crate) tokens: Option<Mutex<peerwire_security::token::Verifier>>,
    /// The socket path, canonical (what session tokens are bound to).
    pub(crate) socket_path: std::path::PathBuf,
    pub(crate) conns: Mutex<HashMap<ConnectionId, ConnEntry>>,
    pub(crate) next_id: AtomicU64,
    /// Admitted connections, in total, per uid, and still in their handshake.
    pub(crate) admitted: Mutex<Admitted>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) counters: Counters,
    /// Rate limit of the log lines refusals and slow consumers cause, per uid.
    pub(crate) log_limit: crate::logs::Limiter,
    /// Places for connections accepted and not yet admitted (see `fds`).
    pub(crate) pre_admission: Arc<tokio::sync::Semaphore>,
    /// Places for refused connections that linger to read their `Reject`.
    pub(crate) lingering: Arc<tokio::sync::Semaphore>,
    /// Uids the access policy keeps denying.
    pub(crate) penalty: crate::fds::Penalty,
}

/// Why an event could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The topic is not a valid `namespace.Name`.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// No open connection has this id.
    #[error("no open connection {0}")]
    NoSuchConnection(ConnectionId),
    /// The connection is not subscribed to the topic.
    #[error("connection {conn} is not subscribed to {topic}")]
    NotSubscribed {
        /// The connection.
        conn: ConnectionId,
        /// The topic.
        topic: String,
    },
    /// The event is larger than the connection's frame limit.
    #[error("event of {len} bytes exceeds the connection's frame limit of {max} bytes")]
    TooLarge {
        /// Encoded frame size.
        len: usize,
        /// The connection's limit.
        max: u32,
    },
    /// The connection's outbound queue was full: it is being closed as a slow consumer.
    #[error("connection {0} is not reading its events and is being closed")]
    SlowConsumer(ConnectionId),
}

impl Stats {
    /// The counters as sent by `peerwire.Stats`.
    pub fn to_wire(&self) -> peerwire_proto::v1::ServerStats {
        peerwire_proto::v1::ServerStats {
            connections: self.connections,
            accepted: self.accepted,
            denied: self.denied,
            limit_refusals: self.limit_refusals,
            limit_hits: self.limit_hits,
            tls_failures: self.tls_failures,
            token_failures: self.token_failures,
            handshake_failures: self.handshake_failures,
            sessions: self.sessions,
            open: self.open,
            requests: self.requests,
            deadline_exceeded: self.deadline_exceeded,
            handler_panics: self.handler_panics,
            protocol_errors: self.protocol_errors,
            events_sent: self.events_sent,
            slow_consumers: self.slow_consumers,
            events_dropped: self.events_dropped,
        }
    }
}

impl Shared {
    pub(crate) fn conns(&self) -> MutexGuard<'_, HashMap<ConnectionId, ConnEntry>> {
        // A poisoned lock only means a thread panicked while holding it; the map itself is
        // always left consistent (single inserts/removes), so keep serving.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // One lock, released before the counters are read (std mutexes are not reentrant).
        let (open, live_dropped) = {
            let conns = self.conns();
            let dropped = conns
                .values()
                .map(|e| e.out.events.dropped.load(Ordering::Relaxed))
                .sum::<u64>();
            (conns.len() as u64, dropped)
        };
        Stats {
            connections: get(&c.connections),
            accepted: get(&c.accepted),
            denied: get(&c.denied),
            sessions: get(&c.sessions),
            tls_failures: get(&c.tls_failures),
            token_failures: get(&c.token_failures),
            handshake_failures: get(&c.handshake_failures),
            open,
            requests: get(&c.requests),
            deadline_exceeded: get(&c.deadline_exceeded),
            handler_panics: get(&c.handler_panics),
            protocol_errors: get(&c.protocol_errors),
            events_sent: get(&c.events_sent),
            slow_consumers: get(&c.slow_consumers),
            events_dropped: live_dropped + get(&c.events_dropped),
            limit_refusals: get(&c.limit_refusals),
            limit_hits: get(&c.limit_hits),
        }
    }

    /// Queues an event on one connection. Called without the map's lock: never blocks.
    fn push_one(&self, target: &PushTarget, topic: &str, payload: &Bytes) -> Result<(), PushError> {
        let mut seqs = target.seq.lock().unwrap_or_else(|e| e.into_inner());
        let seq = seqs.entry(topic.to_owned()).or_insert(0);
        let frame = Frame::new(Kind::Event(Event {
            topic: topic.to_owned(),
            seq: *seq + 1,
            payload: payload.clone(),
        }));
        let max = target.info.session.max_frame_size();
        let len = prost::Message::encoded_len(&frame);
        if len > max as usize {
            return Err(PushError::TooLarge { len, max });
        }
        let policy = self.topic_policies.get(topic).copied().unwrap_or_default();
        if policy != crate::SlowConsumerPolicy::Disconnect {
            *seq += 1;
            bump(&self.counters.events_sent);
            let name: Arc<str> = topic.into();
            target.events.push(&name, frame, policy);
            return Ok(());
        }
        crate::outbound::cork_for_batch(target.info.id, &target.tx);
        match target.tx.push(frame) {
            Ok(()) => {
                *seq += 1;
                bump(&self.counters.events_sent);
                Ok(())
            }
            Err(Full::Queue) => {
                drop(seqs);
                self.slow_consumer(target);
                Err(PushError::SlowConsumer(target.info.id))
            }
            // The connection is closing; it is about to leave the map.
            Err(Full::Closed) => Err(PushError::NoSuchConnection(target.info.id)),
        }
    }

    /// Closes `target` as a slow consumer (once): counted, logged, its task told to close.
    fn slow_consumer(&self, target: &PushTarget) {
        if !target.kick.is_cancelled() {
            bump(&self.counters.slow_consumers);
            self.log_limit.log(target.info.peer.uid, || {
                tracing::warn!(
                    conn = target.info.id,
                    peer = %target.info.peer,
                    queue = self.limits.outbound_queue,
                    queue_bytes = self.limits.outbound_queue_bytes,
                    "outbound queue full: closing slow consumer"
                );
            });
            target.kick.cancel();
        }
    }

    /// Queues an event on every subscriber of `topic`. The map's lock is held only to collect
    /// the subscribers; encoding, sealing (TLS) and writing happen after it is released.
    pub(crate) fn broadcast(&self, topic: &str, payload: &Bytes) -> Result<usize, PushError> {
        peerwire_proto::names::namespace_of(topic)
            .map_err(|e| PushError::InvalidTopic(e.to_string()))?;
        let targets: Vec<Arc<PushTarget>> = self
            .conns()
            .values()
            .filter(|e| e.topics.contains(topic))
            .map(|e| e.out.clone())
            .collect();
        let delivered = targets
            .iter()
            .filter(|t| self.push_one(t, topic, payload).is_ok())
            .count();
        Ok(delivered)
    }

    pub(crate) fn send_event(
        &self,
        conn: ConnectionId,
        topic: &str,
        payload: &Bytes,
    ) -> Result<(), PushError> {
        peerwire_proto::names::namespace_of(topic)
            .map_err(|e| PushError::InvalidTopic(e.to_string()))?;
        let target = {
            let conns = self.conns();
            let entry = conns.get(&conn).ok_or(PushError::NoSuchConnection(conn))?;
            if !entry.topics.contains(topic) {
                return Err(PushError::NotSubscribed {
                    conn,
                    topic: topic.to_owned(),
                });
            }
            entry.out.clone()
        };
        self.push_one(&target, topic, payload)
    }
}
