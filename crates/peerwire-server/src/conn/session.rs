//! The session: a connection after its `Welcome`, its serving loop (reads, handlers that
//! finish, keepalive, idle timeout, shutdown) and its close.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use peerwire_proto::Status;
use peerwire_proto::codec::CodecError;
use peerwire_proto::session::{ServerSession, ServerTimeout};
use peerwire_proto::v1::{Code, Frame, Response, frame::Kind};
use peerwire_transport::stream::FrameReader;
use peerwire_transport::{Drained, FrameSink, SinkIo};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::ServerHandle;
use crate::logs::Untrusted;
use crate::outbound::{Full, Outbox};
use crate::registry::{ConnEntry, PushTarget, Shared, bump};
use crate::router::{ConnInfo, ConnectionContext, EventFn};

use super::dispatch::run_event_handlers;
use super::{codec_status, sender_refused_status};

/// Client events queued for a connection's event handlers before new ones are dropped.
pub(super) const EVENT_QUEUE: usize = 256;

pub(super) struct InFlight {
    pub(super) abort: AbortHandle,
    pub(super) method: Arc<str>,
}

pub(super) struct Connection<W: SinkIo> {
    pub(super) shared: Arc<Shared>,
    pub(super) info: Arc<ConnInfo>,
    pub(super) ctx: ConnectionContext,
    pub(super) reader: FrameReader,
    pub(super) writer: Option<Arc<FrameSink<W>>>,
    pub(super) tx: Outbox,
    pub(super) events_out: Arc<crate::outbound::EventQueue>,
    pub(super) events: mpsc::Sender<(EventFn, Bytes)>,
    pub(super) events_rx: Option<mpsc::Receiver<(EventFn, Bytes)>>,
    pub(super) kick: CancellationToken,
    /// The session rules: frame kinds allowed, request ids in flight, keepalive, idle timeout,
    /// the grace period once closing.
    pub(super) session: ServerSession<InFlight>,
    /// Keyed by tokio's task ids (not the peer's): the cheap hash.
    pub(super) task_ids: HashMap<tokio::task::Id, u64, crate::registry::FastHash>,
    pub(super) tasks: JoinSet<Response>,
}

/// What to do after handling a frame.
pub(super) enum Next {
    Continue,
    Close(Option<Status>),
}

