//! Accept: a new connection from its credentials and the access policy to its `Hello`
//! (connection limits, TLS set-up), and the ways a peer is refused before its session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::session::reject_frame;
use peerwire_proto::v1::Code;
use peerwire_proto::{HANDSHAKE_MAX_FRAME_SIZE, Status};
use peerwire_security::cred::PeerCredentials;
use peerwire_security::token::Presenter;
use peerwire_transport::plain::split_guarded;
use peerwire_transport::stream::{self, BoxRead, FrameReader, Writer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;
use tracing::Instrument;

use crate::logs::Untrusted;
use crate::registry::{Shared, bump};
use crate::router::ConnInfo;

use super::ConnWriter;
use super::admission::Admission;
use super::handshake::{handshake, send_refusal};
use super::session::Connection;

/// Unread input a refused connection may send while it lingers (see [`linger`]).
pub(super) const LINGER_BYTES: u64 = 64 * 1024;

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
        let admission = match Admission::new(&shared, peer.uid, id) {
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
        let (rd, wr): (BoxRead, Writer) = match &shared.tls {
            None => match stream::plain(stream, guard.clone()) {
                Ok(sides) => sides,
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
                        peerwire_transport::tls::accept(tls, rd, wr)
                            .await
                            .map_err(TlsSetup::Failed)
                    } => done,
                }
            })
            .await
            {
                Ok(Ok((session, wr))) => stream::sealed(
                    session,
                    wr,
                    shared.limits.outbound_queue_bytes,
                    shared.limits.outbound_queue,
                ),
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
        let reader = stream::reader(rd);
        establish(
            shared,
            admission,
            peer,
            deadline,
            presenter.as_ref(),
            guard.as_deref(),
            reader,
            wr,
        )
        .await;
    }
    .instrument(span)
    .await
}

/// From the `Hello` to the end of the session, whatever the transport: the handshake (token
/// checked if `presenter` is given), the admission's last word, then the connection served.
#[allow(clippy::too_many_arguments)]
pub(super) async fn establish<W: ConnWriter>(
    shared: Arc<Shared>,
    mut admission: Admission,
    peer: PeerCredentials,
    deadline: tokio::time::Instant,
    presenter: Option<&Presenter>,
    guard: Option<&peerwire_security::exe::SenderGuard>,
    mut reader: FrameReader,
    mut wr: W,
) {
    let id = admission.id;
    // The session is built in a block of its own: moved into the connection, it leaves
    // no second copy in this task's state while the connection runs.
    {
        let Some((mut session, client_name)) = handshake(
            &shared,
            &admission,
            deadline,
            presenter,
            guard,
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
            session.refuse(admission.eviction());
            send_refusal(&shared, &mut session, &mut wr).await;
            return;
        }
        let Some(agreed) = session.accept(tokio::time::Instant::now().into_std()) else {
            return;
        };
        bump(&shared.counters.sessions);
        tracing::info!(client = %Untrusted(&client_name), "session established");
        let info = Arc::new(ConnInfo {
            id,
            peer,
            client_name,
            session: agreed,
        });
        Connection::new(shared, info, reader, wr, session)
    }
    .run()
    .await;
}

/// Waits until the peer sends something or hangs up; true if it hung up without a byte (a
/// liveness probe, a client that gave up). Peeks only: nothing is consumed or parsed.
pub(super) async fn closed_before_sending(stream: &UnixStream) -> bool {
    use std::os::fd::AsFd;
    if stream.readable().await.is_err() {
        return true;
    }
    peerwire_security::sys::peer_hung_up(stream.as_fd())
}

/// Why a TLS connection did not get to its `Hello`.
pub(super) enum TlsSetup {
    /// The peer hung up before sending anything.
    Closed,
    /// A newer connection of the same uid took its place (see [`Admission`]).
    Evicted,
    /// The TLS handshake failed.
    Failed(peerwire_security::tls::TlsError),
}

/// Refuses a peer before reading anything from it: a plain-text `Reject` (written only if the
/// socket takes it at once: a refused peer is not waited for), then close.
pub(super) async fn refuse_unread(shared: &Shared, stream: UnixStream, status: &Status) {
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
pub(super) async fn linger<R: AsyncRead + Unpin>(shared: &Shared, rd: R) {
    let Ok(_place) = shared.lingering.try_acquire() else {
        return;
    };
    let _ = tokio::time::timeout(
        crate::fds::LINGER,
        tokio::io::copy(&mut rd.take(LINGER_BYTES), &mut tokio::io::sink()),
    )
    .await;
}
