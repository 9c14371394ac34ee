//! The SDK side of the example display protocol, as its own process.
//!
//! `display-server --socket /run/peerwire/display.sock` serves until SIGINT or SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
struct Args {
    /// Socket path (its directory is created 0700 if missing).
    #[arg(long)]
    socket: PathBuf,
    /// Identity directory made by `peerwire init`: use mutual TLS with it.
    #[arg(long)]
    identity: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    peerwire_examples::init_logging("info");
    let args = Args::parse();
    peerwire_client::harden_process()?;
    let mut builder =
        peerwire_examples::display_server(&args.socket, |line| println!("[server] {line}"));
    if let Some(dir) = &args.identity {
        if let Some(tls) =
            peerwire_server::ServerTls::from_dir(dir, peerwire_server::TlsMode::Mutual)?
        {
            builder = builder.tls(tls);
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
