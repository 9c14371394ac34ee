//! # peerwire-server: the SDK side of a peerwire connection
//!
//! A [`ServerBuilder`] collects the socket path, [`Limits`] and handlers; [`Server::run`] accepts
//! connections on a Unix socket, reads each peer's credentials (`SO_PEERCRED`) before a byte
//! of it is parsed, runs the handshake, routes requests to handlers by `namespace.Name`, pushes
//! events to subscribed connections, and shuts down gracefully.
//!
//! Guarantees, whatever a peer sends:
//! - a bad frame, a wrong first frame or an unknown version closes *that* connection with a
//!   `Reject` or `Goodbye` naming the reason, and a log line with the peer's credentials;
//! - every wait is bounded (handshake timeout, request deadlines, idle timeout, shutdown grace);
//! - every queue is bounded; a connection that stops reading is closed, never waited for;
//! - a panicking handler answers `INTERNAL` to its request only.
//!
//! ```
//! use peerwire_server::{Server, Status};
//! use peerwire_client::Client;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?; // 0700: only this user can reach the socket
//! let path = dir.path().join("sdk.sock");
//! let mut builder = Server::builder(&path);
//! // Any prost message can be a request or response; here the well-known `String` wrapper.
//! builder = builder.method("echo.Hello", |ctx, name: String| async move {
//!     Ok::<_, Status>(format!("hello {name}, uid {}", ctx.connection().peer().uid))
//! });
//! let server = builder.bind()?;
//! let handle = server.handle();
//! let serving = tokio::spawn(server.run());
//!
//! let client = Client::builder(&path).namespace("echo", &[1]).connect().await?;
//! let reply: String = client.call("echo.Hello", &"renderer".to_string()).await?;
//! assert!(reply.starts_with("hello renderer"));
//!
//! handle.shutdown(); // Goodbye to every client, in-flight calls finish, socket removed
//! serving.await??;
//! assert!(!path.exists());
//! # Ok(()) }
//! ```
//!
//! The runnable end-to-end example is `peerwire demo` (crate `peerwire-cli`) and the display
//! server in `examples/`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod conn;
pub mod daemon;
mod fds;
mod logs;
mod notify;
mod outbound;
mod policy;
mod registry;
mod router;
pub mod settings;
mod socket;
pub mod ws;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures_util::FutureExt;
use peerwire_proto::handshake::ServerOffer;
use peerwire_proto::names;
use prost::Message;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bytes::Bytes;
pub use config::{ConfigProblem, Limits};
pub use fds::DescriptorLimit;
pub use outbound::SlowConsumerPolicy;
pub use peerwire_proto::Status;
pub use peerwire_proto::v1::Code;
pub use peerwire_security::cred::PeerCredentials;
pub use peerwire_security::launch::spawn_with_token;
pub use peerwire_security::tls::{ServerTls, TlsMode};
pub use peerwire_security::token::{Binding, DeviceSecret, Minter, Verifier};
pub use policy::AccessPolicy;
pub use registry::{PushError, Stats};
pub use router::{ConnectionContext, ConnectionId, RequestContext};
pub use ws::{WsConfigError, WsEndpoint, token_endpoint};

use registry::{Shared, bump};
use router::Router;

/// Why the server could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The builder was given something invalid (a bad method name, a reserved namespace...):
    /// the first problem found, and any others.
    #[error(
        "invalid server configuration: {problem}{}",
        others.iter().map(|p| format!("; {p}")).collect::<String>()
    )]
    Config {
        /// The first problem.
        #[source]
        problem: ConfigProblem,
        /// Further problems, in the order they were found.
        others: Vec<ConfigProblem>,
    },
    /// The socket could not be set up at this path.
    #[error("cannot listen on {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong and how to fix it.
        reason: String,
    },
    /// I/O failure while serving.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// `RLIMIT_NOFILE` cannot hold the descriptors the limits allow (checked at bind).
    #[error(transparent)]
    Descriptors(#[from] DescriptorLimit),
    /// [`ServerBuilder::bind`] was called outside a tokio runtime (nothing was created).
    #[error(
        "bind() must be called inside a tokio runtime (within #[tokio::main] or Runtime::enter)"
    )]
    NoRuntime,
}

