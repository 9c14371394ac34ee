//! The WebSocket transport (R16): the same envelope frames, one per binary WebSocket message,
//! over TLS 1.3 on a loopback TCP port, for a browser display client. `docs/protocol.md`
//! ("WebSocket transport") is the contract; this module holds its configuration
//! ([`WsEndpoint`]), the web root served beside it, the HTTP request head and the frame I/O.
//! The connection itself (uid, TLS, upgrade, token, then the same session as a Unix socket) is
//! `conn/ws.rs`.

pub(crate) mod http;
pub(crate) mod io;
pub(crate) mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use peerwire_security::tls::ServerTls;
use peerwire_security::token::Verifier;

/// The WebSocket endpoint's path on the TLS port.
pub const WS_PATH: &str = "/peerwire";
/// The subprotocol the server speaks (and answers with).
pub const SUBPROTOCOL: &str = "peerwire.v1";
/// The prefix of the subprotocol that carries the session token: `peerwire.token.<token>`.
pub const TOKEN_PREFIX: &str = "peerwire.token.";
/// Most bytes of all files of a web root together.
pub const WEB_ROOT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Most files of a web root.
pub const WEB_ROOT_MAX_FILES: usize = 256;
/// Deepest directory level of a web root read.
const WEB_ROOT_MAX_DEPTH: usize = 4;

/// The path a session token for the WebSocket endpoint listening on `addr` is bound to
/// (`Binding::socket` when minting, `Presenter::socket` when verifying):
/// `wss://127.0.0.1:7443/peerwire`, `wss://[::1]:7443/peerwire`.
pub fn token_endpoint(addr: SocketAddr) -> PathBuf {
    PathBuf::from(format!("wss://{addr}{WS_PATH}"))
}

/// Why a WebSocket endpoint cannot be configured.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WsConfigError {
    /// The endpoint listens on loopback only.
    #[error(
        "the WebSocket endpoint must listen on a loopback address (127.0.0.0/8 or ::1), not {0}"
    )]
    NotLoopback(SocketAddr),
    /// An allowed origin must be an exact `scheme://host[:port]`; `null` is never allowed.
    #[error("invalid allowed origin {0:?}: an exact scheme://host[:port], not null, no path")]
    Origin(String),
    /// No origin allowed: no browser page could connect.
    #[error("the WebSocket endpoint needs at least one allowed origin")]
    NoOrigin,
    /// The endpoint's token verifier moved into another server already.
    #[error("the WebSocket endpoint's token verifier was already used by another server")]
    VerifierUsed,
    /// Executable rules cannot be checked over TCP.
    #[error(
        "the access policy has executable rules, which cannot apply to a TCP peer: no WebSocket \
         endpoint under such a policy"
    )]
    ExeRules,
    /// The web root cannot be read, or is over its bounds.
    #[error("web root {path}: {reason}")]
    WebRoot {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The listening socket.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        reason: String,
    },
}

/// A WebSocket endpoint: its loopback address, the origins allowed, the server TLS identity
/// (mutual TLS if its mode says so), the session-token verifier and an optional web root
/// served beside it.
///
/// Every upgrade presents a session token, whether or not the Unix socket requires them. The
/// endpoint's verifier keeps its own replay record (a token is bound to its endpoint, so a
/// token minted for one cannot be used at the other, and each record sees every use of the
/// tokens it can accept).
#[derive(Debug, Clone)]
pub struct WsEndpoint {
    pub(crate) listen: SocketAddr,
    pub(crate) origins: Vec<String>,
    pub(crate) web_root: Option<PathBuf>,
    pub(crate) tls: Arc<ServerTls>,
    pub(crate) tokens: Arc<std::sync::Mutex<Option<Verifier>>>,
}

impl WsEndpoint {
    /// An endpoint on `listen` (a loopback address; port 0 picks one) with `tls`, verifying
    /// session tokens with `tokens`.
    pub fn new(
        listen: SocketAddr,
        tls: ServerTls,
        tokens: Verifier,
    ) -> Result<Self, WsConfigError> {
        if !listen.ip().is_loopback() {
            return Err(WsConfigError::NotLoopback(listen));
        }
        Ok(Self {
            listen,
            origins: vec![],
            web_root: None,
            tls: Arc::new(tls),
            tokens: Arc::new(std::sync::Mutex::new(Some(tokens))),
        })
    }

    /// Allows the page origin `origin` (exact match, e.g. `https://127.0.0.1:7443`).
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, WsConfigError> {
        let bad = || WsConfigError::Origin(origin.to_owned());
        let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
        if origin == "null"
            || !matches!(scheme, "https" | "http" | "chrome-extension")
            || rest.is_empty()
            || rest.contains(['/', '?', '#', '@', ' '])
            || !origin.is_ascii()
            || origin.chars().any(|c| c.is_ascii_control())
        {
            return Err(bad());
        }
        self.origins.push(origin.to_owned());
        Ok(self)
    }

    /// Serves the files under `dir` (loaded into memory at bind).
    pub fn web_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.web_root = Some(dir.into());
        self
    }

    /// The address to listen on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

/// The files of a web root by request path (`/index.html`), loaded at bind: a request names a
/// key of this map or gets 404, so no request reaches the file system.
#[derive(Debug, Default)]
pub(crate) struct WebRoot {
    files: HashMap<String, (Bytes, &'static str)>,
}

impl WebRoot {
    /// The file at request path `path` (`/` is `/index.html`) and its content type.
    pub(crate) fn get(&self, path: &str) -> Option<&(Bytes, &'static str)> {
        let path = if path == "/" { "/index.html" } else { path };
        self.files.get(path)
    }

