//! TLS 1.3 over the Unix socket, with pinned per-device certificates.
//!
//! Each side trusts exactly one peer certificate (its `peer.pem`), not a CA: the verify
//! callback accepts the peer only if the certificate it presents *is* the pinned one (and TLS
//! proves the peer holds its key). A certificate signed by the pinned certificate, a valid
//! certificate of another device, or any chain is refused. TLS 1.2 and below are refused.
//!
//! Modes: [`TlsMode::Off`]; [`TlsMode::ServerAuth`], where only the server proves itself (the
//! client is authenticated by peer credentials and, later, a session token); and
//! [`TlsMode::Mutual`], where both do.

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};

use openssl::ssl::{
    Ssl, SslAcceptor, SslContext, SslContextBuilder, SslMethod, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509, X509StoreContextRef, X509VerifyResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

use crate::identity::{Identity, IdentityError};
use crate::plain::{PlainReader, PlainWriter};

/// Whether and how the transport is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain Unix socket (peer credentials still checked).
    #[default]
    Off,
    /// TLS; only the server presents a (pinned) certificate.
    ServerAuth,
    /// TLS; both ends present pinned certificates.
    Mutual,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "server-auth" => Ok(Self::ServerAuth),
            "mutual" => Ok(Self::Mutual),
            other => Err(format!(
                "unknown TLS mode {other:?} (expected off, server-auth or mutual)"
            )),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::ServerAuth => "server-auth",
            Self::Mutual => "mutual",
        })
    }
}

/// Why a TLS session could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The identity could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The peer presented no certificate, or not the pinned one.
    #[error("the peer's certificate is not the pinned {0} certificate")]
    NotPinned(&'static str),
    /// The TLS handshake failed (protocol version, alert from the peer, I/O...): OpenSSL's error.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] openssl::ssl::Error),
    /// The socket could not carry the handshake (it could not be split for TLS, or its write
    /// side is gone).
    #[error("TLS handshake failed: {0}")]
    Socket(#[source] std::io::Error),
    /// The server ended the session once this client's side of the handshake completed: in
    /// TLS 1.3 that is how a server refuses the client's certificate (the alert, or the closed
    /// socket, shows on the first read or write).
    #[error(
        "TLS handshake failed: the server ended the TLS session ({0}); it does not accept this \
         client's certificate"
    )]
    EndedByServer(#[source] std::io::Error),
    /// OpenSSL could not be configured.
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// Verify callback that accepts exactly the pinned certificate at depth 0, nothing else.
fn pin(
    pinned: &X509,
) -> Result<impl Fn(bool, &mut X509StoreContextRef) -> bool + Send + Sync + 'static, TlsError> {
    let pinned = pinned.to_der()?;
    Ok(move |_preverified: bool, ctx: &mut X509StoreContextRef| {
        // OpenSSL's own chain verification fails for a self-signed, CA:FALSE certificate that
        // is in no trust store; what decides is whether the peer's leaf is the pinned one.
        let ok = ctx.error_depth() == 0
            && ctx.chain().is_some_and(|c| c.len() == 1)
            && ctx
                .current_cert()
                .and_then(|c| c.to_der().ok())
                .is_some_and(|der| der == pinned);
        if !ok {
            ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
        }
        ok
    })
}

/// TLS 1.3 suites in the order the server picks them: AES-128-GCM first. It is TLS 1.3's
/// mandatory suite, has a 128-bit security level like the P-256 keys, and is the fastest with
/// AES-NI (one core seals about 4 GB/s), which matters where one core does both ends' crypto.
const TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

fn tls13_only(b: &mut SslContextBuilder) -> Result<(), TlsError> {
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites(TLS13_SUITES)?;
    b.set_options(openssl::ssl::SslOptions::CIPHER_SERVER_PREFERENCE);
    // No read-ahead: OpenSSL takes exactly one record at a time from `TlsIo`, which reads the
    // socket in large chunks itself, so nothing is ever left inside OpenSSL unseen.
    b.set_read_ahead(false);
    Ok(())
}

/// Socket bytes read at a time (many records of a burst, or of one large message, per read).
const READ_CHUNK: usize = 64 * 1024;

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
}