impl From<ConfigProblem> for ServerError {
    fn from(problem: ConfigProblem) -> Self {
        Self::Config {
            problem,
            others: vec![],
        }
    }
}

/// Collects what a [`Server`] needs. Setters take and return the builder by value, like
/// tonic's and [`ClientBuilder`](https://docs.rs/peerwire-client)'s; [`bind`](Self::bind) validates.
#[derive(Debug)]
pub struct ServerBuilder {
    path: PathBuf,
    name: String,
    limits: Limits,
    policy: AccessPolicy,
    socket_group: Option<u32>,
    topic_policies: std::collections::HashMap<String, SlowConsumerPolicy>,
    tls: Option<Arc<ServerTls>>,
    tokens: Option<Arc<std::sync::Mutex<Option<Verifier>>>>,
    namespaces: BTreeMap<String, Vec<u32>>,
    router: Router,
    errors: Vec<ConfigProblem>,
    ws: Option<WsEndpoint>,
}

impl ServerBuilder {
    /// Sets the name announced in `Welcome`. Default `"peerwire"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the limits. Default [`Limits::default()`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets who may connect. Default [`AccessPolicy::own_uid`]: only the server's own uid.
    pub fn access_policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs TLS 1.3 on every connection, after the access policy and before `Hello` (see
    /// [`peerwire_security::tls`]). Default: no TLS. A failed TLS handshake closes that
    /// connection with a log line naming the peer; nothing else is affected.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Requires a valid, unused session token in every `Hello` (R7, R8): a `Hello` without one,
    /// or with one that is malformed, forged, expired, replayed or for another peer, is
    /// answered `Reject(UNAUTHENTICATED)` with the reason. Use with TLS (`ServerAuth`) so the
    /// token and the session stay confidential (R10).
    pub fn require_tokens(mut self, verifier: Verifier) -> Self {
        self.tokens = Some(Arc::new(std::sync::Mutex::new(Some(verifier))));
        self
    }

    /// Also serves the WebSocket transport (R16) on `endpoint`: the same methods, topics and
    /// limits for a browser display client, over TLS 1.3 on a loopback port (see
    /// `docs/protocol.md`, "WebSocket transport"). Needs an access policy without executable
    /// rules (they cannot apply to a TCP peer).
    pub fn websocket(mut self, endpoint: WsEndpoint) -> Self {
        self.ws = Some(endpoint);
        self
    }

    /// Declares what happens to `topic`'s events when a subscriber does not read: see
    /// [`SlowConsumerPolicy`]. Default `Disconnect`. Whatever the policy, a push never waits.
    pub fn topic_policy(mut self, topic: &str, policy: SlowConsumerPolicy) -> Self {
        if let Err(source) = names::namespace_of(topic) {
            self.errors.push(ConfigProblem::Name {
                name: topic.to_owned(),
                source,
            });
        }
        self.topic_policies.insert(topic.to_owned(), policy);
        self
    }

    /// Deliberately opens the socket to a group: its directory becomes 0750 and the socket
    /// 0660, both owned by `gid`. Default: none (0700 and 0600). File permissions only decide
    /// who can reach the socket; the access policy still decides who is admitted.
    pub fn socket_group(mut self, gid: u32) -> Self {
        self.socket_group = Some(gid);
        self
    }

    /// Declares the versions of a namespace the server speaks. A namespace used by a handler
    /// and never declared is spoken at version 1.
    pub fn namespace(mut self, namespace: &str, versions: &[u32]) -> Self {
        if !names::validate_namespace(namespace) || namespace == peerwire_proto::RESERVED_NAMESPACE
        {
            self.errors
                .push(ConfigProblem::Namespace(namespace.to_owned()));
        } else if versions.is_empty() || versions.contains(&0) {
            self.errors
                .push(ConfigProblem::Versions(namespace.to_owned()));
        } else {
            self.namespaces
                .insert(namespace.to_owned(), versions.to_vec());
        }
        self
    }

    fn check_name(&mut self, name: &str) -> bool {
        match names::namespace_of(name) {
            Ok(peerwire_proto::RESERVED_NAMESPACE) => {
                self.errors.push(ConfigProblem::Reserved(name.to_owned()));
                false
            }
            Ok(ns) => {
                self.namespaces
                    .entry(ns.to_owned())
                    .or_insert_with(|| vec![1]);
                true
            }
            Err(source) => {
                self.errors.push(ConfigProblem::Name {
                    name: name.to_owned(),
                    source,
                });
                false
            }
        }
    }

    /// Registers a handler for the method `name` (`namespace.Name`). The request payload is
    /// decoded as `Req`; a payload that does not decode is answered `INVALID_ARGUMENT`. The
    /// handler is cancelled (dropped) when the request's deadline passes or the client cancels.
    pub fn method<Req, Resp, F, Fut>(self, name: &str, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        self.add_method(name, router::method_fn(name, handler))
    }

    /// Registers a handler for the method `name` that takes and returns the payload as bytes,
    /// without protobuf decoding or encoding: for bulk data (images, audio buffers) the payload
    /// is neither copied on the way in (it shares the read buffer) nor on the way out (a large
    /// payload is written from its own buffer). Otherwise like [`ServerBuilder::method`].
    pub fn raw_method<F, Fut>(self, name: &str, handler: F) -> Self
    where
        F: Fn(RequestContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        let f: router::MethodFn =
            std::sync::Arc::new(move |ctx, payload| Box::pin(handler(ctx, payload)));
        self.add_method(name, f)
    }

    fn add_method(mut self, name: &str, f: router::MethodFn) -> Self {
        if self.check_name(name) && self.router.methods.insert(name.into(), f).is_some() {
            self.errors
                .push(ConfigProblem::DuplicateMethod(name.to_owned()));
        }
        self
    }

    /// Registers a handler for one-way events (client notifications) on `topic`. Events of one
    /// connection are handled one at a time, in the order they were sent.
    pub fn on_event<M, F, Fut>(mut self, topic: &str, handler: F) -> Self
    where
        M: Message + Default + 'static,
        F: Fn(ConnectionContext, M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.check_name(topic) {
            let f = router::event_fn(handler);
            if self.router.events.insert(topic.to_owned(), f).is_some() {
                self.errors
                    .push(ConfigProblem::DuplicateEvent(topic.to_owned()));
            }
        }
        self
    }

    /// Validates the configuration and binds the socket with the hardening of
    /// [`peerwire_security::sockpath`]: the directory is created 0700 (0750 with a socket group)
    /// if missing and refused if unsafe; the socket is 0600 (0660) from its first instant; a
    /// stale socket of ours that nobody answers on is replaced; a live server or anything else at
    /// the path is refused. When the process was started by systemd socket activation
    /// (`LISTEN_PID`/`LISTEN_FDS`), the passed socket is used instead, after the same checks.
    /// Must be called inside a tokio runtime.
    pub fn bind(&self) -> Result<Server, ServerError> {
        self.validate()?;
        // Checked before the file system is touched: tokio's listener needs a reactor, and
        // without one the socket file would be left behind by a panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ServerError::NoRuntime);
        }
        let nofile = fds::ensure_nofile(&self.limits)?;
        tracing::debug!(
            "RLIMIT_NOFILE {nofile}: room for the {} descriptors the limits allow",
            fds::needed(&self.limits)
        );
        // The WebSocket endpoint first: a configuration it refuses leaves no socket file.
        let ws = match &self.ws {
            None => None,
            Some(ep) => Some(self.bind_ws(ep)?),
        };
        let (listener, origin) = socket::listen(&self.path, self.socket_group)?;
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        self.serve_on(listener, origin, ws)
    }

