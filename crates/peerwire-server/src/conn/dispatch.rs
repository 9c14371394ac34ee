//! Dispatch: what each frame of a session does (requests to handlers, cancels, client
//! events, pings, goodbye), and the built-in methods (stats, subscribe).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use peerwire_proto::v1::{
    Code, Frame, Pong, Request, Response, SubscribeRequest, SubscribeResponse, frame::Kind,
};
use peerwire_proto::{METHOD_STATS, METHOD_SUBSCRIBE, METHOD_UNSUBSCRIBE, Status};
use prost::Message;
use tokio::sync::mpsc;

use crate::logs::Untrusted;
use crate::registry::bump;
use crate::router::{ConnectionContext, EventFn, RequestContext};

use super::session::{Connection, EVENT_QUEUE, InFlight, Next, later};

impl Connection {
    pub(super) fn on_frame(&mut self, frame: Frame) -> Next {
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

    pub(super) fn on_request(&mut self, req: Request) -> Next {
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

    pub(super) fn handler_panicked(&self, id: u64, method: &str) -> Next {
        bump(&self.shared.counters.handler_panics);
        tracing::error!(request = id, method, "handler panicked");
        self.respond(Status::internal(format!("the handler of {method} failed")).to_response(id))
    }

    pub(super) fn abandon_in_flight(&mut self) {
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
