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
//! # builder.method("echo.Echo", |_ctx, n: u64| async move { Ok::<_, Status>(n) });
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

mod conn;
mod error;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use peerwire_proto::handshake::Session;
use peerwire_proto::v1::{
    Code, Event, Frame, Goodbye, NamespaceVersions, Request, SubscribeRequest, SubscribeResponse,
    frame::Kind,
};
use peerwire_proto::{METHOD_SUBSCRIBE, Status};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use bytes::Bytes;
pub use error::{CallError, ConnectError};
pub use peerwire_proto::handshake::HandshakeError;
pub use peerwire_security::cred::PeerCredentials;
/// The same process hardening the server uses, for the display client: no core dumps, not
/// dumpable (no same-uid ptrace or `/proc/PID/mem`), memory locked where allowed. Call it
/// first thing in `main`.
pub use peerwire_security::privilege::harden_process;
pub use peerwire_security::tls::{ClientTls, TlsMode};

use conn::Conn;

/// Reconnection policy: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// First delay. Default 50 ms.
    pub initial: Duration,
    /// Largest delay. Default 5 s.
    pub max: Duration,
    /// Each failed attempt multiplies the delay by this. Default 2.
    pub multiplier: f64,
    /// Each delay is randomised by up to this fraction either way. Default 0.25.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::try_from_secs_f64((base * factor).max(0.0)).unwrap_or(self.max)
    }
}

/// Client settings, every one with a documented default.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) namespaces: Vec<NamespaceVersions>,
    pub(crate) connect_timeout: Duration,
    pub(crate) default_deadline: Duration,
    pub(crate) max_frame_size: u32,
    pub(crate) outbound_queue: usize,
    pub(crate) event_buffer: usize,
    pub(crate) reconnect: Option<Backoff>,
    pub(crate) server_uids: Vec<u32>,
    pub(crate) server_exe: Option<PathBuf>,
    pub(crate) tls: Option<Arc<ClientTls>>,
    pub(crate) token: Option<Arc<Token>>,
}

/// A session token held by the client: zeroized when dropped, never printed.
pub(crate) struct Token(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<session token>")
    }
}

/// Builds a [`Client`]. Setters take and return `self`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// The name sent in `Hello`, for the server's logs. Default `"peerwire-client"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Announces a namespace and the versions of it this client speaks. Methods and topics of
    /// namespaces not announced cannot be used. The server reports a version mismatch in
    /// `Welcome` and on each call into that namespace.
    pub fn namespace(mut self, namespace: &str, versions: &[u32]) -> Self {
        self.config.namespaces.push(NamespaceVersions {
            namespace: namespace.into(),
            versions: versions.to_vec(),
            required: false,
        });
        self
    }

    /// Like [`namespace`](Self::namespace), but the server must speak it at one of `versions`
    /// or refuse the session with a reason.
    pub fn require_namespace(mut self, namespace: &str, versions: &[u32]) -> Self {
        self.config.namespaces.push(NamespaceVersions {
            namespace: namespace.into(),
            versions: versions.to_vec(),
            required: true,
        });
        self
    }

    /// Trusts a server running as `uid` (call again to trust several). The client checks the
    /// server's credentials (`SO_PEERCRED` of the listening socket) before it sends anything,
    /// and refuses a server of another uid: someone who squatted on the socket path, or a
    /// process posing as the server ("display hijacking"). Default, when never called: the
    /// client's own uid and root.
    pub fn expect_server_uid(mut self, uid: u32) -> Self {
        self.config.server_uids.push(uid);
        self
    }

    /// Also requires the server process to run this executable (compared by device and inode,
    /// resolved race-free through a pidfd; refused where the kernel cannot do that).
    pub fn expect_server_exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.server_exe = Some(path.into());
        self
    }

    /// Runs TLS 1.3 after the server's credentials are checked and before `Hello`, trusting
    /// exactly the pinned server certificate (see [`peerwire_security::tls`]). Default: none.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.config.tls = Some(Arc::new(tls));
        self
    }

    /// Presents this one-time session token in `Hello`. A token is good for one session:
    /// do not combine with [`reconnect`](Self::reconnect).
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        self.config.token = Some(Arc::new(Token(zeroize::Zeroizing::new(
            token.as_ref().trim().as_bytes().to_vec(),
        ))));
        self
    }

    /// Reads the session token handed over by the launching server (an inherited pipe named by
    /// `PEERWIRE_TOKEN_FD`, see `peerwire_security::launch`) and presents it in `Hello`.
    pub fn token_from_launcher(self) -> std::io::Result<Self> {
        match peerwire_security::launch::token_from_launcher()? {
            Some(token) => Ok(self.token(token.as_str())),
            None => Err(std::io::Error::other(format!(
                "no session token was handed over ({} is not set)",
                peerwire_security::launch::TOKEN_FD_ENV
            ))),
        }
    }

    /// Bound on connect plus handshake. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Deadline of [`Client::call`]. Default 30 s.
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.config.default_deadline = deadline;
        self
    }

    /// Largest frame this client accepts (the server may choose less). Default 16 MiB.
    pub fn max_frame_size(mut self, max: u32) -> Self {
        self.config.max_frame_size = max;
        self
    }

    /// Events buffered per subscription before further ones are dropped (the stream then
    /// shows a gap in `seq`). Default 1024.
    pub fn event_buffer(mut self, n: usize) -> Self {
        self.config.event_buffer = n.max(1);
        self
    }

    /// Reconnect automatically when the connection is lost, re-subscribing every topic.
    /// Default: off.
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.config.reconnect = Some(backoff);
        self
    }

    /// Connects and completes the handshake.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let (generation, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            config: self.config,
            conn: Mutex::new(None),
            subs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
            generation,
        });
        let conn = conn::connect(&inner.config, Arc::downgrade(&inner)).await?;
        inner.install(conn);
        Ok(Client { inner })
    }
}

