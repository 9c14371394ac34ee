//! A WebSocket connection (R16), from accept to close: the peer's uid (`sock_diag`) and the
//! access policy before a byte is read, the connection limits, TLS 1.3, the HTTP request head
//! (a file of the web root, or the upgrade), the upgrade's checks (exact Origin, the session
//! token in the subprotocol), the 101, then the same `Hello`, session and close as a Unix
//! socket (`accept::establish`), the frames one per binary message (`ws::io`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use peerwire_proto::HANDSHAKE_MAX_FRAME_SIZE;
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::Frame;
use peerwire_security::token::Presenter;
use peerwire_transport::FrameSink;
use peerwire_transport::stream::{self, FrameReader};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::logs::Untrusted;
use crate::registry::{Shared, bump};
use crate::ws::http::{self, HeadError};
use crate::ws::io::{OutHandle, WsIn, WsOut};
use crate::ws::{WsShared, peer};

use super::ConnWriter;
use super::accept::establish;
use super::admission::Admission;
use super::handshake::check_token;

type Tls = SslStream<TcpStream>;

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

/// Why a connection ended before its upgrade.
enum Refused {
    /// Answered with an HTTP status, logged and counted.
    Http,
    /// Closed without an answer; the log line is said.
    Quiet(String),
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
            Err(e) => {
                bump(&shared.counters.denied);
                shared.log_limit.log(u32::MAX, || {
                    tracing::warn!("access denied: the uid of {addr} cannot be determined (sock_diag: {e})");
                });
                return;
            }
        };
        tracing::Span::current().record("uid", uid);
        if shared.penalty.active(uid) {
            bump(&shared.counters.denied);
            shared.log_limit.log(uid, || {
                tracing::warn!(
                    "access denied: uid {uid} was denied more than {} times within {:?}; closed",
                    crate::fds::PENALTY_AFTER,
                    crate::fds::PENALTY_WINDOW
                );
            });
            return;
        }
        let peer = match shared.policy.admits_tcp_uid(uid) {
            Ok(peer) => peer,
            Err(reason) => {
                bump(&shared.counters.denied);
                shared.penalty.denied(uid);
                shared.log_limit.log(uid, || {
                    tracing::warn!("access denied: {addr} uid {uid}: {reason}; closed before TLS");
                });
                return;
            }
        };
        bump(&shared.counters.accepted);
        let admission = match Admission::new(&shared, uid, id) {
            Ok(a) => a,
            Err(status) => {
                bump(&shared.counters.limit_refusals);
                shared.log_limit.log(uid, || {
                    tracing::warn!("connection refused: {}", Untrusted(&status.message));
                });
                return;
            }
        };
        drop(pre_admission);
        // TLS, the request head and the upgrade share one deadline (the handshake timeout);
        // the Hello has its own after the upgrade.
        let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
        let upgraded = tokio::select! {
            biased;
            () = admission.evicted.cancelled() => {
                bump(&shared.counters.limit_refusals);
                Err(Refused::Quiet(format!("closed before its upgrade: {}", admission.eviction())))
            }
            () = shared.shutdown.cancelled() => {
                Err(Refused::Quiet("closed before its upgrade: the server is shutting down".into()))
            }
            r = tokio::time::timeout_at(deadline, upgrade(&shared, &ws, tcp, uid)) => match r {
                Ok(r) => r,
                Err(_) => {
                    bump(&shared.counters.handshake_failures);
                    Err(Refused::Quiet(format!(
                        "TLS and the request head not complete within the handshake timeout of {:?}",
                        shared.limits.handshake_timeout
                    )))
                }
            },
        };
        let (tls, rest) = match upgraded {
            Ok(Some(upgraded)) => upgraded,
            // A file of the web root was served.
            Ok(None) => return,
            Err(Refused::Quiet(why)) => {
                shared.log_limit.log(uid, || tracing::warn!("{addr} uid {uid}: {}", Untrusted(&why)));
                return;
            }
            Err(Refused::Http) => return,
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(shared.limits.max_frame_size as usize))
            .max_frame_size(Some(shared.limits.max_frame_size as usize))
            .max_write_buffer_size(
                WebSocketConfig::default().write_buffer_size
                    + shared.limits.max_frame_size as usize
                    + 64,
            );
        let socket = WebSocketStream::from_partially_read(tls, rest, Role::Server, Some(config)).await;
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
        establish(shared, admission, peer, hello_deadline, None, None, reader, wr).await;
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

