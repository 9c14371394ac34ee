//! # peerwire: the command-line tool
//!
//! - `peerwire demo`: a self-contained end-to-end demo. It creates a private (0700) temporary
//!   socket directory, starts the example display server in this process and the example display
//!   client as a child process, prints their transcript and exits 0 when the scripted session
//!   completed.
//! - `peerwire serve --socket PATH`: a reference server with the method `echo.Echo` (bytes in,
//!   same bytes out) and the push topic `echo.Tick` (a counter, every `--tick-ms`).
//! - `peerwire ping --socket PATH [--count N] [--size B]`: round trips to `echo.Echo`, with
//!   latency percentiles.
//! - `peerwire audit --socket PATH`: the socket's and its directory's owner and mode, and any
//!   problem in plain words; exits 1 when something is unsafe.
//!
//! - `peerwire init --dir DIR [--device NAME] [--force]`: provisions the device identity (a key
//!   pair and a self-signed certificate for the server and for the client, each pinning the
//!   other) for TLS.
//!
//! TLS: `serve` and `ping` take `--tls off|server-auth|mutual --identity DIR`; `demo` uses mutual
//! TLS unless `--tls off`.
//!
//! Access control: `serve` admits only its own uid unless `--allow-uid`/`--allow-group` say
//! otherwise (then exactly those), optionally only clients running `--allow-exe`; `--socket-group`
//! opens the socket file to a group (0660 in a 0750 directory). `ping` refuses a server that is
//! not running as `--expect-server-uid` (default: its own uid or root).
//!
//! Logging goes to stderr and is controlled by `RUST_LOG` (for example `RUST_LOG=debug`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use peerwire_client::{Client, ClientTls};
use peerwire_security::seal::{self, KeyProvider, KeyRing, Purpose};
use peerwire_security::{identity, privilege};
use peerwire_server::daemon::{self, Daemon, DaemonError, RunningAs};
use peerwire_server::settings::{self, AccessSection, LimitsSection, ServerConfig, TlsSection};
use peerwire_server::{
    Binding, DeviceSecret, Minter, ServerTls, Status, TlsMode, spawn_with_token,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};

