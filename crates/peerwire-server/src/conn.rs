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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::handshake::{ServerHandshake, ServerOutcome, Session};
use peerwire_proto::io::{FrameSink, Opened};
use peerwire_proto::v1::{
    Code, Frame, Goodbye, Ping, Pong, Request, Response, SubscribeRequest, SubscribeResponse,
    frame::Kind,
};
use peerwire_proto::{
    HANDSHAKE_MAX_FRAME_SIZE, METHOD_STATS, METHOD_SUBSCRIBE, METHOD_UNSUBSCRIBE, Status,
};
use peerwire_security::cred::PeerCredentials;
use peerwire_security::exe::{SenderGuard, sender_refused};
use peerwire_security::plain::{PlainWriter, split_guarded};
use peerwire_security::token::Presenter;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ServerHandle;
use crate::logs::Untrusted;
use crate::registry::{ConnEntry, Full, Outbox, PushTarget, Shared, bump};
use crate::router::{ConnInfo, ConnectionContext, EventFn, RequestContext};

/// Client events queued for a connection's event handlers before new ones are dropped.
const EVENT_QUEUE: usize = 256;
/// Unread input a refused connection may send while it lingers (see [`linger`]).
const LINGER_BYTES: u64 = 64 * 1024;

/// The read side of a plain Unix stream, or of a TLS session (see [`Opened`]).
type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// A connection's write side until the session starts: a plain socket's, or the sink of a TLS
/// session (every byte after the TLS handshake goes through it, sealed).
enum Wr {
    Plain(PlainWriter),
    Sealed(Arc<FrameSink<PlainWriter>>),
}

impl Wr {
    /// Sends `frame` as the last frame of the connection (a refusal), within `timeout`.
    async fn send_last(&mut self, frame: Frame, timeout: Duration) {
        match self {
            Self::Plain(wr) => send_direct(wr, frame, timeout).await,
            Self::Sealed(sink) => {
                if sink.try_send(&frame).is_ok() {
                    tokio::select! {
                        biased;
                        _ = sink.flushed(timeout) => {}
                        () = sink.run() => {}
                    }
                }
                sink.close();
            }
        }
    }
}

type Reader = FramedRead<BoxRead, FrameCodec>;

