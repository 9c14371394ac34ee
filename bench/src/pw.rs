//! peerwire: the server (`bench.Echo`, and `bench.Fanout` which pushes events on
//! `bench.tick`) in its three security set-ups, and the client side of every scenario.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use peerwire_client::{Client as PwClient, ClientTls, TlsMode};
use peerwire_security::token::{Binding, DeviceSecret, Minter};
use peerwire_server::{AccessPolicy, Limits, Server, ServerHandle, ServerTls, Status, Verifier};

use crate::measure::{self, Client, Figures, Params, Target, check_echo};

const TOPIC: &str = "bench.tick";

/// How a peerwire connection is secured.
#[derive(Clone)]
pub(crate) enum Security {
    Plain,
    /// Mutual TLS 1.3 with the identities of the run.
    MutualTls,
    /// TLS 1.3 authenticating the server only, and a fresh one-time session token per
    /// connection, minted with the device secret of the run (`server/token.key`).
    ServerTlsToken(Arc<Minter>, Binding),
}

impl Security {
    /// The token set-up for the server at `socket`.
    pub(crate) fn token(identity: &Path, socket: &Path) -> anyhow::Result<Self> {
        let secret = DeviceSecret::read(&identity.join("server/token.key"))
            .context("reading the device secret")?;
        let binding = Binding {
            uid: nix::unistd::getuid().as_raw(),
            exe: None,
            socket: std::fs::canonicalize(socket).context("canonical socket path")?,
        };
        Ok(Self::ServerTlsToken(
            Arc::new(Minter::new(&secret)?),
            binding,
        ))
    }
}

/// Which server to run (`serve peerwire|peerwire-tls|peerwire-tls-token`).
#[derive(Clone, Copy)]
pub(crate) enum ServerMode {
    Plain,
    /// Plain, with an executable rule (this benchmark's own binary, which is also the client):
    /// every chunk's sender is checked.
    PlainExe,
    MutualTls,
    ServerTlsToken,
}

pub(crate) fn serve(path: &Path, identity: &Path, mode: ServerMode) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut b = Server::builder(path);
        let mut policy = AccessPolicy::own_uid();
        if matches!(mode, ServerMode::PlainExe) {
            policy.allow_exe(std::env::current_exe()?)?;
        }
        b.access_policy(policy);
        let mut limits = Limits::default();
        // 1,000 idle connections and 200 measured set-ups from one uid; the fan-out's events
        // queued rather than the subscriber disconnected (the client counts what arrives).
        limits.max_connections = 4096;
        limits.max_connections_per_uid = 4096;
        limits.outbound_queue = 1 << 20;
        limits.outbound_queue_bytes = 256 << 20;
        b.limits(limits);
        // The bytes API, like the raw socket's and ttrpc's echo: no protobuf message around the
        // payload, which peerwire then neither copies in nor out.
        b.raw_method(
            "bench.Echo",
            |_ctx, v: Bytes| async move { Ok::<_, Status>(v) },
        );
        b.method("bench.Fanout", |ctx, count: u64| async move {
            let server = ctx.connection().server().clone();
            let subscribers = broadcast(&server, 1)?;
            tokio::spawn(async move { broadcast_all(&server, count.saturating_sub(1)).await });
            Ok::<_, Status>(subscribers as u64)
        });
        match mode {
            ServerMode::Plain | ServerMode::PlainExe => {}
            ServerMode::MutualTls => {
                b.tls(ServerTls::from_dir(identity, TlsMode::Mutual)?.context("no TLS")?);
            }
            ServerMode::ServerTlsToken => {
                b.tls(ServerTls::from_dir(identity, TlsMode::ServerAuth)?.context("no TLS")?);
                let secret = DeviceSecret::read(&identity.join("server/token.key"))
                    .context("reading the device secret")?;
                let store = path.with_extension("tokens");
                b.require_tokens(Verifier::new(&secret, &store, 1 << 16)?);
            }
        }
        let server = b.bind()?;
        crate::ready()?;
        server.run().await?;
        Ok(())
    })
}

