//! `greeter-client SOCKET IDENTITY_DIR NAME`: says hello over mutual TLS.

use anyhow::Context;
use peerwire_client::{Client, ClientTls, TlsMode};
use peerwire_guide::greeter::{GreeterClient, HelloRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(socket), Some(identity), Some(name)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: greeter-client SOCKET IDENTITY_DIR NAME");
    };
    let tls = ClientTls::from_dir(identity.as_ref(), TlsMode::Mutual)?
        .context("mutual TLS needs an identity")?;
    let builder = Client::builder(socket).tls(tls);
    let client = GreeterClient::announce(builder).connect().await?;
    let greeter = GreeterClient::new(client)?;
    let mut greeted = greeter.subscribe_greeted().await?;
    let reply = greeter
        .say_hello(&HelloRequest {
            name: name.to_string_lossy().into_owned(),
        })
        .await?;
    println!("{}", reply.message);
    let pushed = greeted.next().await.context("the server went away")??;
    println!(
        "greeted {} (greeting #{})",
        pushed.event.name, pushed.event.count
    );
    greeter.client().close().await;
    Ok(())
}
