//! A WebSocket connection (R16), from accept to close: the peer's uid (`sock_diag`) and the
//! access policy before a byte is read, the connection limits, TLS 1.3, the HTTP request head
//! (a file of the web root, or the upgrade), the upgrade's checks (exact Origin, the session
//! token in the subprotocol), the 101, then the same `Hello`, session and close as a Unix
//! socket (`accept::establish`), the frames one per binary message (`ws::io`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::Frame;
use peerwire_proto::{HANDSHAKE_MAX_FRAME_SIZE, Status};
use peerwire_security::token::Presenter;
use peerwire_transport::FrameSink;
use peerwire_transport::stream::{self, FrameReader};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::logs::Untrusted;
use crate::registry::{Shared, bump};
use crate::ws::http::{self, HeadError};
use crate::ws::io::{OutHandle, WholeWrites, WsIn, WsOut};
use crate::ws::{WsShared, peer};

use super::ConnWriter;
use super::accept::establish;
use super::admission::Admission;
use super::handshake::check_token;

/// TLS over the TCP stream read in chunks of [`READ_CHUNK`]: OpenSSL (no read-ahead) reads a
/// record's 5-byte header, then its body; from the socket that is one `recv` per chunk, not two
/// per record, and a short read tells tokio the socket is drained (no `recv` that finds nothing).
type Tls = SslStream<BufReader<TcpStream>>;

/// Bytes read from the TCP socket at a time (as the Unix socket's TLS transport reads).
const READ_CHUNK: usize = 64 * 1024;

/// A WebSocket connection's write side: its sink from the upgrade on.
struct WsWriter {
    sink: Arc<FrameSink<OutHandle>>,
    out: Arc<WsOut>,
}

impl ConnWriter for WsWriter {
    type Io = OutHandle;

    async fn send_last(&mut self, frame: &Frame, timeout: Duration) {
        if self.sink.try_send(frame).is_ok() {
            tokio::select! {
                biased;
                _ = self.sink.flushed(timeout) => {}
                () = self.sink.run() => {}
            }
        }
        self.sink.close();
        self.out.close();
    }

    fn into_session(
        self,
        reader: &mut FrameReader,
        max_frame_size: u32,
        _max_bytes: usize,
        _max_frames: usize,
    ) -> Arc<FrameSink<OutHandle>> {
        reader.decoder_mut().set_max_frame_size(max_frame_size);
        self.sink.set_max_frame_size(max_frame_size);
        self.sink
    }
}

/// Why a WebSocket connection was refused before its session. Each refusal has its HTTP answer
/// (if it gets one: before TLS, or without a request, the connection just closes), its counter
/// and its log line, which the connection's span completes with the peer's address and uid.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "access denied: the peer's uid cannot be determined (sock_diag: {0}); closed before TLS"
    )]
    UnknownUid(#[source] std::io::Error),
    #[error(
        "access denied: uid {0} was denied more than {n} times within {w:?}; closed",
        n = crate::fds::PENALTY_AFTER,
        w = crate::fds::PENALTY_WINDOW
    )]
    Penalty(u32),
    #[error("access denied: {0}; closed before TLS")]
    Policy(String),
    #[error("connection refused: {}", Untrusted(&.0.message))]
    Limit(Status),
    #[error("closed before its upgrade: {0}")]
    Evicted(Status),
    #[error("closed before its upgrade: the server is shutting down")]
    ShuttingDown,
    #[error("TLS and the request head not complete within the handshake timeout of {0:?}")]
    Timeout(Duration),
    #[error("TLS: {}", Untrusted(&.0.to_string()))]
    Tls(#[source] peerwire_security::tls::TlsError),
    #[error("request head: {0}")]
    Head(#[source] HeadError),
    #[error("method {} not allowed", Untrusted(.0))]
    Method(String),
    #[error("no file {}", Untrusted(.0))]
    NotFound(String),
    #[error("not a WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    #[error("access denied: no Origin (or more than one)")]
    NoOrigin,
    #[error("access denied: Origin null")]
    NullOrigin,
    #[error("access denied: Origin {} is not allowed", Untrusted(.0))]
    Origin(String),
    #[error("session token refused: {0}")]
    Token(String),
    #[error("writing the 101 failed: {0}")]
    Write(#[source] std::io::Error),
}

impl Refusal {
    /// The HTTP status and reason phrase it is answered with, if any.
    fn http(&self) -> Option<(u16, &'static str)> {
        Some(match self {
            Self::Head(HeadError::TooLarge) => (431, "Request Header Fields Too Large"),
            Self::Head(HeadError::Malformed(_)) | Self::BadUpgrade(_) => (400, "Bad Request"),
            Self::Method(_) => (405, "Method Not Allowed"),
            Self::NotFound(_) => (404, "Not Found"),
            Self::NoOrigin | Self::NullOrigin | Self::Origin(_) | Self::Token(_) => {
                (403, "Forbidden")
            }
            _ => return None,
        })
    }

    /// The counter it is counted by, if any (a file not found, a closed peer: none).
    fn counter<'a>(&self, c: &'a crate::registry::Counters) -> Option<&'a AtomicU64> {
        Some(match self {
            Self::UnknownUid(_)
            | Self::Penalty(_)
            | Self::Policy(_)
            | Self::NoOrigin
            | Self::NullOrigin
            | Self::Origin(_) => &c.denied,
            Self::Limit(_) | Self::Evicted(_) => &c.limit_refusals,
            Self::Timeout(_) => &c.handshake_failures,
            Self::Tls(_) => &c.tls_failures,
            Self::Head(HeadError::TooLarge | HeadError::Malformed(_)) | Self::BadUpgrade(_) => {
                &c.protocol_errors
            }
            Self::Token(_) => &c.token_failures,
            _ => return None,
        })
    }

    /// Counts and logs it (rate-limited per uid: `u32::MAX` when the uid is unknown).
    fn record(&self, shared: &Shared, uid: u32) {
        if let Some(counter) = self.counter(&shared.counters) {
            bump(counter);
        }
        shared.log_limit.log(uid, || match self.http() {
            Some((status, _)) => tracing::warn!("refused with HTTP {status}: {self}"),
            // A browser's speculative connection, or a probe: nothing was asked.
            None if matches!(self, Self::Head(HeadError::Closed)) => tracing::info!("{self}"),
            None => tracing::warn!("{self}"),
        });
    }
}

