//! Dispatch: what each frame of a session does (requests to handlers, cancels, client
//! events, pings, goodbye), and the built-in methods (stats, subscribe).

use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use peerwire_proto::session::{Refusal, ServerInput};
use peerwire_proto::v1::{
    Code, Frame, Request, Response, SubscribeRequest, SubscribeResponse, frame::Kind,
};
use peerwire_proto::{METHOD_STATS, METHOD_SUBSCRIBE, METHOD_UNSUBSCRIBE, Status};
use prost::Message;
use tokio::sync::mpsc;

use crate::logs::Untrusted;
use crate::registry::bump;
use crate::router::{ConnectionContext, EventFn, RequestContext};

use super::session::{Connection, EVENT_QUEUE, InFlight, Next};

impl<W: peerwire_transport::SinkIo> Connection<W> {
    pub(super) fn on_frame(&mut self, frame: Frame) -> Next {
        if let Some(Kind::Request(_)) = &frame.kind {
            bump(&self.shared.counters.requests);
        }
        let now = tokio::time::Instant::now().into_std();
        let next = match self.session.handle_frame(now, frame) {
            ServerInput::Request(req) => self.on_request(req, now),
            ServerInput::Refused {
                id,
                why: Refusal::TooManyInFlight,
            } => {
                bump(&self.shared.counters.limit_hits);
                tracing::warn!(
                    request = id,
                    "max_in_flight limit of {} requests reached",
                    self.shared.limits.max_in_flight
                );
                Next::Continue
            }
            ServerInput::Cancelled { id, call } => {
                call.abort.abort();
                self.task_ids.remove(&call.abort.id());
                tracing::debug!(request = id, method = %call.method, "cancelled by the client");
                Next::Continue
            }
            ServerInput::Event(ev) => {
                self.on_event(ev);
                Next::Continue
            }
            ServerInput::Goodbye(g) => {
                tracing::debug!(code = g.code, reason = %Untrusted(&g.reason), "client said goodbye");
                Next::Continue
            }
            ServerInput::Violation(status) => {
                bump(&self.shared.counters.protocol_errors);
                self.flush_goodbye();
                return Next::Close(Some(status));
            }
            _ => Next::Continue,
        };
        // What the session answered itself (a Pong, a refusal, CANCELLED) goes out too.
        match next {
            Next::Continue => self.transmit(),
            close => close,
        }
    }

    pub(super) fn on_event(&self, ev: peerwire_proto::v1::Event) {
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

    /// `now`: when the frame was read (the request's deadline counts from it).
    pub(super) fn on_request(&mut self, req: Request, now: Instant) -> Next {
        let limits = &self.shared.limits;
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
        let Some((method, handler)) = self.shared.router.methods.get_key_value(&*req.method) else {
            return self.respond(
                Status::not_found(format!("unknown method {}", req.method)).to_response(req.id),
            );
        };
        let deadline = limits.deadline_for(req.deadline_ms);
        let method = method.clone();
        let ctx = RequestContext {
            conn: self.ctx.clone(),
            method: method.clone(),
            deadline: now.checked_add(deadline).unwrap_or(now),
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
        self.session.track(id, InFlight { abort, method });
        Next::Continue
    }

    pub(super) fn on_done(
        &mut self,
        done: Result<(tokio::task::Id, Response), tokio::task::JoinError>,
    ) -> Next {
        match done {
            Ok((tid, response)) => {
                if self.task_ids.remove(&tid).is_none() {
                    // Cancelled (and answered CANCELLED) while finishing: exactly one Response.
                    return Next::Continue;
                }
                self.session.finish(response.id);
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
                let method = self.session.finish(id).map(|f| f.method);
                if e.is_panic() {
                    return self.handler_panicked(id, method.as_deref().unwrap_or("?"));
                }
                Next::Continue
            }
        }
    }

    pub(super) fn handler_panicked(&self, id: u64, method: &str) -> Next {
        bump(&self.shared.counters.handler_panics);
        tracing::error!(request = id, method, "handler panicked");
        self.respond(Status::internal(format!("the handler of {method} failed")).to_response(id))
    }

    pub(super) fn abandon_in_flight(&mut self) {
        for (id, f) in self.session.abandon() {
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

    pub(super) fn subscribe(&self, req: &Request) -> Result<Vec<u8>, Status> {
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
            self.shared.subscribe(entry, sub.topics);
        } else {
            self.shared.unsubscribe(entry, &sub.topics);
        }
        let mut topics: Vec<_> = entry.topics.iter().cloned().collect();
        drop(conns);
        topics.sort();
        Ok(SubscribeResponse { topics }.encode_to_vec())
    }
}

/// Runs a connection's event handlers one at a time, in arrival order.
pub(super) async fn run_event_handlers(
    ctx: ConnectionContext,
    mut rx: mpsc::Receiver<(EventFn, Bytes)>,
) {
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
pub(super) fn answer(id: u64, result: Result<Bytes, Status>) -> Response {
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