/// Prints a line on stdout; a closed stdout (`peerwire demo | head`) is not an error worth a
/// panic, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "peerwire",
    version,
    about = "Secure local IPC over Unix domain sockets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Sealed and plain configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Test helper: updates sealed state records in a loop (for the crash-consistency test).
    #[command(name = "__state-writer", hide = true)]
    StateWriter {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long, default_value_t = 200)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        start: u64,
    },
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
    /// The demo's display client (run by `peerwire demo` as a child process).
    #[command(name = "__display-client", hide = true)]
    DisplayClient {
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
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
enum TokenCommand {
    /// Mint a one-time token; it is printed alone on the last line of stdout.
    Mint(MintArgs),
}

#[derive(clap::Args)]
struct MintArgs {
    /// Identity directory made by `peerwire init` (its server/token.key is the device secret).
    #[arg(long, value_name = "DIR")]
    identity: PathBuf,
    /// The uid (or user name) the client will run as.
    #[arg(long = "for-uid", value_name = "USER")]
    for_uid: String,
    /// The server socket the token is for.
    #[arg(long)]
    socket: PathBuf,
    /// Bind the token to this client executable too.
    #[arg(long)]
    exe: Option<PathBuf>,
    /// Lifetime, e.g. 30s or 2m (at most 10m).
    #[arg(long, default_value = "30s", value_parser = parse_ttl)]
    ttl: Duration,
    /// The user (uid or name) that owns the identity's server/ directory, when it is not you:
    /// root minting with the service user's device secret names that user. Default: you.
    #[arg(long = "server-user", value_name = "USER")]
    server_user: Option<String>,
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

impl MintArgs {
    fn mint(&self) -> anyhow::Result<String> {
        let secret_path = self.identity.join("server").join("token.key");
        let owner = match &self.server_user {
            Some(u) => resolve_uid(u)?,
            None => nix::unistd::geteuid().as_raw(),
        };
        let secret = DeviceSecret::read_owned_by(&secret_path, owner)
            .with_context(|| format!("reading the device secret {}", secret_path.display()))?;
        let socket = std::fs::canonicalize(&self.socket).unwrap_or_else(|_| self.socket.clone());
        let exe = self.exe.as_ref().map(std::fs::canonicalize).transpose()?;
        let binding = Binding {
            uid: resolve_uid(&self.for_uid)?,
            exe,
            socket,
        };
        Ok(Minter::new(&secret)?.mint(&binding, self.ttl)?)
    }
}

#[derive(clap::Args)]
struct TlsArgs {
    /// Transport security: off, server-auth (only the server proves itself) or mutual.
    #[arg(long, default_value = "off")]
    tls: TlsMode,
    /// Identity directory made by `peerwire init` (needed unless --tls off).
    #[arg(long, value_name = "DIR")]
    identity: Option<PathBuf>,
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

    fn server(&self) -> anyhow::Result<Option<ServerTls>> {
        if self.tls == TlsMode::Off {
            return Ok(None);
        }
        Ok(ServerTls::from_dir(self.dir()?, self.tls)?)
    }

    fn client(&self) -> anyhow::Result<Option<ClientTls>> {
        if self.tls == TlsMode::Off {
            return Ok(None);
        }
        Ok(ClientTls::from_dir(self.dir()?, self.tls)?)
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML, plain or sealed); replaces the socket, access, TLS and limit
    /// flags. See `peerwire config example`.
    #[arg(long, conflicts_with_all = [
        "socket", "require_token", "grace_ms", "allow_uid", "allow_group", "allow_exe",
        "socket_group", "tls", "identity",
    ])]
    config: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Socket path; its directory is created 0700 if missing.
    #[arg(long, required_unless_present = "config")]
    socket: Option<PathBuf>,
    /// Interval of the echo.Tick push topic, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Text of each echo.Tick event (followed by its number).
    #[arg(long, default_value = "tick")]
    tick_message: String,
    /// Shutdown grace period for requests in flight, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// Require a one-time session token in every Hello (minted with `peerwire token mint` or
    /// handed over by `peerwire launch`); needs --identity.
    #[arg(long)]
    require_token: bool,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// When started as root: bind the socket, give it to this user, then become this user for
    /// good (uids, gids, no capabilities unless --keep-cap, no_new_privs).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Supplementary group of the service user (repeatable); default: none.
    #[arg(long = "group", value_name = "GROUP", requires = "user")]
    groups: Vec<String>,
    /// Capability to keep after dropping root (repeatable), e.g. CAP_NET_BIND_SERVICE; default:
    /// none.
    #[arg(long = "keep-cap", value_name = "CAP", requires = "user")]
    keep_caps: Vec<String>,
    /// Run as root without --user (not for production: logs a loud warning).
    #[arg(long, conflicts_with = "user")]
    allow_root: bool,
}

#[derive(clap::Args)]
struct PingArgs {
    /// Socket path of the server.
    #[arg(long)]
    socket: PathBuf,
    /// Number of round trips.
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// Payload size in bytes (ignored with --message).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Send this text as the payload instead of --size filler bytes.
    #[arg(long)]
    message: Option<String>,
    /// Subscribe to echo.Tick and wait for one tick before finishing.
    #[arg(long)]
    wait_tick: bool,
    /// The uid (or user name) the server must run as; repeatable. Default: own uid or root.
    #[arg(long = "expect-server-uid", value_name = "USER")]
    expect_server_uid: Vec<String>,
    /// Read a session token from standard input (never from an argument). Without this, a
    /// token handed over by `peerwire launch` (PEERWIRE_TOKEN_FD) is used if present.
    #[arg(long)]
    token_stdin: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(clap::Args)]
struct AccessArgs {
    /// Admit clients running as this uid or user name (repeatable). With no --allow-uid and no
    /// --allow-group, only the server's own uid is admitted.
    #[arg(long = "allow-uid", value_name = "USER")]
    allow_uid: Vec<String>,
    /// Admit clients with this group (gid or name) as primary or supplementary group (repeatable).
    #[arg(long = "allow-group", value_name = "GROUP")]
    allow_group: Vec<String>,
    /// Admit only clients running this executable (repeatable); checked through a pidfd.
    #[arg(long = "allow-exe", value_name = "PATH")]
    allow_exe: Vec<PathBuf>,
    /// Open the socket to this group: directory 0750 and socket 0660, owned by the group.
    #[arg(long = "socket-group", value_name = "GROUP")]
    socket_group: Option<String>,
}

fn resolve_uid(user: &str) -> anyhow::Result<u32> {
    Ok(settings::resolve_uid("user", user)?)
}

