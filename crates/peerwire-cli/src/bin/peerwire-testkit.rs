//! # peerwire-testkit: helper processes for the end-to-end tests (never shipped)
//!
//! Not part of the `peerwire` binary: the Yocto recipe builds `--bin peerwire`, the
//! hardening check and the deployment install `peerwire` only, so a device carries no hidden
//! test entry points.
//!
//! - `embedded-server --socket PATH [--user U] [--group G]... [--keep-cap C]... [--allow-root]`:
//!   a small SDK process that embeds `peerwire-server` the way a product would: the privileged
//!   start-up of [`peerwire_server::daemon`], then a server with `echo.Echo` until SIGTERM.
//! - `state-writer --dir DIR --key KEYFILE [--count N] [--start N]`: updates sealed state
//!   records in a loop (the crash-consistency test kills it at random moments).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use peerwire_security::seal::{KeyProvider, KeyRing};
use peerwire_security::store::StateStore;
use peerwire_server::daemon::{Daemon, RunningAs};
use peerwire_server::{Server, Status};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "peerwire-testkit",
    about = "Helper processes for peerwire's tests"
)]
enum Cli {
    /// An SDK process embedding the server through `peerwire_server::daemon`.
    EmbeddedServer {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        user: Option<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long = "keep-cap")]
        keep_caps: Vec<String>,
        #[arg(long)]
        allow_root: bool,
    },
    /// Updates records r0..r4 `count` times with "gen-N" (N counting up from `start`),
    /// printing each N once all five hold it.
    StateWriter {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        start: u64,
    },
}

fn main() -> anyhow::Result<()> {
    peerwire_examples::init_logging("warn");
    match Cli::parse() {
        Cli::EmbeddedServer {
            socket,
            user,
            groups,
            keep_caps,
            allow_root,
        } => embedded_server(socket, user, groups, keep_caps, allow_root),
        Cli::StateWriter {
            dir,
            key,
            count,
            start,
        } => {
            let ring = KeyRing::new(KeyProvider::File(key).load()?);
            let store = StateStore::open(&dir, ring)?;
            for n in start..start.saturating_add(count) {
                for r in 0..5 {
                    store.put(&format!("r{r}"), format!("gen-{n}").as_bytes())?;
                }
                println!("{n}");
            }
            Ok(())
        }
    }
}

fn embedded_server(
    socket: PathBuf,
    user: Option<String>,
    groups: Vec<String>,
    keep_caps: Vec<String>,
    allow_root: bool,
) -> anyhow::Result<()> {
    let mut daemon = Daemon::new(&socket);
    if let Some(user) = user {
        daemon.user(user);
    }
    for g in groups {
        daemon.group(g);
    }
    for c in keep_caps {
        daemon.keep_capability(c);
    }
    daemon.allow_root(allow_root);
    let ready = daemon.start()?;
    if let RunningAs::ServiceUser(spec) = ready.running_as() {
        eprintln!("embedded-server: running as uid {}", spec.uid);
    }
    ready.runtime()?.block_on(async {
        let mut builder = Server::builder(&socket);
        builder = builder
            .name("embedded-server")
            .namespace("echo", &[1])
            .method("echo.Echo", |_ctx, req: Vec<u8>| async move {
                Ok::<_, Status>(req)
            });
        // Before the socket answers: a SIGTERM sent as soon as it does must find the handler.
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let server = builder.bind()?;
        let handle = server.handle();
        tokio::spawn(async move {
            term.recv().await;
            handle.shutdown();
        });
        eprintln!("embedded-server: listening on {}", socket.display());
        server.run().await?;
        Ok(())
    })
}
