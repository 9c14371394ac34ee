//! The gRPC peer: tonic over a Unix socket, unary `bench.Bench/Echo`. Message size limits are
//! raised to 4 MiB and HTTP/2 flow-control windows to 4 MiB on both sides (the 64 KiB defaults
//! would measure window updates rather than tonic on 1 MiB messages).

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};

use crate::measure::{self, Client, Target, check_echo};

mod proto {
    tonic::include_proto!("bench");
}

use proto::Payload;
use proto::bench_client::BenchClient;
use proto::bench_server::{Bench, BenchServer};

const MAX_MESSAGE: usize = 4 << 20;
const WINDOW: u32 = 4 << 20;

struct Echo;

#[tonic::async_trait]
impl Bench for Echo {
    async fn echo(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

pub(crate) fn serve(path: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        crate::ready()?;
        tonic::transport::Server::builder()
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .add_service(
                BenchServer::new(Echo)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await?;
        Ok(())
    })
}

/// A tonic client (a channel with one HTTP/2 connection); clones share the connection.
#[derive(Clone)]
pub(crate) struct Grpc(BenchClient<Channel>);

impl Client for Grpc {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("unix://{}", target.socket.display()))?
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .connect()
            .await
            .context("tonic connect")?;
        Ok(Self(
            BenchClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        ))
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        // Cloning a tonic client is the documented way to call it from `&self` (cheap).
        let back = self
            .0
            .clone()
            .echo(Payload { data: msg.clone() })
            .await
            .context("tonic echo")?;
        check_echo(msg.len(), back.into_inner().data.len())
    }

    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        measure::inflight_tasks(self, msg, n).await
    }
}