fn resolve_gid(group: &str) -> anyhow::Result<u32> {
    Ok(settings::resolve_gid("group", group)?)
}

#[derive(clap::Args)]
struct KeyArgs {
    /// Key file for sealed files (32 bytes, mode 0400/0600; made by `peerwire config keygen`).
    #[arg(long, value_name = "KEYFILE", conflicts_with = "key_credential")]
    key: Option<PathBuf>,
    /// Name of a systemd credential holding the key ($CREDENTIALS_DIRECTORY/NAME).
    #[arg(long, value_name = "NAME")]
    key_credential: Option<String>,
}

impl KeyArgs {
    fn ring(&self) -> anyhow::Result<Option<KeyRing>> {
        let provider = match (&self.key, &self.key_credential) {
            (Some(path), _) => KeyProvider::File(path.clone()),
            (None, Some(name)) => KeyProvider::SystemdCredential(name.clone()),
            (None, None) => return Ok(None),
        };
        Ok(Some(KeyRing::new(provider.load()?)))
    }

    fn require(&self) -> anyhow::Result<KeyRing> {
        self.ring()?
            .context("a key is needed: --key KEYFILE or --key-credential NAME")
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, without a backtrace, and without repeating a
            // cause that its parent's message already quotes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg = format!("{msg}: {cause}");
                }
            }
            eprintln!("peerwire: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    peerwire_examples::init_logging("warn");
    let cli = Cli::parse();
    // The server drops its privileges before any thread exists: no runtime yet.
    let cli = match cli.command {
        Command::Serve(args) => return serve_main(*args),
        command => Cli { command },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Demo { tls } => demo(tls).await,
            Command::Init { dir, device, force } => init(&dir, device, force),
            Command::Serve(_) => bail!("serve runs outside the shared runtime"),
            Command::Ping(args) => ping(args).await,
            Command::Audit {
                socket,
                socket_group,
                user,
            } => audit(&socket, socket_group.as_deref(), user.as_deref()),
            Command::Token(TokenCommand::Mint(args)) => {
                let token = args.mint()?;
                say!(
                    "token for uid {} on {}, valid {:?}:",
                    args.for_uid,
                    args.socket.display(),
                    args.ttl
                );
                say!("{token}");
                Ok(())
            }
            Command::Launch { mint, command } => launch(&mint, &command).await,
            Command::Config(cmd) => config(cmd),
            Command::Stats { socket, tls } => stats(&socket, &tls).await,
            Command::StateWriter {
                dir,
                key,
                count,
                start,
            } => state_writer(&dir, &key, start, count),
            Command::DisplayClient { socket, tls } => {
                privilege::harden_process()?;
                peerwire_examples::run_display_client(&socket, tls.client()?, |l| {
                    say!("[client] {l}")
                })
                .await
                .map(|_| ())
            }
        }
    })
}

async fn demo(mode: TlsMode) -> anyhow::Result<()> {
    // tempfile creates the directory 0700: only this user can reach the socket inside.
    let dir = tempfile::Builder::new()
        .prefix("peerwire-demo-")
        .tempdir()
        .context("creating the demo's socket directory")?;
    let path = dir.path().join("display.sock");
    let identity = dir.path().join("identity");
    say!(
        "peerwire demo: socket {} (directory 0700, socket 0600); both ends check each other's uid (SO_PEERCRED)",
        path.display()
    );
    if nix::unistd::geteuid().is_root() {
        say!(
            "peerwire demo: running as root, for a self-contained demo; in production the server drops to a \
             service user (peerwire serve --user NAME) and refuses to run as root without it"
        );
    }
    if mode != TlsMode::Off {
        let p = identity::provision(&identity, "demo-device", false)?;
        say!(
            "peerwire demo: transport: TLS 1.3, {mode}, with certificates made for this run (pinned):"
        );
        for (role, fp) in &p.fingerprints {
            say!("peerwire demo:   {role} certificate SHA-256 {fp}");
        }
    } else {
        say!("peerwire demo: transport: plain Unix socket (--tls off)");
    }
    let tls = TlsArgs {
        tls: mode,
        identity: Some(identity.clone()),
    };
    let mut builder = peerwire_examples::display_server(&path, |l| say!("[server] {l}"));
    if let Some(server_tls) = tls.server()? {
        builder.tls(server_tls);
    }
    let server = builder.bind()?;
    let handle = server.handle();
    let serving = tokio::spawn(server.run());

    let exe = std::env::current_exe().context("locating the peerwire binary")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("__display-client")
        .arg("--socket")
        .arg(&path)
        .arg("--tls")
        .arg(mode.to_string())
        .arg("--identity")
        .arg(&identity)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the display client process")?;
    say!(
        "peerwire demo: display client started as pid {}",
        child.id().unwrap_or(0)
    );
    let stdout = child
        .stdout
        .take()
        .context("no stdout from the display client")?;
    let mut lines = BufReader::new(stdout).lines();
    let run = async {
        while let Some(line) = lines.next_line().await? {
            say!("{line}");
        }
        child.wait().await
    };
    let status = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("the display client did not finish within 60 s")??;
    let stats = handle.stats();
    handle.shutdown();
    serving.await??;
    if !status.success() {
        bail!("the display client failed: {status}");
    }
    say!(
        "peerwire demo: done ({} session, {} requests, {} events pushed); socket removed: {}",
        stats.sessions,
        stats.requests,
        stats.events_sent,
        !path.exists()
    );
    Ok(())
}

