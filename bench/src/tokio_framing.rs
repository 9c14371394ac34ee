//! Bare tokio framing, the "tokio + tokio-util LengthDelimitedCodec" reference: the
//! same 4-byte length prefix as `raw`, framed by `LengthDelimitedCodec` over tokio's
//! `UnixStream`, a task per connection on a current-thread runtime. The server answers every
//! complete frame of a read and writes the answers at once, as a careful tokio server would.
//! No security, no protocol: what an async Rust stack costs before peerwire adds anything.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::measure::{Client, Target, check_echo};

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(8 << 20)
        .new_codec()
}

pub(crate) fn serve(path: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        crate::ready()?;
        loop {
            let (stream, _) = listener.accept().await.context("accept")?;
            tokio::spawn(serve_conn(stream));
        }
    })
}

async fn serve_conn(mut s: UnixStream) -> std::io::Result<()> {
    let mut codec = codec();
    let (mut rbuf, mut wbuf) = (BytesMut::with_capacity(64 * 1024), BytesMut::new());
    loop {
        while let Some(frame) = codec.decode(&mut rbuf)? {
            codec.encode(frame.freeze(), &mut wbuf)?;
        }
        if !wbuf.is_empty() {
            s.write_all(&wbuf).await?;
            wbuf.clear();
        }
        if s.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
    }
}

/// A client connection: the stream, its codec and its read buffer.
pub(crate) struct Tokio(Mutex<(UnixStream, LengthDelimitedCodec, BytesMut, BytesMut)>);

impl Tokio {
    async fn send(
        conn: &mut (UnixStream, LengthDelimitedCodec, BytesMut, BytesMut),
        msg: &Bytes,
    ) -> anyhow::Result<()> {
        let (s, codec, _, wbuf) = conn;
        codec.encode(msg.clone(), wbuf)?;
        s.write_all(wbuf).await?;
        wbuf.clear();
        Ok(())
    }

    async fn receive(
        conn: &mut (UnixStream, LengthDelimitedCodec, BytesMut, BytesMut),
    ) -> anyhow::Result<usize> {
        let (s, codec, rbuf, _) = conn;
        loop {
            if let Some(frame) = codec.decode(rbuf)? {
                return Ok(frame.len());
            }
            anyhow::ensure!(
                s.read_buf(rbuf).await? > 0,
                "the server closed the connection"
            );
        }
    }
}

impl Client for Tokio {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let s = UnixStream::connect(&target.socket)
            .await
            .with_context(|| format!("connecting to {}", target.socket.display()))?;
        Ok(Self(Mutex::new((
            s,
            codec(),
            BytesMut::new(),
            BytesMut::new(),
        ))))
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        let mut conn = self.0.lock().await;
        Self::send(&mut conn, msg).await?;
        check_echo(msg.len(), Self::receive(&mut conn).await?)
    }

    /// Pipelined in one task: 16 requests written, then one more written per answer read.
    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        let mut conn = self.0.lock().await;
        let t = Instant::now();
        let mut sent = 0;
        while sent < n.min(16) {
            Self::send(&mut conn, msg).await?;
            sent += 1;
        }
        for _ in 0..n {
            check_echo(msg.len(), Self::receive(&mut conn).await?)?;
            if sent < n {
                Self::send(&mut conn, msg).await?;
                sent += 1;
            }
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }
}
