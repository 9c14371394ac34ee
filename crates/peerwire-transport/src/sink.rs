//! [`FrameSink`], the outbound side of a connection, where the sending task writes its frame
//! itself, through a [`Seal`] (a record layer such as TLS) if the connection has one; and
//! [`Opened`], the read side of a sealed connection.

use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::ReadBuf;

use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::v1::Frame;

/// Bytes a corked sink gathers before it writes them anyway; also the most events the server
/// moves into a sink at a time (see its event queue).
pub const WRITE_BATCH: usize = 64 * 1024;

/// Clears `buf` after a write and gives its memory back if one large frame grew it: an idle
/// connection keeps no large buffer (it starts empty, too, and grows to what is written).
pub fn recycle(buf: &mut BytesMut) {
    if buf.capacity() > 4 * WRITE_BATCH {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

/// Why a frame could not be handed to a [`FrameSink`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink was closed, or an earlier write failed.
    #[error("connection closed")]
    Closed,
    /// `try_send` only: the buffer holds its limit of unwritten bytes.
    #[error("outbound buffer full")]
    Full,
    /// The frame cannot be encoded (larger than the maximum frame size).
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A read failed because what it made the connection send (TLS records produced by reading:
/// key updates, alerts) would exceed the sink's bound of unwritten bytes: the peer makes the
/// connection write while it does not read. The sink is closed.
#[derive(Debug, thiserror::Error)]
#[error(
    "outbound buffer full: {unwritten} bytes unwritten, over the limit of {limit}: the peer does not read"
)]
pub struct OutboundFull {
    /// Bytes waiting for the socket.
    pub unwritten: usize,
    /// The sink's bound.
    pub limit: usize,
}

impl OutboundFull {
    /// The [`OutboundFull`] inside `e`, if that is what `e` is.
    pub fn of(e: &std::io::Error) -> Option<&OutboundFull> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

struct SinkState {
    /// Bytes to write before `buf` (sealed: to seal before `plain`), in order: encoded frame
    /// heads and large payloads, which are written (sealed) from their own buffers rather than
    /// copied (see `FrameCodec::encode_split`).
    chunks: std::collections::VecDeque<bytes::Bytes>,
    chunk_bytes: usize,
    /// Unsealed: the encoded frames after `chunks`. Sealed: records ready to write, which go
    /// out before anything still to seal.
    buf: BytesMut,
    /// Sealed: encoded frames after `chunks`, not yet sealed. Sealing happens as the socket
    /// takes the records, [`SEAL_CHUNK`] at a time, so a large message is sealed while the
    /// earlier part of it is being read, and never held sealed in full.
    plain: BytesMut,
    /// The record layer every byte goes through, if any.
    seal: Option<Box<dyn Seal>>,
    /// Frames not yet written (approximately: partly written frames count in proportion).
    frames: usize,
    codec: FrameCodec,
    /// The socket refused part of `buf`: the flusher task owns writing it, senders only append.
    pending: bool,
    /// Frames are gathered, not written, until `uncork` (the sender knows more are coming).
    corked: bool,
    closed: bool,
    /// Why a write failed, if one did (the sink was shut by it).
    failed: Option<std::io::ErrorKind>,
    /// A frame of at least [`BULK_FRAME`] bytes was sent ([`SinkIo::bulk`] was called).
    bulk: bool,
}

/// How [`FrameSink::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drained {
    /// Everything sent was written.
    Written,
    /// A write failed (a peer that left: broken pipe, reset), so the sink was shut and what
    /// was unwritten dropped.
    WriteFailed(std::io::ErrorKind),
    /// The sink was closed before everything was written (by its owner, or over its bound).
    Closed,
    /// Bytes were still unwritten when the time ran out: the peer does not read.
    TimedOut,
}

/// The non-blocking write side a [`FrameSink`] writes to: tokio's `OwnedWriteHalf`, or
/// [`PlainWriter`](crate::plain::PlainWriter), which waits for room only when the socket is full.
pub trait SinkIo: Send + Sync + 'static {
    /// Writes what the socket takes now; `WouldBlock` if it takes nothing.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// Like `try_write`, from several buffers in order.
    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize>;
    /// Waits until the socket may take more.
    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Everything written: whatever the waits for room kept may be released.
    fn drained(&self) {}
    /// A frame of at least [`BULK_FRAME`] bytes is being written (called once per sink): the
    /// socket may take more at a time, so that a large message crosses it in fewer writes,
    /// reads and wake-ups.
    fn bulk(&self) {}
}