/// `peerwire serve`: the privileged start-up of [`peerwire_server::daemon`] (harden, refuse root,
/// socket directory, privilege drop, harden again, verify), then the runtime and the server.
fn serve_main(args: ServeArgs) -> anyhow::Result<()> {
    // Hardened before the configuration (and a sealed configuration's key) is read.
    let hardened = daemon::harden()?;
    let ServeArgs {
        config,
        key,
        socket,
        tick_ms,
        tick_message,
        grace_ms,
        require_token,
        access,
        tls,
        user,
        groups,
        keep_caps,
        allow_root,
    } = args;
    // Flags or a file: either way one ServerConfig, validated and turned into a builder the
    // same way.
    let config = match config {
        Some(path) => ServerConfig::load(&path, key.ring()?.as_ref())?,
        None => ServerConfig {
            socket: socket.context("--socket is required without --config")?,
            socket_group: access.socket_group.clone(),
            access: AccessSection {
                allow_uids: access.allow_uid.clone(),
                allow_groups: access.allow_group.clone(),
                allow_exes: access.allow_exe.clone(),
            },
            tls: TlsSection {
                mode: tls.tls.to_string(),
                identity: tls.identity.clone(),
                require_token,
            },
            limits: LimitsSection {
                shutdown_grace_ms: Some(grace_ms),
                ..Default::default()
            },
        },
    };
    let mut start = Daemon::new(&config.socket);
    if let Some(user) = &user {
        start.user(user);
    }
    for group in groups {
        start.group(group);
    }
    for cap in keep_caps {
        start.keep_capability(cap);
    }
    if let Some(group) = &config.socket_group {
        start.socket_group(group);
    }
    start.allow_root(allow_root);
    let ready = match start.start_hardened(hardened) {
        Err(DaemonError::RootRefused) => bail!(
            "refusing to run as root: give --user NAME (the service user to become after binding \
             the socket), or --allow-root for a test setup"
        ),
        other => other?,
    };
    match ready.running_as() {
        RunningAs::ServiceUser(spec) => eprintln!(
            "peerwire serve: running as uid {} gid {} with {} capabilities, no_new_privs set",
            spec.uid,
            spec.gid,
            if spec.keep.is_empty() {
                "no".to_string()
            } else {
                format!("{:?}", spec.keep)
            }
        ),
        RunningAs::Root => eprintln!(
            "peerwire serve: WARNING: running as root (--allow-root); use --user NAME in production"
        ),
        _ => {}
    }
    ready
        .runtime()?
        .block_on(serve(config, tick_ms, tick_message))
}

