//! One connection, from accept to close.
//!
//! ```text
//! accept -> SO_PEERCRED -> Hello (64 KiB limit, handshake timeout) -> Welcome | Reject+close
//!        -> serve: reader loop (this task, which also answers handlers that finish at once)
//!                  + writer task (finishes what `FrameSink` writes could not, moves
//!                  drop-policy events in) + event-handler task
//!        -> close: Goodbye, requests in flight finish within the grace period, socket closed
//! ```
//!
//! Every log line of a connection carries its id and its peer's credentials (tracing span).

mod accept;
mod admission;
mod dispatch;
mod handshake;
mod session;

pub(crate) use accept::serve;

use peerwire_proto::Status;
use peerwire_proto::codec::CodecError;
use peerwire_proto::v1::Code;
use peerwire_security::exe::sender_refused;

use crate::registry::{Shared, bump};

/// A read refused because a chunk came from a process the connection does not admit
/// ([`SenderGuard`]): logged with both pids and counted as denied.
pub(super) fn sender_refused_status(shared: &Shared, e: &CodecError) -> Option<Status> {
    let CodecError::Io(e) = e else { return None };
    let refused = sender_refused(e)?;
    bump(&shared.counters.denied);
    tracing::warn!(
        conn_pid = refused.conn_pid,
        sender_pid = refused.sender_pid,
        exe = ?refused.exe,
        "access denied: {refused}"
    );
    Some(Status::new(Code::PermissionDenied, refused.to_string()))
}

pub(super) fn codec_status(e: &CodecError) -> Status {
    let code = match e {
        CodecError::FrameTooLarge { .. } => Code::FrameTooLarge,
        _ => Code::ProtocolError,
    };
    Status::new(code, e.to_string())
}