impl<W: SinkIo> Connection<W> {
    pub(super) fn new(
        shared: Arc<Shared>,
        info: Arc<ConnInfo>,
        mut reader: FrameReader,
        wr: impl super::ConnWriter<Io = W>,
        session: ServerSession<InFlight>,
    ) -> Self {
        let events_out = Arc::new(crate::outbound::EventQueue::new(
            shared.limits.outbound_queue,
            shared.limits.outbound_queue_bytes,
        ));
        let sink = wr.into_session(
            &mut reader,
            info.session.max_frame_size(),
            shared.limits.outbound_queue_bytes,
            shared.limits.outbound_queue,
        );
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
            session,
            task_ids: HashMap::default(),
            tasks: JoinSet::new(),
        }
    }

    /// Sends the session's `Welcome` as the first frame, registers the connection (so the
    /// server knows it before the client can act on the Welcome), and serves it.
    pub(super) async fn run(mut self) {
        let (Some(sink), Some(events_rx)) = (self.writer.take(), self.events_rx.take()) else {
            return;
        };
        // Corked: the sending task writes at once, and the Welcome must not leave before the
        // connection is registered.
        self.tx.cork();
        while let Some(welcome) = self.session.poll_transmit() {
            if self.tx.push(welcome).is_err() {
                return;
            }
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
                    corked_in: Default::default(),
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
        self.shared.unregister(self.info.id);
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
            sink.drain(grace).await
        })
        .await
        .unwrap_or(Drained::TimedOut);
        match drained {
            Drained::Written => {}
            // The peer closed its end first (a client that ends after its last answer): what
            // it did not wait for goes with it. Not a fault of the peer's, nor of ours.
            Drained::WriteFailed(
                kind @ (std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::NotConnected),
            ) => tracing::info!("peer left before reading its last frames ({kind})"),
            Drained::WriteFailed(kind) => {
                tracing::warn!("write failed ({kind}); dropping the unsent frames");
            }
            // Closed over its bound (a slow consumer, logged where it happened).
            Drained::Closed => tracing::info!("unsent frames dropped with the closed sink"),
            _ => tracing::warn!("peer is not reading; dropping its unsent frames"),
        }
        sink.close();
        if let Err(e) = writer.await {
            tracing::error!("writer task failed: {e}");
        }
        tracing::info!("closed");
    }

    /// The serving loop. Returns the reason the connection closes, if it is worth a log line.
    pub(super) async fn serve(&mut self) -> Option<Status> {
        let limits = self.shared.limits;
        // One timer for the session's deadlines (keepalive, idle timeout, grace period), armed
        // at the earliest. Frames move the deadlines later without touching the timer: when it
        // fires early the session finds nothing due and says when to fire next.
        let timer = tokio::time::sleep_until(at(self.session.poll_timeout()));
        // Registered once, not on every turn of the loop.
        let kicked = self.kick.clone().cancelled_owned();
        let shutdown = self.shared.shutdown.clone().cancelled_owned();
        tokio::pin!(kicked, shutdown, timer);
        loop {
            if self.session.is_closing() && self.tasks.is_empty() {
                return None;
            }
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
                () = &mut shutdown, if !self.session.is_closing() => {
                    self.session.shutdown(tokio::time::Instant::now().into_std());
                    self.flush_goodbye();
                    timer.as_mut().reset(at(self.session.poll_timeout()));
                }
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    if let Next::Close(reason) = self.on_done(done) {
                        return reason;
                    }
                }
                frame = self.reader.next(), if self.session.reading() => match frame {
                    Some(Ok(frame)) => {
                        // Answers to requests that arrived together leave together: one
                        // write once the last complete frame of the read is handled.
                        self.tx.cork();
                        let next = self.on_frame(frame);
                        let reading = self.session.reading();
                        if !reading
                            || !peerwire_proto::codec::frame_ready(self.reader.read_buffer())
                        {
                            self.tx.uncork();
                        }
                        if let Next::Close(reason) = next {
                            return reason;
                        }
                        if !reading {
                            // The client's Goodbye started the grace period.
                            timer.as_mut().reset(at(self.session.poll_timeout()));
                        }
                    }
                    Some(Err(e)) => {
                        if let Some(status) = sender_refused_status(&self.shared, &e) {
                            self.goodbye(&status);
                            return Some(status);
                        }
                        if let CodecError::Io(e) = &e {
                            if let Some(p) = crate::ws::io::WsProtocolError::of(e) {
                                // A text message, an oversized or malformed WebSocket frame.
                                bump(&self.shared.counters.protocol_errors);
                                let code = if p.too_large {
                                    Code::FrameTooLarge
                                } else {
                                    Code::ProtocolError
                                };
                                let status = Status::new(code, p.to_string());
                                self.goodbye(&status);
                                return Some(status);
                            }
                            if let Some(full) = peerwire_transport::OutboundFull::of(e) {
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
                        self.session.peer_closed(tokio::time::Instant::now().into_std());
                        timer.as_mut().reset(at(self.session.poll_timeout()));
                    }
                },
                // Last, as the keepalive ticker was: a busy connection's reads come first.
                () = &mut timer => {
                    match self.session.handle_timeout(tokio::time::Instant::now().into_std()) {
                        ServerTimeout::GraceEnded => {
                            self.abandon_in_flight();
                            return Some(Status::new(Code::ShuttingDown, format!(
                                "requests still in flight after the shutdown grace period of {:?} were abandoned",
                                limits.shutdown_grace)));
                        }
                        ServerTimeout::Idle(status) | ServerTimeout::Handshake(status) => {
                            self.flush_goodbye();
                            return Some(status);
                        }
                        ServerTimeout::None => {
                            // A keepalive Ping, if one is due.
                            if let Next::Close(reason) = self.transmit() {
                                return reason;
                            }
                        }
                    }
                    timer.as_mut().reset(at(self.session.poll_timeout()));
                }
            }
        }
    }

    /// Sends what the session queued (pongs, pings, refusals, a `Goodbye`). A full queue means
    /// the peer stopped reading; a `Goodbye` is sent only if it still fits.
    pub(super) fn transmit(&mut self) -> Next {
        while let Some(frame) = self.session.poll_transmit() {
            if matches!(frame.kind, Some(Kind::Goodbye(_))) {
                let _ = self.tx.push(frame);
            } else if let Next::Close(reason) = self.send(frame) {
                return Next::Close(reason);
            }
        }
        Next::Continue
    }

    /// Sends what the session queued last (its `Goodbye`), only if it still fits.
    pub(super) fn flush_goodbye(&mut self) {
        while let Some(frame) = self.session.poll_transmit() {
            let _ = self.tx.push(frame);
        }
    }

    /// Queues a frame without waiting. A full queue means the peer stopped reading.
    pub(super) fn send(&self, frame: Frame) -> Next {
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

    /// Closes the session with `status`: its `Goodbye` is sent only if it still fits.
    pub(super) fn goodbye(&mut self, status: &Status) {
        self.session.close(status);
        self.flush_goodbye();
    }

    pub(super) fn respond(&self, response: Response) -> Next {
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
}

/// The tokio instant of a session deadline (`None`: a year from now, never in practice).
fn at(deadline: Option<Instant>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    deadline.map_or_else(
        || now + Duration::from_secs(365 * 24 * 3600),
        tokio::time::Instant::from_std,
    )
}
