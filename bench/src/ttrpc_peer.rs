//! The ttrpc peer: containerd's ttrpc-rust (async) over a Unix socket. The handler is a
//! hand-written `MethodHandler` that echoes the request's payload as the response's (the
//! generated code would decode and re-encode a message; here the payload is the message).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use ttrpc::asynchronous::{MethodHandler, Service, TtrpcContext};

use crate::measure::{self, Client, Target, check_echo};

const SERVICE: &str = "bench.Bench";
const METHOD: &str = "Echo";

struct Echo;

#[async_trait::async_trait]
impl MethodHandler for Echo {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let mut res = ttrpc::Response::new();
        res.payload = req.payload;
        Ok(res)
    }
}

pub(crate) fn serve(path: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(METHOD.into(), Box::new(Echo));
        let service = Service {
            methods,
            streams: HashMap::new(),
        };
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .context("ttrpc bind")?
            .register_service(HashMap::from([(SERVICE.to_string(), service)]));
        server.start().await.context("ttrpc start")?;
        crate::ready()?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A ttrpc client; clones share the connection.
#[derive(Clone)]
pub(crate) struct Ttrpc(ttrpc::asynchronous::Client);

impl Client for Ttrpc {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let c =
            ttrpc::asynchronous::Client::connect(&format!("unix://{}", target.socket.display()))
                .context("ttrpc connect")?;
        Ok(Self(c))
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        let mut req = ttrpc::Request::new();
        req.service = SERVICE.into();
        req.method = METHOD.into();
        req.payload = msg.to_vec();
        let back = self.0.request(req).await.context("ttrpc echo")?;
        check_echo(msg.len(), back.payload.len())
    }

    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        measure::inflight_tasks(self, msg, n).await
    }
}