async fn serve(config: ServerConfig, tick_ms: u64, tick_message: String) -> anyhow::Result<()> {
    let socket = config.socket.clone();
    let mode = config.tls_mode()?;
    let mut builder = config.builder()?;
    builder
        .name("peerwire-serve")
        .namespace("echo", &[1])
        .method("echo.Echo", |_ctx, req: Vec<u8>| async move {
            Ok::<_, Status>(req)
        })
        .method("echo.Sleep", |_ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Status>(ms)
        });
    // Before the socket answers: a SIGTERM sent as soon as it does must find the handler.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = builder.bind()?;
    let handle = server.handle();
    eprintln!(
        "peerwire serve: listening on {} (TLS: {mode})",
        socket.display()
    );
    let tick = Duration::from_millis(tick_ms.max(1));
    let ticker = handle.clone();
    tokio::spawn(async move {
        let mut n: u64 = 0;
        let mut interval = tokio::time::interval(tick);
        while !ticker.is_shutting_down() {
            interval.tick().await;
            n += 1;
            let _ = ticker.broadcast("echo.Tick", &format!("{tick_message} {n}"));
        }
    });
    let stopper = handle.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("peerwire serve: shutting down");
        stopper.shutdown();
    });
    server.run().await?;
    let s = handle.stats();
    eprintln!(
        "peerwire serve: stopped after {} connections ({} admitted, {} denied, {} over a limit), \
         {} TLS failures, {} sessions, {} requests, {} handshake failures, {} protocol errors",
        s.connections,
        s.accepted,
        s.denied,
        s.limit_refusals,
        s.tls_failures,
        s.sessions,
        s.requests,
        s.handshake_failures,
        s.protocol_errors
    );
    Ok(())
}

async fn ping(args: PingArgs) -> anyhow::Result<()> {
    let PingArgs {
        socket,
        count,
        size,
        message,
        wait_tick,
        expect_server_uid,
        token_stdin,
        tls,
    } = args;
    let mut builder = Client::builder(&socket)
        .name("peerwire-ping")
        .require_namespace("echo", &[1]);
    for u in &expect_server_uid {
        builder = builder.expect_server_uid(resolve_uid(u)?);
    }
    if let Some(client_tls) = tls.client()? {
        builder = builder.tls(client_tls);
    }
    if token_stdin {
        let mut token = zeroize::Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 4096), &mut token)
            .context("reading the session token from stdin")?;
        // The token is the last non-empty line (what `peerwire token mint` prints last).
        let last = token
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        builder = builder.token(zeroize::Zeroizing::new(last).as_str());
    } else if std::env::var_os(peerwire_security::launch::TOKEN_FD_ENV).is_some() {
        builder = builder.token_from_launcher()?;
    }
    let client = builder.connect().await?;
    let mut ticks = match wait_tick {
        true => Some(client.subscribe("echo.Tick").await?),
        false => None,
    };
    let payload = match &message {
        Some(m) => m.as_bytes().to_vec(),
        None => vec![0xa5u8; size],
    };
    let size = payload.len();
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        let start = Instant::now();
        let back: Vec<u8> = client.call("echo.Echo", &payload).await?;
        let rtt = start.elapsed();
        if back != payload {
            bail!("echo {i} came back different");
        }
        samples.push(rtt);
    }
    if let Some(ticks) = &mut ticks {
        let tick = tokio::time::timeout(Duration::from_secs(10), ticks.next())
            .await
            .context("no echo.Tick within 10 s")?
            .context("the connection closed")?;
        // The content is not printed: a tracer of this process then sees it only on the socket.
        let text = tick.decode::<String>()?;
        say!("event {} #{} ({} bytes)", tick.topic, tick.seq, text.len());
    }
    client.close().await;
    samples.sort();
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    say!(
        "{count} round trips of {size} B to {}: min {:?}, p50 {:?}, p99 {:?}, max {:?}",
        socket.display(),
        pick(0.0),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    Ok(())
}

fn audit(socket: &std::path::Path, group: Option<&str>, user: Option<&str>) -> anyhow::Result<()> {
    let group = group.map(resolve_gid).transpose()?;
    let owner = match user {
        Some(u) => resolve_uid(u)?,
        None => nix::unistd::geteuid().as_raw(),
    };
    let report = peerwire_security::sockpath::audit(socket, group, owner);
    for fact in &report.facts {
        say!("{fact}");
    }
    if report.problems.is_empty() {
        say!("ok: no problem found");
        return Ok(());
    }
    for p in &report.problems {
        say!("PROBLEM: {}: {}", p.path.display(), p.problem);
        say!("    fix: {}", p.fix);
    }
    bail!(
        "{} problem(s) found with {}",
        report.problems.len(),
        socket.display()
    )
}