/// TLS, then the request head: a file of the web root (`None` once served), or the upgrade's
/// checks and the 101 (`Some`: the TLS stream and what the peer sent after its head).
async fn upgrade(
    shared: &Shared,
    ws: &WsShared,
    tcp: TcpStream,
    uid: u32,
) -> Result<Option<(Tls, Vec<u8>)>, Refused> {
    let ssl = ws
        .tls
        .ssl()
        .map_err(|e| Refused::Quiet(format!("TLS set-up: {e}")))?;
    let mut tls =
        SslStream::new(ssl, tcp).map_err(|e| Refused::Quiet(format!("TLS set-up: {e}")))?;
    if let Err(e) = std::pin::Pin::new(&mut tls).accept().await {
        bump(&shared.counters.tls_failures);
        let e = peerwire_security::tls::handshake_error(tls.ssl(), e, "client");
        return Err(Refused::Quiet(format!("TLS: {e}")));
    }
    let mut buf = Vec::new();
    let req = match http::read_head(&mut tls, &mut buf).await {
        Ok(req) => req,
        Err(e) => {
            bump(&shared.counters.protocol_errors);
            let (status, reason) = match e {
                HeadError::TooLarge => (431, "Request Header Fields Too Large"),
                HeadError::Malformed(_) => (400, "Bad Request"),
                HeadError::Closed | HeadError::Io(_) => {
                    return Err(Refused::Quiet(format!("request head: {e}")));
                }
            };
            return Err(respond(&mut tls, shared, uid, status, reason, e.to_string()).await);
        }
    };
    // GET (an upgrade or a file), or HEAD of a file; nothing else.
    let head_only = req.method == "HEAD" && !req.wants_upgrade();
    if req.method != "GET" && !head_only {
        let why = format!("method {} not allowed", Untrusted(&req.method));
        return Err(respond(&mut tls, shared, uid, 405, "Method Not Allowed", why).await);
    }
    if !req.wants_upgrade() {
        // A file of the web root, by exact name.
        let Some((body, ty)) = ws.web.get(&req.path) else {
            let why = format!("no file {}", Untrusted(&req.path));
            return Err(respond(&mut tls, shared, uid, 404, "Not Found", why).await);
        };
        let response = http::file_response(ty, body, head_only);
        let _ = tls.write_all(&response).await;
        let _ = tls.shutdown().await;
        tracing::debug!(path = %Untrusted(&req.path), "served");
        return Ok(None);
    }
    let key = match req.upgrade_key() {
        Ok(key) => key.to_owned(),
        Err(why) => {
            bump(&shared.counters.protocol_errors);
            return Err(respond(&mut tls, shared, uid, 400, "Bad Request", why.into()).await);
        }
    };
    // (1) The Origin, exactly one of the allowed ones.
    match req.one("origin") {
        Some(o) if o != "null" && ws.origins.iter().any(|a| a == o) => {}
        other => {
            bump(&shared.counters.denied);
            let why = match other {
                None => "access denied: no Origin (or more than one)".to_owned(),
                Some("null") => "access denied: Origin null".to_owned(),
                Some(o) => format!("access denied: Origin {} is not allowed", Untrusted(o)),
            };
            return Err(respond(&mut tls, shared, uid, 403, "Forbidden", why).await);
        }
    }
    // (2) The session token, from the subprotocol offers, for this endpoint and this uid.
    let presenter = Presenter {
        uid,
        exe: None,
        socket: ws.endpoint.clone(),
    };
    let checked = match req.token() {
        Ok(token) => check_token(Some(&ws.tokens), Some(&presenter), token.as_bytes())
            .await
            .map_err(|status| status.message),
        Err(why) => Err(why.to_owned()),
    };
    if let Err(why) = checked {
        bump(&shared.counters.token_failures);
        let why = format!("session token refused: {why}");
        return Err(respond(&mut tls, shared, uid, 403, "Forbidden", why).await);
    }
    if let Err(e) = tls.write_all(&http::switching_protocols(&key)).await {
        return Err(Refused::Quiet(format!("writing the 101 failed: {e}")));
    }
    tracing::info!("WebSocket upgrade: origin and session token accepted");
    Ok(Some((tls, buf)))
}

/// Answers `status` with `why` as the body, logs it, closes the TLS session.
async fn respond(
    tls: &mut Tls,
    shared: &Shared,
    uid: u32,
    status: u16,
    reason: &'static str,
    why: String,
) -> Refused {
    shared.log_limit.log(uid, || {
        tracing::warn!("refused with HTTP {status}: {}", Untrusted(&why));
    });
    let _ = tls
        .write_all(&http::error_response(status, reason, &why))
        .await;
    let _ = tls.shutdown().await;
    Refused::Http
}
