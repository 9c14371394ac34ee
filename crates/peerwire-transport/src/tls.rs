//! The TLS session over a connection: the glue between OpenSSL (contexts, identities and
//! pinning are `peerwire_security::tls`'s) and the plain stream, and the record layer
//! ([`Seal`]) of the connection's [`FrameSink`](crate::FrameSink).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use openssl::ssl::Ssl;
use peerwire_security::tls::{ClientTls, ServerTls, TlsError, handshake_error};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

use crate::Seal;
use crate::plain::{PlainReader, PlainWriter};

/// Socket bytes read at a time (many records of a burst, or of one large message, per read).
const READ_CHUNK: usize = 64 * 1024;
/// The largest TLS record's plaintext.
const MAX_RECORD: usize = 16 * 1024;
/// What a TLS 1.3 record adds to its plaintext: the header (5 bytes), the inner content type
/// (1) and the AEAD tag (16).
const RECORD_OVERHEAD: usize = 22;
/// Socket bytes read at a time while the socket keeps filling whole chunks (a large message):
/// fewer reads and wake-ups per message.
const BULK_READ_CHUNK: usize = 256 * 1024;

/// The socket as OpenSSL sees it: reads come from the read side through `inbuf`, filled a chunk
/// at a time (OpenSSL, without read-ahead, asks for each record's header, then its body); the
/// records OpenSSL writes are gathered in `out` and never wait. During the handshake a flush
/// (OpenSSL flushes at the end of each flight) writes them to the socket; once the session is
/// up they go, in the order they were sealed, through the connection's `FrameSink` (see
/// [`TlsSession`]), which writes them with non-blocking writes.
#[derive(Debug)]
struct TlsIo<R> {
    reader: R,
    /// Read from the socket, not yet taken by OpenSSL.
    inbuf: BytesMut,
    /// Present during the handshake only.
    writer: Option<PlainWriter>,
    out: BytesMut,
    /// The last read filled a whole [`READ_CHUNK`]: read [`BULK_READ_CHUNK`] next.
    bulk: bool,
}

impl<R: AsyncRead + Unpin> TlsIo<R> {
    /// Reads what the socket has into `inbuf` (empty on Ready: the end of the stream). While
    /// there is nothing to read, an idle connection keeps no buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let want = if self.bulk {
            BULK_READ_CHUNK
        } else {
            READ_CHUNK
        };
        if self.inbuf.capacity() < want {
            // Growing: a fresh buffer takes only the unread bytes (a partial record), where
            // growing this one would copy the bytes already read too.
            let mut fresh = BytesMut::with_capacity(want + self.inbuf.len());
            fresh.extend_from_slice(&self.inbuf);
            self.inbuf = fresh;
        } else {
            self.inbuf.reserve(want);
        }
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.reader), cx, &mut self.inbuf);
        match &read {
            Poll::Ready(Ok(n)) => self.bulk = *n >= READ_CHUNK,
            Poll::Pending if self.inbuf.is_empty() => self.inbuf = BytesMut::new(),
            _ => {}
        }
        read.map_ok(drop)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for TlsIo<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.inbuf.is_empty() {
            ready!(this.poll_fill(cx))?;
        }
        let n = this.inbuf.len().min(buf.remaining());
        buf.put_slice(this.inbuf.get(..n).unwrap_or_default());
        this.inbuf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: Unpin> AsyncWrite for TlsIo<R> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(writer) = &mut this.writer {
            while !this.out.is_empty() {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &this.out))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                this.out.advance(n);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// An established TLS session: the record layer of a connection's `FrameSink`
/// ([`Seal`]). Sealing a batch of frames is one `SSL_write` into memory,
/// made by the task that writes (no writer task of its own, no wait: the sink writes the
/// records with the rest of the batch); opening reads through `R`, the socket's read side.
pub struct TlsSession<R = PlainReader> {
    stream: SslStream<TlsIo<R>>,
    /// A read failed after earlier records were opened: reported on the next read.
    failed: Option<std::io::Error>,
}

impl<R> fmt::Debug for TlsSession<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("version", &self.stream.ssl().version_str())
            .finish()
    }
}

impl<R: AsyncRead + Unpin> TlsSession<R> {
    /// Runs `op` with OpenSSL's records going straight into `out` (after any the handshake
    /// left unsent).
    fn records_to<T>(
        &mut self,
        out: &mut BytesMut,
        op: impl FnOnce(Pin<&mut SslStream<TlsIo<R>>>) -> T,
    ) -> T {
        let io = self.stream.get_mut();
        if !io.out.is_empty() {
            out.extend_from_slice(&io.out);
            io.out.clear();
        }
        std::mem::swap(&mut io.out, out);
        let result = op(Pin::new(&mut self.stream));
        std::mem::swap(&mut self.stream.get_mut().out, out);
        result
    }
}

