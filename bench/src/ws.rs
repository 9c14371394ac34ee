//! `peerwire-ws`: the WebSocket transport (R16) measured like the Unix socket rows, with a
//! browser-free client: tokio-tungstenite over tokio-openssl (TLS 1.3, the device's server
//! certificate pinned), a fresh session token per connection in `Sec-WebSocket-Protocol`, one
//! envelope frame per binary message. The server is `bench.Echo` of `pw.rs` with a WebSocket
//! endpoint on a loopback port beside its Unix socket; it writes that port's address next to the
//! socket (`<socket>.wsaddr`) before it says ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use peerwire_proto::v1::{Frame, Hello, NamespaceVersions, Request, frame::Kind};
use peerwire_security::tls::{ClientTls, ServerTls, TlsMode};
use peerwire_security::token::{Binding, DeviceSecret, Minter, Verifier};
use peerwire_server::WsEndpoint;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::measure::{Client, Target, check_echo};

const ORIGIN: &str = "https://127.0.0.1";

fn addr_file(socket: &Path) -> PathBuf {
    socket.with_extension("wsaddr")
}

/// The server: `pw.rs`'s plain server plus the WebSocket endpoint.
pub(crate) fn serve(socket: &Path, identity: &Path) -> anyhow::Result<()> {
    crate::pw::serve_with(
        socket,
        identity,
        crate::pw::ServerMode::Plain,
        |b| {
            let tls = ServerTls::from_dir(identity, TlsMode::ServerAuth)?.context("no TLS")?;
            let secret = DeviceSecret::read(&identity.join("server/token.key"))?;
            let tokens = Verifier::new(&secret, &socket.with_extension("wstokens"), 1 << 16)?;
            let ep = WsEndpoint::new("127.0.0.1:0".parse()?, tls, tokens)?.allow_origin(ORIGIN)?;
            Ok(b.websocket(ep))
        },
        |server| {
            let addr = server.ws_addr().context("no WebSocket endpoint")?;
            std::fs::write(addr_file(socket), addr.to_string())?;
            Ok(())
        },
    )
}

/// TLS over the TCP stream read 64 KiB at a time (one `recv` per chunk, not two per record).
type Wss = WebSocketStream<SslStream<tokio::io::BufReader<TcpStream>>>;

/// One WebSocket session; calls take turns on it (the in-flight figure pipelines 16).
pub(crate) struct Ws {
    ws: tokio::sync::Mutex<(Wss, u64)>,
}

async fn send(ws: &mut Wss, frame: Frame) -> anyhow::Result<()> {
    ws.send(Message::Binary(frame.encode_to_vec().into()))
        .await?;
    Ok(())
}

/// The next envelope frame that is not a keepalive ping (answered).
async fn recv(ws: &mut Wss) -> anyhow::Result<Frame> {
    loop {
        match ws.next().await.context("closed")?? {
            Message::Binary(b) => {
                let frame = Frame::decode(b)?;
                if let Some(Kind::Ping(p)) = &frame.kind {
                    let pong = peerwire_proto::v1::Pong { nonce: p.nonce };
                    send(ws, Frame::new(Kind::Pong(pong))).await?;
                    continue;
                }
                return Ok(frame);
            }
            Message::Close(_) => bail!("closed by the server"),
            _ => {}
        }
    }
}

fn echo_request(id: u64, msg: &Bytes) -> Frame {
    Frame::new(Kind::Request(Request {
        id,
        method: "bench.Echo".into(),
        payload: msg.clone(),
        deadline_ms: 0,
    }))
}

/// The echoed length of a response.
fn echoed(frame: Frame) -> anyhow::Result<usize> {
    match frame.kind {
        Some(Kind::Response(r)) if r.code == 0 => Ok(r.payload.len()),
        other => bail!("not an answer: {other:?}"),
    }
}

impl Client for Ws {
    async fn connect(t: &Target) -> anyhow::Result<Self> {
        let addr: SocketAddr = std::fs::read_to_string(addr_file(&t.socket))?.parse()?;
        let secret = DeviceSecret::read(&t.identity.join("server/token.key"))?;
        let binding = Binding {
            uid: nix::unistd::getuid().as_raw(),
            exe: None,
            socket: peerwire_server::token_endpoint(addr),
        };
        let token = Minter::new(&secret)?.mint(&binding, Duration::from_secs(60))?;
        let tls = ClientTls::from_dir(&t.identity, TlsMode::ServerAuth)?.context("no TLS")?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut s = SslStream::new(
            tls.ssl()?,
            tokio::io::BufReader::with_capacity(64 * 1024, tcp),
        )?;
        std::pin::Pin::new(&mut s).connect().await?;
        let mut req = format!("wss://{addr}/peerwire").into_client_request()?;
        req.headers_mut().insert("Origin", ORIGIN.parse()?);
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("peerwire.v1, peerwire.token.{token}").parse()?,
        );
        // One TLS record per read (tungstenite zero-fills its read room, 128 KiB by default).
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, s, Some(config)).await?;
        let hello = Hello {
            protocol_versions: vec![1],
            client_name: "bench-ws".into(),
            namespaces: vec![NamespaceVersions {
                namespace: "bench".into(),
                versions: vec![1],
                required: true,
            }],
            max_frame_size: 0,
            session_token: vec![],
        };
        send(&mut ws, Frame::new(Kind::Hello(hello))).await?;
        match recv(&mut ws).await?.kind {
            Some(Kind::Welcome(_)) => {}
            other => bail!("no Welcome: {other:?}"),
        }
        Ok(Self {
            ws: tokio::sync::Mutex::new((ws, 1)),
        })
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        let mut guard = self.ws.lock().await;
        let (ws, id) = &mut *guard;
        *id += 1;
        send(ws, echo_request(*id, msg)).await?;
        check_echo(msg.len(), echoed(recv(ws).await?)?)
    }

    /// 16 requests, then, for each batch of answers already in (one awaited, the others as they
    /// are), as many new requests, fed together with one flush (one TLS write): what a browser
    /// sends in one turn of its event loop.
    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        let mut guard = self.ws.lock().await;
        let (ws, id) = &mut *guard;
        let t = Instant::now();
        let (mut sent, mut got, mut due) = (0, 0, n.min(16));
        while got < n {
            for _ in 0..due {
                *id += 1;
                ws.feed(Message::Binary(
                    echo_request(*id, msg).encode_to_vec().into(),
                ))
                .await?;
            }
            if due > 0 {
                ws.flush().await?;
                sent += due;
            }
            check_echo(msg.len(), echoed(recv(ws).await?)?)?;
            let mut answered = 1;
            while got + answered < n {
                match recv(ws).now_or_never() {
                    Some(frame) => check_echo(msg.len(), echoed(frame?)?)?,
                    None => break,
                }
                answered += 1;
            }
            got += answered;
            due = answered.min(n - sent);
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }

    async fn close(self) {
        let (mut ws, _) = self.ws.into_inner();
        let _ = ws.close(None).await;
    }
}
