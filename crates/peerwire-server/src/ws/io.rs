//! The envelope frames over a WebSocket: each binary message is one frame (its protobuf bytes,
//! without the Unix socket's 4-byte length prefix). The connection's code reads and writes the
//! same length-prefixed stream as over a Unix socket, so the session, its limits and its
//! slow-consumer policy are the same code:
//!
//! - [`WsIn`]: the read side, an `AsyncRead` giving each binary message as a length-prefixed
//!   frame to the connection's frame reader (text messages are a protocol error);
//! - [`WsOut`]: what the connection's `FrameSink` writes to: it takes the encoded frames
//!   without waiting, bounded by [`OUT_BUFFER`] bytes (or one larger frame whole); [`writer`],
//!   a task per connection, sends each frame as one binary message. A peer that does not read
//!   stops the writer task, `WsOut` fills, and the sink's own bounds (slow consumer) apply, as
//!   over a Unix socket.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// Encoded bytes [`WsOut`] takes before the writer task has sent them (beyond this the
/// connection's sink keeps them, within its own bounds).
pub(crate) const OUT_BUFFER: usize = 64 * 1024;

/// A peer sent something that is not one binary message per frame within the limits (a text
/// message, a malformed frame, a message over the frame limit: `too_large`).
#[derive(Debug, thiserror::Error)]
#[error("WebSocket protocol error: {what}")]
pub(crate) struct WsProtocolError {
    pub(crate) what: String,
    pub(crate) too_large: bool,
}

impl WsProtocolError {
    /// The [`WsProtocolError`] inside `e`, if that is what `e` is.
    pub(crate) fn of(e: &std::io::Error) -> Option<&WsProtocolError> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

/// The read side of a WebSocket connection as a length-prefixed frame stream.
pub(crate) struct WsIn<S> {
    pub(crate) stream: SplitStream<WebSocketStream<S>>,
    /// The current message: its 4-byte length, then its bytes.
    head: [u8; 4],
    head_left: usize,
    body: Bytes,
    /// How the stream ended (`Ok`: the end of the stream), once what came before is given.
    end: Option<std::io::Result<()>>,
}

/// Bytes of received messages given to the connection at a time.
const READ_BATCH: usize = 64 * 1024;

impl<S> WsIn<S> {
    pub(crate) fn new(stream: SplitStream<WebSocketStream<S>>) -> Self {
        Self {
            stream,
            head: [0; 4],
            head_left: 0,
            body: Bytes::new(),
            end: None,
        }
    }
}

fn io_error(e: tungstenite::Error) -> std::io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        // A peer that went away without a close frame (a browser killed, a tab closed hard)
        // ended its stream; it broke no rule.
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => std::io::ErrorKind::UnexpectedEof.into(),
        // Oversized messages, bad framing, unmasked frames, bad UTF-8 in a close reason.
        // `what` is the inner error's text: this type's message already says what kind it is.
        tungstenite::Error::Capacity(e) => protocol_error(e.to_string(), true),
        tungstenite::Error::Protocol(e) => protocol_error(e.to_string(), false),
        e => std::io::Error::other(e.to_string()),
    }
}

fn protocol_error(what: String, too_large: bool) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        WsProtocolError { what, too_large },
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIn<S> {
    /// Gives the messages already received together (up to [`READ_BATCH`] bytes), so that the
    /// connection sees the frames that arrived together and answers them together, as over a
    /// Unix socket.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let start = buf.filled().len();
        loop {
            if this.head_left > 0 {
                let at = 4 - this.head_left;
                let n = this.head_left.min(buf.remaining());
                buf.put_slice(this.head.get(at..at + n).unwrap_or_default());
                this.head_left -= n;
            }
            if this.head_left == 0 && !this.body.is_empty() {
                let n = this.body.len().min(buf.remaining());
                buf.put_slice(this.body.get(..n).unwrap_or_default());
                this.body.advance(n);
            }
            let given = buf.filled().len() - start;
            if buf.remaining() == 0 || given >= READ_BATCH {
                return Poll::Ready(Ok(()));
            }
            if let Some(end) = this.end.take() {
                if given == 0 {
                    return Poll::Ready(end);
                }
                this.end = Some(end);
                return Poll::Ready(Ok(()));
            }
            let next = match Pin::new(&mut this.stream).poll_next(cx) {
                Poll::Pending if given > 0 => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            match next {
                // Pings are answered by tungstenite (the latest one only: a flood is bounded).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(b))) => {
                    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
                    this.head = len.to_be_bytes();
                    this.head_left = 4;
                    this.body = b;
                }
                Some(Ok(Message::Text(_))) => {
                    this.end = Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        WsProtocolError {
                            what: "a text message (frames travel as binary messages)".into(),
                            too_large: false,
                        },
                    )));
                }
                // The peer's close (answered by tungstenite), or the end of the stream.
                Some(Ok(Message::Close(_))) | None => this.end = Some(Ok(())),
                Some(Err(e)) => this.end = Some(Err(io_error(e))),
            }
        }
    }
}