impl SinkIo for tokio::net::unix::OwnedWriteHalf {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        tokio::net::unix::OwnedWriteHalf::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        tokio::net::unix::OwnedWriteHalf::try_write_vectored(self, bufs)
    }

    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        tokio::net::unix::OwnedWriteHalf::writable(self)
    }
}

/// A record layer between a [`FrameSink`] and its socket (TLS): what the sink writes is sealed
/// first, and what the connection reads is opened through the same object, under the sink's
/// lock, so that records leave in the order they were sealed even when opening one produces
/// records to send (alerts, key updates).
pub trait Seal: Send {
    /// Seals `plain` and appends the records to `out`.
    fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> std::io::Result<()>;
    /// Reads from the socket and opens into `buf`, like `AsyncRead::poll_read`; records that
    /// reading produced are appended to `out`.
    fn poll_open(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        out: &mut BytesMut,
    ) -> Poll<std::io::Result<()>>;
    /// Appends the record that ends the session (TLS close_notify) to `out`.
    fn close(&mut self, out: &mut BytesMut);
}

/// The read side of a sealed sink's connection: what its [`Seal`] opens (see
/// [`FrameSink::poll_open`]).
pub struct Opened<W>(pub std::sync::Arc<FrameSink<W>>);

impl<W: SinkIo> tokio::io::AsyncRead for Opened<W> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.poll_open(cx, buf)
    }
}

/// Bytes of a large message sealed at a time (a sealed sink seals as the socket takes records):
/// one `write` each.
pub const SEAL_CHUNK: usize = 256 * 1024;
/// Frames this large make the sink ask its socket for a larger send buffer ([`SinkIo::bulk`]).
pub const BULK_FRAME: usize = 256 * 1024;
/// Pieces this large are sealed from their own buffer; smaller ones are gathered first.
const SEAL_IN_PLACE: usize = 16 * 1024;

/// Chunks gathered into one vectored write.
const MAX_IOV: usize = 64;

impl SinkState {
    /// Drops `n` written bytes from the front: whole chunks, then part of one, then of `buf`.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                let k = n.min(self.buf.len());
                bytes::Buf::advance(&mut self.buf, k);
                return;
            };
            let k = n.min(front.len());
            bytes::Buf::advance(front, k);
            self.chunk_bytes -= k;
            n -= k;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    fn clear(&mut self) {
        self.chunks = std::collections::VecDeque::new();
        self.chunk_bytes = 0;
        self.buf = BytesMut::new();
        self.plain = BytesMut::new();
    }

    /// Bytes not yet written (sealed or not).
    fn unwritten(&self) -> usize {
        self.chunk_bytes + self.buf.len() + self.plain.len()
    }

    /// Sealed: seals the next piece of what waits (at most [`SEAL_CHUNK`] bytes of `chunks`,
    /// small ones gathered into one record batch; else all of `plain`) into `buf`. False when
    /// nothing waits.
    fn seal_next(&mut self) -> std::io::Result<bool> {
        let SinkState {
            chunks,
            chunk_bytes,
            buf,
            plain,
            seal: Some(seal),
            ..
        } = self
        else {
            return Ok(false);
        };
        let mut staged = BytesMut::new();
        while let Some(front) = chunks.front_mut() {
            if front.len() >= SEAL_IN_PLACE {
                if !staged.is_empty() {
                    break;
                }
                let piece = front.split_to(front.len().min(SEAL_CHUNK));
                *chunk_bytes -= piece.len();
                if front.is_empty() {
                    chunks.pop_front();
                }
                seal.seal(&piece, buf)?;
                return Ok(true);
            }
            staged.extend_from_slice(front);
            *chunk_bytes -= front.len();
            chunks.pop_front();
            if staged.len() >= SEAL_CHUNK {
                break;
            }
        }
        if !staged.is_empty() {
            seal.seal(&staged, buf)?;
            return Ok(true);
        }
        if plain.is_empty() {
            return Ok(false);
        }
        seal.seal(plain, buf)?;
        recycle(plain);
        Ok(true)
    }
}

