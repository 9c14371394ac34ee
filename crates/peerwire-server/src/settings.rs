//! The server's configuration file (TOML), plain or sealed.
//!
//! A plain file is trusted only if it and the directories above it pass
//! [`peerwire_security::strict`] (owned by root or the service user, not writable by group or
//! others). A sealed file ([`peerwire_security::seal`], purpose `Config`, bound to the file's
//! name without `.sealed`) needs the key. Unknown keys and out-of-range values are errors that
//! name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use peerwire_security::seal::{self, KeyRing, Purpose};
use serde::{Deserialize, Serialize};

use crate::{AccessPolicy, Limits, Server, ServerBuilder, ServerTls, TlsMode};

/// A commented example configuration (`peerwire config example`).
pub const EXAMPLE: &str = r#"# peerwire server configuration (TOML). Unknown keys are errors.
# A plain file must be owned by root or the service user and not writable by group or others;
# or seal it: peerwire config seal --key KEYFILE --in server.toml --out server.toml.sealed

# The Unix socket; its directory is created 0700 (0750 with socket_group) if missing.
socket = "/run/peerwire/sdk.sock"
# Open the socket file to this group (directory 0750, socket 0660). Omit for 0700/0600.
# socket_group = "display"

[access]
# Who may connect: uids or user names, gids or group names. Both empty: the server's own uid.
allow_uids = ["display"]
allow_groups = []
# Only clients running one of these executables (checked through a pidfd).
allow_exes = []

[tls]
# off | server-auth | mutual
mode = "mutual"
# Made by `peerwire init --dir`.
identity = "/var/lib/peerwire/identity"
# Require a one-time session token in every Hello (use with mode = "server-auth").
require_token = false

# The WebSocket transport for a browser display client (R16), beside the Unix socket: TLS 1.3
# with the identity above on a loopback port; each upgrade needs an allowed Origin and a session
# token (minted for wss://LISTEN/peerwire). Omit the section for none.
# [websocket]
# listen = "127.0.0.1:7443"
# allow_origins = ["https://127.0.0.1:7443"]
# web_root = "/usr/share/peerwire/web"   # files served beside the endpoint (optional)
# mutual_tls = false                      # also require the pinned client certificate

[limits]
# All optional; the defaults are shown.
max_frame_size = 16777216        # bytes, 1024 .. 268435456
handshake_timeout_ms = 5000      # 1 .. 86400000
max_in_flight = 256              # per connection, 1 .. 65536
default_deadline_ms = 30000      # 1 .. 86400000, at most max_deadline_ms
max_deadline_ms = 300000         # 1 .. 86400000
keepalive_interval_ms = 15000    # 1 .. 86400000
idle_timeout_ms = 60000          # more than keepalive_interval_ms
outbound_queue = 1024            # frames per connection, 1 .. 1000000
outbound_queue_bytes = 8388608   # bytes per connection, 1024 .. 1073741824
max_connections = 1024           # 1 .. 1000000
max_connections_per_uid = 256    # 1 .. 1000000
max_unauthenticated = 256        # connections still in their handshake, 1 .. 1000000
max_unauthenticated_per_uid = 32 # 1 .. 1000000
max_subscriptions = 256          # per connection, 1 .. 65536
shutdown_grace_ms = 5000         # 0 .. 86400000
"#;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The plain file is not trustworthy (permissions).
    #[error("untrusted configuration: {0}")]
    Untrusted(#[from] peerwire_security::strict::Untrusted),
    /// The sealed file does not open.
    #[error("{path}: {source}")]
    Sealed {
        /// The file.
        path: PathBuf,
        /// Why.
        source: seal::SealError,
    },
    /// The file is sealed but no key was given.
    #[error("{0} is sealed: give the key (--key KEYFILE)")]
    NeedKey(PathBuf),
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and the line).
        message: String,
    },
    /// A value out of its range, or a name that does not resolve.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, e.g. `limits.handshake_timeout_ms`.
        key: String,
        /// Why.
        message: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// `[access]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// Uids or user names admitted.
    #[serde(default)]
    pub allow_uids: Vec<String>,
    /// Gids or group names admitted.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Executables clients must run.
    #[serde(default)]
    pub allow_exes: Vec<PathBuf>,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// `off`, `server-auth` or `mutual`.
    #[serde(default = "off")]
    pub mode: String,
    /// The identity directory.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// Require session tokens.
    #[serde(default)]
    pub require_token: bool,
}