/// Serves one accepted TCP connection on the WebSocket endpoint.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    ws: Arc<WsShared>,
    tcp: TcpStream,
    addr: SocketAddr,
    pre_admission: tokio::sync::OwnedSemaphorePermit,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::error_span!("conn", id, peer = %addr, uid = tracing::field::Empty, transport = "wss");
    async move {
        // Frames are written whole, often small: no Nagle delay (a response would otherwise
        // wait for the peer's delayed ACK of the one before).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        // The peer's uid, from the kernel, before a byte is read.
        let uid = match peer::tcp_peer_uid(ws.addr, addr) {
            Ok(uid) => uid,
            Err(e) => return Refusal::UnknownUid(e).record(&shared, u32::MAX),
        };
        tracing::Span::current().record("uid", uid);
        if shared.penalty.active(uid) {
            return Refusal::Penalty(uid).record(&shared, uid);
        }
        let peer = match shared.policy.admits_tcp_uid(uid) {
            Ok(peer) => peer,
            Err(reason) => {
                shared.penalty.denied(uid);
                return Refusal::Policy(reason).record(&shared, uid);
            }
        };
        bump(&shared.counters.accepted);
        let admission = match Admission::new(&shared, uid, id) {
            Ok(a) => a,
            Err(status) => return Refusal::Limit(status).record(&shared, uid),
        };
        drop(pre_admission);
        // TLS, the request head and the upgrade share one deadline (the handshake timeout);
        // the Hello has its own after the upgrade.
        let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
        let upgraded = tokio::select! {
            biased;
            () = admission.evicted.cancelled() => Err(Refusal::Evicted(admission.eviction())),
            () = shared.shutdown.cancelled() => Err(Refusal::ShuttingDown),
            r = tokio::time::timeout_at(deadline, upgrade(&shared, &ws, tcp, uid)) => r
                .unwrap_or(Err(Refusal::Timeout(shared.limits.handshake_timeout))),
        };
        let (tls, rest) = match upgraded {
            Ok(Some(upgraded)) => upgraded,
            // A file of the web root was served, or the peer was answered its refusal.
            Ok(None) => return,
            Err(refusal) => return refusal.record(&shared, uid),
        };
        // Reads of one TLS record (16 KiB) at most: tungstenite zero-fills the read buffer's
        // room before every read, 128 KiB by default.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_message_size(Some(shared.limits.max_frame_size as usize))
            .max_frame_size(Some(shared.limits.max_frame_size as usize))
            .max_write_buffer_size(
                WebSocketConfig::default().write_buffer_size
                    + shared.limits.max_frame_size as usize
                    + 64,
            );
        let socket = WebSocketStream::from_partially_read(
            WholeWrites(tls),
            rest,
            Role::Server,
            Some(config),
        )
        .await;
        let (sink_half, stream_half) = futures_util::StreamExt::split(socket);
        let out = Arc::new(WsOut::default());
        let writer = {
            let out = out.clone();
            tokio::spawn(async move {
                let done = crate::ws::io::writer(out.clone(), sink_half).await;
                out.close();
                done
            })
        };
        let reader = stream::reader(Box::new(WsIn::new(stream_half)));
        let wr = WsWriter {
            sink: Arc::new(FrameSink::new(
                OutHandle(out.clone()),
                FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE),
                shared.limits.outbound_queue_bytes,
                shared.limits.outbound_queue,
            )),
            out: out.clone(),
        };
        let hello_deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
        let grace = shared.limits.shutdown_grace;
        // The token was checked at the upgrade: the Hello's token field is ignored.
        establish(
            shared,
            admission,
            peer,
            hello_deadline,
            None,
            None,
            reader,
            wr,
        )
        .await;
        // What the session queued goes out, then a close message, within the grace period.
        out.close();
        let abort = writer.abort_handle();
        match tokio::time::timeout(grace, writer).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::debug!("WebSocket close: {e}"),
            Ok(Err(_)) => {}
            Err(_) => {
                abort.abort();
                tracing::info!("peer is not reading; dropping its unsent WebSocket messages");
            }
        }
    }
    .instrument(span)
    .await
}

