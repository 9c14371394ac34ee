//! A plain Unix stream for peerwire's connections, registered with the reactor for exactly what
//! each side waits for.
//!
//! tokio's `UnixStream` waits for readability *and* writability on one registration, so every
//! time the peer reads what we wrote, the kernel's "room to write" wake-up also wakes our
//! reactor, for nothing: on one CPU that is an extra pair of context switches per call. Here the
//! read side is registered for readability only ([`PlainReader`]); writes are non-blocking
//! `write`s on a duplicate of the descriptor ([`PlainWriter`], or [`FrameSink`](crate::FrameSink)),
//! which wait for writability only when the socket is actually full, on a
//! registration made for that wait and dropped after it.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use peerwire_security::exe::SenderGuard;
use peerwire_security::sys;

/// Splits a connected stream into its read side and its write side (a duplicate descriptor).
pub fn split(stream: tokio::net::UnixStream) -> std::io::Result<(PlainReader, PlainWriter)> {
    split_guarded(stream, None)
}

/// Like [`split`], and with a guard, every chunk the read side reads is checked against it
/// ([`SenderGuard::read_checked`]): a chunk from a process the guard refuses fails the read with
/// `PermissionDenied` wrapping [`SenderRefused`](peerwire_security::exe::SenderRefused) (see
/// [`sender_refused`](peerwire_security::exe::sender_refused)), and so does every read after it.
/// The socket must pass its senders ([`pass_senders`](peerwire_security::exe::pass_senders),
/// best set on the listening socket).
pub fn split_guarded(
    stream: tokio::net::UnixStream,
    guard: Option<Arc<SenderGuard>>,
) -> std::io::Result<(PlainReader, PlainWriter)> {
    let stream = stream.into_std()?;
    let writer = stream.try_clone()?;
    let reader = sys::register(stream, Interest::READABLE)?;
    Ok((PlainReader { fd: reader, guard }, PlainWriter::new(writer)))
}

/// The send buffer a socket that carries large frames asks for ([`PlainWriter::bulk`]): with
/// Linux's doubling, room for a 1 MiB message and its TLS records. The kernel memory a peer
/// that does not read can hold this way stays below a connection's outbound bound (8 MiB
/// by default).
pub const BULK_SNDBUF: usize = 1024 * 1024;

/// The read side: registered for readability only.
#[derive(Debug)]
pub struct PlainReader {
    fd: AsyncFd<StdStream>,
    /// Checks every chunk's sender; `None`: plain `read`s.
    guard: Option<Arc<SenderGuard>>,
}

