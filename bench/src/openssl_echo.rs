//! `openssl-echo`: the floor for peerwire-tls (issue 21). A bare blocking OpenSSL echo over the
//! Unix socket: std `UnixStream`, one thread per connection, the `openssl` crate's blocking
//! `SslStream`, no runtime, no protocol. The TLS contexts are peerwire's own (`ServerTls` and
//! `ClientTls` from the identities of the run, mutual TLS 1.3, AES-128-GCM first, the pinning
//! verify callback), built once per server and once per client, so the suite, the certificates
//! and the handshake's work are peerwire-tls's. A message is a 4-byte big-endian length and the
//! payload, sealed in one `SSL_write`; the server reads a whole message, then answers it with
//! one `SSL_write`. Like peerwire's TLS transport, the socket is read 64 KiB at a time (OpenSSL
//! takes its records from that buffer) and the records of a handshake flight or of one message
//! leave in one write ([`Buffered`]), so the floor makes no more system calls than peerwire.
//!
//! Also here: the one-core AES-128-GCM sealing rate of 16 KiB records through OpenSSL's EVP
//! interface ([`seal_rate`]), which bounds TLS throughput (`tls-bound`).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use openssl::ssl::SslStream;
use peerwire_security::identity::{Identity, Role};
use peerwire_security::tls::{ClientTls, ServerTls, TlsMode};

use crate::measure::{self, Client, Target, check_echo};

pub(crate) fn serve(path: &Path, identity: &Path) -> anyhow::Result<()> {
    let tls = Arc::new(ServerTls::new(
        &Identity::load(identity, Role::Server)?,
        TlsMode::Mutual,
    )?);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    crate::ready()?;
    for conn in listener.incoming() {
        let stream = conn.context("accept")?;
        let tls = tls.clone();
        std::thread::spawn(move || serve_conn(&tls, stream));
    }
    Ok(())
}

/// The socket under OpenSSL: reads fill a 64 KiB buffer, writes gather until a flush (OpenSSL
/// flushes at the end of each handshake flight; after `SSL_write` the echo flushes itself).
#[derive(Debug)]
pub(crate) struct Buffered {
    stream: UnixStream,
    /// 64 KiB, allocated once; `inbuf[at..end]` is read and not yet taken.
    inbuf: Vec<u8>,
    at: usize,
    end: usize,
    out: Vec<u8>,
}

impl Buffered {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            inbuf: vec![0; 64 * 1024],
            at: 0,
            end: 0,
            out: Vec::new(),
        }
    }
}

impl Read for Buffered {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.end {
            self.end = self.stream.read(&mut self.inbuf)?;
            self.at = 0;
        }
        let n = buf.len().min(self.end - self.at);
        buf[..n].copy_from_slice(&self.inbuf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }
}

fn serve_conn(tls: &ServerTls, stream: UnixStream) -> anyhow::Result<()> {
    let mut s = tls
        .ssl()?
        .accept(Buffered::new(stream))
        .map_err(|e| anyhow::anyhow!("TLS accept: {e}"))?;
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; 4];
        if s.read_exact(&mut head).is_err() {
            return Ok(());
        }
        let len = u32::from_be_bytes(head) as usize;
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(4 + len, 0);
        s.read_exact(&mut buf[4..])?;
        s.write_all(&buf)?;
        s.flush()?;
    }
}

thread_local! {
    /// The client's context, built once per client process (and identity directory).
    static CLIENT_TLS: RefCell<Option<(std::path::PathBuf, Arc<ClientTls>)>> =
        const { RefCell::new(None) };
}

fn client_tls(identity: &Path) -> anyhow::Result<Arc<ClientTls>> {
    CLIENT_TLS.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some((dir, tls)) = &*cell
            && dir == identity
        {
            return Ok(tls.clone());
        }
        let tls = Arc::new(ClientTls::mutual(&Identity::load(identity, Role::Client)?)?);
        *cell = Some((identity.to_path_buf(), tls.clone()));
        Ok(tls)
    })
}

/// A client connection: the TLS stream and a reused message buffer.
pub(crate) struct OpensslEcho {
    stream: RefCell<SslStream<Buffered>>,
    buf: RefCell<Vec<u8>>,
}

impl OpensslEcho {
    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        buf.extend_from_slice(msg);
        let mut s = self.stream.borrow_mut();
        s.write_all(&buf)?;
        s.flush()
    }

    fn receive(&self) -> std::io::Result<usize> {
        let mut s = self.stream.borrow_mut();
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        let mut buf = self.buf.borrow_mut();
        buf.resize(u32::from_be_bytes(head) as usize, 0);
        s.read_exact(&mut buf)?;
        Ok(buf.len())
    }
}

impl Client for OpensslEcho {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let tls = client_tls(&target.identity)?;
        let socket = UnixStream::connect(&target.socket)
            .with_context(|| format!("connecting to {}", target.socket.display()))?;
        let stream = tls
            .ssl()?
            .connect(Buffered::new(socket))
            .map_err(|e| anyhow::anyhow!("TLS connect: {e}"))?;
        Ok(Self {
            stream: RefCell::new(stream),
            buf: RefCell::new(Vec::new()),
        })
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        self.send(msg).context("openssl-echo send")?;
        check_echo(msg.len(), self.receive().context("openssl-echo receive")?)
    }

    /// Pipelined: 16 requests written, then one more written per answer read.
    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        measure::pipelined(
            n,
            || self.send(msg),
            || check_echo(msg.len(), self.receive()?),
        )
    }
}

/// Bytes per second one core seals with AES-128-GCM in 16 KiB records through EVP, as a TLS 1.3
/// record layer does it: one cipher context, a fresh nonce, 5 bytes of additional data and a
/// 16-byte tag per record. Median of 3 runs of `duration` each.
pub(crate) fn seal_rate(duration: Duration) -> anyhow::Result<f64> {
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::CipherCtx;
    const RECORD: usize = 16 * 1024;
    let key = [0x42u8; 16];
    let mut iv = [0u8; 12];
    let plain = vec![7u8; RECORD];
    let mut sealed = vec![0u8; RECORD + 16];
    let mut tag = [0u8; 16];
    let mut ctx = CipherCtx::new()?;
    ctx.encrypt_init(Some(Cipher::aes_128_gcm()), Some(&key), None)?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut records = 0u64;
        while t.elapsed() < duration {
            for _ in 0..64 {
                iv[4..].copy_from_slice(&records.to_be_bytes());
                ctx.encrypt_init(None, None, Some(&iv))?;
                ctx.cipher_update(&[0x17, 0x03, 0x03, 0x40, 0x11], None)?;
                let n = ctx.cipher_update(&plain, Some(&mut sealed))?;
                ctx.cipher_final(&mut sealed[n..])?;
                ctx.tag(&mut tag)?;
                records += 1;
            }
        }
        runs.push((records as usize * RECORD) as f64 / t.elapsed().as_secs_f64());
    }
    crate::measure::median(runs).context("no run")
}
