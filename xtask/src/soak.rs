//! `cargo xtask soak --seconds N [--tls]`: mixed load on a real `peerwire serve` process (calls
//! of varied sizes, pushes to subscribers, clients that reconnect, hostile peers) for N seconds;
//! with `--tls` every connection is mutual TLS with a fresh identity (and the hostile peers'
//! bytes meet the TLS handshake).
//! Fails on any wrong or failed call, any stall (a call past its 5 s deadline), a server that
//! died, or server memory that keeps growing (RSS after the warm-up must stay within 32 MiB).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerwire_client::{Client, ClientTls, TlsMode};
use tokio::io::AsyncWriteExt;

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("the server is gone")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    events: AtomicU64,
    reconnects: AtomicU64,
    hostile: AtomicU64,
    errors: AtomicU64,
}

pub(crate) fn run(root: &Path, seconds: u64, tls: bool) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "--locked", "-p", "peerwire-cli"])
        .status()?;
    if !status.success() {
        bail!("building peerwire failed");
    }
    let dir = tempfile_dir()?;
    let socket = dir.join("run/soak.sock");
    let peerwire = root.join("target/debug/peerwire");
    let identity = dir.join("identity");
    let mut serve = std::process::Command::new(&peerwire);
    serve
        .args(["serve", "--allow-root", "--tick-ms", "10", "--socket"])
        .arg(&socket);
    if tls {
        let made = std::process::Command::new(&peerwire)
            .args(["init", "--device", "soak", "--dir"])
            .arg(&identity)
            .status()?;
        if !made.success() {
            bail!("peerwire init failed");
        }
        serve.args(["--tls", "mutual", "--identity"]).arg(&identity);
    }
    let client_tls = tls.then_some(identity.as_path());
    let mut server = serve
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting peerwire serve")?;
    let result = tokio::runtime::Runtime::new()?.block_on(soak(
        &socket,
        client_tls,
        server.id(),
        Duration::from_secs(seconds.max(5)),
    ));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("peerwire-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A client of the echo namespace (in mutual TLS with the identity in `tls`, if given); a
/// failure to connect is counted as an error.
async fn connect(socket: &Path, tls: Option<&Path>, counts: &Counts, who: &str) -> Option<Client> {
    let mut builder = Client::builder(socket).namespace("echo", &[1]);
    if let Some(dir) = tls {
        match ClientTls::from_dir(dir, TlsMode::Mutual) {
            Ok(Some(tls)) => builder = builder.tls(tls),
            other => {
                eprintln!("soak: {who} has no TLS context: {other:?}");
                counts.errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
    match builder.connect().await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("soak: {who} cannot connect: {e}");
            counts.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn soak(socket: &Path, tls: Option<&Path>, pid: u32, length: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks = vec![];
    let tls = tls.map(Path::to_owned);
    for worker in 0..8u64 {
        let (socket, stop, counts) = (socket.to_owned(), stop.clone(), counts.clone());
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let Some(client) = connect(&socket, tls.as_deref(), &counts, "caller").await else {
                return;
            };
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let size = ((i * 7919 + worker * 104729) % 65536) as usize;
                let payload: Vec<u8> = (0..size).map(|j| (j as u64 ^ i) as u8).collect();
                match client
                    .call_with_deadline::<Vec<u8>, Vec<u8>>(
                        "echo.Echo",
                        &payload,
                        Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(back) if back == payload => {
                        counts.calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        eprintln!("soak: caller {worker}: wrong echo");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("soak: caller {worker}: {e}");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            client.close().await;
        }));
    }
    for _ in 0..3 {
        let (socket, stop, counts) = (socket.to_owned(), stop.clone(), counts.clone());
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Some(client) = connect(&socket, tls.as_deref(), &counts, "subscriber").await
                else {
                    return;
                };
                counts.reconnects.fetch_add(1, Ordering::Relaxed);
                let Ok(mut ticks) = client.subscribe("echo.Tick").await else {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                for _ in 0..20 {
                    match tokio::time::timeout(Duration::from_secs(5), ticks.next()).await {
                        Ok(Some(_)) => {
                            counts.events.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            eprintln!("soak: no tick within 5 s");
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                client.close().await;
            }
        }));
    }
    {
        let (socket, stop, counts) = (socket.to_owned(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Ok(mut s) = tokio::net::UnixStream::connect(&socket).await {
                    let junk: Vec<u8> = match n % 3 {
                        0 => vec![0xff; 4],
                        1 => (0..300).map(|i| (i * 31 + n) as u8).collect(),
                        _ => vec![0, 0, 0, 50, 1, 2, 3],
                    };
                    let _ = s.write_all(&junk).await;
                    drop(s);
                    counts.hostile.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let warm = length / 5;
    tokio::time::sleep(warm).await;
    let baseline = rss_kib(pid)?;
    let mut peak = baseline;
    while start.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(pid)?);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .context("a soak task stalled")?;
    }
    let c = &counts;
    eprintln!(
        "xtask soak: {:.0?}: {} calls, {} events, {} (re)connections, {} hostile peers, {} errors; server RSS {} KiB after warm-up, peak {} KiB",
        start.elapsed(),
        c.calls.load(Ordering::Relaxed),
        c.events.load(Ordering::Relaxed),
        c.reconnects.load(Ordering::Relaxed),
        c.hostile.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        baseline,
        peak
    );
    if c.errors.load(Ordering::Relaxed) > 0 {
        bail!("errors during the soak");
    }
    if c.calls.load(Ordering::Relaxed) == 0 || c.events.load(Ordering::Relaxed) == 0 {
        bail!("no load went through");
    }
    if peak > baseline + 32 * 1024 {
        bail!("server memory grew from {baseline} KiB to {peak} KiB");
    }
    Ok(())
}
