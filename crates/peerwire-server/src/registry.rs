//! The server's shared state: open connections, their subscriptions and outbound queues, and
//! statistics. The lock is a `std::sync::Mutex` held only for map updates and non-blocking
//! `try_send`s, never across an `.await` (invariant, enforced by clippy's `await_holding_lock`).

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use peerwire_proto::handshake::ServerOffer;
use peerwire_proto::v1::{Event, Frame, frame::Kind};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::outbound::Outbox;
use crate::router::{ConnInfo, ConnectionId, Router};
use peerwire_proto::codec::CodecError;
use peerwire_transport::SinkError;

/// A cheap hash for maps whose keys the server chooses, never a peer (connection ids, tokio's
/// task ids, the topics the server pushes, the method and topic names it registered: a peer's
/// names are only looked up in these, never inserted): SipHash's resistance to chosen collisions
/// buys nothing there, and it cost about a fifth of a broadcast's instructions per subscriber
/// (callgrind). rustc-hash's Fx hash (the compiler's own; one multiply per 8 bytes, where FNV-1a
/// needs one per byte). Maps keyed by what a peer sends keep std's SipHash.
pub(crate) type FastHash = rustc_hash::FxBuildHasher;

pub(crate) struct ConnEntry {
    pub(crate) info: Arc<ConnInfo>,
    pub(crate) topics: HashSet<String>,
    /// What a push to the connection needs: taken out of the map (an `Arc`), so that events
    /// are encoded, sealed and written after the map's lock is released.
    pub(crate) out: Arc<PushTarget>,
}

/// An event on its way to its subscribers: its frame is built once per push (one copy of the
/// topic's name per event, not one per subscriber), its `seq` set for each connection.
struct Outgoing<'a> {
    topic: &'a str,
    frame: Frame,
    policy: crate::SlowConsumerPolicy,
    /// The topic's name as the event queues of drop-policy topics keep it (made once, when
    /// first needed).
    name: Option<Arc<str>>,
}

impl<'a> Outgoing<'a> {
    fn new(topic: &'a str, payload: &Bytes, policy: crate::SlowConsumerPolicy) -> Self {
        let frame = Frame::new(Kind::Event(Event {
            topic: topic.to_owned(),
            seq: 0,
            payload: payload.clone(),
        }));
        Self {
            topic,
            frame,
            policy,
            name: None,
        }
    }
}

/// A connection as a destination of events.
pub(crate) struct PushTarget {
    pub(crate) info: Arc<ConnInfo>,
    pub(crate) tx: Outbox,
    /// The last `seq` per topic. Its lock is held while an event is numbered and queued, so a
    /// connection's events are queued in `seq` order even when several tasks push at once.
    pub(crate) seq: Mutex<HashMap<String, u64, FastHash>>,
    /// Events of topics with a drop policy.
    pub(crate) events: Arc<crate::outbound::EventQueue>,
    /// Cancelled to make the connection task close the connection (slow consumer).
    pub(crate) kick: CancellationToken,
    /// The handler-poll batch that last corked `tx` (see `outbound::cork_for_batch`); 0: none.
    pub(crate) corked_in: std::sync::atomic::AtomicU64,
}

