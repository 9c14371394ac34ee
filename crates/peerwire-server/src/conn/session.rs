//! The session: a connection after its `Welcome`, its serving loop (reads, handlers that
//! finish, keepalive, idle timeout, shutdown) and its close.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use peerwire_proto::Status;
use peerwire_proto::codec::CodecError;
use peerwire_proto::v1::{Code, Frame, Goodbye, Ping, Response, frame::Kind};
use peerwire_transport::FrameSink;
use peerwire_transport::plain::PlainWriter;
use peerwire_transport::stream::{FrameReader, Liveness, Writer};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::ServerHandle;
use crate::logs::Untrusted;
use crate::registry::{ConnEntry, Full, Outbox, PushTarget, Shared, bump};
use crate::router::{ConnInfo, ConnectionContext, EventFn};

use super::dispatch::run_event_handlers;
use super::{codec_status, sender_refused_status};

/// Client events queued for a connection's event handlers before new ones are dropped.
pub(super) const EVENT_QUEUE: usize = 256;

pub(super) struct InFlight {
    pub(super) abort: AbortHandle,
    pub(super) method: Arc<str>,
}

pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) info: Arc<ConnInfo>,
    pub(super) ctx: ConnectionContext,
    pub(super) reader: FrameReader,
    pub(super) writer: Option<Arc<FrameSink<PlainWriter>>>,
    pub(super) tx: Outbox,
    pub(super) events_out: Arc<crate::outbound::EventQueue>,
    pub(super) events: mpsc::Sender<(EventFn, Bytes)>,
    pub(super) events_rx: Option<mpsc::Receiver<(EventFn, Bytes)>>,
    pub(super) kick: CancellationToken,
    pub(super) in_flight: HashMap<u64, InFlight>,
    pub(super) task_ids: HashMap<tokio::task::Id, u64>,
    pub(super) tasks: JoinSet<Response>,
    pub(super) draining: Option<tokio::time::Instant>,
    pub(super) reading: bool,
    pub(super) ping_nonce: u64,
}

/// What to do after handling a frame.
pub(super) enum Next {
    Continue,
    Close(Option<Status>),
}

impl Connection {
    pub(super) fn new(
        shared: Arc<Shared>,
        info: Arc<ConnInfo>,
        mut reader: FrameReader,
        wr: Writer,
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
    pub(super) async fn run(mut self, welcome: Frame) {
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
    pub(super) async fn serve(&mut self) -> Option<Status> {
        let limits = self.shared.limits;
        let mut liveness = Liveness::new(limits.keepalive_interval.min(limits.idle_timeout / 4));
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
                        liveness.received();
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
                        self.reading = false;
                        self.draining.get_or_insert(later(limits.shutdown_grace));
                    }
                },
                quiet = liveness.tick() => {
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

    pub(super) fn goodbye(&self, status: &Status) {
        let _ = self.tx.push(Frame::new(Kind::Goodbye(Goodbye {
            code: status.code as i32,
            reason: status.message.clone(),
        })));
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

    pub(super) fn protocol_error(&self, message: String) -> Next {
        bump(&self.shared.counters.protocol_errors);
        let status = Status::new(Code::ProtocolError, message);
        self.goodbye(&status);
        Next::Close(Some(status))
    }
}

/// `now + d`, saturating at a year from now instead of overflowing.
pub(super) fn later(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
