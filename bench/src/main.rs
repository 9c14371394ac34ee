//! peerwire benchmark harness (issue 9).
//!
//! `peerwire-bench run [--quick] [--out DIR]` starts, for each system and placement, a server
//! process (this binary in `serve` mode, pinned to its CPU) and measures it from this process
//! (pinned to its own) over a real Unix socket. Systems: `raw` (blocking Unix socket with a
//! length prefix: the limit), `tokio` (bare tokio + tokio-util `LengthDelimitedCodec`: what an
//! async Rust stack costs before any protocol or security), `peerwire`, `peerwire-exe` (an
//! `--allow-exe` rule: the sender of every chunk read is checked), `peerwire-tls` (mutual TLS 1.3), `peerwire-tls-token`
//! (server TLS + one-time session tokens: connection set-up only), `peerwire-c` (the C client
//! over the C API against the plain server: 64 B round trips only), `peerwire-blocking`
//! (`peerwire_client::blocking` against the plain server: 64 B round trips only), `peerwire-ws`
//! (the WebSocket endpoint over TLS, a browser-free client) and, with the `peers` feature,
//! `tonic` (gRPC) and `ttrpc`. Issue 21's floors: `raw-batched` (a raw server and pipelined
//! client that batch as peerwire does: 16 in flight only), `openssl-echo` (a bare blocking
//! OpenSSL echo with peerwire's TLS contexts) and, at the start of the run, the one-core
//! AES-128-GCM sealing rate. Scenarios and figures: see `measure.rs`; output and goals:
//! `report.rs`.

mod blocking;
mod c_client;
mod goals;
mod measure;
mod openssl_echo;
mod pw;
mod raw;
mod report;
mod tokio_framing;
mod ws;

#[cfg(feature = "peers")]
mod grpc;
#[cfg(feature = "peers")]
mod ttrpc_peer;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use measure::{Client, Figures, Params, Target};
use report::Row;

/// A system under measurement; its name is also its `serve` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    Raw,
    Tokio,
    Peerwire,
    PeerwireExe,
    PeerwireTls,
    PeerwireTlsToken,
    PeerwireC,
    PeerwireWs,
    PeerwireBlocking,
    Tonic,
    Ttrpc,
    RawBatched,
    OpensslEcho,
}

impl System {
    const ALL: [System; 13] = [
        System::Raw,
        System::Tokio,
        System::Peerwire,
        System::PeerwireExe,
        System::PeerwireTls,
        System::PeerwireTlsToken,
        System::PeerwireC,
        System::PeerwireWs,
        System::PeerwireBlocking,
        System::Tonic,
        System::Ttrpc,
        System::RawBatched,
        System::OpensslEcho,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Raw => "raw",
            System::Tokio => "tokio",
            System::Peerwire => "peerwire",
            System::PeerwireExe => "peerwire-exe",
            System::PeerwireTls => "peerwire-tls",
            System::PeerwireTlsToken => "peerwire-tls-token",
            System::PeerwireC => "peerwire-c",
            System::PeerwireWs => "peerwire-ws",
            System::PeerwireBlocking => "peerwire-blocking",
            System::Tonic => "tonic",
            System::Ttrpc => "ttrpc",
            System::RawBatched => "raw-batched",
            System::OpensslEcho => "openssl-echo",
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, System::Tonic | System::Ttrpc)
    }
}

/// A server process tells its parent it listens by printing this line.
pub(crate) fn ready() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}

fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU number")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

/// 1,000 idle connections need more descriptors than the usual soft limit of 1,024.
fn raise_nofile() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")
}

fn serve(system: System, socket: &Path, identity: &Path) -> anyhow::Result<()> {
    match system {
        System::Raw => raw::serve(socket),
        System::RawBatched => raw::serve_batched(socket),
        System::OpensslEcho => openssl_echo::serve(socket, identity),
        System::Tokio => tokio_framing::serve(socket),
        System::Peerwire | System::PeerwireC | System::PeerwireBlocking => {
            pw::serve(socket, identity, pw::ServerMode::Plain)
        }
        System::PeerwireExe => pw::serve(socket, identity, pw::ServerMode::PlainExe),
        System::PeerwireTls => pw::serve(socket, identity, pw::ServerMode::MutualTls),
        System::PeerwireTlsToken => pw::serve(socket, identity, pw::ServerMode::ServerTlsToken),
        System::PeerwireWs => ws::serve(socket, identity),
        #[cfg(feature = "peers")]
        System::Tonic => grpc::serve(socket),
        #[cfg(feature = "peers")]
        System::Ttrpc => ttrpc_peer::serve(socket),
        #[cfg(not(feature = "peers"))]
        System::Tonic | System::Ttrpc => bail!("built without the `peers` feature"),
    }
}