/// Serves one accepted connection; `pre_admission` is its place among the connections not yet
/// admitted, given back once it is admitted or closed.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: UnixStream,
    pre_admission: tokio::sync::OwnedSemaphorePermit,
) {
    let peer = match PeerCredentials::of(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("cannot read peer credentials, closing the connection: {e}");
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    // ERROR level so that the span, and with it the peer's credentials, is on every line of
    // this connection whatever level RUST_LOG lets through.
    let span = tracing::error_span!("conn", id, %peer);
    async move {
        // A uid the policy keeps denying is closed at once, past its burst (see `fds`).
        if shared.penalty.active(peer.uid) {
            bump(&shared.counters.denied);
            shared.log_limit.log(peer.uid, || {
                tracing::warn!(
                    "access denied: uid {} was denied more than {} times within {:?}; closed without a reply",
                    peer.uid,
                    crate::fds::PENALTY_AFTER,
                    crate::fds::PENALTY_WINDOW
                );
            });
            return;
        }
        // The access policy is checked before a single byte of the peer is read.
        let guard = match shared.policy.check(&stream, &peer, shared.tokens.is_some()) {
            Ok(guard) => guard,
            Err(reason) => {
                bump(&shared.counters.denied);
                if !shared.policy.admits_identity(&stream, &peer) {
                    shared.penalty.denied(peer.uid);
                }
                let reason_shown = Untrusted(&reason);
                shared
                    .log_limit
                    .log(peer.uid, || tracing::warn!("access denied: {reason_shown}"));
                let status = Status::new(Code::PermissionDenied, reason);
                refuse_unread(&shared, stream, &status).await;
                return;
            }
        };
        bump(&shared.counters.accepted);
        tracing::debug!("admitted by the access policy");
        // Connection limits, still before any byte of the peer is read.
        let mut admission = match Admission::new(&shared, peer.uid, id) {
            Ok(a) => a,
            Err(status) => {
                bump(&shared.counters.limit_refusals);
                shared.log_limit.log(peer.uid, || {
                    tracing::warn!("connection refused: {}", Untrusted(&status.message));
                });
                refuse_unread(&shared, stream, &status).await;
                return;
            }
        };
        // Admitted: counted by the connection limits from now on.
        drop(pre_admission);
        // TLS (if any) and Hello share one deadline: the handshake timeout.
        let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
        // A session token may be bound to the client executable: the one of the process that
        // sends the Hello (the guard's first sender), filled in once the Hello is read.
        let presenter = shared.tokens.as_ref().map(|_| Presenter {
            uid: peer.uid,
            exe: None,
            socket: shared.socket_path.clone(),
        });
        let (rd, mut wr): (BoxRead, Wr) = match &shared.tls {
            None => match peerwire_security::plain::split_guarded(stream, guard.clone()) {
                Ok((rd, wr)) => (Box::new(rd), Wr::Plain(wr)),
                Err(e) => {
                    tracing::warn!("cannot set the connection up: {e}");
                    return;
                }
            },
            Some(tls) => match tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    biased;
                    () = admission.evicted.cancelled() => Err(TlsSetup::Evicted),
                    done = async {
                        if closed_before_sending(&stream).await {
                            return Err(TlsSetup::Closed);
                        }
                        let (rd, wr) = split_guarded(stream, guard.clone()).map_err(|e| {
                            TlsSetup::Failed(peerwire_security::tls::TlsError::Socket(e))
                        })?;
                        tls.accept(rd, wr).await.map_err(TlsSetup::Failed)
                    } => done,
                }
            })
            .await
            {
                Ok(Ok((session, wr))) => {
                    let sink = Arc::new(FrameSink::sealed(
                        wr,
                        FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE),
                        shared.limits.outbound_queue_bytes,
                        shared.limits.outbound_queue,
                        Box::new(session),
                    ));
                    (Box::new(Opened(sink.clone())), Wr::Sealed(sink))
                }
                Ok(Err(TlsSetup::Evicted)) => {
                    bump(&shared.counters.limit_refusals);
                    let status = admission.eviction();
                    shared.log_limit.log(peer.uid, || {
                        tracing::warn!("connection closed during its TLS handshake: {status}");
                    });
                    return;
                }
                Ok(Err(TlsSetup::Closed)) => {
                    shared.log_limit.log(peer.uid, || {
                        tracing::info!("closed before the TLS handshake")
                    });
                    return;
                }
                Ok(Err(TlsSetup::Failed(e))) => {
                    if let Some(refused) = guard.as_ref().and_then(|g| g.refusal()) {
                        bump(&shared.counters.denied);
                        let shown = refused.to_string();
                        shared.log_limit.log(peer.uid, || {
                            tracing::warn!(
                                "access denied during the TLS handshake: {}",
                                Untrusted(&shown)
                            );
                        });
                    } else {
                        bump(&shared.counters.tls_failures);
                        let shown = e.to_string();
                        shared
                            .log_limit
                            .log(peer.uid, || tracing::warn!("TLS: {}", Untrusted(&shown)));
                    }
                    return;
                }
                Err(_) => {
                    bump(&shared.counters.tls_failures);
                    shared.log_limit.log(peer.uid, || {
                        tracing::warn!(
                            "TLS handshake not finished within the handshake timeout of {:?}",
                            shared.limits.handshake_timeout
                        );
                    });
                    return;
                }
            },
        };
        let mut reader = FramedRead::new(rd, FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE));
        let Some((session, client_name, welcome)) = handshake(
            &shared,
            &admission,
            deadline,
            presenter.as_ref(),
            guard.as_deref(),
            &mut reader,
            &mut wr,
        )
        .await
        else {
            bump(&shared.counters.handshake_failures);
            linger(&shared, reader.into_inner()).await;
            return;
        };
        if !admission.authenticated() {
            // Evicted just as its handshake completed: refused like any evicted connection.
            bump(&shared.counters.limit_refusals);
            wr.send_last(
                reject_frame(&admission.eviction()),
                shared.limits.handshake_timeout,
            )
            .await;
            return;
        }
        bump(&shared.counters.sessions);
        tracing::info!(client = %Untrusted(&client_name), "session established");
        let info = Arc::new(ConnInfo {
            id,
            peer,
            client_name,
            session,
        });
        Connection::new(shared, info, reader, wr).run(welcome).await;
    }
    .instrument(span)
    .await
}

/// With session tokens required: the token in `Hello` must be valid, unused, and for this peer.
/// The verifier's lock is held for the checks and the (unsynced) append to the replay record
/// only; the record is made durable on a blocking thread, outside the lock, before the token
/// is honoured: a slow disk delays only this session. True when the token is bound to an
/// executable.
async fn check_token(
    shared: &Shared,
    presenter: Option<&Presenter>,
    token: &[u8],
) -> Result<bool, Status> {
    let (Some(verifier), Some(presenter)) = (&shared.tokens, presenter) else {
        return Ok(false);
    };
    let unauthenticated = |why: String| Status::new(Code::Unauthenticated, why);
    if token.is_empty() {
        return Err(unauthenticated(
            "this server requires a session token in Hello".into(),
        ));
    }
    let verified = {
        let mut verifier = verifier.lock().unwrap_or_else(|e| e.into_inner());
        verifier.verify_deferred(token, presenter)
    };
    let (claims, durable) = verified.map_err(|e| unauthenticated(e.to_string()))?;
    match tokio::task::spawn_blocking(move || durable.sync()).await {
        Ok(Ok(())) => {
            tracing::debug!(expires_at = claims.expires_at, "session token accepted");
            Ok(claims.exe_bound)
        }
        Ok(Err(e)) => Err(Status::new(
            Code::Unavailable,
            format!("the token's use could not be recorded: {e}"),
        )),
        Err(e) => Err(Status::internal(format!(
            "recording the token's use failed: {e}"
        ))),
    }
}

