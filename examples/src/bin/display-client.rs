//! The renderer side of the example display protocol, as its own process: prints what it
//! would draw. `display-client --socket /run/peerwire/display.sock`

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Socket path of the display server.
    #[arg(long)]
    socket: PathBuf,
    /// Identity directory made by `peerwire init`: use mutual TLS with it.
    #[arg(long)]
    identity: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    peerwire_examples::init_logging("warn");
    let args = Args::parse();
    peerwire_client::harden_process()?;
    let tls = match &args.identity {
        Some(dir) => peerwire_client::ClientTls::from_dir(dir, peerwire_client::TlsMode::Mutual)?,
        None => None,
    };
    peerwire_examples::run_display_client(&args.socket, tls, |line| println!("[client] {line}"))
        .await?;
    Ok(())
}