impl AsyncRead for PlainReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.guard.as_ref().is_some_and(|g| g.is_stopped()) {
            // No check is needed any more: plain reads from now on, as if never guarded.
            self.guard = None;
            let _ = peerwire_security::exe::pass_senders(self.fd.get_ref(), false);
        }
        loop {
            let mut ready_guard = ready!(self.fd.poll_read_ready(cx))?;
            let wanted = buf.remaining();
            let read = match &self.guard {
                None => sys::read_into(self.fd.get_ref().as_fd(), buf),
                Some(guard) => guard.read_checked(self.fd.get_ref().as_fd(), buf),
            };
            match read {
                Ok(n) => {
                    // A short read emptied the socket: wait for the next wake-up rather than
                    // find out with one more `read` that fails (as tokio's own streams do).
                    // Not so when checking senders: a read ends where the sender changes.
                    if n > 0 && n < wanted && self.guard.is_none() {
                        ready_guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready_guard.clear_ready(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The write side: non-blocking writes; waits for room only when the socket is full. Shuts the
/// write direction down when dropped (the peer reads the end of the stream).
#[derive(Debug)]
pub struct PlainWriter {
    io: StdStream,
    /// A registration for writability, made when a write found the socket full.
    wait: Option<AsyncFd<StdStream>>,
    /// The same for [`PlainWriter::writable`], kept while the socket keeps filling up (one
    /// large message fills it many times) and dropped once everything is written.
    waiting: std::sync::Mutex<Option<AsyncFd<StdStream>>>,
}

impl PlainWriter {
    fn new(io: StdStream) -> Self {
        Self {
            io,
            wait: None,
            waiting: std::sync::Mutex::default(),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<AsyncFd<StdStream>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes what the socket takes now, without waiting: `WouldBlock` if it takes nothing.
    pub fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.io).write(buf)
    }

    /// Like [`PlainWriter::try_write`], from several buffers in order.
    pub fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        (&self.io).write_vectored(bufs)
    }

    /// Waits until the socket has room (after a write returned `WouldBlock`).
    pub async fn writable(&self) -> std::io::Result<()> {
        let taken = self.waiting().take();
        let fd = match taken {
            Some(fd) => fd,
            None => sys::register(self.io.try_clone()?, Interest::WRITABLE)?,
        };
        let ready = fd.writable().await.map(|mut guard| guard.clear_ready());
        *self.waiting() = Some(fd);
        ready
    }

    /// Drops the registration [`PlainWriter::writable`] kept.
    pub fn drained(&self) {
        self.waiting().take();
    }

    /// Asks for a send buffer of [`BULK_SNDBUF`] (Linux grants twice that): for a connection
    /// that sends large frames. A 1 MiB message then crosses the socket in a few writes and
    /// reads, and on one CPU the two ends switch a few times per message instead of once per
    /// default buffer (208 KiB). It is a limit, not an allocation: an idle connection holds
    /// nothing more. Best effort (a smaller `net.core.wmem_max` caps it; a failure changes
    /// only the speed).
    pub fn bulk(&self) {
        use nix::sys::socket::{setsockopt, sockopt::SndBuf};
        let _ = setsockopt(&self.io, SndBuf, &BULK_SNDBUF);
    }

    /// Shuts the write direction down now.
    pub fn shutdown(&self) {
        let _ = self.io.shutdown(std::net::Shutdown::Write);
    }
}

impl crate::SinkIo for PlainWriter {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        PlainWriter::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        PlainWriter::try_write_vectored(self, bufs)
    }

    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        PlainWriter::writable(self)
    }

    fn drained(&self) {
        PlainWriter::drained(self);
    }

    fn bulk(&self) {
        PlainWriter::bulk(self);
    }
}

impl Drop for PlainWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl AsyncWrite for PlainWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            match (&self.io).write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => {
                    self.wait = None;
                    return Poll::Ready(other);
                }
            }
            if self.wait.is_none() {
                let fd = sys::register(self.io.try_clone()?, Interest::WRITABLE)?;
                self.wait = Some(fd);
            }
            if let Some(fd) = &self.wait {
                let mut guard = ready!(fd.poll_write_ready(cx))?;
                guard.clear_ready();
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shutdown();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameSink;
    use bytes::BytesMut;
    use peerwire_proto::codec::{FrameCodec, frame_ready};
    use peerwire_proto::v1::{Event, Frame, frame::Kind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A sink (frames up to 4 MiB, 64 MiB unwritten) on `a`'s write side, its flusher running,
    /// and `b`'s two sides.
    fn sink_on_pair(
        a: tokio::net::UnixStream,
        b: tokio::net::UnixStream,
    ) -> (
        Arc<FrameSink<PlainWriter>>,
        tokio::task::JoinHandle<()>,
        PlainReader,
        PlainWriter,
    ) {
        let (_ra, wa) = split(a).unwrap();
        let (rb, wb) = split(b).unwrap();
        let sink = Arc::new(FrameSink::new(wa, FrameCodec::new(4 << 20), 64 << 20, 1024));
        let flusher = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
        (sink, flusher, rb, wb)
    }

    /// Through a socket far smaller than what is written, both write paths wait for room and
    /// go on (the `AsyncWrite` one and the `FrameSink` one, which keeps its registration while
    /// the socket keeps filling up); the bytes arrive intact and in order, and dropping the
    /// writer ends the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wait_for_room_and_the_stream_ends_when_the_writer_drops() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, mut wa) = split(a).unwrap();
        let (mut rb, _wb) = split(b).unwrap();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            wa.write_all(&sent).await.unwrap();
            drop(wa);
        });
        let mut got = Vec::new();
        rb.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(
            got == data,
            "{} bytes back, not the {} sent",
            got.len(),
            data.len()
        );

        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (sink, flusher, mut rb, _wb) = sink_on_pair(a, b);
        let frame = |i: u64| {
            Frame::new(Kind::Event(Event {
                topic: "t.Big".into(),
                seq: i,
                payload: vec![i as u8; 1 << 20].into(),
            }))
        };
        for i in 0..8 {
            sink.send(&frame(i)).await.unwrap();
        }
        let mut codec = FrameCodec::new(4 << 20);
        let mut buf = BytesMut::new();
        for i in 0..8 {
            while !frame_ready(&buf) {
                assert!(rb.read_buf(&mut buf).await.unwrap() > 0);
            }
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), frame(i));
        }
        assert!(sink.flushed(std::time::Duration::from_secs(10)).await);
        sink.close();
        flusher.await.unwrap();
    }

    /// A sink keeps the socket's default send buffer until it sends a frame of at least
    /// `BULK_FRAME` bytes, then asks for a larger one (granted up to `net.core.wmem_max`);
    /// the frames arrive intact either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_frame_makes_the_send_buffer_larger_and_small_ones_do_not() {
        use nix::sys::socket::{getsockopt, sockopt::SndBuf};
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        // The option belongs to the socket: a duplicate descriptor reads it.
        let dup = a.as_fd().try_clone_to_owned().unwrap();
        let default = getsockopt(&dup, SndBuf).unwrap();
        let (sink, flusher, mut rb, _wb) = sink_on_pair(a, b);
        let frame = |i: u64, n: usize| {
            Frame::new(Kind::Event(Event {
                topic: "t.Big".into(),
                seq: i,
                payload: vec![i as u8; n].into(),
            }))
        };
        let frames = [
            frame(0, 100),
            frame(1, crate::BULK_FRAME - 1),
            frame(2, crate::BULK_FRAME),
            frame(3, 100),
        ];
        let mut codec = FrameCodec::new(4 << 20);
        let mut buf = BytesMut::new();
        for (i, f) in frames.iter().enumerate() {
            sink.send(f).await.unwrap();
            let now = getsockopt(&dup, SndBuf).unwrap();
            if i < 2 {
                assert_eq!(now, default, "frame {i} changed the send buffer");
            } else {
                assert!(now > default, "still {now} bytes after a large frame");
            }
            while !frame_ready(&buf) {
                assert!(rb.read_buf(&mut buf).await.unwrap() > 0);
            }
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), *f);
        }
        assert!(sink.flushed(std::time::Duration::from_secs(10)).await);
        sink.close();
        flusher.await.unwrap();
    }

    /// With a guard, what this program sends is read; a chunk another program sends on the same
    /// socket fails the read with `PermissionDenied` and a `SenderRefused` naming both pids;
    /// every later read fails too.
    #[tokio::test]
    async fn a_guarded_reader_refuses_a_chunk_from_another_program() {
        use peerwire_security::exe::{Executable, SenderGuard, pass_senders, sender_refused};
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        pass_senders(&a, true).unwrap();
        let me = Executable::from_path(std::env::current_exe().unwrap()).unwrap();
        let guard = Arc::new(SenderGuard::new(vec![me], Some(4242)));
        let (mut ra, _wa) = split_guarded(a, Some(guard.clone())).unwrap();
        let (_rb, mut wb) = split(b).unwrap();
        wb.write_all(b"mine").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ra.read(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..4], b"mine");
        assert!(guard.first_sender().is_some());

        // `printf` writes to its standard output: this socket.
        let out = std::os::fd::OwnedFd::from(wb.io.try_clone().unwrap());
        let status = std::process::Command::new("printf")
            .arg("theirs")
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success());
        let err = ra.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let refused = sender_refused(&err).unwrap().clone();
        assert_eq!(refused.conn_pid, Some(4242));
        assert!(
            refused
                .sender_pid
                .is_some_and(|p| p != std::process::id() as i32)
        );
        // Every later read fails the same way, even with bytes of this program waiting.
        wb.write_all(b"mine again").await.unwrap();
        let again = ra.read(&mut buf).await.unwrap_err();
        assert_eq!(sender_refused(&again), Some(&refused));
        assert_eq!(guard.refusal(), Some(refused));
    }
}
