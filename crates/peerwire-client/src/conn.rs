//! One connection: connect, handshake, reader task, pending calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::handshake::{ClientHandshake, Session};
use peerwire_proto::v1::{Cancel, Frame, Hello, Pong, Response, frame::Kind};
use peerwire_proto::{HANDSHAKE_MAX_FRAME_SIZE, Status};
use peerwire_security::cred::PeerCredentials;
use peerwire_security::exe::{Executable, peer_executable};
use peerwire_security::tls::TlsError;
use peerwire_transport::plain::PlainWriter;
use peerwire_transport::stream::{self, FrameReader, Liveness};
use peerwire_transport::{FrameSink, SinkError};
use prost::Message;
use tokio::io::AsyncRead;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{CallError, Config, ConnectError, Inner, lock};

/// A connection's outbound bounds: `outbound_queue` frames, or as many 4 KiB frames' bytes.
fn sink_bounds(config: &Config) -> (usize, usize) {
    let frames = config.outbound_queue;
    (frames.saturating_mul(4096), frames)
}

/// Records the first bytes read from the raw socket, so that a server that refused us in
/// plain text (access policy `Reject`, sent before TLS) can be understood after TLS fails.
/// It reads ahead in chunks (OpenSSL first asks for a 5-byte record header only), so the whole
/// `Reject` is recorded by the time OpenSSL gives up.
struct Tap<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
    ahead: Vec<u8>,
    pos: usize,
    /// Set once TLS is up: from then on reads go straight through.
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl<S> Tap<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            seen: Arc::default(),
            ahead: Vec::new(),
            pos: 0,
            done: Arc::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.ahead.len() && this.done.load(std::sync::atomic::Ordering::Relaxed) {
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.pos >= this.ahead.len() {
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                std::task::Poll::Ready(Ok(())) => {}
                other => return other,
            }
            this.ahead = chunk.filled().to_vec();
            this.pos = 0;
            let mut seen = lock(&this.seen);
            if seen.len() < usize::try_from(HANDSHAKE_MAX_FRAME_SIZE).unwrap_or(usize::MAX) {
                seen.extend_from_slice(&this.ahead);
            }
        }
        let rest = this.ahead.get(this.pos..).unwrap_or_default();
        let n = rest.len().min(buf.remaining());
        buf.put_slice(rest.get(..n).unwrap_or_default());
        this.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// In TLS 1.3 a server that refuses our certificate says so after our side of the handshake
/// completed: the alert, or the closed socket, shows on the first write or read.
fn server_ended_tls(e: std::io::Error) -> ConnectError {
    ConnectError::Tls(TlsError::Handshake(format!(
        "the server ended the TLS session ({e}); it does not accept this client's certificate"
    )))
}

/// A plain-text `Reject` the server sent instead of starting TLS (for example: access denied).
fn refused_before_tls(seen: &Mutex<Vec<u8>>) -> Option<ConnectError> {
    let mut buf = BytesMut::from(lock(seen).as_slice());
    let frame = FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE)
        .decode(&mut buf)
        .ok()??;
    match ClientHandshake::new(Hello::default()).receive(frame) {
        Err(e @ peerwire_proto::handshake::HandshakeError::Rejected { .. }) => {
            Some(ConnectError::Handshake(e))
        }
        _ => None,
    }
}

/// A pending call's answer: the response, or why it failed; `Err(None)`: its deadline passed.
pub(crate) type Answer = Result<Response, Option<CallError>>;
type Reply = oneshot::Sender<Answer>;

/// The calls waiting for an answer, with the time each gives up.
#[derive(Default)]
struct Pending {
    calls: HashMap<u64, (Reply, tokio::time::Instant)>,
    /// When the reader's deadline timer fires: at or before the earliest `due` (a call that
    /// ended early leaves it armed; firing then finds nothing and re-arms for the next).
    armed: Option<tokio::time::Instant>,
}

/// How frames leave: the calling task writes them itself ([`FrameSink`], sealed over TLS).
struct Outbound(Arc<FrameSink<PlainWriter>>);

impl Outbound {
    fn cork(&self) {
        self.0.cork();
    }

    fn uncork(&self) {
        self.0.uncork();
    }

    /// Sends without waiting (pongs, cancels): false if the outbound buffer is full or closed.
    fn try_send(&self, frame: Frame) -> bool {
        self.0.try_send(&frame).is_ok()
    }
}