impl<R: AsyncRead + Unpin> TlsIo<R> {
    /// Reads what the socket has into `inbuf` (empty on Ready: the end of the stream). While
    /// there is nothing to read, an idle connection keeps no buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inbuf.reserve(READ_CHUNK);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.reader), cx, &mut self.inbuf);
        if read.is_pending() && self.inbuf.is_empty() {
            self.inbuf = BytesMut::new();
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
/// ([`peerwire_proto::io::Seal`]). Sealing a batch of frames is one `SSL_write` into memory,
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

impl<R: AsyncRead + Unpin + Send> peerwire_proto::io::Seal for TlsSession<R> {
    fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> std::io::Result<()> {
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

/// Whether `e`, from reading or writing a TLS session, is TLS refusing what the peer sent (a
/// record that does not authenticate, an unexpected message, an alert), rather than the socket
/// failing.
pub fn is_tls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<openssl::ssl::Error>())
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
    };
    let mut s = SslStream::new(ssl, io)?;
    let done = if accept {
        Pin::new(&mut s).accept().await
    } else {
        Pin::new(&mut s).connect().await
    };
    if let Err(e) = done {
        return Err(handshake_error(s, e, what));
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

fn handshake_error(
    e: tokio_openssl::SslStream<impl Sized>,
    err: openssl::ssl::Error,
    what: &'static str,
) -> TlsError {
    if e.ssl().verify_result() == X509VerifyResult::APPLICATION_VERIFICATION {
        return TlsError::NotPinned(what);
    }
    TlsError::Handshake(err)
}

/// The server side: our identity, and in mutual mode the pinned client certificate.
pub struct ServerTls {
    acceptor: SslAcceptor,
    mode: TlsMode,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// A TLS 1.3 server context for `identity` (role server). `mode` must not be `Off`.
    pub fn new(identity: &Identity, mode: TlsMode) -> Result<Self, TlsError> {
        let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
        tls13_only(&mut b)?;
        b.set_private_key(&identity.key)?;
        b.set_certificate(&identity.cert)?;
        b.check_private_key()?;
        // No session tickets: every connection authenticates afresh.
        b.set_num_tickets(0)?;
        match mode {
            TlsMode::Mutual => b.set_verify_callback(
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
                pin(&identity.peer)?,
            ),
            _ => b.set_verify(SslVerifyMode::NONE),
        }
        Ok(Self {
            acceptor: b.build(),
            mode,
        })
    }

    /// The server context for `mode` from an identity directory made by `peerwire init`, or
    /// `None` for [`TlsMode::Off`].
    pub fn from_dir(dir: &std::path::Path, mode: TlsMode) -> Result<Option<Self>, TlsError> {
        if mode == TlsMode::Off {
            return Ok(None);
        }
        let identity = Identity::load(dir, crate::identity::Role::Server)?;
        Self::new(&identity, mode).map(Some)
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Runs the server side of the handshake on a socket's two sides; returns the session
    /// and the write side, for the connection's `FrameSink`.
    pub async fn accept<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        writer: PlainWriter,
    ) -> Result<(TlsSession<R>, PlainWriter), TlsError> {
        let ssl = Ssl::new(self.acceptor.context())?;
        handshake(ssl, reader, writer, "client", true).await
    }
}

/// The client side: the pinned server certificate, and in mutual mode our identity.
pub struct ClientTls {
    context: SslContext,
    mode: TlsMode,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ClientTls {
    /// Mutual TLS with `identity` (role client).
    pub fn mutual(identity: &Identity) -> Result<Self, TlsError> {
        Self::build(&identity.peer, Some(identity), TlsMode::Mutual)
    }

    /// The client context for `mode` from an identity directory made by `peerwire init`, or
    /// `None` for [`TlsMode::Off`]. Server-auth needs only the pinned server certificate.
    pub fn from_dir(dir: &std::path::Path, mode: TlsMode) -> Result<Option<Self>, TlsError> {
        use crate::identity::Role;
        match mode {
            TlsMode::Off => Ok(None),
            TlsMode::ServerAuth => {
                Self::server_auth(&Identity::load_peer(dir, Role::Client)?).map(Some)
            }
            TlsMode::Mutual => Self::mutual(&Identity::load(dir, Role::Client)?).map(Some),
        }
    }

    /// Server authentication only: the client trusts `server_cert` and presents no certificate.
    pub fn server_auth(server_cert: &X509) -> Result<Self, TlsError> {
        Self::build(server_cert, None, TlsMode::ServerAuth)
    }

    fn build(pinned: &X509, identity: Option<&Identity>, mode: TlsMode) -> Result<Self, TlsError> {
        // A bare context, not SslConnector: that one loads the system's CA store (tens of
        // milliseconds per client), which pinning never consults.
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        tls13_only(&mut b)?;
        if let Some(id) = identity {
            b.set_private_key(&id.key)?;
            b.set_certificate(&id.cert)?;
            b.check_private_key()?;
        }
        b.set_verify_callback(SslVerifyMode::PEER, pin(pinned)?);
        Ok(Self {
            context: b.build(),
            mode,
        })
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Runs the client side of the handshake on a socket's two sides (see
    /// [`ServerTls::accept`]). In TLS 1.3 a server that refuses
    /// *our* certificate says so only after this returns: the error then surfaces on the
    /// first read.
    pub async fn connect<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        writer: PlainWriter,
    ) -> Result<(TlsSession<R>, PlainWriter), TlsError> {
        // Identity is pinned, not named: no hostname check, no SNI.
        let ssl = Ssl::new(&self.context)?;
        handshake(ssl, reader, writer, "server", false).await
    }
}
