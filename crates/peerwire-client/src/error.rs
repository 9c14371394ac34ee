//! Client errors: what the server said, what the connection did, and local misuse, kept apart.

use std::path::PathBuf;
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
    Disconnected(String),
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
