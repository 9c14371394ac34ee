//! Client errors: what the server said, what the connection did, and local misuse, kept apart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerwire_proto::Status;
use peerwire_proto::codec::CodecError;
use peerwire_proto::handshake::HandshakeError;
use peerwire_proto::v1::Code;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The process listening on the socket is not the expected server; nothing was sent to it.
    #[error("refusing to talk to the server on {path}: {reason}")]
    UntrustedServer {
        /// The socket path.
        path: PathBuf,
        /// Who is there and what was expected.
        reason: String,
    },
    /// The TLS session could not be set up: the server's certificate is not the pinned one,
    /// the server refused ours, or the TLS handshake failed otherwise.
    #[error(transparent)]
    Tls(peerwire_security::tls::TlsError),
    /// The server refused the session or answered something invalid.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server sent bytes that are not a valid frame.
    #[error("protocol error during the handshake: {0}")]
    Protocol(#[from] CodecError),
    /// The server closed the connection during the handshake.
    #[error("the server closed the connection during the handshake")]
    Closed,
    /// Connect plus handshake took longer than the connect timeout.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
}

/// Why a call, notification or subscription failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server answered with a non-OK status, or the call was refused locally for the same
    /// reason the server would refuse it (for example a namespace version mismatch), or the
    /// deadline passed (`DEADLINE_EXCEEDED`).
    #[error(transparent)]
    Status(Status),
    /// There is no connection, or it was lost before the answer came.
    #[error("disconnected: {0}")]
    Disconnected(#[source] DisconnectReason),
    /// The request is larger than the session's frame limit.
    #[error("message of {len} bytes exceeds the session's max_frame_size of {max} bytes")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// Limit.
        max: u32,
    },
    /// The response payload is not the expected message type.
    #[error("response does not decode: {0}")]
    Decode(prost::DecodeError),
}

/// Why there is no connection for a call, or why it was lost (see [`CallError::Disconnected`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client has no connection (closed, or not yet reconnected).
    #[error("not connected")]
    NotConnected,
    /// The connection was closed on this side, or closed before the answer came.
    #[error("connection closed")]
    Closed,
    /// The server said `Goodbye`: it is closing the session; no new call is sent.
    #[error("the server is closing the session: {0}")]
    Closing(Status),
    /// The server closed the session after saying `Goodbye` with this status.
    #[error("the server closed the session: {0}")]
    ServerClosedSession(Status),
    /// The server closed the connection without a `Goodbye`.
    #[error("the server closed the connection")]
    ServerClosed,
    /// The server sent bytes that are not a valid frame.
    #[error("bad frame from the server: {0}")]
    BadFrame(#[source] Arc<CodecError>),
    /// The server sent a frame it must not send after the handshake.
    #[error("unexpected {0} frame from the server")]
    UnexpectedFrame(&'static str),
    /// Nothing came from the server for longer than the session's idle timeout.
    #[error("nothing received from the server for {0:?}")]
    Idle(Duration),
}

impl CallError {
    /// The status code that best describes the error.
    pub fn code(&self) -> Code {
        match self {
            Self::Status(s) => s.code,
            Self::Disconnected(_) => Code::Unavailable,
            Self::TooLarge { .. } => Code::ResourceExhausted,
            Self::Decode(_) => Code::Internal,
        }
    }
}