fn init(dir: &Path, device: Option<String>, force: bool) -> anyhow::Result<()> {
    let device = match device {
        Some(d) => d,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let p = identity::provision(dir, &device, force)?;
    say!(
        "device identity for {device:?} created in {}:",
        dir.display()
    );
    for (role, fp) in &p.fingerprints {
        say!(
            "  {role}: {0}/{role}/key.pem (0600), {0}/{role}/cert.pem, {0}/{role}/peer.pem; certificate SHA-256 {fp}",
            dir.display()
        );
    }
    say!(
        "give {}/server to the server's user and {}/client to the client's user",
        dir.display(),
        dir.display()
    );
    Ok(())
}

async fn launch(mint: &MintArgs, command: &[String]) -> anyhow::Result<()> {
    let token = zeroize::Zeroizing::new(mint.mint()?);
    let (program, args) = command.split_first().context("no command to launch")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let mut child =
        spawn_with_token(&mut cmd, &token).with_context(|| format!("starting {program}"))?;
    drop(token);
    eprintln!(
        "peerwire launch: started {program} as pid {} with a session token on an inherited pipe",
        child.id()
    );
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    if !status.success() {
        bail!("{program} exited with {status}");
    }
    Ok(())
}

fn config(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Keygen { out } => {
            let key = seal::Key::generate()?;
            key.write_new(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            say!(
                "new key {} written to {} (mode 0400)",
                key.id_hex(),
                out.display()
            );
        }
        ConfigCommand::Seal { key, input, out } => {
            let text =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let text = zeroize::Zeroizing::new(text);
            // Refuse to seal something the server would refuse to run with.
            ServerConfig::parse(std::str::from_utf8(&text).context("not UTF-8")?, &input)?;
            let sealed = seal::seal(
                &key.require()?,
                Purpose::Config,
                &settings::sealed_name(&out),
                &text,
            )?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
            std::io::Write::write_all(&mut f, &sealed)?;
            f.sync_all()?;
            say!("sealed {} into {}", input.display(), out.display());
        }
        ConfigCommand::Open { key, input } => {
            let bytes =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let plain = seal::open(
                &key.require()?,
                Purpose::Config,
                &settings::sealed_name(&input),
                &bytes,
            )
            .with_context(|| format!("opening {}", input.display()))?;
            std::io::Write::write_all(&mut std::io::stdout(), &plain)?;
        }
        ConfigCommand::Check { key, input } => {
            let config = ServerConfig::load(&input, key.ring()?.as_ref())?;
            config.policy()?;
            say!(
                "{}: ok (socket {}, TLS {}, {} allowed uid(s), {} allowed group(s))",
                input.display(),
                config.socket.display(),
                config.tls_mode()?,
                config.access.allow_uids.len(),
                config.access.allow_groups.len()
            );
        }
        ConfigCommand::Example => say!("{}", settings::EXAMPLE),
    }
    Ok(())
}

/// Updates records r0..r4 `count` times with "gen-N" (N counting up from `start`), printing
/// each N once all five hold it.
fn state_writer(dir: &Path, key: &KeyArgs, start: u64, count: u64) -> anyhow::Result<()> {
    let store = peerwire_security::store::StateStore::open(dir, key.require()?)?;
    for n in start..start.saturating_add(count) {
        for r in 0..5 {
            store.put(&format!("r{r}"), format!("gen-{n}").as_bytes())?;
        }
        say!("{n}");
    }
    Ok(())
}

async fn stats(socket: &Path, tls: &TlsArgs) -> anyhow::Result<()> {
    let mut builder = Client::builder(socket).name("peerwire-stats");
    if let Some(client_tls) = tls.client()? {
        builder = builder.tls(client_tls);
    }
    let client = builder.connect().await?;
    let s: peerwire_proto::v1::ServerStats = client.call(peerwire_proto::METHOD_STATS, &()).await?;
    client.close().await;
    for (name, value) in [
        ("connections", s.connections),
        ("accepted", s.accepted),
        ("denied", s.denied),
        ("limit_refusals", s.limit_refusals),
        ("limit_hits", s.limit_hits),
        ("tls_failures", s.tls_failures),
        ("token_failures", s.token_failures),
        ("handshake_failures", s.handshake_failures),
        ("sessions", s.sessions),
        ("open", s.open),
        ("requests", s.requests),
        ("deadline_exceeded", s.deadline_exceeded),
        ("handler_panics", s.handler_panics),
        ("protocol_errors", s.protocol_errors),
        ("events_sent", s.events_sent),
        ("slow_consumers", s.slow_consumers),
        ("events_dropped", s.events_dropped),
    ] {
        say!("{name:<20} {value}");
    }
    Ok(())
}