/// A server child process, killed when dropped.
struct ServerProcess(Child);

impl ServerProcess {
    fn spawn(system: System, socket: &Path, identity: &Path, cpu: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let child = Command::new(exe)
            .arg("serve")
            .arg(system.name())
            .arg(socket)
            .arg(identity)
            .arg(cpu.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {} server", system.name()))?;
        let mut server = Self(child);
        let stdout = server.0.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the {} server did not start", system.name());
        }
        Ok(server)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects the figures of one system in one placement, logging each scenario's duration.
struct Steps {
    label: String,
    figures: Vec<(&'static str, Figures)>,
}

impl Steps {
    async fn run(
        &mut self,
        scenario: &'static str,
        f: impl Future<Output = anyhow::Result<Figures>>,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        let figures = f
            .await
            .with_context(|| format!("{} {scenario}", self.label))?;
        eprintln!(
            "{} {scenario}: {:.1} s",
            self.label,
            t.elapsed().as_secs_f64()
        );
        self.figures.push((scenario, figures));
        Ok(())
    }

    /// The scenarios every system has: round trips, in-flight (as `inflight`: the naive raw
    /// row is named so), 1 MiB, connection set-up.
    async fn common<C: Client>(
        &mut self,
        t: &Target,
        p: &Params,
        inflight: &'static str,
    ) -> anyhow::Result<()> {
        let c = C::connect(t).await?;
        self.run("rtt-64B", measure::rtt(&c, 64, p)).await?;
        self.run("rtt-4KiB", measure::rtt(&c, 4096, p)).await?;
        self.run(inflight, measure::inflight(&c, p)).await?;
        self.run("stream-1MiB", measure::stream(&c, p)).await?;
        c.close().await;
        self.run("connect", measure::connect::<C>(t, p)).await
    }

    /// A peer: the common scenarios and, in the same-cpu placement, idle connection memory.
    #[cfg(feature = "peers")]
    async fn peer<C: Client>(
        &mut self,
        t: &Target,
        server_pid: u32,
        p: &Params,
        memory: bool,
    ) -> anyhow::Result<()> {
        self.common::<C>(t, p, INFLIGHT).await?;
        if memory {
            let idle = measure::idle_memory::<C>(t, server_pid, p);
            self.run("idle-conn-mem", idle).await?;
        }
        Ok(())
    }
}

async fn measure_system(
    system: System,
    t: &Target,
    server_pid: u32,
    p: &Params,
    steps: &mut Steps,
    memory: bool,
) -> anyhow::Result<()> {
    match system {
        System::Raw => {
            // The naive raw pipeline: not the limit for 16 in flight (`raw-batched` is).
            steps
                .common::<raw::Raw>(t, p, "inflight16-64B-naive")
                .await?;
            steps.run("fanout8", raw::fanout(t, p)).await?;
            if memory {
                let idle = measure::idle_memory::<raw::Raw>(t, server_pid, p);
                steps.run("idle-conn-mem", idle).await?;
            }
        }
        System::Tokio => steps.common::<tokio_framing::Tokio>(t, p, INFLIGHT).await?,
        System::RawBatched => {
            let c = <raw::RawBatched as Client>::connect(t).await?;
            steps.run(INFLIGHT, measure::inflight(&c, p)).await?;
        }
        System::OpensslEcho => {
            let c = <openssl_echo::OpensslEcho as Client>::connect(t).await?;
            steps.run("rtt-64B", measure::rtt(&c, 64, p)).await?;
            steps.run("stream-1MiB", measure::stream(&c, p)).await?;
            c.close().await;
            let connect = measure::connect::<openssl_echo::OpensslEcho>(t, p);
            steps.run("connect", connect).await?;
        }
        System::PeerwireExe => {
            // What checking every chunk's sender costs: the round trips only.
            let c = <pw::Pw as Client>::connect(t).await?;
            steps.run("rtt-64B", measure::rtt(&c, 64, p)).await?;
            steps.run("rtt-4KiB", measure::rtt(&c, 4096, p)).await?;
            steps
                .run("inflight16-64B", measure::inflight(&c, p))
                .await?;
            c.close().await;
        }
        System::Peerwire | System::PeerwireTls => {
            steps.common::<pw::Pw>(t, p, INFLIGHT).await?;
            // The generated client's round trip beside the string API's (rtt-64B above).
            let typed = <pw::PwTyped as Client>::connect(t).await?;
            steps
                .run("rtt-64B-generated", measure::rtt(&typed, 64, p))
                .await?;
            typed.close().await;
            steps.run("fanout8", pw::fanout(t, p)).await?;
            if memory {
                let idle = measure::idle_memory::<pw::Pw>(t, server_pid, p);
                steps.run("idle-conn-mem", idle).await?;
            }
        }
        System::PeerwireTlsToken => {
            steps
                .run("connect", measure::connect::<pw::Pw>(t, p))
                .await?;
        }
        System::PeerwireC => steps.run("rtt-64B", c_client::rtt(t, 64, p)).await?,
        System::PeerwireWs => steps.common::<ws::Ws>(t, p, INFLIGHT).await?,
        System::PeerwireBlocking => {
            steps
                .run("rtt-64B", async { blocking::rtt(t, 64, p) })
                .await?
        }
        #[cfg(feature = "peers")]
        System::Tonic => steps.peer::<grpc::Grpc>(t, server_pid, p, memory).await?,
        #[cfg(feature = "peers")]
        System::Ttrpc => {
            steps
                .peer::<ttrpc_peer::Ttrpc>(t, server_pid, p, memory)
                .await?
        }
        #[cfg(not(feature = "peers"))]
        System::Tonic | System::Ttrpc => bail!("built without the `peers` feature"),
    }
    Ok(())
}

/// The in-flight scenario's name (the naive raw pipeline's is `inflight16-64B-naive`).
const INFLIGHT: &str = "inflight16-64B";

/// Where the processes run: `same-cpu` (both on CPU 0) and, with two CPUs or more, `split`
/// (server on CPU 0, client on CPU 1).
fn placements() -> Vec<(&'static str, usize, usize)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut v = vec![("same-cpu", 0, 0)];
    if cpus > 1 {
        v.push(("split", 0, 1));
    }
    v
}

fn run(quick: bool, peers: bool, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("peerwire-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity = dir.join("identity");
    peerwire_security::identity::provision(&identity, "bench", true)
        .context("provisioning the identities of the run")?;
    let p = Params::new(quick);
    // Before pinning: the placements depend on the CPUs this process may use.
    let placements = placements();
    // The crypto floor first, on one CPU, before any server runs.
    pin(0)?;
    let seal_rate = openssl_echo::seal_rate(std::time::Duration::from_millis(if quick {
        200
    } else {
        500
    }))?;
    eprintln!(
        "AES-128-GCM, 16 KiB records, one core: {:.2} GB/s",
        seal_rate / 1e9
    );
    let only = std::env::var("PEERWIRE_BENCH_ONLY").ok();
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| peers && cfg!(feature = "peers") || !s.is_peer())
        .filter(|s| *s != System::PeerwireC || c_client::program().is_some())
        // PEERWIRE_BENCH_ONLY="peerwire-tls peerwire-ws": these systems only (comparisons).
        .filter(|s| {
            only.as_ref()
                .is_none_or(|o| o.split(' ').any(|n| n == s.name()))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = vec![];
    for (placement, server_cpu, client_cpu) in placements {
        pin(client_cpu)?;
        for &system in &systems {
            let socket = dir.join(format!("{}-{placement}.sock", system.name()));
            let server = ServerProcess::spawn(system, &socket, &identity, server_cpu)?;
            let security = match system {
                System::PeerwireTls => pw::Security::mutual(&identity, &socket)?,
                System::PeerwireTlsToken => pw::Security::token(&identity, &socket)?,
                _ => pw::Security::Plain,
            };
            let target = Target {
                socket,
                identity: identity.clone(),
                security,
            };
            let mut steps = Steps {
                label: format!("{placement} {}", system.name()),
                figures: vec![],
            };
            let memory = placement == "same-cpu";
            rt.block_on(measure_system(
                system,
                &target,
                server.0.id(),
                &p,
                &mut steps,
                memory,
            ))?;
            drop(server);
            rows.extend(steps.figures.into_iter().map(|(scenario, f)| Row {
                system,
                scenario,
                placement,
                f,
            }));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    report::write(&rows, seal_rate, out)?;
    report::c_client_ratio(&rows);
    eprintln!("run took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `SYSTEM SOCKET IDENTITY CPU` of `serve` and `client`; pins this process to CPU.
fn process_args(args: &[String]) -> anyhow::Result<(System, PathBuf, PathBuf)> {
    let name = args.first().context("system")?;
    let system = System::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .with_context(|| format!("unknown system {name}"))?;
    let socket = PathBuf::from(args.get(1).context("socket path")?);
    let identity = PathBuf::from(args.get(2).context("identity directory")?);
    pin(args.get(3).context("CPU")?.parse().context("CPU number")?)?;
    Ok((system, socket, identity))
}

/// `client SYSTEM SOCKET IDENTITY CPU CALLS`: one connection, CALLS round trips of 64 B one
/// after the other, then the p50 printed. With `serve`, what `cargo xtask bench --callgrind`
/// runs under callgrind to count instructions per call (and what `perf`/`strace` can watch).
fn client(args: &[String]) -> anyhow::Result<()> {
    // `peerwire-fanout`: the fan-out scenario against a `peerwire` server (per-event counts).
    let fanout = args.first().is_some_and(|a| a == "peerwire-fanout");
    let mut args = args.to_vec();
    if fanout {
        args[0] = "peerwire".into();
    }
    let (system, socket, identity) = process_args(&args)?;
    let calls: usize = args.get(4).context("calls")?.parse().context("calls")?;
    let security = match system {
        System::PeerwireTls => pw::Security::mutual(&identity, &socket)?,
        _ => pw::Security::Plain,
    };
    let t = Target {
        socket,
        identity,
        security,
    };
    let p = Params {
        rtt: calls,
        rtt_warm: 0,
        fanout: calls,
        ..Params::new(true)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let f = rt.block_on(async {
        match system {
            // `client peerwire-fanout ...`: CALLS events fanned out to 8 subscribers, once.
            _ if fanout => pw::fanout(&t, &p).await,
            System::Raw => calls_on::<raw::Raw>(&t, &p).await,
            System::Tokio => calls_on::<tokio_framing::Tokio>(&t, &p).await,
            // With PEERWIRE_BENCH_IN_TASK set, the calls run in a spawned task rather than in
            // `block_on`'s future (tokio polls the driver once more, `epoll_wait(0)`, before it
            // polls a `block_on` future that a task woke).
            System::Peerwire | System::PeerwireTls
                if std::env::var_os("PEERWIRE_BENCH_IN_TASK").is_some() =>
            {
                tokio::spawn(async move { calls_on::<pw::Pw>(&t, &p).await })
                    .await
                    .context("calling task")?
            }
            System::Peerwire | System::PeerwireTls => calls_on::<pw::Pw>(&t, &p).await,
            System::OpensslEcho => calls_on::<openssl_echo::OpensslEcho>(&t, &p).await,
            System::PeerwireWs => calls_on::<ws::Ws>(&t, &p).await,
            System::PeerwireBlocking => blocking::rtt(&t, 64, &p),
            _ => bail!("no client mode for {}", system.name()),
        }
    })?;
    match f.msgs_per_s {
        Some(rate) => println!("{rate:.0} events/s"),
        None => println!("p50 {:.1} us", f.p50_us.unwrap_or(f64::NAN)),
    }
    Ok(())
}

async fn calls_on<C: Client>(t: &Target, p: &Params) -> anyhow::Result<Figures> {
    let c = C::connect(t).await?;
    // PEERWIRE_BENCH_CALL_BYTES: another message size than 64 B (bench/callgrind.sh's 1 MiB).
    let size = std::env::var("PEERWIRE_BENCH_CALL_BYTES").map_or(Ok(64), |s| s.parse())?;
    let f = measure::rtt(&c, size, p).await?;
    c.close().await;
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    raise_nofile()?;
    match args.first().map(String::as_str) {
        Some("serve") => {
            let (system, socket, identity) = process_args(&args[1..])?;
            serve(system, &socket, &identity)
        }
        Some("init") => {
            let dir = PathBuf::from(args.get(1).context("identity directory")?);
            peerwire_security::identity::provision(&dir, "bench", true)
                .context("provisioning the identities")?;
            Ok(())
        }
        Some("client") => client(&args[1..]),
        Some("run") => {
            let flag = |f: &str| args.iter().any(|a| a == f);
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
            run(flag("--quick"), !flag("--no-peers"), &out)
        }
        _ => bail!(
            "usage: peerwire-bench run [--quick] [--no-peers] [--out DIR] | init DIR | \
             serve SYSTEM SOCKET IDENTITY CPU | client SYSTEM SOCKET IDENTITY CPU CALLS"
        ),
    }
}
