//! The SDK side of the example display protocol, as its own process.
//!
//! `display-server --socket /run/peerwire/display.sock` serves until SIGINT or SIGTERM. With
//! `--identity DIR --ws-listen 127.0.0.1:7443 --web-root examples/web/www --allow-uid USER` it
//! also serves the browser display client (`docs/web-client.md`) on a WebSocket endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use peerwire_server::{AccessPolicy, DeviceSecret, ServerTls, TlsMode, Verifier, WsEndpoint};

/// Used tokens remembered at most (tokens in their lifetime).
const TOKEN_CAPACITY: usize = 4096;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
struct Args {
    /// Socket path (its directory is created 0700 if missing).
    #[arg(long)]
    socket: PathBuf,
    /// Identity directory made by `peerwire init`: use mutual TLS with it.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Also serve the browser display client on this loopback address (server TLS with the
    /// identity's server certificate, a session token at every upgrade).
    #[arg(long, value_name = "ADDR", requires = "identity")]
    ws_listen: Option<SocketAddr>,
    /// Page origin allowed on the WebSocket endpoint (default: https://ADDR).
    #[arg(long, value_name = "ORIGIN", requires = "ws_listen")]
    ws_origin: Vec<String>,
    /// Directory whose files the WebSocket endpoint serves (e.g. examples/web/www).
    #[arg(long, value_name = "DIR", requires = "ws_listen")]
    web_root: Option<PathBuf>,
    /// Also admit this uid (the browser's display user), besides the server's own.
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
}

/// The WebSocket endpoint: the identity's server certificate and token secret, its own replay
/// record beside them.
fn websocket(args: &Args, listen: SocketAddr, dir: &std::path::Path) -> anyhow::Result<WsEndpoint> {
    let tls = ServerTls::from_dir(dir, TlsMode::ServerAuth)?.context("no server identity")?;
    let server = dir.join("server");
    let secret = DeviceSecret::read(&server.join("token.key"))
        .with_context(|| format!("{}", server.join("token.key").display()))?;
    let tokens = Verifier::new(&secret, &server.join("used-tokens-ws"), TOKEN_CAPACITY)?;
    let mut endpoint = WsEndpoint::new(listen, tls, tokens)?;
    let default_origin = [format!("https://{listen}")];
    let origins = if args.ws_origin.is_empty() {
        &default_origin[..]
    } else {
        &args.ws_origin[..]
    };
    for origin in origins {
        endpoint = endpoint.allow_origin(origin)?;
    }
    if let Some(root) = &args.web_root {
        endpoint = endpoint.web_root(root);
    }
    Ok(endpoint)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    peerwire_examples::init_logging("info");
    let args = Args::parse();
    peerwire_client::harden_process()?;
    let mut builder =
        peerwire_examples::display_server(&args.socket, |line| println!("[server] {line}"));
    if !args.allow_uid.is_empty() {
        let mut policy = AccessPolicy::own_uid();
        for uid in &args.allow_uid {
            policy.allow_uid(*uid);
        }
        builder = builder.access_policy(policy);
    }
    if let Some(dir) = &args.identity {
        if let Some(tls) = ServerTls::from_dir(dir, TlsMode::Mutual)? {
            builder = builder.tls(tls);
        }
        if let Some(listen) = args.ws_listen {
            builder = builder.websocket(websocket(&args, listen, dir)?);
        }
    }
    let server = builder.bind()?;
    let handle = server.handle();
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.shutdown();
    });
    server.run().await?;
    Ok(())
}