    fn validate(&self) -> Result<(), ServerError> {
        let mut errors = self.errors.clone();
        if let Err(e) = peerwire_security::sockpath::validate_socket_path(&self.path) {
            errors.push(ConfigProblem::SocketPath(e));
        }
        let mut errors = errors.into_iter();
        if let Some(problem) = errors.next() {
            return Err(ServerError::Config {
                problem,
                others: errors.collect(),
            });
        }
        let l = &self.limits;
        if l.max_frame_size < peerwire_proto::handshake::MIN_FRAME_SIZE
            || l.outbound_queue == 0
            || l.max_in_flight == 0
            || l.max_connections == 0
            || l.max_connections_per_uid == 0
            || l.max_unauthenticated == 0
            || l.max_unauthenticated_per_uid == 0
            || l.keepalive_interval.is_zero()
            || l.idle_timeout <= l.keepalive_interval
            || l.default_deadline > l.max_deadline
            || [
                l.handshake_timeout,
                l.default_deadline,
                l.max_deadline,
                l.keepalive_interval,
                l.idle_timeout,
                l.shutdown_grace,
            ]
            .iter()
            .any(|d| *d > config::MAX_DURATION)
        {
            return Err(ConfigProblem::Limits {
                limits: Box::new(*l),
            }
            .into());
        }
        Ok(())
    }

