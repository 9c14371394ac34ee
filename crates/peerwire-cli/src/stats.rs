//! `peerwire stats`: a running server's counters, asked over its own socket.

use std::path::Path;

use peerwire_client::Client;

use crate::args::TlsArgs;

pub(crate) async fn run(socket: &Path, tls: &TlsArgs) -> anyhow::Result<()> {
    let mut builder = Client::builder(socket).name("peerwire-stats");
    if let Some(client_tls) = tls.client()? {
        builder = builder.tls(client_tls);
    }
    let client = builder.connect().await?;
    let s: peerwire_proto::v1::ServerStats = client.call(peerwire_proto::METHOD_STATS, &()).await?;
    client.close().await;
    for (name, value) in [
        ("connections", s.connections),
        ("accepted", s.accepted),
        ("denied", s.denied),
        ("limit_refusals", s.limit_refusals),
        ("limit_hits", s.limit_hits),
        ("tls_failures", s.tls_failures),
        ("token_failures", s.token_failures),
        ("handshake_failures", s.handshake_failures),
        ("sessions", s.sessions),
        ("open", s.open),
        ("requests", s.requests),
        ("deadline_exceeded", s.deadline_exceeded),
        ("handler_panics", s.handler_panics),
        ("protocol_errors", s.protocol_errors),
        ("events_sent", s.events_sent),
        ("slow_consumers", s.slow_consumers),
        ("events_dropped", s.events_dropped),
    ] {
        say!("{name:<20} {value}");
    }
    Ok(())
}
