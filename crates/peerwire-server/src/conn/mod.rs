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
mod ws;

pub(crate) use accept::serve;
pub(crate) use ws::serve as serve_ws;

use peerwire_proto::Status;
use peerwire_proto::codec::CodecError;
use peerwire_proto::v1::Code;
use peerwire_security::exe::sender_refused;

use crate::registry::{Shared, bump};

use std::sync::Arc;
use std::time::Duration;

use peerwire_proto::v1::Frame;
use peerwire_transport::stream::{FrameReader, Writer};
use peerwire_transport::{FrameSink, SinkIo};

/// A connection's write side until its session starts, whatever the transport: a Unix
/// socket's ([`Writer`], plain or TLS) or a WebSocket's (a sink from the start).
pub(super) trait ConnWriter: Send {
    /// What the session's sink writes to.
    type Io: SinkIo;
    /// Sends `frame` (a refusal) as the last frame, within `timeout`, and ends the write side.
    fn send_last(
        &mut self,
        frame: &Frame,
        timeout: Duration,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// The session starts: frames up to `max_frame_size` both ways; the session's sink.
    fn into_session(
        self,
        reader: &mut FrameReader,
        max_frame_size: u32,
        max_bytes: usize,
        max_frames: usize,
    ) -> Arc<FrameSink<Self::Io>>;
}

impl ConnWriter for Writer {
    type Io = peerwire_transport::plain::PlainWriter;

    async fn send_last(&mut self, frame: &Frame, timeout: Duration) {
        Writer::send_last(self, frame, timeout).await;
    }

    fn into_session(
        self,
        reader: &mut FrameReader,
        max_frame_size: u32,
        max_bytes: usize,
        max_frames: usize,
    ) -> Arc<FrameSink<Self::Io>> {
        Writer::into_session(self, reader, max_frame_size, max_bytes, max_frames)
    }
}

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