    fn serve_on(
        &self,
        listener: UnixListener,
        origin: socket::Origin,
        ws: Option<(tokio::net::TcpListener, Arc<ws::WsShared>)>,
    ) -> Result<Server, ServerError> {
        self.policy
            .prepare_listener(&listener, self.tokens.is_some())
            .map_err(|e| ConfigProblem::SenderCheck(Arc::new(e)))?;
        let shared = Arc::new(Shared {
            name: self.name.clone(),
            limits: self.limits,
            offer: ServerOffer {
                server_name: self.name.clone(),
                namespaces: self.namespaces.clone(),
                limits: self.limits.to_wire(),
            },
            router: self.router.clone(),
            policy: self.policy.clone(),
            topic_policies: self.topic_policies.clone(),
            tls: self.tls.clone(),
            tokens: match &self.tokens {
                // A verifier owns its replay record; it moves into the first server built.
                Some(slot) => match slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(v) => Some(std::sync::Mutex::new(v)),
                    None => {
                        return Err(ConfigProblem::VerifierUsed.into());
                    }
                },
                None => None,
            },
            socket_path: std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone()),
            conns: Default::default(),
            subscribers: Default::default(),
            next_id: AtomicU64::new(1),
            admitted: Default::default(),
            shutdown: CancellationToken::new(),
            counters: Default::default(),
            log_limit: Default::default(),
            pre_admission: Arc::new(tokio::sync::Semaphore::new(fds::PRE_ADMISSION)),
            lingering: Arc::new(tokio::sync::Semaphore::new(fds::LINGERING)),
            penalty: Default::default(),
        });
        Ok(Server {
            listener,
            guard: socket::SocketGuard::new(self.path.clone(), origin),
            shared,
            ws,
        })
    }

    /// Checks the WebSocket endpoint against the rest of the configuration, loads its web root
    /// and binds its port.
    fn bind_ws(
        &self,
        ep: &WsEndpoint,
    ) -> Result<(tokio::net::TcpListener, Arc<ws::WsShared>), ServerError> {
        let problem = |e: WsConfigError| ServerError::from(ConfigProblem::WebSocket(e));
        if self.policy.has_exes() {
            return Err(problem(WsConfigError::ExeRules));
        }
        if ep.origins.is_empty() {
            return Err(problem(WsConfigError::NoOrigin));
        }
        let tokens = ep
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| problem(WsConfigError::VerifierUsed))?;
        let web = match &ep.web_root {
            Some(dir) => ws::WebRoot::load(dir).map_err(problem)?,
            None => ws::WebRoot::default(),
        };
        let listen_err = |e: std::io::Error| {
            problem(WsConfigError::Listen {
                addr: ep.listen,
                reason: e.to_string(),
            })
        };
        let listener = std::net::TcpListener::bind(ep.listen).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_err)?;
        Ok((
            listener,
            Arc::new(ws::WsShared {
                addr,
                origins: ep.origins.clone(),
                web,
                tls: ep.tls.clone(),
                endpoint: token_endpoint(addr),
                tokens: std::sync::Mutex::new(tokens),
            }),
        ))
    }
}