fn off() -> String {
    "off".into()
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            mode: off(),
            identity: None,
            require_token: false,
        }
    }
}

/// `[websocket]`: the WebSocket transport (R16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSection {
    /// The loopback address and port (`127.0.0.1:7443`, `[::1]:7443`).
    pub listen: String,
    /// Page origins allowed, exactly (`https://127.0.0.1:7443`).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Files served beside the endpoint.
    #[serde(default)]
    pub web_root: Option<PathBuf>,
    /// Require the pinned client certificate too.
    #[serde(default)]
    pub mutual_tls: bool,
}

/// `[limits]`; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitsSection {
    pub max_frame_size: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub default_deadline_ms: Option<u64>,
    pub max_deadline_ms: Option<u64>,
    pub keepalive_interval_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub outbound_queue: Option<u64>,
    pub outbound_queue_bytes: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_uid: Option<u64>,
    pub max_unauthenticated: Option<u64>,
    pub max_unauthenticated_per_uid: Option<u64>,
    pub max_subscriptions: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The socket path.
    pub socket: PathBuf,
    /// Group the socket is opened to.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// `[access]`.
    #[serde(default)]
    pub access: AccessSection,
    /// `[tls]`.
    #[serde(default)]
    pub tls: TlsSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[websocket]`.
    #[serde(default)]
    pub websocket: Option<WebSocketSection>,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn ranged(
    key: &str,
    value: Option<u64>,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(invalid(
            &format!("limits.{key}"),
            format!("{v} is out of range ({min} ..= {max})"),
        )),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Resolves a uid or user name.
pub fn resolve_uid(key: &str, user: &str) -> Result<u32, ConfigError> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(invalid(key, format!("no user named {user:?}"))),
    }
}

/// Resolves a gid or group name.
pub fn resolve_gid(key: &str, group: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(invalid(key, format!("no group named {group:?}"))),
    }
}

impl ServerConfig {
    /// Parses TOML text (no permission checks: see [`ServerConfig::load`]).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.limits()?;
        config.tls_mode()?;
        Ok(config)
    }

    /// Loads a plain (permission-checked) or sealed (key needed) configuration file.
    ///
    /// The file is opened once, through descriptors ([`peerwire_security::strict::open_file`]:
    /// no link of anyone but root or this user followed, every directory on the way checked),
    /// and its owner and mode are checked with `fstat` on the descriptor that is then read: a
    /// path flipped between the check and the read changes nothing. A sealed file needs no such
    /// trust (it is authenticated by the key), so one the checks refuse is still read if sealed.
    pub fn load(path: &Path, keys: Option<&KeyRing>) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let (bytes, trusted) = match peerwire_security::strict::read_file(path) {
            Ok(bytes) => (bytes.to_vec(), Ok(())),
            Err(untrusted) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(
                        std::fs::File::open(path).map_err(io)?,
                        peerwire_security::strict::MAX_FILE as u64,
                    ),
                    &mut bytes,
                )
                .map_err(io)?;
                (bytes, Err(untrusted))
            }
        };
        let text = if seal::is_sealed(&bytes) {
            let keys = keys.ok_or_else(|| ConfigError::NeedKey(path.to_owned()))?;
            let plain = seal::open(keys, Purpose::Config, &sealed_name(path), &bytes).map_err(
                |source| ConfigError::Sealed {
                    path: path.to_owned(),
                    source,
                },
            )?;
            String::from_utf8(plain.to_vec())
                .map_err(|_| invalid("(file)", "the sealed configuration is not UTF-8 text"))?
        } else {
            trusted?;
            String::from_utf8(bytes)
                .map_err(|_| invalid("(file)", "the configuration is not UTF-8 text"))?
        };
        Self::parse(&text, path)
    }

    /// The TLS mode.
    pub fn tls_mode(&self) -> Result<TlsMode, ConfigError> {
        let mode: TlsMode = self
            .tls
            .mode
            .parse()
            .map_err(|e: String| invalid("tls.mode", e))?;
        if (mode != TlsMode::Off || self.tls.require_token) && self.tls.identity.is_none() {
            return Err(invalid(
                "tls.identity",
                "needed for TLS and for session tokens",
            ));
        }
        if self.tls.require_token && mode == TlsMode::Off {
            tracing::warn!(
                "tls.require_token without TLS: session tokens and all traffic travel in clear \
                 on the socket; use tls.mode = \"server-auth\" (R10)"
            );
        }
        Ok(mode)
    }

    /// The limits, each checked against its range.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let l = &self.limits;
        let day = 86_400_000;
        let mut out = d;
        out.max_frame_size = ranged(
            "max_frame_size",
            l.max_frame_size,
            1024,
            256 << 20,
            u64::from(d.max_frame_size),
        )? as u32;
        out.handshake_timeout = Duration::from_millis(ranged(
            "handshake_timeout_ms",
            l.handshake_timeout_ms,
            1,
            day,
            ms(d.handshake_timeout),
        )?);
        out.max_in_flight = ranged(
            "max_in_flight",
            l.max_in_flight,
            1,
            65536,
            u64::from(d.max_in_flight),
        )? as u32;
        out.default_deadline = Duration::from_millis(ranged(
            "default_deadline_ms",
            l.default_deadline_ms,
            1,
            day,
            ms(d.default_deadline),
        )?);
        out.max_deadline = Duration::from_millis(ranged(
            "max_deadline_ms",
            l.max_deadline_ms,
            1,
            day,
            ms(d.max_deadline),
        )?);
        out.keepalive_interval = Duration::from_millis(ranged(
            "keepalive_interval_ms",
            l.keepalive_interval_ms,
            1,
            day,
            ms(d.keepalive_interval),
        )?);
        out.idle_timeout = Duration::from_millis(ranged(
            "idle_timeout_ms",
            l.idle_timeout_ms,
            2,
            day,
            ms(d.idle_timeout),
        )?);
        out.outbound_queue = ranged(
            "outbound_queue",
            l.outbound_queue,
            1,
            1_000_000,
            d.outbound_queue as u64,
        )? as usize;
        out.max_connections = ranged(
            "max_connections",
            l.max_connections,
            1,
            1_000_000,
            d.max_connections as u64,
        )? as usize;
        out.outbound_queue_bytes = ranged(
            "outbound_queue_bytes",
            l.outbound_queue_bytes,
            1024,
            1 << 30,
            d.outbound_queue_bytes as u64,
        )? as usize;
        out.max_connections_per_uid = ranged(
            "max_connections_per_uid",
            l.max_connections_per_uid,
            1,
            1_000_000,
            d.max_connections_per_uid as u64,
        )? as usize;
        out.max_unauthenticated = ranged(
            "max_unauthenticated",
            l.max_unauthenticated,
            1,
            1_000_000,
            d.max_unauthenticated as u64,
        )? as usize;
        out.max_unauthenticated_per_uid = ranged(
            "max_unauthenticated_per_uid",
            l.max_unauthenticated_per_uid,
            1,
            1_000_000,
            d.max_unauthenticated_per_uid as u64,
        )? as usize;
        out.max_subscriptions = ranged(
            "max_subscriptions",
            l.max_subscriptions,
            1,
            65536,
            d.max_subscriptions as u64,
        )? as usize;
        out.shutdown_grace = Duration::from_millis(ranged(
            "shutdown_grace_ms",
            l.shutdown_grace_ms,
            0,
            day,
            ms(d.shutdown_grace),
        )?);
        if out.default_deadline > out.max_deadline {
            return Err(invalid(
                "limits.default_deadline_ms",
                "must not exceed limits.max_deadline_ms",
            ));
        }
        if out.idle_timeout <= out.keepalive_interval {
            return Err(invalid(
                "limits.idle_timeout_ms",
                "must exceed limits.keepalive_interval_ms",
            ));
        }
        Ok(out)
    }

    /// The access policy.
    pub fn policy(&self) -> Result<AccessPolicy, ConfigError> {
        let a = &self.access;
        let mut policy = if a.allow_uids.is_empty() && a.allow_groups.is_empty() {
            AccessPolicy::own_uid()
        } else {
            AccessPolicy::nobody()
        };
        for u in &a.allow_uids {
            policy.allow_uid(resolve_uid("access.allow_uids", u)?);
        }
        for g in &a.allow_groups {
            policy.allow_group(resolve_gid("access.allow_groups", g)?);
        }
        for exe in &a.allow_exes {
            policy
                .allow_exe(exe)
                .map_err(|e| invalid("access.allow_exes", format!("{}: {e}", exe.display())))?;
        }
        Ok(policy)
    }

    /// A server builder with everything but the handlers set from this configuration
    /// (identity files and the token secret are read now).
    pub fn builder(&self) -> Result<ServerBuilder, ConfigError> {
        let mut builder = Server::builder(&self.socket);
        builder = builder.limits(self.limits()?).access_policy(self.policy()?);
        if let Some(g) = &self.socket_group {
            builder = builder.socket_group(resolve_gid("socket_group", g)?);
        }
        let mode = self.tls_mode()?;
        if let Some(dir) = &self.tls.identity {
            if let Some(tls) = ServerTls::from_dir(dir, mode)
                .map_err(|e| invalid("tls.identity", e.to_string()))?
            {
                builder = builder.tls(tls);
            }
            if self.tls.require_token {
                builder =
                    builder.require_tokens(verifier(dir, "used-tokens", "tls.require_token")?);
            }
        }
        if let Some(ws) = &self.websocket {
            builder = builder.websocket(self.websocket_endpoint(ws)?);
        }
        Ok(builder)
    }

    /// The `[websocket]` endpoint: the identity's server certificate and token secret, its
    /// own replay record (`used-tokens-ws`).
    fn websocket_endpoint(&self, ws: &WebSocketSection) -> Result<crate::WsEndpoint, ConfigError> {
        let listen: std::net::SocketAddr = ws
            .listen
            .parse()
            .map_err(|e| invalid("websocket.listen", format!("{:?}: {e}", ws.listen)))?;
        let Some(dir) = &self.tls.identity else {
            return Err(invalid(
                "tls.identity",
                "needed for the WebSocket endpoint's TLS and session tokens",
            ));
        };
        let mode = if ws.mutual_tls {
            TlsMode::Mutual
        } else {
            TlsMode::ServerAuth
        };
        let tls = ServerTls::from_dir(dir, mode)
            .map_err(|e| invalid("tls.identity", e.to_string()))?
            .ok_or_else(|| invalid("tls.identity", "no TLS"))?;
        let verifier = verifier(dir, "used-tokens-ws", "websocket")?;
        let mut ep = crate::WsEndpoint::new(listen, tls, verifier)
            .map_err(|e| invalid("websocket.listen", e.to_string()))?;
        for origin in &ws.allow_origins {
            ep = ep
                .allow_origin(origin)
                .map_err(|e| invalid("websocket.allow_origins", e.to_string()))?;
        }
        if let Some(root) = &ws.web_root {
            ep = ep.web_root(root);
        }
        Ok(ep)
    }
}

/// A session-token verifier with the device secret of identity `dir` and the replay record
/// `replay` beside it; errors name `key`.
fn verifier(
    dir: &Path,
    replay: &str,
    key: &str,
) -> Result<peerwire_security::token::Verifier, ConfigError> {
    let server = dir.join("server");
    let secret =
        peerwire_security::token::DeviceSecret::read(&server.join("token.key")).map_err(|e| {
            invalid(
                "tls.identity",
                format!("{}: {e}", server.join("token.key").display()),
            )
        })?;
    peerwire_security::token::Verifier::new(
        &secret,
        &server.join(replay),
        peerwire_security::token::DEFAULT_CAPACITY,
    )
    .map_err(|e| invalid(key, e.to_string()))
}

/// Fuzzing entry point: parses arbitrary bytes as a configuration file. Never panics.
pub fn fuzz_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = ServerConfig::parse(text, Path::new("fuzz")) {
            let _ = config.limits();
            let _ = config.tls_mode();
        }
    }
}

/// The name a configuration file is sealed under: its file name without `.sealed`.
pub fn sealed_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".sealed")
        .map(str::to_owned)
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_section_is_checked_and_builds_an_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        peerwire_security::identity::provision(&id, "t", false).unwrap();
        let config = |ws: &str| {
            let text = format!(
                "socket = \"{}\"\n[tls]\nidentity = \"{}\"\n[websocket]\n{ws}",
                dir.path().join("s.sock").display(),
                id.display()
            );
            ServerConfig::parse(&text, Path::new("f"))
        };
        let err = config("listen = \"127.0.0.1:0\"\nallow_origin = []\n").unwrap_err();
        assert!(err.to_string().contains("allow_origin"), "{err}");
        let err = config("listen = \"0.0.0.0:7443\"\n")
            .unwrap()
            .builder()
            .unwrap_err();
        assert!(err.to_string().starts_with("websocket.listen"), "{err}");
        let err = config("listen = \"127.0.0.1:0\"\nallow_origins = [\"null\"]\n")
            .unwrap()
            .builder()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("websocket.allow_origins"),
            "{err}"
        );
        let c = config(
            "listen = \"127.0.0.1:0\"\nallow_origins = [\"https://127.0.0.1:7443\"]\nmutual_tls = true\n",
        )
        .unwrap();
        let ws = c.websocket.as_ref().unwrap();
        assert!(ws.mutual_tls);
        let ep = c.websocket_endpoint(ws).unwrap();
        assert_eq!(ep.listen(), "127.0.0.1:0".parse().unwrap());
        // The endpoint's replay record sits beside the Unix socket's.
        assert!(id.join("server/used-tokens-ws").exists());
    }

    #[test]
    fn example_parses_and_errors_name_the_key() {
        let c = ServerConfig::parse(EXAMPLE, Path::new("example")).unwrap();
        assert_eq!(c.tls_mode().unwrap(), TlsMode::Mutual);
        assert_eq!(c.limits().unwrap(), Limits::default());
        let err = ServerConfig::parse("socket = \"/x/s\"\nsokcet_group = \"a\"\n", Path::new("f"))
            .unwrap_err();
        assert!(err.to_string().contains("sokcet_group"), "{err}");
        let err = ServerConfig::parse(
            "socket = \"/x/s\"\n[limits]\nhandshake_timeout_ms = 0\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("limits.handshake_timeout_ms: 0 is out of range"),
            "{err}"
        );
        let err = ServerConfig::parse(
            "socket = \"/x/s\"\n[limits]\nmax_queue = 3\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_queue"), "{err}");
        let err = ServerConfig::parse(
            "socket = \"/x/s\"\n[tls]\nmode = \"strong\"\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("tls.mode"), "{err}");
        let err = ServerConfig::parse(
            "socket = \"/x/s\"\n[tls]\nmode = \"mutual\"\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("tls.identity"), "{err}");
        assert_eq!(
            sealed_name(Path::new("/etc/peerwire/server.toml.sealed")),
            "server.toml"
        );
    }
}