pub(crate) struct Conn {
    pub(crate) session: Session,
    pub(crate) server: PeerCredentials,
    tx: Outbound,
    pending: Mutex<Pending>,
    /// The reader re-arms its deadline timer: a call due earlier than it is armed for came.
    rearm: tokio::sync::Notify,
    goodbye: Mutex<Option<Status>>,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    event_seq: Mutex<HashMap<String, u64>>,
}

/// Removes a pending call when the call ends; if no answer came (deadline passed or the
/// caller dropped the future), tells the server to cancel it.
pub(crate) struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if lock(&self.conn.pending).calls.remove(&self.id).is_some() && !self.conn.is_closed() {
            self.conn
                .tx
                .try_send(Frame::new(Kind::Cancel(Cancel { id: self.id })));
        }
    }
}

impl Conn {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Why the connection closed (once it has).
    pub(crate) fn close_reason(&self) -> String {
        lock(&self.close_reason)
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }

    pub(crate) fn goodbye(&self) -> Option<Status> {
        lock(&self.goodbye).clone()
    }

    /// The next `seq` of a client event on `topic` (per connection and topic, from 1).
    pub(crate) fn next_event_seq(&self, topic: &str) -> u64 {
        let mut seqs = lock(&self.event_seq);
        let seq = seqs.entry(topic.to_owned()).or_insert(0);
        *seq += 1;
        *seq
    }

    /// Waits until every frame sent so far is written, at most `timeout`.
    pub(crate) async fn flushed(&self, timeout: Duration) {
        self.tx.0.flushed(timeout).await;
    }

    /// Registers call `id`, which gives up at `due`. No timer per call: the reader keeps one,
    /// armed for the earliest deadline, and re-arms it only when a call is due earlier.
    pub(crate) fn register(
        &self,
        id: u64,
        reply: Reply,
        due: tokio::time::Instant,
    ) -> PendingGuard<'_> {
        let mut pending = lock(&self.pending);
        pending.calls.insert(id, (reply, due));
        if pending.armed.is_none_or(|armed| due < armed) {
            pending.armed = Some(due);
            self.rearm.notify_one();
        }
        PendingGuard { conn: self, id }
    }

    /// Fails the calls due by `now` (and asks the server to cancel them); returns when the
    /// deadline timer fires next.
    fn expire(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let mut pending = lock(&self.pending);
        let due: Vec<u64> = pending
            .calls
            .iter()
            .filter(|(_, (_, due))| *due <= now)
            .map(|(id, _)| *id)
            .collect();
        let expired: Vec<(u64, Reply)> = due
            .into_iter()
            .filter_map(|id| pending.calls.remove(&id).map(|(reply, _)| (id, reply)))
            .collect();
        pending.armed = pending.calls.values().map(|(_, due)| *due).min();
        let armed = pending.armed;
        drop(pending);
        for (id, reply) in expired {
            let _ = reply.send(Err(None));
            self.tx.try_send(Frame::new(Kind::Cancel(Cancel { id })));
        }
        armed
    }

    fn armed(&self) -> Option<tokio::time::Instant> {
        lock(&self.pending).armed
    }

    pub(crate) fn check_size(&self, frame: &Frame) -> Result<(), CallError> {
        let max = self.session.max_frame_size();
        let len = frame.encoded_len();
        if len > max as usize {
            return Err(CallError::TooLarge { len, max });
        }
        Ok(())
    }

    /// Queues a frame; waits while the outbound queue is full, but not past the connection's end.
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), CallError> {
        let closed = || CallError::Disconnected("connection closed".into());
        match self.tx.0.send(&frame).await {
            Ok(()) => Ok(()),
            Err(SinkError::Codec(CodecError::OutgoingTooLarge { len, max })) => {
                Err(CallError::TooLarge { len, max })
            }
            Err(_) => Err(closed()),
        }
    }

    /// Fails every pending call at once.
    fn fail_pending(&self, why: &str) {
        let pending: Vec<_> = lock(&self.pending).calls.drain().collect();
        for (_, (reply, _)) in pending {
            let _ = reply.send(Err(Some(CallError::Disconnected(why.to_owned()))));
        }
    }
}

pub(crate) async fn connect(
    config: &Config,
    inner: Weak<Inner>,
) -> Result<Arc<Conn>, ConnectError> {
    match tokio::time::timeout(config.connect_timeout, connect_inner(config, inner)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout(config.connect_timeout)),
    }
}

