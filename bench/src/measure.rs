//! What every system shares: the client trait, the measurement loops (one per scenario, generic
//! over the system), the figures and the iteration counts.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

/// Iterations of one run (`--quick` or full).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Round trips measured per latency figure, after `rtt_warm` unmeasured ones.
    pub rtt: usize,
    pub rtt_warm: usize,
    /// 1 MiB echoes per throughput run.
    pub stream: usize,
    /// 64 B calls per in-flight run.
    pub inflight: usize,
    /// Events per subscriber per fan-out run.
    pub fanout: usize,
    /// Connections measured for the set-up time.
    pub connect: usize,
    /// Idle connections opened for the memory figure.
    pub idle: usize,
    /// Runs of each throughput figure; the median is reported.
    pub repeats: usize,
}

impl Params {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                rtt: 2_000,
                rtt_warm: 200,
                stream: 20,
                inflight: 8_000,
                fanout: 4_000,
                connect: 30,
                idle: 1_000,
                repeats: 1,
            }
        } else {
            Self {
                rtt: 20_000,
                rtt_warm: 2_000,
                stream: 200,
                inflight: 64_000,
                fanout: 20_000,
                connect: 200,
                idle: 1_000,
                repeats: 3,
            }
        }
    }
}

/// The figures of one measurement; those that do not apply stay `None`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Figures {
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub gbps: Option<f64>,
    pub msgs_per_s: Option<f64>,
    pub bytes_per_conn: Option<f64>,
    /// Fan-out only: events the subscribers did not receive (0 when every event arrived).
    pub dropped: Option<u64>,
}

impl Figures {
    pub(crate) fn latency(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(i).map(|d| d.as_secs_f64() * 1e6)
        };
        Self {
            p50_us: at(0.5),
            p99_us: at(0.99),
            ..Self::default()
        }
    }
}

/// The median of `runs` values (the upper one of an even count).
pub(crate) fn median(mut runs: Vec<f64>) -> Option<f64> {
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied()
}

/// Where and how a client connects: the server's socket, the identities of the run and, for
/// peerwire, the security of the connection.
#[derive(Clone)]
pub(crate) struct Target {
    pub socket: std::path::PathBuf,
    pub identity: std::path::PathBuf,
    pub security: crate::pw::Security,
}

/// A client connection of one system, as the scenarios use it.
pub(crate) trait Client: Sized + 'static {
    /// Connects (and, for systems that have one, completes the handshake).
    async fn connect(target: &Target) -> anyhow::Result<Self>;
    /// One echo round trip of `msg`.
    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()>;
    /// Messages/s with 16 echoes of `msg` in flight on this one connection, `n` in all.
    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64>;
    /// Closes the connection (default: drop it).
    async fn close(self) {}
}

/// Checks that an echo came back whole.
pub(crate) fn check_echo(sent: usize, got: usize) -> anyhow::Result<()> {
    anyhow::ensure!(sent == got, "echo of {sent} bytes came back with {got}");
    Ok(())
}

/// Times `n` runs of `f` after `warm` unmeasured ones; returns the durations and the outputs
/// of the measured runs.
pub(crate) async fn sample<T, F, Fut>(
    n: usize,
    warm: usize,
    mut f: F,
) -> anyhow::Result<(Vec<Duration>, Vec<T>)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    for _ in 0..warm {
        f().await?;
    }
    let mut samples = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = f().await?;
        samples.push(t.elapsed());
        outputs.push(out);
    }
    Ok((samples, outputs))
}

/// Round-trip latency of `size`-byte echoes.
pub(crate) async fn rtt<C: Client>(c: &C, size: usize, p: &Params) -> anyhow::Result<Figures> {
    let msg = Bytes::from(vec![7u8; size]);
    let (samples, _) = sample(p.rtt, p.rtt_warm, || c.echo(&msg)).await?;
    Ok(Figures::latency(samples))
}

/// Runs `once` `repeats` times and keeps the median figure.
pub(crate) async fn median_of<F, Fut>(repeats: usize, mut once: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<f64>>,
{
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        runs.push(once().await?);
    }
    median(runs).context("no run")
}

/// One-way throughput of 1 MiB messages, as 1 MiB echoes: GB/s counting both directions.
pub(crate) async fn stream<C: Client>(c: &C, p: &Params) -> anyhow::Result<Figures> {
    let msg = Bytes::from(vec![7u8; 1 << 20]);
    for _ in 0..p.stream / 10 + 1 {
        c.echo(&msg).await?;
    }
    let gbps = median_of(p.repeats, || async {
        let t = Instant::now();
        for _ in 0..p.stream {
            c.echo(&msg).await?;
        }
        Ok((2 * p.stream * msg.len()) as f64 / t.elapsed().as_secs_f64() / 1e9)
    })
    .await?;
    Ok(Figures {
        gbps: Some(gbps),
        ..Figures::default()
    })
}

