//! Server limits, every one with a documented default (invariant: every limit lives in config).

use std::time::Duration;

/// Longest duration any limit may be set to (24 h); `bind` refuses longer ones.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Limits the server enforces. Hitting one gives the peer a status naming the limit and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame after the handshake (a client may ask for less). Default 16 MiB. Before the
    /// handshake the limit is always [`HANDSHAKE_MAX_FRAME_SIZE`](peerwire_proto::HANDSHAKE_MAX_FRAME_SIZE) (64 KiB).
    pub max_frame_size: u32,
    /// Time a new connection has to complete its handshake. Default 5 s.
    pub handshake_timeout: Duration,
    /// Most requests in flight per connection. Default 256.
    pub max_in_flight: u32,
    /// Deadline of a request that carries none. Default 30 s.
    pub default_deadline: Duration,
    /// Longest deadline honoured; longer ones are cut to this. Default 5 min.
    pub max_deadline: Duration,
    /// The server pings a connection after this long without traffic from it. Default 15 s.
    pub keepalive_interval: Duration,
    /// The server closes a connection after this long without any frame from it. Default 60 s.
    pub idle_timeout: Duration,
    /// Frames queued for one connection before it counts as a slow consumer and is closed.
    /// Default 1024.
    pub outbound_queue: usize,
    /// Bytes of encoded frames queued for one connection before it counts as a slow consumer
    /// and is closed (one frame is always accepted into an empty queue). Default 8 MiB.
    pub outbound_queue_bytes: usize,
    /// Most open connections; further ones get `Reject(RESOURCE_EXHAUSTED)`. Default 1024.
    pub max_connections: usize,
    /// Most open connections of one uid. Default 256.
    pub max_connections_per_uid: usize,
    /// Most connections that have not finished their handshake yet, in total. Default 256.
    pub max_unauthenticated: usize,
    /// Most connections of one uid that have not finished their handshake yet. Default 32: one
    /// local user opening silent connections cannot lock others out.
    pub max_unauthenticated_per_uid: usize,
    /// Most topics one connection may subscribe to. Default 256.
    pub max_subscriptions: usize,
    /// Time in-flight requests get to finish after shutdown starts. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            outbound_queue: 1024,
            outbound_queue_bytes: 8 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_uid: 256,
            max_unauthenticated: 256,
            max_unauthenticated_per_uid: 32,
            max_subscriptions: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Limits {
    /// The limits as announced in `Welcome`.
    pub(crate) fn to_wire(self) -> peerwire_proto::v1::Limits {
        peerwire_proto::v1::Limits {
            max_frame_size: self.max_frame_size,
            max_in_flight: self.max_in_flight,
            default_deadline_ms: millis(self.default_deadline),
            max_deadline_ms: millis(self.max_deadline),
            keepalive_interval_ms: millis(self.keepalive_interval),
            idle_timeout_ms: millis(self.idle_timeout),
        }
    }

    /// The deadline for a request that asked for `deadline_ms` (0: the default).
    pub(crate) fn deadline_for(&self, deadline_ms: u32) -> Duration {
        if deadline_ms == 0 {
            self.default_deadline
        } else {
            Duration::from_millis(u64::from(deadline_ms)).min(self.max_deadline)
        }
    }
}

/// One thing wrong with a server's configuration, found by the builder's setters or by
/// [`ServerBuilder::bind`](crate::ServerBuilder::bind); see [`ServerError::Config`](crate::ServerError::Config).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// A method or topic name that is not `namespace.Name`.
    #[error("{name:?}: {source}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        #[source]
        source: peerwire_proto::names::NameError,
    },
    /// A namespace that is not a valid name, or the reserved one.
    #[error("invalid namespace {0:?}")]
    Namespace(String),
    /// A namespace declared with no version, or version 0.
    #[error("namespace {0:?} needs versions >= 1")]
    Versions(String),
    /// A handler in the reserved namespace `peerwire`.
    #[error("{0}: the namespace \"peerwire\" is reserved")]
    Reserved(String),
    /// Two handlers for one method.
    #[error("method {0} registered twice")]
    DuplicateMethod(String),
    /// Two handlers for one event topic.
    #[error("event handler {0} registered twice")]
    DuplicateEvent(String),
    /// The socket path cannot be used.
    #[error("{0}")]
    SocketPath(#[source] peerwire_security::sockpath::PathError),
    /// A limit is zero, inconsistent with another, or longer than 24 h.
    #[error(
        "limits out of range (frame size >= {min} bytes, queues and counts >= 1, idle timeout > \
         keepalive interval > 0, default deadline <= max deadline, durations <= 24 h): {limits:?}",
        min = peerwire_proto::handshake::MIN_FRAME_SIZE
    )]
    Limits {
        /// The limits given.
        limits: Box<Limits>,
    },
    /// An executable allowlist needs the kernel to name the sender of every chunk.
    #[error(
        "an executable allowlist needs the sender of every chunk checked, which this kernel \
         cannot do: {0}"
    )]
    SenderCheck(#[source] std::sync::Arc<peerwire_security::exe::ExeError>),
    /// A token verifier moves into the first server built from a builder.
    #[error("the token verifier was already used by another server")]
    VerifierUsed,
    /// The WebSocket endpoint (R16) cannot be set up.
    #[error("{0}")]
    WebSocket(#[source] crate::ws::WsConfigError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::error::Error as _;

    use crate::{ConfigProblem, Server, ServerError, Status};

    #[tokio::test]
    async fn every_problem_is_typed_and_the_first_is_the_source() {
        let b = Server::builder("/nonexistent-peerwire-test/s.sock")
            .namespace("peerwire", &[1])
            .method(
                "echo.Echo",
                |_ctx, r: String| async move { Ok::<_, Status>(r) },
            )
            .method(
                "echo.Echo",
                |_ctx, r: String| async move { Ok::<_, Status>(r) },
            )
            .method(
                "no-dot",
                |_ctx, r: String| async move { Ok::<_, Status>(r) },
            );
        let err = b.bind().unwrap_err();
        let ServerError::Config { problem, others } = &err else {
            panic!("{err}");
        };
        assert!(matches!(problem, ConfigProblem::Namespace(n) if n == "peerwire"));
        assert!(matches!(
            others.as_slice(),
            [
                ConfigProblem::DuplicateMethod(m),
                ConfigProblem::Name { name, .. },
            ] if m == "echo.Echo" && name == "no-dot"
        ));
        let source = err.source().unwrap().to_string();
        assert_eq!(source, "invalid namespace \"peerwire\"");
        assert!(
            err.to_string()
                .contains("; method echo.Echo registered twice"),
            "{err}"
        );
    }
}