/// One event received on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// The topic.
    pub topic: String,
    /// Per connection and topic, starting at 1; a gap means events were dropped. Restarts at 1
    /// after a reconnection.
    pub seq: u64,
    /// The encoded event.
    pub payload: Bytes,
}

impl EventMessage {
    /// Decodes the payload.
    pub fn decode<M: Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.payload.clone())
    }
}

/// Events of one topic, in the order the server sent them.
#[derive(Debug)]
pub struct EventStream {
    topic: String,
    rx: mpsc::Receiver<EventMessage>,
}

impl EventStream {
    /// The topic, or the topics joined with `,`.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next event, or `None` once the client is closed.
    pub async fn next(&mut self) -> Option<EventMessage> {
        self.rx.recv().await
    }
}

type Subscribers = HashMap<String, Vec<mpsc::Sender<EventMessage>>>;

pub(crate) struct Inner {
    pub(crate) config: Config,
    conn: Mutex<Option<Arc<Conn>>>,
    pub(crate) subs: Mutex<Subscribers>,
    next_id: AtomicU64,
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

    /// Delivers a pushed event to every local subscriber of its topic; never blocks.
    pub(crate) fn deliver(&self, event: Event) {
        let mut subs = lock(&self.subs);
        let Some(list) = subs.get_mut(&event.topic) else {
            tracing::debug!(topic = %event.topic, "event for a topic with no subscriber");
            return;
        };
        let msg = EventMessage {
            topic: event.topic,
            seq: event.seq,
            payload: event.payload,
        };
        list.retain(|tx| match tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(topic = %msg.topic, seq = msg.seq, "subscriber is not keeping up: event dropped");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Called by a connection's reader when the connection is gone.
    pub(crate) fn connection_lost(self: &Arc<Self>) {
        if self.closed.is_cancelled() {
            return;
        }
        let Some(backoff) = self.config.reconnect else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(reconnect(weak, backoff));
    }
}

async fn reconnect(weak: Weak<Inner>, backoff: Backoff) {
    let mut attempt = 0;
    loop {
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.is_cancelled() {
            return;
        }
        match conn::connect(&inner.config, weak.clone()).await {
            Ok(conn) => {
                let topics: Vec<String> = lock(&inner.subs).keys().cloned().collect();
                inner.install(conn);
                tracing::info!(attempt, "reconnected");
                if !topics.is_empty() {
                    let client = Client { inner };
                    if let Err(e) = client.server_subscribe(topics).await {
                        tracing::warn!("re-subscribing after reconnect failed: {e}");
                    }
                }
                return;
            }
            // Refusals will not go away by themselves: say so loudly, and keep trying (an
            // operator may fix the policy or restart the right server).
            Err(
                e @ (ConnectError::UntrustedServer { .. }
                | ConnectError::Handshake(_)
                | ConnectError::Tls(_)),
            ) => {
                tracing::warn!(attempt, "reconnect refused: {e}")
            }
            Err(e) => tracing::debug!(attempt, "reconnect failed: {e}"),
        }
    }
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
    /// Starts building a client for the server at `socket_path`.
    pub fn builder(socket_path: impl Into<PathBuf>) -> ClientBuilder {
        ClientBuilder {
            config: Config {
                path: socket_path.into(),
                name: "peerwire-client".into(),
                namespaces: vec![],
                connect_timeout: Duration::from_secs(5),
                default_deadline: Duration::from_secs(30),
                max_frame_size: 16 * 1024 * 1024,
                outbound_queue: 1024,
                event_buffer: 1024,
                reconnect: None,
                server_uids: vec![],
                server_exe: None,
                tls: None,
                token: None,
            },
        }
    }

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
            .ok_or_else(|| CallError::Disconnected("not connected".into()))?;
        if conn.is_closed() {
            return Err(CallError::Disconnected(conn.close_reason()));
        }
        if let Some(status) = conn.goodbye() {
            return Err(CallError::Disconnected(format!(
                "the server is closing the session: {status}"
            )));
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
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline_ms = u32::try_from(deadline.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let frame = Frame::new(Kind::Request(Request {
            id,
            method: method.to_owned(),
            payload: payload.into(),
            deadline_ms,
        }));
        conn.check_size(&frame)?;
        let (tx, mut rx) = oneshot::channel();
        // A little slack so the server's own deadline answer, which cancels the handler, wins.
        let slack = Duration::from_millis(50);
        let due = tokio::time::Instant::now() + deadline.saturating_add(slack);
        let guard = conn.register(id, tx, due);
        // The deadline also bounds a wait for room in a full outbound buffer.
        let answer = tokio::select! {
            biased;
            early = &mut rx => early,
            sent = conn.send(frame) => {
                sent?;
                rx.await
            }
        };
        drop(guard);
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(Some(e))) => return Err(e),
            Ok(Err(None)) => {
                return Err(CallError::Status(Status::new(
                    Code::DeadlineExceeded,
                    format!("no response to {method} within its deadline of {deadline:?}"),
                )));
            }
            Err(_) => return Err(CallError::Disconnected("connection closed".into())),
        };
        Status::from_wire(response.code, &response.message).map_err(CallError::Status)?;
        Ok(response.payload)
    }

    /// Sends a one-way event (for example a touch or key event) to the server.
    pub async fn notify<M: Message>(&self, topic: &str, event: &M) -> Result<(), CallError> {
        let conn = self.connection()?;
        conn.session.check_name(topic).map_err(CallError::Status)?;
        let frame = Frame::new(Kind::Event(Event {
            topic: topic.to_owned(),
            seq: conn.next_event_seq(topic),
            payload: event.encode_to_vec().into(),
        }));
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
        let (tx, rx) = mpsc::channel(self.inner.config.event_buffer);
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
            rx,
        })
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
            let _ = conn
                .send(Frame::new(Kind::Goodbye(Goodbye {
                    code: Code::Ok as i32,
                    reason: "client closed".into(),
                })))
                .await;
            conn.flushed(Duration::from_millis(200)).await;
            conn.close();
        }
        lock(&self.inner.subs).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_is_capped() {
        let b = Backoff::default();
        for attempt in 0..12 {
            let base = (0.05 * 2f64.powi(attempt as i32)).min(5.0);
            for _ in 0..50 {
                let d = b.delay(attempt).as_secs_f64();
                assert!(
                    d >= base * 0.75 - 1e-9 && d <= base * 1.25 + 1e-9,
                    "attempt {attempt}: {d}"
                );
            }
        }
        // Jitter really varies the delay (so restarted clients do not reconnect in lockstep).
        let samples: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3)).collect();
        assert!(samples.len() > 1);
        // Huge attempt counts neither overflow nor exceed the cap.
        assert!(b.delay(u32::MAX) <= Duration::from_secs_f64(5.0 * 1.25));
    }
}
