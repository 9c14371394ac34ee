//! # peerwire-client: the display-client side of a peerwire connection
//!
//! [`Client::builder`] connects to a peerwire server over a Unix socket, runs the handshake
//! (protocol and per-namespace versions) and then offers:
//!
//! - typed calls with a deadline ([`Client::call`], [`Client::call_with_deadline`]); when the
//!   deadline passes the call fails with `DEADLINE_EXCEEDED` and the server is told to cancel;
//! - one-way notifications to the server ([`Client::notify`]);
//! - an event stream per topic ([`Client::subscribe`]) for server pushes, in order;
//! - optional automatic reconnection with exponential backoff and jitter
//!   ([`ClientBuilder::reconnect`]), which re-subscribes every topic;
//! - clean failure: when the server goes away every pending call fails at once with
//!   [`CallError::Disconnected`]; nothing waits forever.
//!
//! ```
//! use std::time::Duration;
//! use peerwire_client::Client;
//! # use peerwire_server::{Server, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("sdk.sock");
//! # let mut builder = Server::builder(&path);
//! # builder = builder.method("echo.Echo", |_ctx, n: u64| async move { Ok::<_, Status>(n) });
//! # let server = builder.bind()?;
//! # let handle = server.handle();
//! # tokio::spawn(server.run());
//! // A server is listening at `path` (hidden above: see peerwire-server's example).
//! let client = Client::builder(&path)
//!     .name("renderer")
//!     .require_namespace("echo", &[1]) // refuse the session if the server lacks echo v1
//!     .connect()
//!     .await?;
//! let n: u64 = client.call_with_deadline("echo.Echo", &7u64, Duration::from_secs(1)).await?;
//! assert_eq!(n, 7);
//! let mut ticks = client.subscribe("echo.Tick").await?;
//! handle.broadcast("echo.Tick", &1u64)?;
//! let tick = ticks.next().await.ok_or("closed")?;
//! assert_eq!((tick.seq, tick.decode::<u64>()?), (1, 1));
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! The runnable end-to-end example is `peerwire demo` and the display client in `examples/`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod builder;
mod conn;
mod error;
mod events;
mod reconnect;
mod service;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use peerwire_proto::handshake::Session;
use peerwire_proto::v1::{
    Code, Event, Frame, Request, SubscribeRequest, SubscribeResponse, frame::Kind,
};
use peerwire_proto::{METHOD_SUBSCRIBE, Status};
use prost::Message;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use bytes::Bytes;
pub use error::{CallError, ConnectError, DisconnectReason};
pub use peerwire_proto::handshake::HandshakeError;
pub use peerwire_security::cred::PeerCredentials;
/// The same process hardening the server uses, for the display client: no core dumps, not
/// dumpable (no same-uid ptrace or `/proc/PID/mem`), memory locked where allowed. Call it
/// first thing in `main`.
pub use peerwire_security::privilege::harden_process;
pub use peerwire_security::tls::{ClientTls, TlsMode};

pub use builder::ClientBuilder;
pub use events::{EventMessage, EventStream};
pub use reconnect::Backoff;
pub use service::{Decode, Pushed, ServiceError, Subscription};

pub(crate) use builder::Config;
use conn::Conn;
pub(crate) use events::Subscribers;

pub(crate) struct Inner {
    pub(crate) config: Config,
    conn: Mutex<Option<Arc<Conn>>>,
    pub(crate) subs: Mutex<Subscribers>,
    pub(crate) closed: CancellationToken,
    generation: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere; the maps stay consistent (single operations).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn install(&self, conn: Arc<Conn>) {
        *lock(&self.conn) = Some(conn);
        self.generation.send_modify(|g| *g += 1);
    }

    fn current(&self) -> Option<Arc<Conn>> {
        lock(&self.conn).clone().filter(|c| !c.is_closed())
    }
}

/// Slack added to a call's deadline before the client gives up on it, so that the server's own
/// `DEADLINE_EXCEEDED` answer (which cancels the handler) wins.
pub(crate) const CALL_SLACK: Duration = Duration::from_millis(50);

/// The `Request` frame of call `id`.
pub(crate) fn request_frame(id: u64, method: &str, payload: Bytes, deadline: Duration) -> Frame {
    Frame::new(Kind::Request(Request {
        id,
        method: method.to_owned(),
        payload,
        deadline_ms: u32::try_from(deadline.as_millis())
            .unwrap_or(u32::MAX)
            .max(1),
    }))
}

/// The `Event` frame of a notification.
pub(crate) fn event_frame<M: Message>(topic: &str, seq: u64, event: &M) -> Frame {
    Frame::new(Kind::Event(Event {
        topic: topic.to_owned(),
        seq,
        payload: event.encode_to_vec().into(),
    }))
}

/// What a call of `method` with `deadline` returns for its answer.
pub(crate) fn call_result(
    method: &str,
    deadline: Duration,
    answer: conn::Answer,
) -> Result<Bytes, CallError> {
    let response = match answer {
        Ok(response) => response,
        Err(Some(e)) => return Err(e),
        Err(None) => {
            return Err(CallError::Status(Status::new(
                Code::DeadlineExceeded,
                format!("no response to {method} within its deadline of {deadline:?}"),
            )));
        }
    };
    Status::from_wire(response.code, &response.message).map_err(CallError::Status)?;
    Ok(response.payload)
}

