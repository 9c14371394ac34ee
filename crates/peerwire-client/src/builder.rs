//! [`ClientBuilder`]: every client setting, with its default, and `connect`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerwire_proto::v1::NamespaceVersions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::conn;
use crate::{Backoff, Client, ClientTls, ConnectError, Inner};

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
pub(crate) struct Token(pub(crate) zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<session token>")
    }
}

/// Builds a [`Client`]. Setters take and return `self`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) config: Config,
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
            subs: Mutex::new(HashMap::default()),
            closed: CancellationToken::new(),
            generation,
        });
        let conn = conn::connect(&inner.config, Arc::downgrade(&inner)).await?;
        inner.install(conn);
        Ok(Client { inner })
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
}