#[derive(Default)]
struct OutState {
    buf: BytesMut,
    /// Bytes at the start of `buf` that are whole frames (what the writer task takes).
    whole: usize,
    closed: bool,
}

impl OutState {
    /// The declared length of the frame whose 4-byte head starts at `at`, if it is there.
    fn frame_len(&self, at: usize) -> Option<usize> {
        let head = self.buf.get(at..at + 4)?;
        let head = <[u8; 4]>::try_from(head).ok()?;
        Some(u32::from_be_bytes(head) as usize)
    }

    /// How many bytes `buf` may hold: [`OUT_BUFFER`], or the whole of a larger frame being
    /// written (its length was checked against the frame limit when it was encoded), so that
    /// the writer task takes it whole, never a piece to gather.
    fn limit(&self) -> usize {
        let open = self
            .frame_len(self.whole)
            .map_or(0, |len| self.whole + 4 + len);
        OUT_BUFFER.max(open)
    }

    /// Counts the frames the last write completed.
    fn count_whole(&mut self) {
        while let Some(len) = self.frame_len(self.whole) {
            if self.buf.len() < self.whole + 4 + len {
                break;
            }
            self.whole += 4 + len;
        }
    }
}

/// What a WebSocket connection's `FrameSink` writes to (see the module documentation).
#[derive(Default)]
pub(crate) struct WsOut {
    state: Mutex<OutState>,
    /// Wakes the writer task: bytes arrived, or closed.
    data: Notify,
    /// Wakes the sink's flusher: room freed, or closed.
    room: Notify,
}

impl WsOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No more bytes: the writer task sends what is complete and ends.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.data.notify_one();
        self.room.notify_waiters();
    }

    /// Takes the whole frames that wait (`None` once closed and no whole frame is left),
    /// waiting for them.
    async fn take(&self) -> Option<BytesMut> {
        loop {
            let notified = self.data.notified();
            {
                let mut st = self.lock();
                if st.whole > 0 {
                    let whole = std::mem::take(&mut st.whole);
                    let taken = st.buf.split_to(whole);
                    drop(st);
                    self.room.notify_waiters();
                    return Some(taken);
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// [`WsOut`] as the connection's sink owns it (the writer task holds it too).
pub(crate) struct OutHandle(pub(crate) std::sync::Arc<WsOut>);

impl peerwire_transport::SinkIo for OutHandle {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.try_write_vectored(&[std::io::IoSlice::new(buf)])
    }

    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let this = &*self.0;
        let mut st = this.lock();
        if st.closed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let room = st.limit().saturating_sub(st.buf.len());
        if room == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(room - taken);
            st.buf.extend_from_slice(b.get(..n).unwrap_or_default());
            taken += n;
            if taken == room {
                break;
            }
        }
        st.count_whole();
        drop(st);
        if taken > 0 {
            this.data.notify_one();
        }
        Ok(taken)
    }

    async fn writable(&self) -> std::io::Result<()> {
        let this = &*self.0;
        loop {
            let notified = this.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = this.lock();
                if st.closed {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                if st.buf.len() < st.limit() {
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

/// The TLS stream as tungstenite writes to it: a write takes as much of the buffer as TLS takes
/// before the socket would block. TLS (partial writes enabled) takes one 16 KiB record per
/// write, and tungstenite moves the rest of its buffer to the front after every write: a 1 MiB
/// message cost 64 such moves (about 32 MiB copied); now one per time the socket is full.
pub(crate) struct WholeWrites<S>(pub(crate) S);

impl<S: AsyncRead + Unpin> AsyncRead for WholeWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WholeWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut done = 0;
        while let Some(rest) = buf.get(done..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut self.0).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => done += n,
                // What was written counts; the error comes again with the next write.
                Poll::Ready(Err(_)) | Poll::Pending if done > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(done))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The writer task of a WebSocket connection: sends each frame `out` was given as one binary
/// message (the frames of one take together, then one flush), until `out` is closed and has no
/// whole frame left; then a close message.
pub(crate) async fn writer<S: AsyncRead + AsyncWrite + Unpin>(
    out: std::sync::Arc<WsOut>,
    mut ws: SplitSink<WebSocketStream<S>, Message>,
) -> Result<(), tungstenite::Error> {
    while let Some(mut frames) = out.take().await {
        while let Some(head) = frames.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) {
            let len = u32::from_be_bytes(head) as usize;
            if frames.len() < 4 + len {
                break; // not reached: `take` gives whole frames only
            }
            frames.advance(4);
            ws.feed(Message::Binary(frames.split_to(len).freeze()))
                .await?;
        }
        ws.flush().await?;
    }
    ws.close().await
}
