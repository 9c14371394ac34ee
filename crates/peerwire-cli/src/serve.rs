//! `peerwire serve`: the reference server (echo.Echo, echo.Sleep, push topic echo.Tick), started
//! through the privileged start-up of [`peerwire_server::daemon`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use peerwire_examples::echo;
use peerwire_server::daemon::{self, Daemon, DaemonError, RunningAs};
use peerwire_server::settings::{
    AccessSection, LimitsSection, ServerConfig, TlsSection, WebSocketSection,
};
use peerwire_server::{RequestContext, Status};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::ServeArgs;

/// `peerwire serve`: the privileged start-up of [`peerwire_server::daemon`] (harden, refuse root,
/// socket directory, privilege drop, harden again, verify), then the runtime and the server.
pub(crate) fn main(args: ServeArgs) -> anyhow::Result<()> {
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
        ws,
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
            websocket: ws.ws_listen.map(|listen| WebSocketSection {
                listen,
                allow_origins: ws.ws_origin,
                web_root: ws.web_root,
                mutual_tls: ws.ws_mutual_tls,
            }),
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

/// The reference service: `proto/echo/v1/echo.proto`.
struct Reference;

impl echo::Echo for Reference {
    async fn echo(&self, _ctx: RequestContext, request: Vec<u8>) -> Result<Vec<u8>, Status> {
        Ok(request)
    }

    async fn sleep(&self, _ctx: RequestContext, ms: u64) -> Result<u64, Status> {
        // What a test waits for to know the call is in flight (RUST_LOG=echo=info).
        tracing::info!(target: "echo", "echo.Sleep started: {ms} ms");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

async fn serve(config: ServerConfig, tick_ms: u64, tick_message: String) -> anyhow::Result<()> {
    let socket = config.socket.clone();
    let mode = config.tls_mode()?;
    let mut builder = config.builder()?;
    builder = builder.name("peerwire-serve");
    builder = echo::add_echo(builder, Arc::new(Reference));
    // Before the socket answers: a SIGTERM sent as soon as it does must find the handler.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = builder.bind()?;
    let handle = server.handle();
    eprintln!(
        "peerwire serve: listening on {} (TLS: {mode})",
        socket.display()
    );
    if let Some(addr) = server.ws_addr() {
        eprintln!("peerwire serve: WebSocket endpoint wss://{addr}/peerwire");
    }
    let tick = Duration::from_millis(tick_ms.max(1));
    let ticker = echo::EchoPublisher::new(handle.clone());
    let running = handle.clone();
    tokio::spawn(async move {
        let mut n: u64 = 0;
        let mut interval = tokio::time::interval(tick);
        while !running.is_shutting_down() {
            interval.tick().await;
            n += 1;
            let _ = ticker.tick(&format!("{tick_message} {n}"));
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