fn broadcast(server: &ServerHandle, n: u64) -> Result<usize, Status> {
    let event = Bytes::from_static(&[7u8; 64]);
    // One burst: written together to each subscriber.
    server.batch(|| {
        let mut queued = 0;
        for _ in 0..n {
            queued = server
                .broadcast(TOPIC, &event)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(queued)
    })
}

/// Pushes `n` events, 64 at a time, letting the connections' writers run in between (as an
/// event source in a real server would).
async fn broadcast_all(server: &ServerHandle, mut n: u64) -> Result<(), Status> {
    while n > 0 {
        let k = n.min(64);
        broadcast(server, k)?;
        n -= k;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// A peerwire client connection.
#[derive(Clone)]
pub(crate) struct Pw(PwClient);

async fn connect(t: &Target, event_buffer: usize) -> anyhow::Result<PwClient> {
    let mut b = PwClient::builder(&t.socket)
        .namespace("bench", &[1])
        .event_buffer(event_buffer);
    match &t.security {
        Security::Plain => {}
        Security::MutualTls => {
            b = b.tls(ClientTls::from_dir(&t.identity, TlsMode::Mutual)?.context("no TLS")?);
        }
        Security::ServerTlsToken(minter, binding) => {
            b = b
                .tls(ClientTls::from_dir(&t.identity, TlsMode::ServerAuth)?.context("no TLS")?)
                .token(minter.mint(binding, Duration::from_secs(60))?);
        }
    }
    b.connect()
        .await
        .with_context(|| format!("peerwire connect to {}", t.socket.display()))
}

impl Client for Pw {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        connect(target, 16).await.map(Pw)
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        let back = self
            .0
            .raw_call("bench.Echo", msg.clone(), Duration::from_secs(30))
            .await?;
        check_echo(msg.len(), back.len())
    }

    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        measure::inflight_tasks(self, msg, n).await
    }

    async fn close(self) {
        self.0.close().await;
    }
}

/// Fan-out: 8 subscribed connections (each buffering every event, so that none is dropped on
/// the client side), one more connection calling `bench.Fanout`.
pub(crate) async fn fanout(t: &Target, p: &Params) -> anyhow::Result<Figures> {
    measure::fanout_runs(p, || fanout_once(t, p.fanout)).await
}

async fn fanout_once(t: &Target, count: usize) -> anyhow::Result<(Instant, Vec<(usize, Instant)>)> {
    let mut subscribers = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..8 {
        let c = connect(t, count + 16).await?;
        streams.push(c.subscribe(TOPIC).await?);
        subscribers.push(c);
    }
    let trigger = connect(t, 16).await?;
    let local = tokio::task::LocalSet::new();
    let (start, received) = local
        .run_until(async {
            let readers: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    tokio::task::spawn_local(async move {
                        let (mut got, mut last) = (0, Instant::now());
                        while got < count {
                            match tokio::time::timeout(Duration::from_secs(2), s.next()).await {
                                Ok(Some(_)) => {
                                    got += 1;
                                    last = Instant::now();
                                }
                                _ => break,
                            }
                        }
                        (got, last)
                    })
                })
                .collect();
            let start = Instant::now();
            let queued: u64 = trigger.call("bench.Fanout", &(count as u64)).await?;
            anyhow::ensure!(queued >= 8, "fan-out reached {queued} subscribers, not 8");
            if queued > 8 {
                eprintln!(
                    "warning: fan-out also reached {} closed subscribers",
                    queued - 8
                );
            }
            let mut received = Vec::new();
            for r in readers {
                received.push(r.await.context("subscriber task")?);
            }
            Ok((start, received))
        })
        .await?;
    trigger.close().await;
    for c in subscribers {
        c.close().await;
    }
    // Let the server forget the closed subscribers before the next run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok((start, received))
}