    /// Reads `dir`: regular files only (no symbolic links), names of `[A-Za-z0-9._-]` not
    /// starting with a dot, at most [`WEB_ROOT_MAX_FILES`] files and [`WEB_ROOT_MAX_BYTES`].
    pub(crate) fn load(dir: &Path) -> Result<Self, WsConfigError> {
        let err = |reason: String| WsConfigError::WebRoot {
            path: dir.to_owned(),
            reason,
        };
        let mut root = WebRoot::default();
        let mut total = 0u64;
        let mut todo = vec![(dir.to_owned(), String::new(), 0usize)];
        while let Some((d, prefix, depth)) = todo.pop() {
            let entries =
                std::fs::read_dir(&d).map_err(|e| err(format!("{}: {e}", d.display())))?;
            for entry in entries {
                let entry = entry.map_err(|e| err(e.to_string()))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if name.starts_with('.')
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                {
                    continue;
                }
                let meta = std::fs::symlink_metadata(entry.path())
                    .map_err(|e| err(format!("{name}: {e}")))?;
                let key = format!("{prefix}/{name}");
                if meta.is_dir() && depth + 1 < WEB_ROOT_MAX_DEPTH {
                    todo.push((entry.path(), key, depth + 1));
                } else if meta.is_file() {
                    let Some(ty) = content_type(&name) else {
                        continue;
                    };
                    total = total.saturating_add(meta.len());
                    if total > WEB_ROOT_MAX_BYTES || root.files.len() >= WEB_ROOT_MAX_FILES {
                        return Err(err(format!(
                            "over {WEB_ROOT_MAX_FILES} files or {WEB_ROOT_MAX_BYTES} bytes"
                        )));
                    }
                    let bytes =
                        std::fs::read(entry.path()).map_err(|e| err(format!("{name}: {e}")))?;
                    root.files.insert(key, (Bytes::from(bytes), ty));
                }
            }
        }
        Ok(root)
    }
}

/// The content type served for a file name; other files are not served.
fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "proto" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// Fuzzing entry point: what the server does with a request head before the upgrade (parse,
/// the upgrade's checks, the token offer, the Origin, a web root lookup). Never panics.
pub fn fuzz_upgrade(data: &[u8]) {
    if let Ok(Some((req, _))) = http::parse_head(data) {
        let _ = req.wants_upgrade();
        let _ = req.upgrade_key();
        let _ = req.token();
        let _ = req.one("origin");
        let _ = WebRoot::default().get(&req.path);
    }
}

/// What a bound WebSocket endpoint serves with.
#[derive(Debug)]
pub(crate) struct WsShared {
    /// The address actually bound (port 0 resolved).
    pub(crate) addr: SocketAddr,
    pub(crate) origins: Vec<String>,
    pub(crate) web: WebRoot,
    pub(crate) tls: Arc<ServerTls>,
    /// What tokens presented here are bound to ([`token_endpoint`]).
    pub(crate) endpoint: PathBuf,
    /// The session-token verifier.
    pub(crate) tokens: std::sync::Mutex<Verifier>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_paths_and_origins() {
        assert_eq!(
            token_endpoint("127.0.0.1:7443".parse().unwrap()),
            PathBuf::from("wss://127.0.0.1:7443/peerwire")
        );
        assert_eq!(
            token_endpoint("[::1]:7443".parse().unwrap()),
            PathBuf::from("wss://[::1]:7443/peerwire")
        );
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("id");
        peerwire_security::identity::provision(&ids, "test", false).unwrap();
        let tls = || {
            ServerTls::from_dir(&ids, peerwire_security::tls::TlsMode::ServerAuth)
                .unwrap()
                .unwrap()
        };
        let secret = peerwire_security::token::DeviceSecret::generate().unwrap();
        let verifier = |n: &str| Verifier::new(&secret, &dir.path().join(n), 16).unwrap();
        for bad in ["0.0.0.0:7443", "192.168.1.2:7443", "[::]:7443"] {
            assert!(matches!(
                WsEndpoint::new(bad.parse().unwrap(), tls(), verifier("a")),
                Err(WsConfigError::NotLoopback(_))
            ));
        }
        let ep = WsEndpoint::new("[::1]:0".parse().unwrap(), tls(), verifier("b")).unwrap();
        for bad in [
            "null",
            "",
            "https://",
            "https://a/b",
            "file://x",
            "https://a b",
        ] {
            assert!(ep.clone().allow_origin(bad).is_err(), "{bad}");
        }
        assert!(ep.allow_origin("https://127.0.0.1:7443").is_ok());
    }

    #[test]
    fn web_root_is_a_map_of_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.path().join("app.js"), "1").unwrap();
        std::fs::write(dir.path().join(".secret.js"), "no").unwrap();
        std::fs::write(dir.path().join("data.bin"), "no").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd.txt")).unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/x.css"), "p{}").unwrap();
        let root = WebRoot::load(dir.path()).unwrap();
        assert_eq!(root.get("/").unwrap().1, "text/html; charset=utf-8");
        assert!(root.get("/app.js").is_some());
        assert!(root.get("/lib/x.css").is_some());
        for missing in [
            "/.secret.js",
            "/data.bin",
            "/passwd.txt",
            "/../etc/passwd",
            "/lib/../app.js",
        ] {
            assert!(root.get(missing).is_none(), "{missing}");
        }
    }
}
