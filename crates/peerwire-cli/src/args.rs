//! The command line: every subcommand's arguments, and the argument types several commands
//! share (TLS, sealing keys, access flags, token minting).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use peerwire_client::ClientTls;
use peerwire_security::seal::{KeyProvider, KeyRing};
use peerwire_server::settings;
use peerwire_server::{ServerTls, TlsMode};

#[derive(Parser)]
#[command(
    name = "peerwire",
    version,
    about = "Secure local IPC over Unix domain sockets"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the end-to-end demo: display server and display client over a private socket.
    Demo {
        /// Transport security of the demo.
        #[arg(long, default_value = "mutual")]
        tls: TlsMode,
    },
    /// Provision the device identity for TLS (keys 0600 in a 0700 directory).
    Init {
        /// Identity directory to create (server/ and client/ inside).
        #[arg(long)]
        dir: PathBuf,
        /// Device name written into the certificates' subjects. Default: the host name.
        #[arg(long)]
        device: Option<String>,
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// Run the reference server (echo.Echo, echo.Sleep, push topic echo.Tick) until SIGINT or
    /// SIGTERM.
    Serve(Box<ServeArgs>),
    /// Measure round trips to a server's echo.Echo.
    Ping(PingArgs),
    /// Session tokens for clients that cannot be pinned to a certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Launch a display client with a fresh session token on an inherited pipe (never argv or
    /// the environment), wait for it, and fail if it fails.
    Launch {
        #[command(flatten)]
        mint: MintArgs,
        /// The client command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start Chromium on the web display client as the display user, trusting only the
    /// device's server certificate, and hand the page fresh session tokens over the DevTools
    /// pipe (never argv, the environment, a file or the URL). Runs until the browser exits.
    LaunchBrowser(LaunchBrowserArgs),
    /// Sealed and plain configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a running server's counters (connections, denials, limit hits, queue drops...),
    /// asked over its own socket: only admitted peers can ask.
    Stats {
        /// Socket path of the server.
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Report the socket's and its directory's owner, mode and problems; exit 1 if unsafe.
    Audit {
        /// Socket path to inspect.
        #[arg(long)]
        socket: PathBuf,
        /// The group the socket is deliberately opened to, if any (uid/gid number or name).
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// The user the server runs as (uid or name; default: you). Root auditing a service
        /// user's setup passes that user, so the user's own directory is not a problem.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Create a new 32-byte sealing key, mode 0400 (never replaces a file).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal a plain configuration file (AES-256-GCM, bound to the output's name).
    Seal {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long = "in")]
        input: PathBuf,
        /// Output; its name without `.sealed` is what the file is bound to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a sealed configuration file in plain text (for an operator).
    Open {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Validate a plain or sealed configuration file, permissions included, without starting.
    Check {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Print a commented example configuration.
    Example,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a one-time token; it is printed alone on the last line of stdout.
    Mint(MintArgs),
}

#[derive(clap::Args)]
pub(crate) struct MintArgs {
    /// Identity directory made by `peerwire init` (its server/token.key is the device secret).
    #[arg(long, value_name = "DIR")]
    pub(crate) identity: PathBuf,
    /// The uid (or user name) the client will run as.
    #[arg(long = "for-uid", value_name = "USER")]
    pub(crate) for_uid: String,
    /// The server socket the token is for.
    #[arg(long)]
    pub(crate) socket: PathBuf,
    /// Bind the token to this client executable too.
    #[arg(long)]
    pub(crate) exe: Option<PathBuf>,
    /// Lifetime, e.g. 30s or 2m (at most 10m).
    #[arg(long, default_value = "30s", value_parser = parse_ttl)]
    pub(crate) ttl: Duration,
    /// The user (uid or name) that owns the identity's server/ directory, when it is not you:
    /// root minting with the service user's device secret names that user. Default: you.
    #[arg(long = "server-user", value_name = "USER")]
    pub(crate) server_user: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct LaunchBrowserArgs {
    /// Identity directory made by `peerwire init` (its server/token.key mints the tokens, its
    /// server/cert.pem is the one certificate the browser trusts).
    #[arg(long, value_name = "DIR")]
    pub(crate) identity: PathBuf,
    /// The user (uid or name) that owns the identity's server/ directory, when it is not you.
    #[arg(long = "server-user", value_name = "USER")]
    pub(crate) server_user: Option<String>,
    /// The server's WebSocket endpoint (`peerwire serve --ws-listen`), e.g. 127.0.0.1:7443.
    #[arg(long, value_name = "ADDR")]
    pub(crate) ws: std::net::SocketAddr,
    /// The display user the browser runs as (uid or name; never root).
    #[arg(long, value_name = "USER")]
    pub(crate) user: String,
    /// The page; default https://ADDR/ (the server's web root).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Lifetime of each token, e.g. 30s (at most 10m).
    #[arg(long, default_value = "30s", value_parser = parse_ttl)]
    pub(crate) ttl: Duration,
    /// The Chromium binary.
    #[arg(long, default_value = crate::browser::CHROMIUM)]
    pub(crate) chromium: PathBuf,
    /// No window (tests, screenshots).
    #[arg(long)]
    pub(crate) headless: bool,
    /// Full screen, no browser controls (otherwise an app window).
    #[arg(long, conflicts_with = "headless")]
    pub(crate) kiosk: bool,
    /// Run without Chromium's sandbox (only where the display user cannot create user
    /// namespaces).
    #[arg(long)]
    pub(crate) no_sandbox: bool,
    /// Discard Chromium's own log (stderr) instead of passing it on.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Window width and height.
    #[arg(long, default_value_t = 1280)]
    pub(crate) width: u32,
    #[arg(long, default_value_t = 800)]
    pub(crate) height: u32,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s or 2m"))?;
    let ttl = Duration::from_secs(n.saturating_mul(unit));
    if ttl.is_zero() || ttl > peerwire_security::token::MAX_TTL {
        return Err(format!(
            "{s:?}: a token lives 1s to {}s",
            peerwire_security::token::MAX_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

#[derive(clap::Args)]
pub(crate) struct TlsArgs {
    /// Transport security: off, server-auth (only the server proves itself) or mutual.
    #[arg(long, default_value = "off")]
    pub(crate) tls: TlsMode,
    /// Identity directory made by `peerwire init` (needed unless --tls off).
    #[arg(long, value_name = "DIR")]
    pub(crate) identity: Option<PathBuf>,
}

impl TlsArgs {
    fn dir(&self) -> anyhow::Result<&Path> {
        self.identity.as_deref().with_context(|| {
            format!(
                "--tls {} needs --identity DIR (made by `peerwire init`)",
                self.tls
            )
        })
    }

    pub(crate) fn server(&self) -> anyhow::Result<Option<ServerTls>> {
        if self.tls == TlsMode::Off {
            return Ok(None);
        }
        Ok(ServerTls::from_dir(self.dir()?, self.tls)?)
    }

    pub(crate) fn client(&self) -> anyhow::Result<Option<ClientTls>> {
        if self.tls == TlsMode::Off {
            return Ok(None);
        }
        Ok(ClientTls::from_dir(self.dir()?, self.tls)?)
    }
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (TOML, plain or sealed); replaces the socket, access, TLS and limit
    /// flags. See `peerwire config example`.
    #[arg(long, conflicts_with_all = [
        "socket", "require_token", "grace_ms", "allow_uid", "allow_group", "allow_exe",
        "socket_group", "tls", "identity",
    ])]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Socket path; its directory is created 0700 if missing.
    #[arg(long, required_unless_present = "config")]
    pub(crate) socket: Option<PathBuf>,
    /// Interval of the echo.Tick push topic, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) tick_ms: u64,
    /// Text of each echo.Tick event (followed by its number).
    #[arg(long, default_value = "tick")]
    pub(crate) tick_message: String,
    /// Shutdown grace period for requests in flight, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub(crate) grace_ms: u64,
    /// Require a one-time session token in every Hello (minted with `peerwire token mint` or
    /// handed over by `peerwire launch`); needs --identity.
    #[arg(long)]
    pub(crate) require_token: bool,
    #[command(flatten)]
    pub(crate) access: AccessArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// When started as root: bind the socket, give it to this user, then become this user for
    /// good (uids, gids, no capabilities unless --keep-cap, no_new_privs).
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Supplementary group of the service user (repeatable); default: none.
    #[arg(long = "group", value_name = "GROUP", requires = "user")]
    pub(crate) groups: Vec<String>,
    /// Capability to keep after dropping root (repeatable), e.g. CAP_NET_BIND_SERVICE; default:
    /// none.
    #[arg(long = "keep-cap", value_name = "CAP", requires = "user")]
    pub(crate) keep_caps: Vec<String>,
    /// Run as root without --user (not for production: logs a loud warning).
    #[arg(long, conflicts_with = "user")]
    pub(crate) allow_root: bool,
    #[command(flatten)]
    pub(crate) ws: WsArgs,
}

/// The WebSocket endpoint of `peerwire serve` (R16; `[websocket]` in a configuration file).
#[derive(clap::Args)]
pub(crate) struct WsArgs {
    /// Also serve the WebSocket transport on this loopback address (`127.0.0.1:7443`,
    /// `[::1]:7443`), TLS 1.3 with --identity's server certificate; upgrades need an allowed
    /// Origin and a session token minted for wss://ADDR/peerwire.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "config",
        requires = "identity"
    )]
    pub(crate) ws_listen: Option<String>,
    /// A page origin allowed to connect, matched exactly (repeatable), e.g.
    /// `https://127.0.0.1:7443`.
    #[arg(long = "ws-origin", value_name = "ORIGIN", requires = "ws_listen")]
    pub(crate) ws_origin: Vec<String>,
    /// Files served beside the WebSocket endpoint (loaded at start).
    #[arg(long, value_name = "DIR", requires = "ws_listen")]
    pub(crate) web_root: Option<PathBuf>,
    /// Also require the pinned client certificate on the WebSocket endpoint.
    #[arg(long, requires = "ws_listen")]
    pub(crate) ws_mutual_tls: bool,
}

#[derive(clap::Args)]
pub(crate) struct PingArgs {
    /// Socket path of the server.
    #[arg(long)]
    pub(crate) socket: PathBuf,
    /// Number of round trips.
    #[arg(long, default_value_t = 10)]
    pub(crate) count: u32,
    /// Payload size in bytes (ignored with --message).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Send this text as the payload instead of --size filler bytes.
    #[arg(long)]
    pub(crate) message: Option<String>,
    /// Subscribe to echo.Tick and wait for one tick before finishing.
    #[arg(long)]
    pub(crate) wait_tick: bool,
    /// The uid (or user name) the server must run as; repeatable. Default: own uid or root.
    #[arg(long = "expect-server-uid", value_name = "USER")]
    pub(crate) expect_server_uid: Vec<String>,
    /// Read a session token from standard input (never from an argument). Without this, a
    /// token handed over by `peerwire launch` (PEERWIRE_TOKEN_FD) is used if present.
    #[arg(long)]
    pub(crate) token_stdin: bool,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

#[derive(clap::Args)]
pub(crate) struct AccessArgs {
    /// Admit clients running as this uid or user name (repeatable). With no --allow-uid and no
    /// --allow-group, only the server's own uid is admitted.
    #[arg(long = "allow-uid", value_name = "USER")]
    pub(crate) allow_uid: Vec<String>,
    /// Admit clients with this group (gid or name) as primary or supplementary group (repeatable).
    #[arg(long = "allow-group", value_name = "GROUP")]
    pub(crate) allow_group: Vec<String>,
    /// Admit only clients running this executable (repeatable); checked through a pidfd.
    #[arg(long = "allow-exe", value_name = "PATH")]
    pub(crate) allow_exe: Vec<PathBuf>,
    /// Open the socket to this group: directory 0750 and socket 0660, owned by the group.
    #[arg(long = "socket-group", value_name = "GROUP")]
    pub(crate) socket_group: Option<String>,
}

pub(crate) fn resolve_uid(user: &str) -> anyhow::Result<u32> {
    Ok(settings::resolve_uid("user", user)?)
}

pub(crate) fn resolve_gid(group: &str) -> anyhow::Result<u32> {
    Ok(settings::resolve_gid("group", group)?)
}

#[derive(clap::Args)]
pub(crate) struct KeyArgs {
    /// Key file for sealed files (32 bytes, mode 0400/0600; made by `peerwire config keygen`).
    #[arg(long, value_name = "KEYFILE", conflicts_with = "key_credential")]
    pub(crate) key: Option<PathBuf>,
    /// Name of a systemd credential holding the key ($CREDENTIALS_DIRECTORY/NAME).
    #[arg(long, value_name = "NAME")]
    pub(crate) key_credential: Option<String>,
}

impl KeyArgs {
    pub(crate) fn ring(&self) -> anyhow::Result<Option<KeyRing>> {
        let provider = match (&self.key, &self.key_credential) {
            (Some(path), _) => KeyProvider::File(path.clone()),
            (None, Some(name)) => KeyProvider::SystemdCredential(name.clone()),
            (None, None) => return Ok(None),
        };
        Ok(Some(KeyRing::new(provider.load()?)))
    }

    pub(crate) fn require(&self) -> anyhow::Result<KeyRing> {
        self.ring()?
            .context("a key is needed: --key KEYFILE or --key-credential NAME")
    }
}
