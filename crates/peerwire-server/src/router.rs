//! Handlers registered by name, and the contexts they receive.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use peerwire_proto::Status;
use peerwire_proto::handshake::Session;
use peerwire_security::cred::PeerCredentials;
use prost::Message;

use crate::ServerHandle;
use crate::registry::FastHash;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type MethodFn =
    Arc<dyn Fn(RequestContext, Bytes) -> BoxFuture<Result<Bytes, Status>> + Send + Sync>;
pub(crate) type EventFn = Arc<dyn Fn(ConnectionContext, Bytes) -> BoxFuture<()> + Send + Sync>;

/// Identifies a connection for the life of the server process (the `session_id` of `Welcome`).
pub type ConnectionId = u64;

/// What a handler knows about the connection a message came on.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    pub(crate) inner: Arc<ConnInfo>,
    pub(crate) server: ServerHandle,
}

#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) id: ConnectionId,
    pub(crate) peer: PeerCredentials,
    pub(crate) client_name: String,
    pub(crate) session: Session,
}

impl ConnectionContext {
    /// The connection's id; use it with [`ServerHandle::send_event`].
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }

    /// The peer's credentials, read with `SO_PEERCRED` when the connection was accepted.
    pub fn peer(&self) -> PeerCredentials {
        self.inner.peer
    }

    /// The name the client gave in `Hello` (informational only: anyone can claim any name).
    pub fn client_name(&self) -> &str {
        &self.inner.client_name
    }

    /// The agreed session: protocol version, limits and namespace versions.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// The server, to push events from a handler.
    pub fn server(&self) -> &ServerHandle {
        &self.server
    }
}

/// What a method handler receives besides the request message.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub(crate) conn: ConnectionContext,
    pub(crate) method: Arc<str>,
    pub(crate) deadline: Instant,
}

impl RequestContext {
    /// The connection the request came on.
    pub fn connection(&self) -> &ConnectionContext {
        &self.conn
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// When the request's deadline passes; the handler is cancelled then.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[derive(Default, Clone)]
pub(crate) struct Router {
    /// By name; the name is shared with each call's context (no copy per call). The keys are
    /// the names the server registered (a peer's names are only looked up, never inserted),
    /// so the cheap hash (`FastHash`), like the other maps keyed by what the server chooses.
    pub(crate) methods: HashMap<Arc<str>, MethodFn, FastHash>,
    pub(crate) events: HashMap<String, EventFn, FastHash>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .field("events", &self.events.keys().collect::<Vec<_>>())
            .finish()
    }
}

pub(crate) fn method_fn<Req, Resp, F, Fut>(name: &str, handler: F) -> MethodFn
where
    Req: Message + Default + 'static,
    Resp: Message + 'static,
    F: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let name: Arc<str> = name.into();
    Arc::new(move |ctx, payload| {
        let handler = handler.clone();
        let name = name.clone();
        Box::pin(async move {
            let req = Req::decode(payload).map_err(|e| {
                Status::invalid_argument(format!("payload is not a valid {name} request: {e}"))
            })?;
            let resp = handler(ctx, req).await?;
            Ok(Bytes::from(resp.encode_to_vec()))
        })
    })
}

pub(crate) fn event_fn<M, F, Fut>(handler: F) -> EventFn
where
    M: Message + Default + 'static,
    F: Fn(ConnectionContext, M) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |ctx, payload| {
        let handler = handler.clone();
        Box::pin(async move {
            match M::decode(payload) {
                Ok(msg) => handler(ctx, msg).await,
                Err(e) => tracing::warn!(
                    conn = ctx.id(),
                    peer = %ctx.peer(),
                    "dropped an event whose payload does not decode: {e}"
                ),
            }
        })
    })
}