/// Connects to the socket at `path`. A full listen backlog (`EAGAIN`: the server is accepting
/// a burst, perhaps another user's flood of connections) is transient: retried, with a short
/// growing pause, until the caller's connect timeout ends it.
async fn connect_socket(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

async fn connect_inner(config: &Config, inner: Weak<Inner>) -> Result<Arc<Conn>, ConnectError> {
    let io_err = |source| ConnectError::Io {
        path: config.path.clone(),
        source,
    };
    let stream = connect_socket(&config.path).await.map_err(io_err)?;
    let server = PeerCredentials::of(&stream).map_err(io_err)?;
    verify_server(config, &stream, &server)?;
    let tls = config.tls.is_some();
    let (rd, mut wr) = match &config.tls {
        None => stream::plain(stream, None).map_err(io_err)?,
        Some(tls) => {
            let (rd, wr) = peerwire_transport::plain::split(stream).map_err(io_err)?;
            let tap = Tap::new(rd);
            let seen = tap.seen.clone();
            let done = tap.done.clone();
            match peerwire_transport::tls::connect(tls, tap, wr).await {
                Ok((session, wr)) => {
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                    let (bytes, frames) = sink_bounds(config);
                    stream::sealed(session, wr, bytes, frames)
                }
                Err(e) => return Err(refused_before_tls(&seen).unwrap_or(ConnectError::Tls(e))),
            }
        }
    };
    let mut handshake = ClientHandshake::new(Hello {
        protocol_versions: vec![],
        client_name: config.name.clone(),
        namespaces: config.namespaces.clone(),
        max_frame_size: config.max_frame_size,
        session_token: config
            .token
            .as_ref()
            .map(|t| t.0.to_vec())
            .unwrap_or_default(),
    });
    let mut reader = stream::reader(rd);
    // No other task runs for this connection yet: this one finishes the write.
    if let Err(e) = wr.send(&handshake.hello_frame(), Duration::MAX).await {
        if tls {
            return Err(server_ended_tls(e));
        }
        // The server may have refused us (access policy) and closed before our Hello arrived:
        // its Reject is still there to read, and says why.
        if let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(1), reader.next()).await
        {
            if let Err(e @ peerwire_proto::handshake::HandshakeError::Rejected { .. }) =
                handshake.receive(frame)
            {
                return Err(ConnectError::Handshake(e));
            }
        }
        return Err(io_err(e));
    }
    let answer = match reader.next().await {
        Some(Ok(frame)) => frame,
        // With TLS 1.3 a server that refuses our certificate says so after our side of the
        // handshake completed: the alert arrives on this first read.
        Some(Err(CodecError::Io(e))) if tls => return Err(server_ended_tls(e)),
        Some(Err(e)) => return Err(e.into()),
        None => return Err(ConnectError::Closed),
    };
    let session = handshake.receive(answer)?;
    for ns in session.namespaces.iter().filter(|a| a.code != 0) {
        tracing::warn!(namespace = %ns.namespace, "{}", ns.reason);
    }
    let (bytes, frames) = sink_bounds(config);
    let sink = wr.into_session(&mut reader, session.max_frame_size(), bytes, frames);
    let conn = Arc::new(Conn {
        session,
        server,
        tx: Outbound(sink.clone()),
        pending: Mutex::default(),
        rearm: tokio::sync::Notify::new(),
        goodbye: Mutex::new(None),
        closed: CancellationToken::new(),
        close_reason: Mutex::new(None),
        event_seq: Mutex::new(HashMap::new()),
    });
    let writer_conn = conn.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = sink.run() => tracing::debug!("writer ended"),
            _ = writer_conn.closed.cancelled() => {}
        }
        sink.close();
        writer_conn.close();
    });
    tokio::spawn(read_loop(reader, conn.clone(), inner));
    Ok(conn)
}