/// The outbound side of a connection (plain, or sealed by a [`Seal`] such as TLS), shared by
/// every task of the connection.
///
/// A sender encodes its frame into the shared buffer and, when no earlier write is pending,
/// writes the buffer out itself with one non-blocking `write`: no queue, no hand-off to another
/// task, no wake-up. Whatever the socket does not take at once (its buffer is full) is left to
/// the flusher task ([`FrameSink::run`]), which waits until the socket is writable; meanwhile
/// senders append behind it, so frames leave in the order they were sent. At `max_bytes`
/// unwritten bytes, or `max_frames` frames not yet written,
/// [`FrameSink::send`] waits and [`FrameSink::try_send`] fails: memory stays bounded when the
/// peer does not read. One frame is always accepted into an empty buffer, whatever its size.
pub struct FrameSink<W = tokio::net::unix::OwnedWriteHalf> {
    io: W,
    state: std::sync::Mutex<SinkState>,
    max_bytes: usize,
    max_frames: usize,
    /// Wakes the flusher: a write is pending, or the sink closed.
    kick: tokio::sync::Notify,
    /// Wakes senders waiting for room, and `flushed` waiters.
    room: tokio::sync::Notify,
}

impl<W: SinkIo> FrameSink<W> {
    /// A sink writing to `io`, frames encoded with `codec`, bounded as described above.
    pub fn new(io: W, codec: FrameCodec, max_bytes: usize, max_frames: usize) -> Self {
        Self::with_seal(io, codec, max_bytes, max_frames, None)
    }

    /// Like [`FrameSink::new`], every byte sealed by `seal` (see [`FrameSink::poll_open`] for
    /// the read side).
    pub fn sealed(
        io: W,
        codec: FrameCodec,
        max_bytes: usize,
        max_frames: usize,
        seal: Box<dyn Seal>,
    ) -> Self {
        Self::with_seal(io, codec, max_bytes, max_frames, Some(seal))
    }

    fn with_seal(
        io: W,
        codec: FrameCodec,
        max_bytes: usize,
        max_frames: usize,
        seal: Option<Box<dyn Seal>>,
    ) -> Self {
        Self {
            io,
            state: std::sync::Mutex::new(SinkState {
                chunks: std::collections::VecDeque::new(),
                chunk_bytes: 0,
                buf: BytesMut::new(),
                plain: BytesMut::new(),
                seal,
                frames: 0,
                codec,
                pending: false,
                corked: false,
                closed: false,
                failed: None,
                bulk: false,
            }),
            max_bytes,
            max_frames: max_frames.max(1),
            kick: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        }
    }

    /// The bounds: unwritten bytes, frames not yet written.
    pub fn bounds(&self) -> (usize, usize) {
        (self.max_bytes, self.max_frames)
    }

    /// Changes the largest frame the sink accepts (the session's limit, once negotiated).
    pub fn set_max_frame_size(&self, max: u32) {
        self.lock().codec.set_max_frame_size(max);
    }

