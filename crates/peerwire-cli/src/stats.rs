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
    for (name, value) in peerwire_server::Stats::from_wire(&s).named() {
        say!("{name:<20} {value}");
    }
    Ok(())
}