/// Waits until the peer sends something or hangs up; true if it hung up without a byte (a
/// liveness probe, a client that gave up). Peeks only: nothing is consumed or parsed.
async fn closed_before_sending(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    if stream.readable().await.is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    matches!(
        recv(
            stream.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(0)
    )
}

/// A connection's place in the connection limits, from admission to close.
///
/// A uid at its `max_unauthenticated_per_uid` limit does not lock itself out: the newcomer
/// evicts that uid's oldest connection still in its handshake (which is refused
/// `RESOURCE_EXHAUSTED`), so silent connections cannot keep out a client that completes its
/// handshake promptly.
struct Admission {
    shared: Arc<Shared>,
    uid: u32,
    id: u64,
    /// Cancelled when a newer connection of the same uid evicts this one from its handshake.
    evicted: CancellationToken,
}

impl Admission {
    /// Takes a place, or says which limit is full (and its value).
    fn new(shared: &Arc<Shared>, uid: u32, id: u64) -> Result<Self, Status> {
        let l = &shared.limits;
        let mut a = shared.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let full = |what: &str, limit: usize| {
            Err(Status::new(
                Code::ResourceExhausted,
                format!("{what} limit of {limit} reached"),
            ))
        };
        if a.total >= l.max_connections {
            return full("max_connections", l.max_connections);
        }
        let (open, handshaking) = a
            .per_uid
            .get(&uid)
            .map_or((0, 0), |u| (u.open, u.handshaking.len()));
        if open >= l.max_connections_per_uid {
            return full(
                &format!("max_connections_per_uid (uid {uid})"),
                l.max_connections_per_uid,
            );
        }
        let at_uid_limit = handshaking >= l.max_unauthenticated_per_uid;
        if !at_uid_limit && a.unauthenticated >= l.max_unauthenticated {
            return full("max_unauthenticated", l.max_unauthenticated);
        }
        let evicted = CancellationToken::new();
        let entry = a.per_uid.entry(uid).or_default();
        if at_uid_limit {
            // The uid's oldest connection still in its handshake makes room.
            if let Some((old, token)) = entry.handshaking.pop_front() {
                tracing::info!(
                    evicted = old,
                    "max_unauthenticated_per_uid limit of {} reached: evicting this uid's oldest connection still in its handshake",
                    l.max_unauthenticated_per_uid
                );
                token.cancel();
                a.unauthenticated = a.unauthenticated.saturating_sub(1);
            }
        }
        let entry = a.per_uid.entry(uid).or_default();
        entry.open += 1;
        entry.handshaking.push_back((id, evicted.clone()));
        a.total += 1;
        a.unauthenticated += 1;
        Ok(Self {
            shared: shared.clone(),
            uid,
            id,
            evicted,
        })
    }

    /// Takes the connection out of the handshaking ones. True if it was still there.
    fn leave_handshake(&self, a: &mut crate::registry::Admitted) -> bool {
        let Some(u) = a.per_uid.get_mut(&self.uid) else {
            return false;
        };
        let Some(i) = u.handshaking.iter().position(|(id, _)| *id == self.id) else {
            return false;
        };
        u.handshaking.remove(i);
        a.unauthenticated = a.unauthenticated.saturating_sub(1);
        true
    }

    /// The handshake succeeded: no longer counted as unauthenticated. False if the connection
    /// was evicted meanwhile (it must then be refused).
    fn authenticated(&mut self) -> bool {
        let mut a = self
            .shared
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.leave_handshake(&mut a)
    }

    /// The status an evicted connection is refused with.
    fn eviction(&self) -> Status {
        let limit = self.shared.limits.max_unauthenticated_per_uid;
        Status::new(
            Code::ResourceExhausted,
            format!(
                "max_unauthenticated_per_uid (uid {}) limit of {limit} reached: this connection was the oldest still in its handshake, and a newer one took its place",
                self.uid
            ),
        )
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut a = self
            .shared
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.leave_handshake(&mut a);
        a.total = a.total.saturating_sub(1);
        let gone = match a.per_uid.get_mut(&self.uid) {
            Some(u) => {
                u.open = u.open.saturating_sub(1);
                u.open == 0
            }
            None => false,
        };
        if gone {
            a.per_uid.remove(&self.uid);
        }
    }
}

/// Why a TLS connection did not get to its `Hello`.
enum TlsSetup {
    /// The peer hung up before sending anything.
    Closed,
    /// A newer connection of the same uid took its place (see [`Admission`]).
    Evicted,
    /// The TLS handshake failed.
    Failed(peerwire_security::tls::TlsError),
}

/// Refuses a peer before reading anything from it: a plain-text `Reject` (written only if the
/// socket takes it at once: a refused peer is not waited for), then close.
async fn refuse_unread(shared: &Shared, stream: UnixStream, status: &Status) {
    let mut buf = BytesMut::new();
    if FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE)
        .encode(&reject_frame(status), &mut buf)
        .is_ok()
    {
        let _ = stream.try_write(&buf);
    }
    let (rd, wr) = stream.into_split();
    drop(wr);
    linger(shared, rd).await;
}

