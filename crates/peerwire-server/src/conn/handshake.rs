//! The handshake: the first frame, `Hello`, answered `Welcome` or `Reject`, and the session
//! token check.

use futures_util::StreamExt;
use peerwire_proto::Status;
use peerwire_proto::session::{ServerConfig, ServerInput, ServerSession, ServerTimeout};
use peerwire_proto::v1::Code;
use peerwire_security::exe::SenderGuard;
use peerwire_security::token::Presenter;

use crate::logs::Untrusted;
use crate::registry::{Shared, bump};

use peerwire_transport::stream::FrameReader;

use super::ConnWriter;
use super::admission::Admission;
use super::session::InFlight;
use super::{codec_status, sender_refused_status};

/// With session tokens required: the token in `Hello` must be valid, unused, and for this peer.
/// The verifier's lock is held for the checks and the (unsynced) append to the replay record
/// only; the record is made durable on a blocking thread, outside the lock, before the token
/// is honoured: a slow disk delays only this session. True when the token is bound to an
/// executable.
pub(super) async fn check_token(
    verifier: Option<&std::sync::Mutex<peerwire_security::token::Verifier>>,
    presenter: Option<&Presenter>,
    token: &[u8],
) -> Result<bool, Status> {
    let (Some(verifier), Some(presenter)) = (verifier, presenter) else {
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

/// The session's timing and limits, from the server's limits.
fn session_config(limits: &crate::Limits) -> ServerConfig {
    ServerConfig {
        handshake_timeout: limits.handshake_timeout,
        keepalive_interval: limits.keepalive_interval,
        idle_timeout: limits.idle_timeout,
        max_in_flight: limits.max_in_flight as usize,
        shutdown_grace: limits.shutdown_grace,
    }
}

/// Sends what the session queued (its `Reject`) as the connection's last frame.
pub(super) async fn send_refusal(
    shared: &Shared,
    session: &mut ServerSession<InFlight>,
    wr: &mut impl ConnWriter,
) {
    if let Some(frame) = session.poll_transmit() {
        wr.send_last(&frame, shared.limits.handshake_timeout).await;
    }
}

/// Reads the `Hello` (by `deadline`) and checks the session token. Returns the session, its
/// `Hello` accepted and waiting for [`ServerSession::accept`], and the client's name; `None`
/// once refused (the `Reject`, if any, sent).
pub(super) async fn handshake(
    shared: &Shared,
    admission: &Admission,
    deadline: tokio::time::Instant,
    presenter: Option<&Presenter>,
    guard: Option<&SenderGuard>,
    reader: &mut FrameReader,
    wr: &mut impl ConnWriter,
) -> Option<(ServerSession<InFlight>, String)> {
    let uid = admission.uid;
    let mut session = ServerSession::new(
        shared.offer.clone(),
        admission.id,
        session_config(&shared.limits),
        deadline.into_std(),
    );
    let refused = |status: &Status| {
        shared.log_limit.log(uid, || {
            tracing::warn!("handshake refused: {}", Untrusted(&status.to_string()));
        });
    };
    let frame = loop {
        let at = session
            .poll_timeout()
            .map_or(deadline, tokio::time::Instant::from_std);
        let first = tokio::select! {
            first = tokio::time::timeout_at(at, reader.next()) => first,
            () = admission.evicted.cancelled() => {
                bump(&shared.counters.limit_refusals);
                let status = admission.eviction();
                refused(&status);
                session.refuse(status);
                send_refusal(shared, &mut session, wr).await;
                return None;
            }
            _ = shared.shutdown.cancelled() => {
                let status = Status::new(Code::ShuttingDown, "the server is shutting down");
                refused(&status);
                session.refuse(status);
                send_refusal(shared, &mut session, wr).await;
                return None;
            }
        };
        match first {
            Ok(Some(Ok(frame))) => break frame,
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
                refused(&status);
                session.refuse(status);
                send_refusal(shared, &mut session, wr).await;
                return None;
            }
            Err(_) => {
                let now = tokio::time::Instant::now().into_std();
                if let ServerTimeout::Handshake(status) = session.handle_timeout(now) {
                    refused(&status);
                    send_refusal(shared, &mut session, wr).await;
                    return None;
                }
            }
        }
    };
    let now = tokio::time::Instant::now().into_std();
    match session.handle_frame(now, frame) {
        ServerInput::Hello(hello) => {
            // The program that sent the Hello presents the token.
            let presenter = presenter.map(|p| Presenter {
                exe: guard.and_then(SenderGuard::first_sender).map(|e| e.path),
                ..p.clone()
            });
            match check_token(
                shared.tokens.as_ref(),
                presenter.as_ref(),
                &hello.session_token,
            )
            .await
            {
                Err(status) => {
                    bump(&shared.counters.token_failures);
                    refused(&status);
                    session.refuse(status);
                    send_refusal(shared, &mut session, wr).await;
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
            Some((session, hello.client_name))
        }
        ServerInput::Rejected(status) => {
            refused(&status);
            send_refusal(shared, &mut session, wr).await;
            None
        }
        _ => None,
    }
}