/// TLS, then the request head: a file of the web root, or the upgrade's checks and the 101
/// (`Some`: the TLS stream and what the peer sent after its head). A refusal after TLS is
/// answered, counted and logged here (`None`); one without an answer is returned.
async fn upgrade(
    shared: &Shared,
    ws: &WsShared,
    tcp: TcpStream,
    uid: u32,
) -> Result<Option<(Tls, Vec<u8>)>, Refusal> {
    let mut tls = ws
        .tls
        .ssl()
        .and_then(|ssl| {
            SslStream::new(ssl, BufReader::with_capacity(READ_CHUNK, tcp)).map_err(Into::into)
        })
        .map_err(Refusal::Tls)?;
    if let Err(e) = std::pin::Pin::new(&mut tls).accept().await {
        let e = peerwire_security::tls::handshake_error(tls.ssl(), e, "client");
        return Err(Refusal::Tls(e));
    }
    let mut buf = Vec::new();
    let checked = match http::read_head(&mut tls, &mut buf).await {
        Ok(req) => check(ws, &req, uid).await,
        Err(e) => Err(Refusal::Head(e)),
    };
    let response = match checked {
        Ok(Answer::Upgrade(key)) => {
            tls.write_all(&http::switching_protocols(&key))
                .await
                .map_err(Refusal::Write)?;
            tls.flush().await.map_err(Refusal::Write)?;
            tracing::info!("WebSocket upgrade: origin and session token accepted");
            return Ok(Some((tls, buf)));
        }
        Ok(Answer::File(response)) => response,
        Err(refusal) => {
            let Some((status, reason)) = refusal.http() else {
                return Err(refusal);
            };
            refusal.record(shared, uid);
            http::error_response(status, reason, &refusal.to_string())
        }
    };
    let _ = tls.write_all(&response).await;
    let _ = tls.shutdown().await;
    Ok(None)
}

/// What a request head is answered with, once it passed its checks.
enum Answer {
    /// A file of the web root (the whole response).
    File(Vec<u8>),
    /// The upgrade, with its `Sec-WebSocket-Key`.
    Upgrade(String),
}

/// The checks of a request head: the method, a file of the web root, or the upgrade's (its
/// headers, (1) the Origin, (2) the session token for this endpoint and this uid).
async fn check(ws: &WsShared, req: &http::Request, uid: u32) -> Result<Answer, Refusal> {
    // GET (an upgrade or a file), or HEAD of a file; nothing else.
    let head_only = req.method == "HEAD" && !req.wants_upgrade();
    if req.method != "GET" && !head_only {
        return Err(Refusal::Method(req.method.clone()));
    }
    if !req.wants_upgrade() {
        // A file of the web root, by exact name.
        let (body, ty) = ws
            .web
            .get(&req.path)
            .ok_or_else(|| Refusal::NotFound(req.path.clone()))?;
        tracing::debug!(path = %Untrusted(&req.path), "served");
        return Ok(Answer::File(http::file_response(ty, body, head_only)));
    }
    let key = req.upgrade_key().map_err(Refusal::BadUpgrade)?.to_owned();
    match req.one("origin") {
        Some(o) if o != "null" && ws.origins.iter().any(|a| a == o) => {}
        None => return Err(Refusal::NoOrigin),
        Some("null") => return Err(Refusal::NullOrigin),
        Some(o) => return Err(Refusal::Origin(o.to_owned())),
    }
    let presenter = Presenter {
        uid,
        exe: None,
        socket: ws.endpoint.clone(),
    };
    let token = req.token().map_err(|why| Refusal::Token(why.to_owned()))?;
    check_token(Some(&ws.tokens), Some(&presenter), token.as_bytes())
        .await
        .map_err(|status| Refusal::Token(status.message))?;
    Ok(Answer::Upgrade(key))
}
