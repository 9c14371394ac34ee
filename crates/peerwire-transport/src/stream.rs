//! The set-up both ends share, from a connected socket to a session: the two sides of a plain
//! or TLS connection, the write side until the session starts ([`Writer`]), the session's
//! outbound side ([`Writer::into_session`]), and the ticker that watches a quiet connection
//! ([`Liveness`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use peerwire_proto::HANDSHAKE_MAX_FRAME_SIZE;
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::Frame;
use peerwire_security::exe::SenderGuard;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

use crate::plain::{PlainWriter, split_guarded};
use crate::tls::TlsSession;
use crate::{Codec, FrameSink, Opened};

/// The read side of a plain Unix stream, or of a TLS session (see [`Opened`]).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// Frames read from a connection's read side.
pub type FrameReader = FramedRead<BoxRead, Codec>;

/// The frames of `rd`, with the handshake's limit ([`HANDSHAKE_MAX_FRAME_SIZE`]) until
/// [`Writer::into_session`] raises it.
pub fn reader(rd: BoxRead) -> FrameReader {
    FramedRead::new(rd, Codec::new(HANDSHAKE_MAX_FRAME_SIZE))
}

/// A plain connection's two sides (with a guard, every chunk read is checked, see
/// [`split_guarded`]).
pub fn plain(
    stream: UnixStream,
    guard: Option<Arc<SenderGuard>>,
) -> std::io::Result<(BoxRead, Writer)> {
    let (rd, wr) = split_guarded(stream, guard)?;
    Ok((Box::new(rd), Writer::Plain(wr)))
}

/// A TLS connection's two sides once its TLS handshake is done: every byte from now on goes
/// through the sink made here around `session` (with the handshake's frame limit, and bounded
/// by `max_bytes` unwritten bytes and `max_frames` frames), sealed; the read side is the
/// sink's ([`Opened`]).
pub fn sealed<R: AsyncRead + Unpin + Send + 'static>(
    session: TlsSession<R>,
    wr: PlainWriter,
    max_bytes: usize,
    max_frames: usize,
) -> (BoxRead, Writer) {
    let sink = Arc::new(FrameSink::sealed(
        wr,
        FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE),
        max_bytes,
        max_frames,
        Box::new(session),
    ));
    (Box::new(Opened(sink.clone())), Writer::Sealed(sink))
}

/// A connection's write side until the session starts: a plain socket's, or the sink of a TLS
/// session (every byte after the TLS handshake goes through it, sealed).
pub enum Writer {
    /// A plain socket: frames are written directly.
    Plain(PlainWriter),
    /// A TLS session's sink.
    Sealed(Arc<FrameSink<PlainWriter>>),
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Writer::Plain",
            Self::Sealed(_) => "Writer::Sealed",
        })
    }
}

impl Writer {
    /// Writes `frame` (with the handshake's frame limit) and waits until it is written, at most
    /// `timeout`; no other task runs for this connection yet, so this one finishes the write
    /// (over TLS it runs the sink's flusher meanwhile). `BrokenPipe` if a sealed sink could not
    /// write it, `TimedOut` if a plain socket did not take it in time.
    pub async fn send(&mut self, frame: &Frame, timeout: Duration) -> std::io::Result<()> {
        match self {
            Self::Plain(wr) => {
                let mut buf = BytesMut::new();
                FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE)
                    .encode(frame, &mut buf)
                    .map_err(std::io::Error::other)?;
                tokio::time::timeout(timeout, async {
                    wr.write_all(&buf).await?;
                    wr.flush().await
                })
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
            }
            Self::Sealed(sink) => {
                let gone = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
                sink.try_send(frame).map_err(|_| gone())?;
                let written = tokio::select! {
                    biased;
                    written = sink.flushed(timeout) => written,
                    () = sink.run() => false,
                };
                if written { Ok(()) } else { Err(gone()) }
            }
        }
    }

    /// Sends `frame` as the last frame of the connection (a refusal), within `timeout`, then
    /// ends the write side: a plain socket's write direction is shut down, a sealed sink is
    /// closed (close_notify if everything was written).
    pub async fn send_last(&mut self, frame: &Frame, timeout: Duration) {
        let _ = self.send(frame, timeout).await;
        match self {
            Self::Plain(wr) => {
                let _ = tokio::time::timeout(timeout, wr.shutdown()).await;
            }
            Self::Sealed(sink) => sink.close(),
        }
    }

    /// The session starts: frames up to `max_frame_size` bytes are read from `reader` and sent
    /// through the returned sink, the connection's outbound side from now on (a plain socket's
    /// new sink bounded by `max_bytes` and `max_frames`; a TLS session's sink keeps its bounds).
    pub fn into_session(
        self,
        reader: &mut FrameReader,
        max_frame_size: u32,
        max_bytes: usize,
        max_frames: usize,
    ) -> Arc<FrameSink<PlainWriter>> {
        reader.decoder_mut().set_max_frame_size(max_frame_size);
        match self {
            Self::Plain(wr) => Arc::new(FrameSink::new(
                wr,
                FrameCodec::new(max_frame_size),
                max_bytes,
                max_frames,
            )),
            Self::Sealed(sink) => {
                sink.set_max_frame_size(max_frame_size);
                sink
            }
        }
    }
}

/// How long a connection has been quiet, looked at on a ticker rather than with a timer per
/// frame (arming and cancelling a timer on every frame costs more than the frame itself at
/// small sizes): both ends close a connection quiet for its idle timeout, and the server pings
/// one quiet for its keepalive interval.
#[derive(Debug)]
pub struct Liveness {
    ticker: tokio::time::Interval,
    last_rx: tokio::time::Instant,
}

impl Liveness {
    /// Looks every `period` (at least 1 ms; a tick missed while busy is delayed, not caught
    /// up); the first look is at once.
    pub fn new(period: Duration) -> Self {
        let mut ticker = tokio::time::interval(period.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            ticker,
            last_rx: tokio::time::Instant::now(),
        }
    }

    /// A frame was received.
    pub fn received(&mut self) {
        self.last_rx = tokio::time::Instant::now();
    }

    /// Waits for the next look; returns how long nothing has been received. Cancellation-safe
    /// (a branch of `select!` in a loop).
    pub async fn tick(&mut self) -> Duration {
        self.ticker.tick().await;
        self.last_rx.elapsed()
    }
}