/// Reads and discards what the peer already sent, briefly and boundedly, so that its write
/// of a `Hello` racing our close does not fail before it has read our `Reject`; only while
/// fewer than `fds::LINGERING` refused connections linger (else the socket closes at once),
/// so refused peers cannot hold the server's descriptors.
async fn linger<R: AsyncRead + Unpin>(shared: &Shared, rd: R) {
    let Ok(_place) = shared.lingering.try_acquire() else {
        return;
    };
    let _ = tokio::time::timeout(
        crate::fds::LINGER,
        tokio::io::copy(&mut rd.take(LINGER_BYTES), &mut tokio::io::sink()),
    )
    .await;
}

async fn send_direct<W: AsyncWrite + Unpin>(wr: &mut W, frame: Frame, timeout: Duration) {
    let mut buf = BytesMut::new();
    if FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE)
        .encode(&frame, &mut buf)
        .is_ok()
    {
        let _ = tokio::time::timeout(timeout, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(timeout, wr.shutdown()).await;
}

fn reject_frame(status: &Status) -> Frame {
    Frame::new(Kind::Reject(peerwire_proto::v1::Reject {
        code: status.code as i32,
        reason: status.message.clone(),
        supported_versions: peerwire_proto::SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
        namespaces: vec![],
    }))
}

/// A read refused because a chunk came from a process the connection does not admit
/// ([`SenderGuard`]): logged with both pids and counted as denied.
fn sender_refused_status(shared: &Shared, e: &CodecError) -> Option<Status> {
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

fn codec_status(e: &CodecError) -> Status {
    let code = match e {
        CodecError::FrameTooLarge { .. } => Code::FrameTooLarge,
        _ => Code::ProtocolError,
    };
    Status::new(code, e.to_string())
}

async fn handshake(
    shared: &Shared,
    admission: &Admission,
    deadline: tokio::time::Instant,
    presenter: Option<&Presenter>,
    guard: Option<&SenderGuard>,
    reader: &mut Reader,
    wr: &mut Wr,
) -> Option<(Session, String, Frame)> {
    let limits = &shared.limits;
    let uid = admission.uid;
    let refuse = |status: Status| {
        shared.log_limit.log(uid, || {
            tracing::warn!("handshake refused: {}", Untrusted(&status.to_string()));
        });
        reject_frame(&status)
    };
    let first = tokio::select! {
        first = tokio::time::timeout_at(deadline, reader.next()) => first,
        () = admission.evicted.cancelled() => {
            bump(&shared.counters.limit_refusals);
            wr.send_last(refuse(admission.eviction()), limits.handshake_timeout).await;
            return None;
        }
        _ = shared.shutdown.cancelled() => {
            let status = Status::new(Code::ShuttingDown, "the server is shutting down");
            wr.send_last(refuse(status), limits.handshake_timeout).await;
            return None;
        }
    };
    let frame = match first {
        Ok(Some(Ok(frame))) => frame,
        Ok(None) => {
            shared
                .log_limit
                .log(uid, || tracing::info!("closed before Hello"));
            return None;
        }
        Ok(Some(Err(e))) => {
            let status = match sender_refused_status(shared, &e) {
                Some(status) => status,
                None => codec_status(&e),
            };
            wr.send_last(refuse(status), limits.handshake_timeout).await;
            return None;
        }
        Err(_) => {
            let status = Status::new(
                Code::HandshakeTimeout,
                format!(
                    "no Hello within the handshake timeout of {:?}",
                    limits.handshake_timeout
                ),
            );
            wr.send_last(refuse(status), limits.handshake_timeout).await;
            return None;
        }
    };
    match ServerHandshake::new(shared.offer.clone(), admission.id).receive(frame) {
        ServerOutcome::Accept {
            welcome,
            session,
            hello,
        } => {
            // The program that sent the Hello presents the token.
            let presenter = presenter.map(|p| Presenter {
                exe: guard.and_then(SenderGuard::first_sender).map(|e| e.path),
                ..p.clone()
            });
            match check_token(shared, presenter.as_ref(), &hello.session_token).await {
                Err(status) => {
                    bump(&shared.counters.token_failures);
                    wr.send_last(refuse(status), limits.handshake_timeout).await;
                    return None;
                }
                // Nothing binds the connection to a program any more: stop checking senders.
                Ok(false) if !shared.policy.has_exes() => {
                    if let Some(guard) = guard {
                        guard.stop();
                    }
                }
                Ok(_) => {}
            }
            Some((session, hello.client_name, welcome))
        }
        ServerOutcome::Reject { reject, status } => {
            shared.log_limit.log(uid, || {
                tracing::warn!("handshake refused: {}", Untrusted(&status.to_string()));
            });
            wr.send_last(reject, limits.handshake_timeout).await;
            None
        }
    }
}

struct InFlight {
    abort: AbortHandle,
    method: Arc<str>,
}

struct Connection {
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    ctx: ConnectionContext,
    reader: Reader,
    writer: Option<Arc<FrameSink<PlainWriter>>>,
    tx: Outbox,
    events_out: Arc<crate::outbound::EventQueue>,
    events: mpsc::Sender<(EventFn, Bytes)>,
    events_rx: Option<mpsc::Receiver<(EventFn, Bytes)>>,
    kick: CancellationToken,
    in_flight: HashMap<u64, InFlight>,
    task_ids: HashMap<tokio::task::Id, u64>,
    tasks: JoinSet<Response>,
    draining: Option<tokio::time::Instant>,
    reading: bool,
    ping_nonce: u64,
}

/// What to do after handling a frame.
enum Next {
    Continue,
    Close(Option<Status>),
}

impl Connection {
    fn new(shared: Arc<Shared>, info: Arc<ConnInfo>, mut reader: Reader, wr: Wr) -> Self {
        reader
            .decoder_mut()
            .set_max_frame_size(info.session.max_frame_size());
        let events_out = Arc::new(crate::outbound::EventQueue::new(
            shared.limits.outbound_queue,
            shared.limits.outbound_queue_bytes,
        ));
        let max = info.session.max_frame_size();
        let sink = match wr {
            Wr::Plain(wr) => Arc::new(FrameSink::new(
                wr,
                FrameCodec::new(max),
                shared.limits.outbound_queue_bytes,
                shared.limits.outbound_queue,
            )),
            Wr::Sealed(sink) => {
                sink.set_max_frame_size(max);
                sink
            }
        };
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let ctx = ConnectionContext {
            inner: info.clone(),
            server: ServerHandle {
                shared: shared.clone(),
            },
        };
        Self {
            shared,
            info,
            ctx,
            reader,
            writer: Some(sink.clone()),
            tx: Outbox(sink),
            events_out,
            events,
            events_rx: Some(events_rx),
            kick: CancellationToken::new(),
            in_flight: HashMap::new(),
            task_ids: HashMap::new(),
            tasks: JoinSet::new(),
            draining: None,
            reading: true,
            ping_nonce: 0,
        }
    }

    /// Sends `welcome` as the first frame, registers the connection (so the server knows it
    /// before the client can act on the Welcome), and serves it.
    async fn run(mut self, welcome: Frame) {
        let (Some(sink), Some(events_rx)) = (self.writer.take(), self.events_rx.take()) else {
            return;
        };
        // Corked: the sending task writes at once, and the Welcome must not leave before the
        // connection is registered.
        self.tx.cork();
        if self.tx.push(welcome).is_err() {
            return;
        }
        self.shared.conns().insert(
            self.info.id,
            ConnEntry {
                info: self.info.clone(),
                topics: HashSet::new(),
                out: Arc::new(PushTarget {
                    info: self.info.clone(),
                    tx: self.tx.clone(),
                    seq: Default::default(),
                    events: self.events_out.clone(),
                    kick: self.kick.clone(),
                }),
            },
        );
        self.tx.uncork();
        let writer = tokio::spawn(crate::outbound::sink_loop(
            sink.clone(),
            self.events_out.clone(),
        ));
        let event_task = tokio::spawn(run_event_handlers(self.ctx.clone(), events_rx));

        let reason = self.serve().await;
        self.tx.uncork();
        if let Some(status) = &reason {
            if status.code == Code::ShuttingDown {
                tracing::debug!("closing: {status}");
            } else {
                let uid = self.info.peer.uid;
                self.shared.log_limit.log(uid, || {
                    tracing::warn!("closing: {}", Untrusted(&status.to_string()));
                });
            }
        }

        // Close: stop handlers and event handlers, unregister, let the writer flush what is
        // queued (bounded by the grace period: a peer that does not read is not waited for).
        self.tasks.abort_all();
        event_task.abort();
        self.shared.conns().remove(&self.info.id);
        self.shared.counters.events_dropped.fetch_add(
            self.events_out.dropped.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let Connection {
            tx,
            shared,
            events_out,
            ..
        } = self;
        drop(tx);
        // What is queued still goes out, within the grace period: events of drop-policy
        // topics first move into the sink, then the sink drains into the socket.
        let grace = shared.limits.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while !events_out.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sink.flushed(grace).await
        })
        .await
        .unwrap_or(false);
        if !drained {
            tracing::warn!("peer is not reading; dropping its unsent frames");
        }
        sink.close();
        if let Err(e) = writer.await {
            tracing::error!("writer task failed: {e}");
        }
        tracing::info!("closed");
    }

    /// The serving loop. Returns the reason the connection closes, if it is worth a log line.
    async fn serve(&mut self) -> Option<Status> {
        let limits = self.shared.limits;
        let mut last_rx = Instant::now();
        let mut ticker = tokio::time::interval(
            limits
                .keepalive_interval
                .min(limits.idle_timeout / 4)
                .max(Duration::from_millis(1)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Registered once, not on every turn of the loop.
        let kicked = self.kick.clone().cancelled_owned();
        let shutdown = self.shared.shutdown.clone().cancelled_owned();
        tokio::pin!(kicked, shutdown);
        loop {
            if self.draining.is_some() && self.tasks.is_empty() {
                return None;
            }
            let drain_at = self.draining;
            tokio::select! {
                biased;
                () = &mut kicked => {
                    let status = Status::new(Code::SlowConsumer, format!(
                        "outbound queue full (limits: {} frames, {} bytes): the peer does not read",
                        limits.outbound_queue, limits.outbound_queue_bytes));
                    // Queued only if it still fits; the log line and the counter say it anyway.
                    self.goodbye(&status);
                    return Some(status);
                }
                () = &mut shutdown, if self.draining.is_none() => {
                    let status = Status::new(Code::ShuttingDown, "the server is shutting down");
                    self.goodbye(&status);
                    self.draining = Some(later(limits.shutdown_grace));
                }
                _ = sleep_until(drain_at), if drain_at.is_some() => {
                    self.abandon_in_flight();
                    return Some(Status::new(Code::ShuttingDown, format!(
                        "requests still in flight after the shutdown grace period of {:?} were abandoned",
                        limits.shutdown_grace)));
                }
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    if let Next::Close(reason) = self.on_done(done) {
                        return reason;
                    }
                }
                frame = self.reader.next(), if self.reading => match frame {
                    Some(Ok(frame)) => {
                        last_rx = Instant::now();
                        // Answers to requests that arrived together leave together: one
                        // write once the last complete frame of the read is handled.
                        self.tx.cork();
                        let next = self.on_frame(frame);
                        if !self.reading
                            || !peerwire_proto::codec::frame_ready(self.reader.read_buffer())
                        {
                            self.tx.uncork();
                        }
                        if let Next::Close(reason) = next {
                            return reason;
                        }
                    }
                    Some(Err(e)) => {
                        if let Some(status) = sender_refused_status(&self.shared, &e) {
                            self.goodbye(&status);
                            return Some(status);
                        }
                        if let CodecError::Io(e) = &e {
                            if let Some(full) = peerwire_proto::io::OutboundFull::of(e) {
                                // Reading made the connection write more than its bound
                                // while the peer does not read (e.g. TLS key updates).
                                bump(&self.shared.counters.slow_consumers);
                                return Some(Status::new(Code::SlowConsumer, full.to_string()));
                            }
                            if peerwire_security::tls::is_tls_error(e) {
                                // A forged or corrupted record, or an alert: hostile or broken.
                                bump(&self.shared.counters.protocol_errors);
                                let shown = e.to_string();
                                self.shared.log_limit.log(self.info.peer.uid, || {
                                    tracing::warn!(
                                        "TLS refused what the peer sent: {}",
                                        Untrusted(&shown)
                                    );
                                });
                            } else {
                                tracing::info!("read failed: {e}");
                            }
                            return None;
                        }
                        bump(&self.shared.counters.protocol_errors);
                        let status = codec_status(&e);
                        self.goodbye(&status);
                        return Some(status);
                    }
                    None => {
                        // The client closed its side: answer what is in flight, then close.
                        self.reading = false;
                        self.draining.get_or_insert(later(limits.shutdown_grace));
                    }
                },
                _ = ticker.tick() => {
                    let quiet = last_rx.elapsed();
                    if quiet >= limits.idle_timeout {
                        let status = Status::new(Code::IdleTimeout, format!(
                            "no frame for {quiet:?}; the idle timeout is {:?}", limits.idle_timeout));
                        self.goodbye(&status);
                        return Some(status);
                    }
                    if quiet >= limits.keepalive_interval {
                        self.ping_nonce += 1;
                        let ping = Frame::new(Kind::Ping(Ping { nonce: self.ping_nonce }));
                        if let Next::Close(reason) = self.send(ping) {
                            return reason;
                        }
                    }
                }
            }
        }
    }

    /// Queues a frame without waiting. A full queue means the peer stopped reading.
    fn send(&self, frame: Frame) -> Next {
        match self.tx.push(frame) {
            Ok(()) => Next::Continue,
            Err(Full::Queue) => {
                bump(&self.shared.counters.slow_consumers);
                Next::Close(Some(Status::new(
                    Code::SlowConsumer,
                    format!(
                        "outbound queue full (limits: {} frames, {} bytes): the peer does not read",
                        self.shared.limits.outbound_queue, self.shared.limits.outbound_queue_bytes
                    ),
                )))
            }
            Err(Full::Closed) => Next::Close(None),
        }
    }

    fn goodbye(&self, status: &Status) {
        let _ = self.tx.push(Frame::new(Kind::Goodbye(Goodbye {
            code: status.code as i32,
            reason: status.message.clone(),
        })));
    }

    fn respond(&self, response: Response) -> Next {
        let mut frame = Frame::new(Kind::Response(response));
        let max = self.info.session.max_frame_size() as usize;
        let len = frame.encoded_len();
        if len > max {
            if let Some(Kind::Response(r)) = &frame.kind {
                let status = Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "response of {len} bytes exceeds the max_frame_size limit of {max} bytes"
                    ),
                );
                tracing::warn!("{status}");
                bump(&self.shared.counters.limit_hits);
                frame = Frame::new(Kind::Response(status.to_response(r.id)));
            }
        }
        self.send(frame)
    }

    fn protocol_error(&self, message: String) -> Next {
        bump(&self.shared.counters.protocol_errors);
        let status = Status::new(Code::ProtocolError, message);
        self.goodbye(&status);
        Next::Close(Some(status))
    }

    fn on_frame(&mut self, frame: Frame) -> Next {
        match frame.kind {
            Some(Kind::Request(req)) => self.on_request(req),
            Some(Kind::Cancel(c)) => {
                if let Some(f) = self.in_flight.remove(&c.id) {
                    f.abort.abort();
                    self.task_ids.remove(&f.abort.id());
                    tracing::debug!(request = c.id, method = %f.method, "cancelled by the client");
                    return self.respond(
                        Status::new(Code::Cancelled, "cancelled by the client").to_response(c.id),
                    );
                }
                Next::Continue
            }
            Some(Kind::Event(ev)) => {
                self.on_event(ev);
                Next::Continue
            }
            Some(Kind::Ping(p)) => self.send(Frame::new(Kind::Pong(Pong { nonce: p.nonce }))),
            Some(Kind::Pong(_)) => Next::Continue,
            Some(Kind::Goodbye(g)) => {
                tracing::debug!(code = g.code, reason = %Untrusted(&g.reason), "client said goodbye");
                self.reading = false;
                self.draining
                    .get_or_insert(later(self.shared.limits.shutdown_grace));
                Next::Continue
            }
            _ => self.protocol_error(format!(
                "unexpected {} frame after the handshake",
                frame.kind_name()
            )),
        }
    }

    fn on_event(&self, ev: peerwire_proto::v1::Event) {
        let dropped = |why: &dyn std::fmt::Display| {
            self.shared.log_limit.log(self.info.peer.uid, || {
                tracing::warn!(topic = %Untrusted(&ev.topic), "dropped client event: {why}");
            });
        };
        if let Err(status) = self.info.session.check_name(&ev.topic) {
            dropped(&Untrusted(&status.message));
            return;
        }
        let Some(handler) = self.shared.router.events.get(&ev.topic) else {
            dropped(&"no handler for this topic");
            return;
        };
        if self.events.try_send((handler.clone(), ev.payload)).is_err() {
            dropped(&format_args!("{EVENT_QUEUE} events already queued"));
        }
    }

    fn on_request(&mut self, req: Request) -> Next {
        bump(&self.shared.counters.requests);
        let limits = &self.shared.limits;
        if req.id == 0 {
            return self.protocol_error("request id 0 is not allowed".into());
        }
        if self.in_flight.contains_key(&req.id) {
            return self.protocol_error(format!("request id {} is already in flight", req.id));
        }
        if self.draining.is_some() {
            return self.respond(
                Status::new(Code::ShuttingDown, "the server is shutting down").to_response(req.id),
            );
        }
        if self.in_flight.len() >= limits.max_in_flight as usize {
            bump(&self.shared.counters.limit_hits);
            tracing::warn!(
                request = req.id,
                "max_in_flight limit of {} requests reached",
                limits.max_in_flight
            );
            return self.respond(
                Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "max_in_flight limit of {} requests reached",
                        limits.max_in_flight
                    ),
                )
                .to_response(req.id),
            );
        }
        if let Err(status) = self.info.session.check_name(&req.method) {
            return self.respond(status.to_response(req.id));
        }
        match req.method.as_str() {
            METHOD_STATS => {
                let stats = self.shared.stats().to_wire();
                return self.respond(Response {
                    id: req.id,
                    code: Code::Ok as i32,
                    message: String::new(),
                    payload: stats.encode_to_vec().into(),
                });
            }
            METHOD_SUBSCRIBE | METHOD_UNSUBSCRIBE => {
                let response = match self.subscribe(&req) {
                    Ok(payload) => Response {
                        id: req.id,
                        code: Code::Ok as i32,
                        message: String::new(),
                        payload: payload.into(),
                    },
                    Err(status) => status.to_response(req.id),
                };
                return self.respond(response);
            }
            _ => {}
        }
        let Some(handler) = self.shared.router.methods.get(&req.method) else {
            return self.respond(
                Status::not_found(format!("unknown method {}", req.method)).to_response(req.id),
            );
        };
        let deadline = limits.deadline_for(req.deadline_ms);
        let method: Arc<str> = req.method.into();
        let ctx = RequestContext {
            conn: self.ctx.clone(),
            method: method.clone(),
            deadline: Instant::now()
                .checked_add(deadline)
                .unwrap_or_else(Instant::now),
        };
        let mut fut = handler(ctx, req.payload);
        let id = req.id;
        // Fast path: most handlers finish without waiting. Poll once here, with a waker that does
        // nothing: a handler that is not ready goes to a task, whose polls register its own waker
        // (every poll re-registers, as the Future contract requires). This saves a task, its
        // wake-up and a trip through the JoinSet on every such call. A panic is caught and
        // answered exactly like one in a task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Events the handler publishes go out together once it returns (see `batched`).
        let poll = || crate::outbound::batched(|| fut.as_mut().poll(&mut cx));
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(poll)) {
            Ok(std::task::Poll::Ready(result)) => return self.respond(answer(id, result)),
            Ok(std::task::Poll::Pending) => {}
            Err(_) => return self.handler_panicked(id, &method),
        }
        let name = method.clone();
        let abort = self.tasks.spawn(async move {
            match tokio::time::timeout(deadline, crate::outbound::Batched(fut)).await {
                Ok(result) => answer(id, result),
                Err(_) => Status::new(
                    Code::DeadlineExceeded,
                    format!("{name} did not finish within its deadline of {deadline:?}"),
                )
                .to_response(id),
            }
        });
        self.task_ids.insert(abort.id(), id);
        self.in_flight.insert(id, InFlight { abort, method });
        Next::Continue
    }

    fn on_done(
        &mut self,
        done: Result<(tokio::task::Id, Response), tokio::task::JoinError>,
    ) -> Next {
        match done {
            Ok((tid, response)) => {
                if self.task_ids.remove(&tid).is_none() {
                    // Cancelled (and answered CANCELLED) while finishing: exactly one Response.
                    return Next::Continue;
                }
                self.in_flight.remove(&response.id);
                if response.code == Code::DeadlineExceeded as i32 {
                    bump(&self.shared.counters.deadline_exceeded);
                    tracing::info!(request = response.id, "{}", response.message);
                }
                self.respond(response)
            }
            Err(e) => {
                let Some(id) = self.task_ids.remove(&e.id()) else {
                    return Next::Continue; // cancelled by the client, already answered
                };
                let method = self.in_flight.remove(&id).map(|f| f.method);
                if e.is_panic() {
                    return self.handler_panicked(id, method.as_deref().unwrap_or("?"));
                }
                Next::Continue
            }
        }
    }

    fn handler_panicked(&self, id: u64, method: &str) -> Next {
        bump(&self.shared.counters.handler_panics);
        tracing::error!(request = id, method, "handler panicked");
        self.respond(Status::internal(format!("the handler of {method} failed")).to_response(id))
    }

    fn abandon_in_flight(&mut self) {
        for (id, f) in self.in_flight.drain() {
            f.abort.abort();
            let status = Status::new(
                Code::ShuttingDown,
                format!("{} abandoned: the shutdown grace period ended", f.method),
            );
            let _ = self
                .tx
                .push(Frame::new(Kind::Response(status.to_response(id))));
        }
        self.task_ids.clear();
    }

    fn subscribe(&self, req: &Request) -> Result<Vec<u8>, Status> {
        let sub = SubscribeRequest::decode(req.payload.as_ref())
            .map_err(|e| Status::invalid_argument(format!("bad SubscribeRequest: {e}")))?;
        for topic in &sub.topics {
            self.info.session.check_name(topic)?;
        }
        let max = self.shared.limits.max_subscriptions;
        let mut conns = self.shared.conns();
        let entry = conns
            .get_mut(&self.info.id)
            .ok_or_else(|| Status::internal("connection is not registered"))?;
        if req.method == METHOD_SUBSCRIBE {
            let new = sub
                .topics
                .iter()
                .filter(|t| !entry.topics.contains(*t))
                .count();
            if entry.topics.len() + new > max {
                bump(&self.shared.counters.limit_hits);
                tracing::warn!("max_subscriptions limit of {max} topics reached");
                return Err(Status::new(
                    Code::ResourceExhausted,
                    format!("max_subscriptions limit of {max} topics reached"),
                ));
            }
            entry.topics.extend(sub.topics);
        } else {
            for t in &sub.topics {
                entry.topics.remove(t);
            }
        }
        let mut topics: Vec<_> = entry.topics.iter().cloned().collect();
        drop(conns);
        topics.sort();
        Ok(SubscribeResponse { topics }.encode_to_vec())
    }
}

/// `now + d`, saturating at a year from now instead of overflowing.
fn later(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a connection's event handlers one at a time, in arrival order.
async fn run_event_handlers(ctx: ConnectionContext, mut rx: mpsc::Receiver<(EventFn, Bytes)>) {
    while let Some((handler, payload)) = rx.recv().await {
        // A panicking event handler must not take the others down with it. Run inline (not
        // spawned) so that closing the connection stops a handler that is still running.
        let fut = std::panic::AssertUnwindSafe(handler(ctx.clone(), payload));
        if fut.catch_unwind().await.is_err() {
            tracing::error!("event handler panicked");
        }
    }
}

/// The response to request `id` from its handler's result.
fn answer(id: u64, result: Result<Bytes, Status>) -> Response {
    match result {
        Ok(payload) => Response {
            id,
            code: Code::Ok as i32,
            message: String::new(),
            payload,
        },
        Err(status) => status.to_response(id),
    }
}