/// Messages/s with 16 requests of 64 B in flight on one connection.
pub(crate) async fn inflight<C: Client>(c: &C, p: &Params) -> anyhow::Result<Figures> {
    let msg = Bytes::from(vec![7u8; 64]);
    c.inflight16(&msg, p.inflight / 10).await?;
    let rate = median_of(p.repeats, || c.inflight16(&msg, p.inflight)).await?;
    Ok(Figures {
        msgs_per_s: Some(rate),
        ..Figures::default()
    })
}

/// The in-flight scenario for a blocking client on one thread, pipelined: 16 requests written,
/// then one more written per answer read; `receive` reads one answer and checks it.
pub(crate) fn pipelined(
    n: usize,
    mut send: impl FnMut() -> std::io::Result<()>,
    mut receive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut sent = 0;
    while sent < n.min(16) {
        send()?;
        sent += 1;
    }
    for _ in 0..n {
        receive()?;
        if sent < n {
            send()?;
            sent += 1;
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The in-flight scenario for clients whose clones share one connection: 16 local tasks, each
/// calling one after the other.
pub(crate) async fn inflight_tasks<C: Client + Clone>(
    c: &C,
    msg: &Bytes,
    n: usize,
) -> anyhow::Result<f64> {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let t = Instant::now();
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (c, msg) = (c.clone(), msg.clone());
                    tokio::task::spawn_local(async move {
                        for _ in 0..n / 16 {
                            c.echo(&msg).await?;
                        }
                        Ok::<_, anyhow::Error>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await.context("in-flight task")??;
            }
            Ok((n / 16 * 16) as f64 / t.elapsed().as_secs_f64())
        })
        .await
}

/// Connection set-up: connect (with the system's handshake) until the first 64 B echo is back.
pub(crate) async fn connect<C: Client>(target: &Target, p: &Params) -> anyhow::Result<Figures> {
    let msg = Bytes::from(vec![7u8; 64]);
    let (samples, open) = sample(p.connect, p.connect / 10 + 1, || async {
        let c = C::connect(target).await?;
        c.echo(&msg).await?;
        Ok(c)
    })
    .await?;
    for c in open {
        c.close().await;
    }
    Ok(Figures::latency(samples))
}

/// A process's resident set in bytes, from `/proc/<pid>/status`.
pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kb * 1024)
}

/// The server's RSS once it stops moving (two reads 100 ms apart within 0.5 %, at most 2 s).
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut last = rss(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss(pid)?;
        if now.abs_diff(last) * 200 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Server memory per idle connection: the server's RSS delta over `p.idle` connections, each
/// opened (at most 16 handshakes at a time, within the default per-uid limit on unfinished
/// handshakes), used for one 64 B echo, then left idle.
pub(crate) async fn idle_memory<C: Client>(
    target: &Target,
    server_pid: u32,
    p: &Params,
) -> anyhow::Result<Figures> {
    let msg = Bytes::from(vec![7u8; 64]);
    // Warm the server up: allocator arenas, first-use tables.
    for _ in 0..16 {
        let c = C::connect(target).await?;
        c.echo(&msg).await?;
        c.close().await;
    }
    let before = settled_rss(server_pid).await?;
    let mut open = Vec::with_capacity(p.idle);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            while open.len() < p.idle {
                let batch: Vec<_> = (0..16.min(p.idle - open.len()))
                    .map(|_| {
                        let (target, msg) = (target.clone(), msg.clone());
                        tokio::task::spawn_local(async move {
                            let c = C::connect(&target).await?;
                            c.echo(&msg).await?;
                            Ok::<_, anyhow::Error>(c)
                        })
                    })
                    .collect();
                for task in batch {
                    open.push(task.await.context("connect task")??);
                }
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    let after = settled_rss(server_pid).await?;
    let n = open.len();
    for c in open {
        c.close().await;
    }
    Ok(Figures {
        bytes_per_conn: Some(after.saturating_sub(before) as f64 / n as f64),
        ..Figures::default()
    })
}

/// Fan-out to 8 subscribers, `p.repeats` runs of `once`, which triggers `p.fanout` events and
/// returns when it was triggered and, per subscriber, how many events arrived and when the last
/// one did. Figure: events/s delivered to all 8 (all events received over the time from the
/// trigger to the last event) of the median run, and the events that did not arrive in it.
pub(crate) async fn fanout_runs<F, Fut>(p: &Params, mut once: F) -> anyhow::Result<Figures>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<(Instant, Vec<(usize, Instant)>)>>,
{
    let mut runs = Vec::new();
    for _ in 0..p.repeats.max(1) {
        let (start, received) = once().await?;
        let total: usize = received.iter().map(|(n, _)| n).sum();
        let end = received.iter().map(|(_, t)| *t).max().unwrap_or(start);
        let rate = total as f64 / end.duration_since(start).as_secs_f64().max(1e-9);
        runs.push((rate, (8 * p.fanout).saturating_sub(total) as u64));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, dropped) = runs.get(runs.len() / 2).copied().context("no run")?;
    Ok(Figures {
        msgs_per_s: Some(rate),
        dropped: Some(dropped),
        ..Figures::default()
    })
}