/// The one list of the server's counters: [`Stats`], the atomics behind it (`Counters`), their
/// snapshot, the wire message (`ServerStats`, whose fields have the same names) both ways, and
/// the names and values in this order (what `peerwire stats` prints) all come from it. A
/// `counter` is an atomic bumped as things happen; a `gauge` is computed when read
/// ([`Shared::stats`]).
macro_rules! server_stats {
    ($($(#[doc = $doc:literal])* $name:ident: $kind:ident,)*) => {
        /// Counters the server keeps; read them with
        /// [`ServerHandle::stats`](crate::ServerHandle::stats).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// The atomics behind [`Stats`] (a gauge has none).
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: server_stats!(@cell $kind),)*
        }

        impl Counters {
            /// The counters as read now; gauges are 0.
            fn snapshot(&self) -> Stats {
                Stats {
                    $($name: server_stats!(@read $kind, self.$name),)*
                }
            }
        }

        impl Stats {
            /// The counters as sent by `peerwire.Stats`.
            pub fn to_wire(&self) -> peerwire_proto::v1::ServerStats {
                peerwire_proto::v1::ServerStats {
                    $($name: self.$name,)*
                }
            }

            /// The counters a `peerwire.Stats` response carries.
            pub fn from_wire(wire: &peerwire_proto::v1::ServerStats) -> Self {
                Self {
                    $($name: wire.$name,)*
                }
            }

            /// Each counter's name (as in `ServerStats`) and value, in a fixed order.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
    (@cell counter) => { AtomicU64 };
    (@cell gauge) => { () };
    (@read counter, $cell:expr) => { $cell.load(Ordering::Relaxed) };
    (@read gauge, $cell:expr) => {{
        let () = $cell;
        0
    }};
}

server_stats! {
    /// Connections accepted by the listener, before any check.
    connections: counter,
    /// Connections admitted by the access policy.
    accepted: counter,
    /// Connections refused by the access policy.
    denied: counter,
    /// Connections refused for a connection limit (total, per uid, unauthenticated).
    limit_refusals: counter,
    /// Requests refused for a per-connection limit (max_in_flight, max_subscriptions, a response
    /// over max_frame_size).
    limit_hits: counter,
    /// TLS handshakes that failed or timed out (wrong or missing certificate, old TLS...).
    tls_failures: counter,
    /// Hellos refused for a missing or invalid session token.
    token_failures: counter,
    /// Connections refused during the handshake (`Reject`, timeout, bad frames).
    handshake_failures: counter,
    /// Handshakes that ended in `Welcome`.
    sessions: counter,
    /// Connections open now.
    open: gauge,
    /// Requests received.
    requests: counter,
    /// Requests that ended past their deadline.
    deadline_exceeded: counter,
    /// Handlers that panicked.
    handler_panics: counter,
    /// Connections closed for breaking the protocol.
    protocol_errors: counter,
    /// Events queued for delivery.
    events_sent: counter,
    /// Connections closed because their outbound queue was full.
    slow_consumers: counter,
    /// Events dropped or replaced by a topic's `DropOldest`/`KeepLatest` policy (the atomic
    /// counts those of closed connections; live ones are summed from their queues).
    events_dropped: counter,
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
    /// The subscribers of each topic (what `conns`' entries' `topics` say, indexed by topic:
    /// a broadcast looks its topic up once instead of in every open connection's set). Changed
    /// only with `conns`' lock held (taken first), so the two agree; read alone by broadcasts.
    /// SipHash: the topics are the names peers subscribed to.
    pub(crate) subscribers: Mutex<HashMap<String, Vec<Arc<PushTarget>>>>,
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

/// Takes connection `id` out of `topic`'s subscribers (and the topic out of the index when it
/// has none left).
fn unindex(index: &mut HashMap<String, Vec<Arc<PushTarget>>>, topic: &str, id: ConnectionId) {
    if let Some(list) = index.get_mut(topic) {
        list.retain(|t| t.info.id != id);
        if list.is_empty() {
            index.remove(topic);
        }
    }
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

impl Shared {
    pub(crate) fn conns(&self) -> MutexGuard<'_, HashMap<ConnectionId, ConnEntry>> {
        // A poisoned lock only means a thread panicked while holding it; the map itself is
        // always left consistent (single inserts/removes), so keep serving.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribers(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<PushTarget>>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes `entry`'s connection to `topics` (called with `conns`' lock held).
    pub(crate) fn subscribe(&self, entry: &mut ConnEntry, topics: Vec<String>) {
        let mut index = self.subscribers();
        for topic in topics {
            if entry.topics.contains(&topic) {
                continue;
            }
            match index.get_mut(&topic) {
                Some(list) => list.push(entry.out.clone()),
                None => {
                    index.insert(topic.clone(), vec![entry.out.clone()]);
                }
            }
            entry.topics.insert(topic);
        }
    }

    /// Unsubscribes `entry`'s connection from `topics` (called with `conns`' lock held).
    pub(crate) fn unsubscribe(&self, entry: &mut ConnEntry, topics: &[String]) {
        let mut index = self.subscribers();
        for topic in topics {
            if entry.topics.remove(topic) {
                unindex(&mut index, topic, entry.info.id);
            }
        }
    }

    /// Unregisters a closing connection: out of `conns` and of the subscribers' index.
    pub(crate) fn unregister(&self, id: ConnectionId) {
        let mut conns = self.conns();
        if let Some(entry) = conns.remove(&id) {
            let mut index = self.subscribers();
            for topic in &entry.topics {
                unindex(&mut index, topic, id);
            }
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        // One lock, released before the counters are read (std mutexes are not reentrant).
        let (open, live_dropped) = {
            let conns = self.conns();
            let dropped = conns
                .values()
                .map(|e| e.out.events.dropped.load(Ordering::Relaxed))
                .sum::<u64>();
            (conns.len() as u64, dropped)
        };
        let mut stats = self.counters.snapshot();
        stats.open = open;
        stats.events_dropped += live_dropped;
        stats
    }

    /// The slow-consumer policy of `topic` (looked up once per push, not per subscriber).
    fn policy(&self, topic: &str) -> crate::SlowConsumerPolicy {
        if self.topic_policies.is_empty() {
            return crate::SlowConsumerPolicy::default();
        }
        self.topic_policies.get(topic).copied().unwrap_or_default()
    }

    /// Queues `ev` on one connection, numbered for it. Called without the map's lock: never
    /// blocks.
    fn push_one(
        &self,
        target: &PushTarget,
        ev: &mut Outgoing<'_>,
        batch: Option<u64>,
    ) -> Result<(), PushError> {
        let mut seqs = target.seq.lock().unwrap_or_else(|e| e.into_inner());
        // Numbered with one look-up (the topic's name is copied into the map once, not on every
        // event); a failure below gives the number back, under the same lock.
        let seq = match seqs.get_mut(ev.topic) {
            Some(seq) => {
                *seq += 1;
                *seq
            }
            None => {
                seqs.insert(ev.topic.to_owned(), 1);
                1
            }
        };
        if let Some(Kind::Event(e)) = &mut ev.frame.kind {
            e.seq = seq;
        }
        let pushed = if ev.policy != crate::SlowConsumerPolicy::Disconnect {
            let max = target.info.session.max_frame_size();
            let len = prost::Message::encoded_len(&ev.frame);
            if len > max as usize {
                Err(PushError::TooLarge { len, max })
            } else {
                let name = ev.name.get_or_insert_with(|| ev.topic.into());
                target.events.push(name, ev.frame.clone(), len, ev.policy);
                Ok(())
            }
        } else {
            crate::outbound::cork_for_batch(batch, target);
            // The sink checks the frame against the session's limit as it encodes it (its codec
            // has the session's `max_frame_size`): one encoding pass, not a size pass first.
            target.tx.send(&ev.frame).map_err(|e| match e {
                SinkError::Full => PushError::SlowConsumer(target.info.id),
                SinkError::Codec(CodecError::OutgoingTooLarge { len, max }) => {
                    PushError::TooLarge { len, max }
                }
                // The connection is closing; it is about to leave the map.
                _ => PushError::NoSuchConnection(target.info.id),
            })
        };
        match pushed {
            Ok(()) => bump(&self.counters.events_sent),
            Err(_) => {
                if let Some(seq) = seqs.get_mut(ev.topic) {
                    *seq -= 1;
                }
            }
        }
        drop(seqs);
        if let Err(PushError::SlowConsumer(_)) = pushed {
            self.slow_consumer(target);
        }
        pushed
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
        let targets: Vec<Arc<PushTarget>> = match self.subscribers().get(topic) {
            Some(list) => list.clone(),
            None => return Ok(0),
        };
        let mut ev = Outgoing::new(topic, payload, self.policy(topic));
        let batch = crate::outbound::current_batch();
        let delivered = targets
            .iter()
            .filter(|t| self.push_one(t, &mut ev, batch).is_ok())
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
        self.push_one(
            &target,
            &mut Outgoing::new(topic, payload, self.policy(topic)),
            crate::outbound::current_batch(),
        )
    }
}