    /// The read side of a sealed sink: reads from the socket and opens into `buf`, like
    /// `AsyncRead::poll_read` (what reading produced to send goes out too). Fails with
    /// `Unsupported` on a sink without a [`Seal`].
    pub fn poll_open(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut st = self.lock();
        let SinkState { seal, buf: out, .. } = &mut *st;
        let Some(seal) = seal else {
            return Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()));
        };
        let before = out.len();
        let opened = seal.poll_open(cx, buf, out);
        if st.buf.len() != before && !st.closed {
            if !st.pending {
                self.write_out(&mut st);
            }
            // What reading produced (alerts, key updates, any post-handshake output) counts
            // against the same bound as frames: a peer that makes the server write while it
            // does not read is a slow consumer, not a way to grow the server's memory.
            let unwritten = st.unwritten();
            if unwritten > self.max_bytes {
                self.shut(&mut st);
                return Poll::Ready(Err(std::io::Error::other(OutboundFull {
                    unwritten,
                    limit: self.max_bytes,
                })));
            }
        }
        opened
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // No code below panics while holding the lock; a poisoned lock still has a sound state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `frame` without waiting; fails if the buffer is at its limit.
    pub fn try_send(&self, frame: &Frame) -> Result<(), SinkError> {
        let mut st = self.lock();
        self.append(&mut st, frame)
    }

    /// Sends `frame`, waiting while the buffer is at its limit.
    pub async fn send(&self, frame: &Frame) -> Result<(), SinkError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let mut st = self.lock();
                match self.append(&mut st, frame) {
                    Err(SinkError::Full) => {
                        // Registered before the lock is released: no wake-up is lost.
                        room.as_mut().enable();
                    }
                    other => return other,
                }
            }
            room.await;
        }
    }

    fn append(&self, st: &mut SinkState, frame: &Frame) -> Result<(), SinkError> {
        if st.closed {
            return Err(SinkError::Closed);
        }
        let queued = st.unwritten();
        if queued > 0 && (queued >= self.max_bytes || st.frames >= self.max_frames) {
            return Err(SinkError::Full);
        }
        // Sealed, frames are encoded into `plain` and sealed as they are written; a large
        // payload goes into `chunks` either way, not copied.
        let SinkState {
            codec, buf, plain, ..
        } = st;
        let tail = if st.seal.is_some() { plain } else { buf };
        if let Some(payload) = codec.encode_split(frame, tail)? {
            if payload.len() >= BULK_FRAME && !st.bulk {
                st.bulk = true;
                self.io.bulk();
            }
            let head = tail.split().freeze();
            st.chunk_bytes += head.len() + payload.len();
            st.chunks.push_back(head);
            st.chunks.push_back(payload);
        }
        st.frames += 1;
        // Corked, a batch still goes out every `WRITE_BATCH` bytes or half the frame bound: it
        // never reaches the bounds (and fails senders) only because it was gathered.
        if !st.pending
            && (!st.corked
                || st.unwritten() >= WRITE_BATCH
                || st.frames.saturating_mul(2) >= self.max_frames)
        {
            self.write_out(st);
        }
        Ok(())
    }

    /// Marks the sink closed and drops what it holds; wakes the flusher and waiters.
    fn shut(&self, st: &mut SinkState) {
        st.closed = true;
        st.clear();
        self.kick.notify_one();
        self.room.notify_waiters();
    }

    /// Gathers the frames sent from now on into one write, made by [`FrameSink::uncork`]: for a
    /// sender that knows more frames follow at once (answers to a batch of requests). Every
    /// [`WRITE_BATCH`] bytes, or half the frame bound, gathered are written at once all the
    /// same. One flag: whoever uncorks first writes what every corker gathered (cork changes
    /// when bytes are written, never their order).
    pub fn cork(&self) {
        self.lock().corked = true;
    }

    /// Writes what was gathered since [`FrameSink::cork`] (unless a write is already pending,
    /// which then takes it along).
    pub fn uncork(&self) {
        let mut st = self.lock();
        if st.corked {
            st.corked = false;
            if !st.pending {
                self.write_out(&mut st);
            }
        }
    }

    /// Writes as much of the buffer as the socket takes now; hands the rest to the flusher.
    fn write_out(&self, st: &mut SinkState) {
        let sealed = st.seal.is_some();
        loop {
            if sealed && st.buf.is_empty() {
                match st.seal_next() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        st.failed = Some(e.kind());
                        self.shut(st);
                        return;
                    }
                }
            }
            if st.chunks.is_empty() && st.buf.is_empty() {
                break;
            }
            let written = if sealed || st.chunks.is_empty() {
                self.io.try_write(&st.buf)
            } else {
                let mut iov = Vec::with_capacity(st.chunks.len().min(MAX_IOV) + 1);
                iov.extend(
                    st.chunks
                        .iter()
                        .take(MAX_IOV)
                        .map(|c| std::io::IoSlice::new(c)),
                );
                if st.chunks.len() <= MAX_IOV && !st.buf.is_empty() {
                    iov.push(std::io::IoSlice::new(&st.buf));
                }
                self.io.try_write_vectored(&iov)
            };
            match written {
                Ok(n) => {
                    // The frame count shrinks with the bytes written (frames are not tracked
                    // one by one), so that it bounds frames waiting, like a queue's length.
                    let before = st.unwritten();
                    if sealed {
                        let k = n.min(st.buf.len());
                        bytes::Buf::advance(&mut st.buf, k);
                    } else {
                        st.advance(n);
                    }
                    let after = st.unwritten();
                    if before > 0 {
                        st.frames = st.frames.saturating_mul(after).div_ceil(before);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    st.pending = true;
                    self.kick.notify_one();
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    st.failed = Some(e.kind());
                    self.shut(st);
                    return;
                }
            }
        }
        if st.pending {
            self.io.drained();
        }
        st.pending = false;
        st.frames = 0;
        st.chunks = std::collections::VecDeque::new();
        recycle(&mut st.buf);
        self.room.notify_waiters();
    }

    /// The flusher task: finishes the writes the socket could not take at once. Returns when
    /// the sink is closed (see [`FrameSink::close`]) or a write fails. Cancellation-safe (its
    /// state is the sink's): it can be a branch of `select!` in a loop.
    pub async fn run(&self) {
        loop {
            let kicked = self.kick.notified();
            tokio::pin!(kicked);
            // Registered before the state is read: a kick in between is not lost.
            kicked.as_mut().enable();
            let pending = {
                let st = self.lock();
                if st.closed {
                    return;
                }
                st.pending
            };
            if !pending {
                kicked.await;
                continue;
            }
            // A kick while waiting for room is a close (or more to write, which the wait
            // covers): look again, so a sink closed under a peer that never reads returns
            // instead of waiting for room forever (and keeping its connection's task).
            tokio::select! {
                biased;
                () = &mut kicked => continue,
                writable = self.io.writable() => {
                    if writable.is_err() {
                        self.close();
                        return;
                    }
                }
            }
            let mut st = self.lock();
            self.write_out(&mut st);
        }
    }

    /// Waits until the sink has written everything sent so far (or is closed). Needs the
    /// flusher ([`FrameSink::run`]) running meanwhile.
    pub async fn idle(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let st = self.lock();
                if st.closed || st.unwritten() == 0 {
                    return;
                }
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// Waits until everything sent has been written, at most `timeout`; false if bytes are
    /// still unwritten then (the peer does not read), or if the sink is closed.
    pub async fn flushed(&self, timeout: std::time::Duration) -> bool {
        self.drain(timeout).await == Drained::Written
    }

    /// Waits until everything sent has been written, at most `timeout`, and says how it ended:
    /// written, a failed write (the peer left), closed, or timed out (the peer does not read).
    pub async fn drain(&self, timeout: std::time::Duration) -> Drained {
        let wait = async {
            loop {
                let room = self.room.notified();
                tokio::pin!(room);
                {
                    let st = self.lock();
                    if st.closed {
                        return st.failed.map_or(Drained::Closed, Drained::WriteFailed);
                    }
                    if st.unwritten() == 0 {
                        return Drained::Written;
                    }
                    room.as_mut().enable();
                }
                room.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Drained::TimedOut)
    }

    /// Closes the sink: later sends fail, unwritten bytes are dropped, the flusher returns.
    /// A sealed sink that has written everything ends its session first (the record is written
    /// if the socket takes it at once). The write side of the socket is shut down when the sink
    /// is dropped.
    pub fn close(&self) {
        let mut st = self.lock();
        if !st.closed && st.unwritten() == 0 {
            let SinkState { seal, buf, .. } = &mut *st;
            if let Some(seal) = seal {
                seal.close(buf);
                let mut last: &[u8] = buf;
                while let Ok(n @ 1..) = self.io.try_write(last) {
                    last = last.get(n..).unwrap_or_default();
                }
            }
        }
        self.shut(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerwire_proto::v1::{Ping, frame::Kind};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn ping(n: u64) -> Frame {
        Frame::new(Kind::Ping(Ping { nonce: n }))
    }

    /// Large payloads go out from their own buffers, small frames from the shared one; mixed,
    /// through a socket that takes them only as the peer reads, they arrive whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sink_writes_large_payloads_in_place_and_in_order() {
        use peerwire_proto::v1::Event;
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, wa) = a.into_split();
        let sink = Arc::new(FrameSink::new(
            wa,
            FrameCodec::new(1 << 22),
            8 << 20,
            1 << 20,
        ));
        let flusher = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
        let frame = |i: u64| {
            if i % 3 == 0 {
                let payload: Vec<u8> = (0..200_000u64).map(|k| (k + i) as u8).collect();
                Frame::new(Kind::Event(Event {
                    topic: "t.Big".into(),
                    seq: i,
                    payload: payload.into(),
                }))
            } else {
                ping(i)
            }
        };
        let sender = tokio::spawn({
            let sink = sink.clone();
            async move {
                for i in 0..60u64 {
                    sink.send(&frame(i)).await.unwrap();
                }
            }
        });
        let mut codec = FrameCodec::new(1 << 22);
        let mut buf = BytesMut::new();
        let mut next = 0u64;
        while next < 60 {
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                assert_eq!(f, frame(next), "frame {next}");
                next += 1;
                continue;
            }
            // Read slowly, in small pieces, so that writes are partial and vectored.
            let mut chunk = [0u8; 7000];
            let n = b.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        sender.await.unwrap();
        assert!(sink.flushed(Duration::from_secs(10)).await);
        sink.close();
        flusher.await.unwrap();
    }

    /// `drain` tells the three endings apart: all written; a peer that left (the write fails
    /// with a broken pipe: nothing to warn about); a peer still there that does not read
    /// (timed out). `flushed` is false for the last two.
    #[tokio::test]
    async fn drain_tells_a_peer_that_left_from_one_that_does_not_read() {
        // Written.
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, wa) = a.into_split();
        let sink = FrameSink::new(wa, FrameCodec::new(1 << 20), 1 << 20, 1024);
        sink.try_send(&ping(1)).unwrap();
        assert_eq!(sink.drain(Duration::from_secs(5)).await, Drained::Written);
        let mut buf = BytesMut::new();
        assert!(b.read_buf(&mut buf).await.unwrap() > 0);

        // The peer left: the write fails, the sink is shut.
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        drop(b);
        let (_ra, wa) = a.into_split();
        let sink = FrameSink::new(wa, FrameCodec::new(1 << 20), 1 << 20, 1024);
        let _ = sink.try_send(&ping(2));
        assert_eq!(
            sink.drain(Duration::from_secs(5)).await,
            Drained::WriteFailed(std::io::ErrorKind::BrokenPipe)
        );
        assert!(!sink.flushed(Duration::from_secs(5)).await);

        // The peer is there and does not read: the socket fills, the rest waits, time runs out.
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, wa) = a.into_split();
        let sink = Arc::new(FrameSink::new(
            wa,
            FrameCodec::new(1 << 23),
            16 << 20,
            1 << 20,
        ));
        let flusher = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
        let big = Frame::new(Kind::Event(peerwire_proto::v1::Event {
            topic: "t.Big".into(),
            seq: 1,
            payload: vec![7u8; 4 << 20].into(),
        }));
        sink.try_send(&big).unwrap();
        assert_eq!(
            sink.drain(Duration::from_millis(200)).await,
            Drained::TimedOut
        );
        sink.close();
        assert_eq!(sink.drain(Duration::from_secs(5)).await, Drained::Closed);
        flusher.await.unwrap();
    }

    /// Corked, frames wait in the sink; uncorked, they leave together, in order.
    #[tokio::test]
    async fn corked_frames_leave_together_on_uncork() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, wa) = a.into_split();
        let sink = FrameSink::new(wa, FrameCodec::new(1 << 20), 1 << 20, 1024);
        sink.cork();
        for i in 0..10 {
            sink.try_send(&ping(i)).unwrap();
        }
        let mut buf = BytesMut::new();
        let early = tokio::time::timeout(Duration::from_millis(50), b.read_buf(&mut buf)).await;
        assert!(early.is_err(), "a corked sink wrote {} bytes", buf.len());
        sink.uncork();
        let mut codec = FrameCodec::new(1 << 20);
        for i in 0..10 {
            while !peerwire_proto::codec::frame_ready(&buf) {
                assert!(b.read_buf(&mut buf).await.unwrap() > 0);
            }
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), ping(i));
        }
        // Uncorked: the next frame goes out at once.
        sink.try_send(&ping(10)).unwrap();
        while !peerwire_proto::codec::frame_ready(&buf) {
            assert!(b.read_buf(&mut buf).await.unwrap() > 0);
        }
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), ping(10));
    }

    /// A corked sink holds a batch only up to `WRITE_BATCH` bytes or half its frame bound: a
    /// long burst goes out as it grows, so gathering never makes the sink reach its bounds.
    #[tokio::test]
    async fn a_corked_sink_still_writes_a_batch_as_it_nears_the_bounds() {
        // (frame bound, frames sent while corked, frames that must have left while corked)
        let len = |i: u64| prost::Message::encoded_len(&ping(i)) + 4;
        let by_bytes = WRITE_BATCH / len(0) + 10;
        let left = WRITE_BATCH / len(by_bytes as u64);
        for (max_frames, count, left) in [(64, 40, 32), (1 << 20, by_bytes, left)] {
            let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
            let (_ra, wa) = a.into_split();
            let sink = FrameSink::new(wa, FrameCodec::new(1 << 20), 4 * WRITE_BATCH, max_frames);
            sink.cork();
            for i in 0..count {
                sink.try_send(&ping(i as u64)).unwrap();
            }
            let mut codec = FrameCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = 0;
            while got < left {
                if codec.decode(&mut buf).unwrap().is_some() {
                    got += 1;
                    continue;
                }
                let read = tokio::time::timeout(Duration::from_secs(2), b.read_buf(&mut buf)).await;
                assert!(
                    read.is_ok(),
                    "corked, bound {max_frames}: {got} of {count} frames left, not {left}"
                );
            }
            sink.uncork();
        }
    }

    /// A peer that stops reading fills the socket, then the sink's bounded buffer: `try_send`
    /// fails, `send` waits; once the peer reads, every frame arrives once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sink_is_bounded_ordered_and_finishes_writes_when_the_peer_reads() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, wa) = a.into_split();
        let sink = Arc::new(FrameSink::new(
            wa,
            FrameCodec::new(1 << 20),
            64 * 1024,
            1 << 20,
        ));
        let flusher = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
        // Nobody reads: fill the socket buffer and the sink's 64 KiB.
        let mut sent = 0u64;
        loop {
            match sink.try_send(&ping(sent)) {
                Ok(()) => sent += 1,
                Err(SinkError::Full) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent < 10_000_000, "the sink never filled up");
        }
        // A blocking send waits for room rather than growing the buffer.
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.send(&ping(sent)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        // The peer reads everything: the waiting send completes and the order holds.
        let reader = tokio::spawn(async move {
            let mut codec = FrameCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut next = 0u64;
            while next <= sent {
                if let Some(frame) = codec.decode(&mut buf).unwrap() {
                    assert_eq!(frame, ping(next));
                    next += 1;
                    continue;
                }
                assert!(b.read_buf(&mut buf).await.unwrap() > 0);
            }
            next
        });
        waiting.await.unwrap().unwrap();
        assert!(sink.flushed(Duration::from_secs(10)).await);
        assert_eq!(reader.await.unwrap(), sent + 1);
        sink.close();
        assert!(matches!(sink.try_send(&ping(0)), Err(SinkError::Closed)));
        flusher.await.unwrap();
    }
}