impl<R: AsyncRead + Unpin + Send> Seal for TlsSession<R> {
    fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> std::io::Result<()> {
        // Room for all the records at once: OpenSSL hands them over one by one, and a buffer
        // grown record by record is copied each time it doubles.
        out.reserve(plain.len() + plain.len().div_ceil(MAX_RECORD) * RECORD_OVERHEAD);
        self.records_to(out, |mut stream| {
            // Writes never wait (`TlsIo` takes every record), so no waker is ever kept.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut rest = plain;
            while !rest.is_empty() {
                match stream.as_mut().poll_write(&mut cx, rest) {
                    Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => rest = rest.get(n..).unwrap_or_default(),
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Err(std::io::ErrorKind::WouldBlock.into()),
                }
            }
            Ok(())
        })
    }

    fn poll_open(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        out: &mut BytesMut,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        // Nothing left inside OpenSSL (no read-ahead) and nothing read: wait for the socket
        // here, rather than learn it from an SSL_read that fails for want of bytes.
        if self.stream.ssl().pending() == 0 && self.stream.get_ref().inbuf.is_empty() {
            ready!(self.stream.get_mut().poll_fill(cx))?;
        }
        let start = buf.filled().len();
        ready!(self.records_to(out, |stream| stream.poll_read(cx, buf)))?;
        // Open the records already read (one SSL_read opens one), so that the frames that
        // arrived together are seen together (and their answers leave together); at most
        // `READ_CHUNK` bytes per call, which bounds how long the sink's lock is held (a push
        // to this connection waits for it).
        while buf.remaining() > 0
            && buf.filled().len() - start < READ_CHUNK
            && (self.stream.ssl().pending() > 0 || !self.stream.get_ref().inbuf.is_empty())
        {
            let before = buf.filled().len();
            match self.records_to(out, |stream| stream.poll_read(cx, buf)) {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {}
                Poll::Ready(Err(e)) => {
                    self.failed = Some(e);
                    break;
                }
                // The end, or a partial record: the next read sees it.
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn close(&mut self, out: &mut BytesMut) {
        self.records_to(out, |stream| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = stream.poll_shutdown(&mut cx);
        });
    }
}

/// Runs a handshake on a fresh TLS stream over `reader` and `writer`; on success, the session
/// and the writer (for the connection's `FrameSink`).
async fn handshake<R: AsyncRead + Unpin>(
    ssl: Ssl,
    reader: R,
    writer: PlainWriter,
    what: &'static str,
    accept: bool,
) -> Result<(TlsSession<R>, PlainWriter), TlsError> {
    let io = TlsIo {
        reader,
        inbuf: BytesMut::new(),
        writer: Some(writer),
        out: BytesMut::new(),
        bulk: false,
    };
    let mut s = SslStream::new(ssl, io)?;
    let done = if accept {
        Pin::new(&mut s).accept().await
    } else {
        Pin::new(&mut s).connect().await
    };
    if let Err(e) = done {
        return Err(handshake_error(s.ssl(), e, what));
    }
    match s.get_mut().writer.take() {
        Some(writer) => Ok((
            TlsSession {
                stream: s,
                failed: None,
            },
            writer,
        )),
        None => Err(TlsError::Socket(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the socket's write side is gone",
        ))),
    }
}

/// Runs the server side of the handshake on a socket's two sides, with `tls`'s context; returns
/// the session and the write side, for the connection's [`FrameSink`](crate::FrameSink).
pub async fn accept<R: AsyncRead + Unpin>(
    tls: &ServerTls,
    reader: R,
    writer: PlainWriter,
) -> Result<(TlsSession<R>, PlainWriter), TlsError> {
    handshake(tls.ssl()?, reader, writer, "client", true).await
}

/// Runs the client side of the handshake on a socket's two sides (see [`accept`]). In TLS 1.3
/// a server that refuses *our* certificate says so only after this returns: the error then
/// surfaces on the first read.
pub async fn connect<R: AsyncRead + Unpin>(
    tls: &ClientTls,
    reader: R,
    writer: PlainWriter,
) -> Result<(TlsSession<R>, PlainWriter), TlsError> {
    handshake(tls.ssl()?, reader, writer, "server", false).await
}
