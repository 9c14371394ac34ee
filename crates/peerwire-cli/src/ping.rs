//! `peerwire ping`: round trips to a server's echo service (`proto/echo/v1/echo.proto`, through
//! its generated client), with latency percentiles.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerwire_client::Client;
use peerwire_examples::echo::{EchoClient, echo_names};

use crate::args::{PingArgs, resolve_uid};

pub(crate) async fn run(args: PingArgs) -> anyhow::Result<()> {
    let PingArgs {
        socket,
        count,
        size,
        message,
        wait_tick,
        expect_server_uid,
        token_stdin,
        tls,
    } = args;
    let mut builder = EchoClient::announce(Client::builder(&socket).name("peerwire-ping"));
    for u in &expect_server_uid {
        builder = builder.expect_server_uid(resolve_uid(u)?);
    }
    if let Some(client_tls) = tls.client()? {
        builder = builder.tls(client_tls);
    }
    if token_stdin {
        let mut token = zeroize::Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 4096), &mut token)
            .context("reading the session token from stdin")?;
        // The token is the last non-empty line (what `peerwire token mint` prints last).
        let last = token
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        builder = builder.token(zeroize::Zeroizing::new(last).as_str());
    } else if std::env::var_os(peerwire_security::launch::TOKEN_FD_ENV).is_some() {
        builder = builder.token_from_launcher()?;
    }
    let client = EchoClient::new(builder.connect().await?)?;
    let mut ticks = match wait_tick {
        true => Some(client.subscribe_tick().await?),
        false => None,
    };
    let payload = match &message {
        Some(m) => m.as_bytes().to_vec(),
        None => vec![0xa5u8; size],
    };
    let size = payload.len();
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        let start = Instant::now();
        let back = client.echo(&payload).await?;
        let rtt = start.elapsed();
        if back != payload {
            bail!("echo {i} came back different");
        }
        samples.push(rtt);
    }
    if let Some(ticks) = &mut ticks {
        let tick = tokio::time::timeout(Duration::from_secs(10), ticks.next())
            .await
            .with_context(|| format!("no {} within 10 s", echo_names::TICK))?
            .context("the connection closed")??;
        // The content is not printed: a tracer of this process then sees it only on the socket.
        say!(
            "event {} #{} ({} bytes)",
            ticks.topic(),
            tick.seq,
            tick.event.len()
        );
    }
    client.client().close().await;
    samples.sort();
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    say!(
        "{count} round trips of {size} B to {}: min {:?}, p50 {:?}, p99 {:?}, max {:?}",
        socket.display(),
        pick(0.0),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    Ok(())
}
