//! peerwire benchmark harness (issue 9, in progress).
//!
//! `peerwire-bench run [--quick] [--out DIR]` starts, for each system and placement, a server
//! process (this binary in `serve-*` mode) and measures it from this process over a real Unix
//! socket. Systems so far: `raw` (blocking Unix socket, 4-byte length prefix: the limit),
//! `peerwire` (plain) and `peerwire-tls` (mutual TLS 1.3). Scenarios: round-trip latency for 64 B
//! and 4 KiB (p50/p99), 16 requests of 64 B in flight on one connection (messages/s), 1 MiB
//! echo throughput (GB/s, counting both directions) and connection set-up time. Placements:
//! `same-cpu` (both processes pinned to CPU 0) and `split` (server CPU 0, client CPU 1).
//! Results: a table on stdout with ratios to raw, and `results.json`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerwire_client::{Client, ClientTls, TlsMode};
use peerwire_server::{AccessPolicy, Server, ServerTls, Status};

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------- servers (child processes)

fn serve_raw(path: &Path) -> anyhow::Result<()> {
    let listener = UnixListener::bind(path)?;
    for conn in listener.incoming() {
        let mut s = conn?;
        std::thread::spawn(move || {
            let mut head = [0u8; 4];
            let mut buf = Vec::new();
            while s.read_exact(&mut head).is_ok() {
                let len = u32::from_be_bytes(head) as usize;
                buf.resize(len, 0);
                if s.read_exact(&mut buf).is_err() {
                    break;
                }
                if s.write_all(&head).and_then(|()| s.write_all(&buf)).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn serve_peerwire(path: &Path, identity: Option<&Path>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut b = Server::builder(path);
        b.access_policy(AccessPolicy::own_uid());
        b.method("bench.Echo", |_ctx, v: Vec<u8>| async move {
            Ok::<_, Status>(v)
        });
        if let Some(dir) = identity {
            if let Some(tls) = ServerTls::from_dir(dir, TlsMode::Mutual)? {
                b.tls(tls);
            }
        }
        b.bind()?.run().await?;
        Ok(())
    })
}

// ---------------------------------------------------------------- clients (this process)

struct Figures {
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    gbps: Option<f64>,
    msgs_per_s: Option<f64>,
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn raw_rtt(path: &Path, size: usize, n: usize) -> anyhow::Result<Figures> {
    let mut s = UnixStream::connect(path)?;
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.write_all(&(size as u32).to_be_bytes())?;
        s.write_all(&msg)?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        s.read_exact(&mut back)?;
        if i >= n / 10 {
            samples.push(t.elapsed());
        }
    }
    Ok(Figures {
        p50_us: Some(percentile(&mut samples, 0.5)),
        p99_us: Some(percentile(&mut samples, 0.99)),
        gbps: None,
        msgs_per_s: None,
    })
}

fn raw_stream(path: &Path, n: usize) -> anyhow::Result<Figures> {
    let size = 1 << 20;
    let mut s = UnixStream::connect(path)?;
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let t = Instant::now();
    for _ in 0..n {
        s.write_all(&(size as u32).to_be_bytes())?;
        s.write_all(&msg)?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        s.read_exact(&mut back)?;
    }
    Ok(Figures {
        p50_us: None,
        p99_us: None,
        gbps: Some((2 * n * size) as f64 / t.elapsed().as_secs_f64() / 1e9),
        msgs_per_s: None,
    })
}

fn raw_inflight(path: &Path, n: usize) -> anyhow::Result<Figures> {
    let mut s = UnixStream::connect(path)?;
    let msg = [7u8; 64];
    let mut r = s.try_clone()?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 68];
        for _ in 0..n {
            r.read_exact(&mut buf)?;
        }
        Ok(())
    });
    let t = Instant::now();
    // 16 in flight: the reader thread drains as the writer pushes (window enforced by the socket).
    for _ in 0..n {
        s.write_all(&64u32.to_be_bytes())?;
        s.write_all(&msg)?;
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(Figures {
        p50_us: None,
        p99_us: None,
        gbps: None,
        msgs_per_s: Some(n as f64 / t.elapsed().as_secs_f64()),
    })
}

async fn connect(path: &Path, identity: Option<&Path>) -> anyhow::Result<Client> {
    let mut b = Client::builder(path).namespace("bench", &[1]);
    if let Some(dir) = identity {
        if let Some(tls) = ClientTls::from_dir(dir, TlsMode::Mutual)? {
            b = b.tls(tls);
        }
    }
    Ok(b.connect().await?)
}

async fn pw_rtt(c: &Client, size: usize, n: usize) -> anyhow::Result<Figures> {
    let msg = vec![7u8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let _: Vec<u8> = c.call("bench.Echo", &msg).await?;
        if i >= n / 10 {
            samples.push(t.elapsed());
        }
    }
    Ok(Figures {
        p50_us: Some(percentile(&mut samples, 0.5)),
        p99_us: Some(percentile(&mut samples, 0.99)),
        gbps: None,
        msgs_per_s: None,
    })
}

async fn pw_stream(c: &Client, n: usize) -> anyhow::Result<Figures> {
    let msg = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..n {
        let _: Vec<u8> = c.call("bench.Echo", &msg).await?;
    }
    Ok(Figures {
        p50_us: None,
        p99_us: None,
        gbps: Some((2 * n * msg.len()) as f64 / t.elapsed().as_secs_f64() / 1e9),
        msgs_per_s: None,
    })
}

async fn pw_inflight(c: &Client, n: usize) -> anyhow::Result<Figures> {
    let msg = vec![7u8; 64];
    let t = Instant::now();
    let mut tasks = vec![];
    for _ in 0..16 {
        let (c, msg) = (c.clone(), msg.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 16 {
                let _: Vec<u8> = c.call("bench.Echo", &msg).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Figures {
        p50_us: None,
        p99_us: None,
        gbps: None,
        msgs_per_s: Some((n / 16 * 16) as f64 / t.elapsed().as_secs_f64()),
    })
}

struct Row {
    system: &'static str,
    scenario: &'static str,
    placement: &'static str,
    f: Figures,
}

fn spawn_server(
    exe: &Path,
    mode: &str,
    path: &Path,
    identity: &Path,
    cpu: usize,
) -> anyhow::Result<Child> {
    let child = Command::new(exe)
        .arg(mode)
        .arg(path)
        .arg(identity)
        .arg(cpu.to_string())
        .spawn()?;
    let start = Instant::now();
    while UnixStream::connect(path).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{mode} did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

fn run(quick: bool, out: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("peerwire-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let identity = dir.join("identity");
    peerwire_security::identity::provision(&identity, "bench", true)?;
    let (n_rtt, n_stream, n_inflight) = if quick {
        (2_000, 20, 20_000)
    } else {
        (20_000, 200, 200_000)
    };
    let mut placements = vec![("same-cpu", 0usize, 0usize)];
    if cpus() > 1 {
        placements.push(("split", 0, 1));
    }
    let mut rows = vec![];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (placement, server_cpu, client_cpu) in &placements {
        pin(*client_cpu);
        for system in ["raw", "peerwire", "peerwire-tls"] {
            let path = dir.join(format!("{system}-{placement}.sock"));
            let mode = if system == "raw" {
                "serve-raw"
            } else if system == "peerwire" {
                "serve-peerwire"
            } else {
                "serve-peerwire-tls"
            };
            let mut child = spawn_server(&exe, mode, &path, &identity, *server_cpu)?;
            let mut add = |scenario: &'static str, f: Figures| {
                rows.push(Row {
                    system,
                    scenario,
                    placement,
                    f,
                });
            };
            if system == "raw" {
                add("rtt-64B", raw_rtt(&path, 64, n_rtt)?);
                add("rtt-4KiB", raw_rtt(&path, 4096, n_rtt)?);
                add("inflight16-64B", raw_inflight(&path, n_inflight)?);
                add("stream-1MiB", raw_stream(&path, n_stream)?);
            } else {
                let id = (system == "peerwire-tls").then_some(identity.as_path());
                let figures = rt.block_on(async {
                    let t = Instant::now();
                    let c = connect(&path, id).await?;
                    let connect_us = t.elapsed().as_secs_f64() * 1e6;
                    let r = (
                        pw_rtt(&c, 64, n_rtt).await?,
                        pw_rtt(&c, 4096, n_rtt).await?,
                        pw_inflight(&c, n_inflight).await?,
                        pw_stream(&c, n_stream).await?,
                    );
                    c.close().await;
                    Ok::<_, anyhow::Error>((connect_us, r))
                })?;
                let (connect_us, (a, b, c, d)) = figures;
                add("rtt-64B", a);
                add("rtt-4KiB", b);
                add("inflight16-64B", c);
                add("stream-1MiB", d);
                add(
                    "connect",
                    Figures {
                        p50_us: Some(connect_us),
                        p99_us: None,
                        gbps: None,
                        msgs_per_s: None,
                    },
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    report(&rows, out)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn report(rows: &[Row], out: &Path) -> anyhow::Result<()> {
    let raw = |scenario: &str, placement: &str| {
        rows.iter()
            .find(|r| r.system == "raw" && r.scenario == scenario && r.placement == placement)
    };
    println!(
        "{:<13} {:<15} {:<9} {:>10} {:>10} {:>8} {:>12} {:>9}",
        "system", "scenario", "placement", "p50 us", "p99 us", "GB/s", "msgs/s", "vs raw"
    );
    let mut json = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let ratio = raw(r.scenario, r.placement).and_then(|b| {
            match (
                r.f.p50_us,
                b.f.p50_us,
                r.f.gbps,
                b.f.gbps,
                r.f.msgs_per_s,
                b.f.msgs_per_s,
            ) {
                (Some(x), Some(y), ..) if y > 0.0 => Some(format!("{:.2}x", x / y)),
                (_, _, Some(x), Some(y), ..) if y > 0.0 => Some(format!("{:.2}", x / y)),
                (_, _, _, _, Some(x), Some(y)) if y > 0.0 => Some(format!("{:.2}", x / y)),
                _ => None,
            }
        });
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        println!(
            "{:<13} {:<15} {:<9} {:>10} {:>10} {:>8} {:>12} {:>9}",
            r.system,
            r.scenario,
            r.placement,
            f(r.f.p50_us, 1),
            f(r.f.p99_us, 1),
            f(r.f.gbps, 2),
            f(r.f.msgs_per_s, 0),
            ratio.unwrap_or_else(|| "-".into())
        );
        let mut fields = vec![
            format!("\"system\": \"{}\"", r.system),
            format!("\"scenario\": \"{}\"", r.scenario),
            format!("\"placement\": \"{}\"", r.placement),
        ];
        for (k, v) in [
            ("p50_us", r.f.p50_us),
            ("p99_us", r.f.p99_us),
            ("gbps", r.f.gbps),
            ("msgs_per_s", r.f.msgs_per_s),
        ] {
            if let Some(v) = v {
                fields.push(format!("\"{k}\": {v:.3}"));
            }
        }
        json.push_str(&format!(
            "  {{{}}}{}\n",
            fields.join(", "),
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    json.push_str("]\n");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), json)?;
    println!("results: {}", out.join("results.json").display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(mode @ ("serve-raw" | "serve-peerwire" | "serve-peerwire-tls")) => {
            let path = PathBuf::from(args.get(1).context("socket path")?);
            let identity = PathBuf::from(args.get(2).context("identity")?);
            pin(args.get(3).and_then(|c| c.parse().ok()).unwrap_or(0));
            match mode {
                "serve-raw" => serve_raw(&path),
                "serve-peerwire" => serve_peerwire(&path, None),
                _ => serve_peerwire(&path, Some(&identity)),
            }
        }
        Some("run") => {
            let quick = args.iter().any(|a| a == "--quick");
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
            run(quick, &out)
        }
        _ => bail!("usage: peerwire-bench run [--quick] [--out DIR]"),
    }
}