/// A connection to a peerwire server. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.inner.config.path)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Client {
    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.current().is_some()
    }

    /// Waits until a connection is up (after a reconnection), at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut generation = self.inner.generation.subscribe();
        let wait = async {
            loop {
                if self.is_connected() {
                    return;
                }
                if generation.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The session of the current connection.
    pub fn session(&self) -> Option<Session> {
        self.inner.current().map(|c| c.session.clone())
    }

    /// The server's credentials (`SO_PEERCRED` of the listening socket) of the current connection.
    pub fn server_credentials(&self) -> Option<PeerCredentials> {
        self.inner.current().map(|c| c.server)
    }

    fn connection(&self) -> Result<Arc<Conn>, CallError> {
        let conn = lock(&self.inner.conn)
            .clone()
            .ok_or(CallError::Disconnected(DisconnectReason::NotConnected))?;
        if conn.is_closed() {
            return Err(CallError::Disconnected(conn.close_reason()));
        }
        if let Some(status) = conn.goodbye() {
            return Err(CallError::Disconnected(DisconnectReason::Closing(status)));
        }
        Ok(conn)
    }

    /// Calls `method` with the default deadline.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_with_deadline(method, request, self.inner.config.default_deadline)
            .await
    }

    /// Calls `method`; fails with `DEADLINE_EXCEEDED` if no answer comes within `deadline`, and
    /// then tells the server to cancel the handler. Dropping the future cancels the call too.
    pub async fn call_with_deadline<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, CallError> {
        let payload = self
            .raw_call(method, request.encode_to_vec(), deadline)
            .await?;
        Resp::decode(payload).map_err(CallError::Decode)
    }

    /// Calls `method` with an already encoded payload and returns the encoded response, as
    /// bytes: with a [`Bytes`] payload and a server `raw_method`, bulk data is not copied by
    /// peerwire on either end (a large payload is written from its own buffer, and the
    /// response shares the read buffer).
    pub async fn raw_call(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
        deadline: Duration,
    ) -> Result<Bytes, CallError> {
        let conn = self.connection()?;
        conn.session.check_name(method).map_err(CallError::Status)?;
        let (tx, mut rx) = oneshot::channel();
        let due = tokio::time::Instant::now() + deadline.saturating_add(CALL_SLACK);
        let guard = conn.register(tx, due)?;
        let frame = request_frame(guard.id, method, payload.into(), deadline);
        if let Err(e) = conn.check_size(&frame) {
            guard.forget();
            return Err(e);
        }
        // The deadline also bounds a wait for room in a full outbound buffer (the answer
        // channel is only polled while the send waits: the usual send is done at once).
        let answer = tokio::select! {
            biased;
            sent = conn.send(frame) => {
                sent?;
                conn.answer(&guard, &mut rx).await
            }
            early = &mut rx => early,
        };
        drop(guard);
        match answer {
            Ok(answer) => call_result(method, deadline, answer),
            Err(_) => Err(CallError::Disconnected(DisconnectReason::Closed)),
        }
    }

    /// Sends a one-way event (for example a touch or key event) to the server.
    pub async fn notify<M: Message>(&self, topic: &str, event: &M) -> Result<(), CallError> {
        let conn = self.connection()?;
        conn.session.check_name(topic).map_err(CallError::Status)?;
        let frame = event_frame(topic, conn.next_event_seq(topic), event);
        conn.check_size(&frame)?;
        conn.send(frame).await
    }

    /// Subscribes to server pushes on `topic`. Events arrive in the order the server sent them.
    /// With reconnection on, the subscription survives reconnections.
    pub async fn subscribe(&self, topic: &str) -> Result<EventStream, CallError> {
        self.subscribe_many(&[topic]).await
    }

    /// Subscribes one stream to several topics: events of all of them arrive on it in the order
    /// the server sent them (for example state changes and templates, interleaved).
    pub async fn subscribe_many(&self, topics: &[&str]) -> Result<EventStream, CallError> {
        let conn = self.connection()?;
        for topic in topics {
            conn.session.check_name(topic).map_err(CallError::Status)?;
        }
        let (tx, rx) = events::event_queue(self.inner.config.event_buffer);
        let new: Vec<String> = {
            let mut subs = lock(&self.inner.subs);
            let mut new = vec![];
            for topic in topics {
                let list = subs.entry((*topic).to_owned()).or_default();
                if list.is_empty() {
                    new.push((*topic).to_owned());
                }
                list.push(tx.clone());
            }
            new
        };
        if !new.is_empty() {
            if let Err(e) = self.server_subscribe(new.clone()).await {
                let mut subs = lock(&self.inner.subs);
                for topic in &new {
                    subs.remove(topic);
                }
                return Err(e);
            }
        }
        Ok(EventStream {
            topic: topics.join(","),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            rx,
            client: Arc::downgrade(&self.inner),
        })
    }

    /// Subscribes one stream to `topics` whose events `decode` turns into `E`: the typed
    /// subscriptions of code generated by `peerwire-build` use it.
    pub async fn subscribe_typed<E>(
        &self,
        topics: &[&str],
        decode: Decode<E>,
    ) -> Result<Subscription<E>, CallError> {
        Ok(Subscription::new(
            self.subscribe_many(topics).await?,
            decode,
        ))
    }

    async fn server_subscribe(&self, topics: Vec<String>) -> Result<Vec<String>, CallError> {
        let resp: SubscribeResponse = self
            .call(METHOD_SUBSCRIBE, &SubscribeRequest { topics })
            .await?;
        Ok(resp.topics)
    }

    /// Says `Goodbye` and closes the connection; no reconnection follows. Calls in flight fail.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let conn = lock(&self.inner.conn).take();
        if let Some(conn) = conn {
            if let Some(goodbye) = conn.say_goodbye(&Status::new(Code::Ok, "client closed")) {
                let _ = conn.send(goodbye).await;
            }
            conn.flushed(Duration::from_millis(200)).await;
            conn.close();
        }
        lock(&self.inner.subs).clear();
    }
}