/// A bound server. Run it with [`run`](Self::run); control it with a [`ServerHandle`].
pub struct Server {
    listener: UnixListener,
    guard: socket::SocketGuard,
    shared: Arc<Shared>,
    ws: Option<(tokio::net::TcpListener, Arc<ws::WsShared>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.guard.path())
            .field("name", &self.shared.name)
            .finish()
    }
}

impl Server {
    /// Starts building a server that will listen on `socket_path`.
    pub fn builder(socket_path: impl Into<PathBuf>) -> ServerBuilder {
        ServerBuilder {
            path: socket_path.into(),
            name: "peerwire".into(),
            limits: Limits::default(),
            policy: AccessPolicy::own_uid(),
            socket_group: None,
            topic_policies: Default::default(),
            tls: None,
            tokens: None,
            namespaces: BTreeMap::new(),
            router: Router::default(),
            errors: vec![],
            ws: None,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.guard.path()
    }

    /// The address the WebSocket endpoint listens on (its port resolved), if it has one.
    pub fn ws_addr(&self) -> Option<std::net::SocketAddr> {
        self.ws.as_ref().map(|(_, w)| w.addr)
    }

    /// A handle to push events, read statistics and shut the server down.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until [`ServerHandle::shutdown`] is called, then: stops accepting, removes the
    /// socket file, sends `Goodbye` on every connection, lets requests in flight finish within
    /// the shutdown grace period, and returns once every connection is closed.
    pub async fn run(self) -> Result<(), ServerError> {
        let Server {
            listener,
            guard,
            shared,
            ws,
        } = self;
        let tracker = TaskTracker::new();
        let mut reserve = fds::Reserve::new();
        tracing::info!(path = %guard.path().display(), "listening");
        if let Some((_, w)) = &ws {
            tracing::info!(addr = %w.addr, "listening for WebSocket connections (wss://{}/peerwire)", w.addr);
        }
        notify::notify("READY=1");
        // Watchdog pings come from this loop: if it stalls, systemd notices and restarts us.
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } } => {
                    notify::notify("WATCHDOG=1");
                }
                // A place among the connections not yet admitted first (the backlog holds the
                // rest meanwhile), then the connection: both cancellation-safe.
                (permit, accepted) = async {
                    let permit = shared.pre_admission.clone().acquire_owned().await;
                    (permit, listener.accept().await)
                } => match (permit, accepted) {
                    (Ok(permit), Ok((stream, _))) => {
                        bump(&shared.counters.connections);
                        tracker.spawn(conn::serve(shared.clone(), stream, permit));
                    }
                    (_, Err(e)) if matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE)) => {
                        // Out of descriptors all the same (something else in the process holds
                        // them): accept and close one connection with the spare descriptor,
                        // rather than sleep while the backlog fills.
                        bump(&shared.counters.connections);
                        bump(&shared.counters.limit_refusals);
                        let dropped = reserve.spend(|| {
                            listener.accept().now_or_never().map(|r| r.map(drop))
                        });
                        shared.log_limit.log(u32::MAX, || {
                            tracing::error!("accept failed: {e}; closed one connection with the spare descriptor ({dropped:?})");
                        });
                    }
                    (_, Err(e)) => {
                        // ECONNABORTED and the like concern one connection only.
                        shared.log_limit.log(u32::MAX, || tracing::warn!("accept failed: {e}"));
                    }
                    (Err(_), _) => break,
                },
                (permit, accepted) = async {
                    let permit = shared.pre_admission.clone().acquire_owned().await;
                    match &ws {
                        Some((l, _)) => (permit, l.accept().await),
                        None => std::future::pending().await,
                    }
                }, if ws.is_some() => match (permit, accepted, &ws) {
                    (Ok(permit), Ok((stream, addr)), Some((_, w))) => {
                        bump(&shared.counters.connections);
                        tracker.spawn(conn::serve_ws(shared.clone(), w.clone(), stream, addr, permit));
                    }
                    (_, Err(e), _) => {
                        shared.log_limit.log(u32::MAX, || tracing::warn!("WebSocket accept failed: {e}"));
                        if matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE)) {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                    _ => break,
                },
            }
        }
        notify::notify("STOPPING=1");
        drop(listener);
        drop(ws);
        drop(guard);
        tracing::info!("shutting down: {} connections open", shared.conns().len());
        tracker.close();
        tracker.wait().await;
        tracing::info!("shut down");
        Ok(())
    }
}

