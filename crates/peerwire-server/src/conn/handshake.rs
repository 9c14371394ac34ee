//! The handshake: the first frame, `Hello`, answered `Welcome` or `Reject`, and the session
//! token check.

use futures_util::StreamExt;
use peerwire_proto::Status;
use peerwire_proto::handshake::{ServerHandshake, ServerOutcome, Session};
use peerwire_proto::v1::{Code, Frame};
use peerwire_security::exe::SenderGuard;
use peerwire_security::token::Presenter;

use crate::logs::Untrusted;
use crate::registry::{Shared, bump};

use peerwire_transport::stream::{FrameReader, Writer};

use super::accept::reject_frame;
use super::admission::Admission;
use super::{codec_status, sender_refused_status};

/// With session tokens required: the token in `Hello` must be valid, unused, and for this peer.
/// The verifier's lock is held for the checks and the (unsynced) append to the replay record
/// only; the record is made durable on a blocking thread, outside the lock, before the token
/// is honoured: a slow disk delays only this session. True when the token is bound to an
/// executable.
pub(super) async fn check_token(
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

pub(super) async fn handshake(
    shared: &Shared,
    admission: &Admission,
    deadline: tokio::time::Instant,
    presenter: Option<&Presenter>,
    guard: Option<&SenderGuard>,
    reader: &mut FrameReader,
    wr: &mut Writer,
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
            wr.send_last(&refuse(admission.eviction()), limits.handshake_timeout).await;
            return None;
        }
        _ = shared.shutdown.cancelled() => {
            let status = Status::new(Code::ShuttingDown, "the server is shutting down");
            wr.send_last(&refuse(status), limits.handshake_timeout).await;
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
            wr.send_last(&refuse(status), limits.handshake_timeout)
                .await;
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
            wr.send_last(&refuse(status), limits.handshake_timeout)
                .await;
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
                    wr.send_last(&refuse(status), limits.handshake_timeout)
                        .await;
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
            wr.send_last(&reject, limits.handshake_timeout).await;
            None
        }
    }
}