/// Checks who listens on the socket before a single byte is sent to it.
fn verify_server(
    config: &Config,
    stream: &UnixStream,
    server: &PeerCredentials,
) -> Result<(), ConnectError> {
    let untrusted = |reason: String| ConnectError::UntrustedServer {
        path: config.path.clone(),
        reason,
    };
    let mut expected: Vec<u32> = if config.server_uids.is_empty() {
        vec![nix::unistd::geteuid().as_raw(), 0]
    } else {
        config.server_uids.clone()
    };
    expected.dedup();
    if !expected.contains(&server.uid) {
        return Err(untrusted(format!(
            "the socket is served by uid {} ({server}), but the server is expected to run as uid {}",
            server.uid,
            expected
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    if let Some(path) = &config.server_exe {
        let want = Executable::from_path(path).map_err(|e| {
            untrusted(format!(
                "cannot resolve the expected server executable {}: {e}",
                path.display()
            ))
        })?;
        let got = peer_executable(stream).map_err(|e| untrusted(e.to_string()))?;
        if !got.same_file(&want) {
            return Err(untrusted(format!(
                "the server runs {}, expected {}",
                got.path.display(),
                want.path.display()
            )));
        }
    }
    Ok(())
}

async fn read_loop(mut reader: FrameReader, conn: Arc<Conn>, inner: Weak<Inner>) {
    // The server pings a quiet connection every keepalive interval; nothing at all for its
    // idle timeout means it is gone.
    let idle = Duration::from_millis(u64::from(conn.session.limits.idle_timeout_ms.max(1000)));
    let mut liveness = Liveness::new(idle / 4);
    let mut corked = false;
    // The calls' deadline timer (see `Conn::register`); far in the future while disarmed.
    let never = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let deadlines = tokio::time::sleep_until(never());
    // Registered once, not on every turn of the loop (the rearm wait is renewed when it fires).
    let closed = conn.closed.clone().cancelled_owned();
    let rearm = conn.rearm.notified();
    tokio::pin!(deadlines, closed, rearm);
    let why = loop {
        let frame = tokio::select! {
            biased;
            next = reader.next() => match next {
                None => break match conn.goodbye() {
                    Some(status) => format!("the server closed the session: {status}"),
                    None => "the server closed the connection".to_owned(),
                },
                Some(Err(e)) => break format!("bad frame from the server: {e}"),
                Some(Ok(frame)) => frame,
            },
            () = &mut closed => break "connection closed".to_owned(),
            () = &mut deadlines => {
                let next = conn.expire(tokio::time::Instant::now());
                deadlines.as_mut().reset(next.unwrap_or_else(never));
                continue;
            }
            () = &mut rearm => {
                rearm.set(conn.rearm.notified());
                deadlines.as_mut().reset(conn.armed().unwrap_or_else(never));
                continue;
            }
            quiet = liveness.tick() => {
                if quiet >= idle {
                    break format!("nothing received from the server for {quiet:?}");
                }
                continue;
            }
        };
        liveness.received();
        // Several answers in one read: the calls they wake will send their next requests at
        // once; gather those into one write (made below, once the woken tasks have run).
        if !corked && peerwire_proto::codec::frame_ready(reader.read_buffer()) {
            conn.tx.cork();
            corked = true;
        }
        match frame.kind {
            Some(Kind::Response(r)) => {
                let reply = lock(&conn.pending).calls.remove(&r.id);
                if let Some((reply, _)) = reply {
                    let _ = reply.send(Ok(r));
                }
            }
            Some(Kind::Event(ev)) => {
                if let Some(inner) = inner.upgrade() {
                    inner.deliver(ev);
                }
            }
            Some(Kind::Ping(p)) => {
                conn.tx
                    .try_send(Frame::new(Kind::Pong(Pong { nonce: p.nonce })));
            }
            Some(Kind::Pong(_)) => {}
            Some(Kind::Goodbye(g)) => {
                let status = Status::from_wire(g.code, &g.reason)
                    .err()
                    .unwrap_or_else(|| Status::new(peerwire_proto::v1::Code::Ok, g.reason));
                tracing::info!("server says goodbye: {status}");
                *lock(&conn.goodbye) = Some(status);
            }
            _ => break format!("unexpected {} frame from the server", frame.kind_name()),
        }
        if corked && !peerwire_proto::codec::frame_ready(reader.read_buffer()) {
            // Let the woken calls run (and append their requests), then write them at once.
            tokio::task::yield_now().await;
            conn.tx.uncork();
            corked = false;
        }
    };
    conn.tx.uncork();
    tracing::info!("connection lost: {why}");
    lock(&conn.close_reason).get_or_insert_with(|| why.clone());
    conn.close();
    conn.fail_pending(&why);
    if let Some(inner) = inner.upgrade() {
        inner.connection_lost();
    }
}