/// Controls a running server; cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl ServerHandle {
    /// Queues `event` on every connection subscribed to `topic` and returns how many it was
    /// queued on. Never blocks: a connection whose queue is full is closed as a slow consumer.
    pub fn broadcast<M: Message>(&self, topic: &str, event: &M) -> Result<usize, PushError> {
        self.shared.broadcast(topic, &event.encode_to_vec().into())
    }

    /// Runs `f` with the events it queues on this thread (through this handle or any other)
    /// gathered per connection and written together when it returns: one write, and over TLS
    /// one `SSL_write` (records of up to 16 KiB), per connection for a burst of events, rather
    /// than one per event. Each connection's gathered bytes still go out every 64 KiB or half
    /// its frame limit, so a long burst is not held back and never trips the slow-consumer
    /// limits by itself; those limits apply as usual. Events of drop-policy topics are moved in
    /// batches by the connection's writer task anyway. Handlers get this for each poll without
    /// asking.
    ///
    /// ```no_run
    /// # fn demo(server: &peerwire_server::ServerHandle, readings: &[u32]) {
    /// server.batch(|| {
    ///     for r in readings {
    ///         let _ = server.broadcast("sensor.Reading", r);
    ///     }
    /// });
    /// # }
    /// ```
    pub fn batch<T>(&self, f: impl FnOnce() -> T) -> T {
        crate::outbound::batched(f)
    }

    /// Queues `event` on one connection, which must be subscribed to `topic`.
    pub fn send_event<M: Message>(
        &self,
        conn: ConnectionId,
        topic: &str,
        event: &M,
    ) -> Result<(), PushError> {
        self.shared
            .send_event(conn, topic, &event.encode_to_vec().into())
    }

    /// The ids of the open connections with their peers' credentials.
    pub fn connections(&self) -> Vec<(ConnectionId, PeerCredentials)> {
        let mut v: Vec<_> = self
            .shared
            .conns()
            .values()
            .map(|e| (e.info.id, e.info.peer))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// The server's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Starts a graceful shutdown; [`Server::run`] returns when it is complete.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// True once shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (item 8): outside a runtime, `bind` used to create the directory and the socket
    /// file, then panic in tokio's `UnixListener::from_std`. Now it is a typed error and nothing
    /// is created.
    #[test]
    fn bind_without_a_runtime_is_an_error_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run").join("s.sock");
        let err = Server::builder(&sock).bind().unwrap_err();
        assert!(matches!(err, ServerError::NoRuntime), "{err}");
        assert!(
            !sock.parent().unwrap().exists(),
            "bind touched the file system"
        );
    }
}
