//! `greeter-server SOCKET IDENTITY_DIR`: serves the greeter over mutual TLS.

use std::sync::Arc;

use anyhow::Context;
use peerwire_guide::{MyGreeter, greeter};
use peerwire_server::{Server, ServerTls, TlsMode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(socket), Some(identity)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: greeter-server SOCKET IDENTITY_DIR");
    };
    let tls = ServerTls::from_dir(identity.as_ref(), TlsMode::Mutual)?
        .context("mutual TLS needs an identity")?;
    let mut builder = Server::builder(socket);
    builder = builder.tls(tls);
    builder = greeter::add_greeter(builder, Arc::new(MyGreeter::default()));
    let server = builder.bind()?;
    println!("listening on {}", server.path().display());
    server.run().await?;
    Ok(())
}
