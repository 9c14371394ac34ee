//! One connection: connect, handshake, reader task, pending calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::handshake::{ClientHandshake, HandshakeError, Session};
use peerwire_proto::session::{ClientError, ClientInput, ClientSession, ClientTimeout, NotOpen};
use peerwire_proto::v1::{Frame, Hello, Response};
use peerwire_proto::{HANDSHAKE_MAX_FRAME_SIZE, Status};
use peerwire_security::cred::PeerCredentials;
use peerwire_security::exe::{Executable, peer_executable};
use peerwire_security::tls::TlsError;
use peerwire_transport::plain::PlainWriter;
use peerwire_transport::stream::{self, FrameReader};
use peerwire_transport::{FrameSink, SinkError};
use prost::Message;
use tokio::io::AsyncRead;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{CallError, Config, ConnectError, DisconnectReason, Inner, lock};

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
pub(crate) fn server_ended_tls(e: std::io::Error) -> ConnectError {
    ConnectError::Tls(TlsError::EndedByServer(e))
}

/// A plain-text `Reject` the server sent instead of starting TLS (for example: access denied).
fn refused_before_tls(seen: &Mutex<Vec<u8>>) -> Option<ConnectError> {
    reject_in(lock(seen).as_slice())
}

/// The server's plain-text `Reject` at the start of `seen` (the first bytes read), if it is one.
pub(crate) fn reject_in(seen: &[u8]) -> Option<ConnectError> {
    let mut buf = BytesMut::from(seen);
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
    /// The session rules: frame kinds allowed, request ids, the calls waiting for an answer
    /// and when each gives up, the idle timeout, the server's `Goodbye`.
    state: Mutex<ClientSession<Reply>>,
    /// The reader re-arms its timer: a call due earlier than it is armed for came.
    rearm: tokio::sync::Notify,
    closed: CancellationToken,
    /// Set once the server said `Goodbye` (its status is in `state`): every call checks this,
    /// without taking the lock the reader takes for every frame.
    goodbye_said: std::sync::atomic::AtomicBool,
    close_reason: Mutex<Option<DisconnectReason>>,
    /// Who reads the socket: the reader task, or a call alone in flight reading its own answer.
    read: Mutex<ReadSlot>,
    /// The client, for the events read.
    inner: Weak<Inner>,
    /// Keyed by the topics this client sends events on: a cheap hash.
    event_seq: Mutex<HashMap<String, u64, rustc_hash::FxBuildHasher>>,
}

/// Removes a pending call when the call ends; if no answer came (deadline passed or the
/// caller dropped the future), tells the server to cancel it.
pub(crate) struct PendingGuard<'a> {
    conn: &'a Conn,
    pub(crate) id: u64,
    /// No other call was waiting when this one started: it may read its own answer.
    lone: bool,
}

impl PendingGuard<'_> {
    /// The call's request was never sent: stop waiting without telling the server.
    pub(crate) fn forget(self) {
        lock(&self.conn.state).forget_call(self.id);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let cancel = {
            let mut state = lock(&self.conn.state);
            state.abandon_call(self.id);
            state.poll_transmit()
        };
        if let Some(cancel) = cancel {
            if !self.conn.is_closed() {
                self.conn.tx.try_send(cancel);
            }
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
    pub(crate) fn close_reason(&self) -> DisconnectReason {
        lock(&self.close_reason)
            .clone()
            .unwrap_or(DisconnectReason::Closed)
    }

    pub(crate) fn goodbye(&self) -> Option<Status> {
        if !self.goodbye_said.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        lock(&self.state).goodbye().cloned()
    }

    /// Says `Goodbye` with `status` (calls still waiting may be answered until the close):
    /// the frame to send, if the session was open.
    pub(crate) fn say_goodbye(&self, status: &Status) -> Option<Frame> {
        let mut state = lock(&self.state);
        state.close(status);
        state.poll_transmit()
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

    /// Starts a call that gives up at `due` and returns its guard, which holds its request id.
    /// No timer per call: the reader keeps one, armed for the earliest deadline, and re-arms it
    /// only when a call is due earlier.
    pub(crate) fn register(
        &self,
        reply: Reply,
        due: tokio::time::Instant,
    ) -> Result<PendingGuard<'_>, CallError> {
        let started = {
            let mut state = lock(&self.state);
            let started = state.start_call(reply, due.into_std());
            started.map(|(id, rearm)| (id, rearm, state.pending() == 1))
        };
        match started {
            Ok((id, rearm, lone)) => {
                if rearm {
                    self.rearm.notify_one();
                }
                Ok(PendingGuard {
                    conn: self,
                    id,
                    lone,
                })
            }
            Err(NotOpen::Closing(status)) => {
                Err(CallError::Disconnected(DisconnectReason::Closing(status)))
            }
            Err(_) => Err(CallError::Disconnected(self.close_reason())),
        }
    }

    pub(crate) fn check_size(&self, frame: &Frame) -> Result<(), CallError> {
        check_size(&self.session, frame)
    }

    /// Queues a frame; waits while the outbound queue is full, but not past the connection's end.
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), CallError> {
        let closed = || CallError::Disconnected(DisconnectReason::Closed);
        match self.tx.0.send(&frame).await {
            Ok(()) => Ok(()),
            Err(SinkError::Codec(CodecError::OutgoingTooLarge { len, max })) => {
                Err(CallError::TooLarge { len, max })
            }
            Err(_) => Err(closed()),
        }
    }

    /// Fails every pending call at once.
    fn fail_pending(&self, why: &DisconnectReason) {
        let pending: Vec<_> = lock(&self.state).lost().collect();
        for (_, reply) in pending {
            let _ = reply.send(Err(Some(CallError::Disconnected(why.clone()))));
        }
    }

    /// Why the connection ends when the server closed it.
    fn server_closed(&self) -> DisconnectReason {
        match self.goodbye() {
            Some(status) => DisconnectReason::ServerClosedSession(status),
            None => DisconnectReason::ServerClosed,
        }
    }

    /// Why the connection ends on what a read returned, if it does.
    #[inline]
    fn read_end(&self, next: Option<Result<Frame, CodecError>>) -> Result<Frame, DisconnectReason> {
        match next {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => Err(DisconnectReason::BadFrame(Arc::new(e))),
            None => Err(self.server_closed()),
        }
    }

    /// Takes a frame from the server, read at `now`: answers a pong, delivers an event, notes a
    /// `Goodbye`; a response is returned with its call (whoever read it answers the call).
    /// `Err`: the frame ends the connection.
    #[inline]
    fn on_frame(
        &self,
        now: std::time::Instant,
        frame: Frame,
    ) -> Result<Option<(Reply, Response)>, DisconnectReason> {
        let (input, reply) = {
            let mut state = lock(&self.state);
            let input = state.handle_frame(now, frame);
            (input, state.poll_transmit())
        };
        if let Some(pong) = reply {
            self.tx.try_send(pong);
        }
        match input {
            Ok(ClientInput::Response { call, response }) => return Ok(Some((call, response))),
            Ok(ClientInput::Event(ev)) => {
                if let Some(inner) = self.inner.upgrade() {
                    inner.deliver(ev);
                }
            }
            Ok(ClientInput::Goodbye(status)) => {
                self.goodbye_said
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::info!("server says goodbye: {status}");
            }
            Ok(_) => {}
            Err(ClientError::Unexpected(kind)) => {
                return Err(DisconnectReason::UnexpectedFrame(kind));
            }
            // Handshake errors end `connect`, not a session.
            Err(_) => return Err(DisconnectReason::Closed),
        }
        Ok(None)
    }

    /// The reader task's next frame, and whether the next one is already read too; `Err`: the
    /// connection ends. `Pending` while a call reads (it hands the socket back when it is done).
    /// `held`: the socket, kept by the task while it has frames read and not yet handled.
    #[inline]
    fn poll_task_read(
        &self,
        cx: &mut Context<'_>,
        held: &mut Option<FrameReader>,
    ) -> Poll<Result<(Frame, bool), DisconnectReason>> {
        if let Some(reader) = held.as_mut() {
            // A frame is in its buffer: no read, no lock.
            let next = std::task::ready!(reader.poll_next_unpin(cx));
            let more = peerwire_proto::codec::frame_ready(reader.read_buffer());
            if !more {
                // The next frame needs a read: the socket goes back (still busy, until this
                // frame is handled).
                lock(&self.read).reader = held.take();
            }
            return Poll::Ready(match next {
                Some(Ok(frame)) => Ok((frame, more)),
                next => self.read_end(next).map(|frame| (frame, false)),
            });
        }
        let mut guard = lock(&self.read);
        let slot = &mut *guard;
        // The last frame this task took is handled: a call may read now.
        slot.busy = false;
        if !slot.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.task = Some(cx.waker().clone());
        }
        if slot.ended.is_some() || slot.stash.is_some() {
            return Poll::Ready(self.handed_back(slot));
        }
        let Some(reader) = slot.reader.as_mut() else {
            return Poll::Pending;
        };
        Poll::Ready(match std::task::ready!(reader.poll_next_unpin(cx)) {
            Some(Ok(frame)) => {
                slot.busy = true;
                let more = peerwire_proto::codec::frame_ready(reader.read_buffer());
                if more {
                    // Several frames in one read: the task keeps the socket until they are
                    // handled, without taking the lock for each.
                    *held = slot.reader.take();
                }
                Ok((frame, more))
            }
            next => self.read_end(next).map(|frame| (frame, false)),
        })
    }

    /// What a call that handed the socket back read for the reader task: the connection's end,
    /// or the frame (or end) its hand-back read.
    #[cold]
    fn handed_back(&self, slot: &mut ReadSlot) -> Result<(Frame, bool), DisconnectReason> {
        if let Some(why) = slot.ended.take() {
            return Err(why);
        }
        let frame = self.read_end(slot.stash.take().flatten())?;
        slot.busy = true;
        let more = slot
            .reader
            .as_ref()
            .is_some_and(|r| peerwire_proto::codec::frame_ready(r.read_buffer()));
        Ok((frame, more))
    }

    /// The socket, for a call alone in flight to read its own answer: none while the reader
    /// task handles a frame it read (frames are handled in the order they came).
    fn borrow_reader(&self) -> Option<Borrowed<'_>> {
        let mut slot = lock(&self.read);
        if slot.busy || slot.stash.is_some() || slot.ended.is_some() {
            return None;
        }
        let reader = slot.reader.take()?;
        Some(Borrowed {
            conn: self,
            reader: Some(reader),
            ended: None,
        })
    }

    /// The answer of call `guard`, whose request is sent. A call alone in flight reads it
    /// itself (and whatever else comes meanwhile: events, pings, other calls' answers), rather
    /// than wait for the reader task to read it and wake it: a task hop per call, and under
    /// `block_on` a poll of the runtime's driver, on every round trip's critical path.
    pub(crate) async fn answer(
        &self,
        guard: &PendingGuard<'_>,
        rx: &mut oneshot::Receiver<Answer>,
    ) -> Result<Answer, oneshot::error::RecvError> {
        let mut own = None;
        let mut tried = !guard.lone;
        std::future::poll_fn(|cx| {
            if !tried {
                tried = true;
                own = self.borrow_reader();
            }
            if let Some(borrowed) = own.as_mut() {
                match borrowed.poll_answer(cx, guard.id) {
                    Poll::Ready(Some((call, response))) => {
                        // The call is answered: nothing is sent on its channel, and closing
                        // it first, dropping the sender wakes nobody.
                        rx.close();
                        drop(call);
                        return Poll::Ready(Ok(Ok(response)));
                    }
                    // The connection ends (the reader task fails the calls), or other calls
                    // are in flight (the reader task reads for all): wait for the channel.
                    Poll::Ready(None) => own = None,
                    Poll::Pending => {}
                }
            }
            std::pin::Pin::new(&mut *rx).poll(cx)
        })
        .await
    }
}

/// Who reads a connection's socket (see [`Conn::answer`]).
#[derive(Default)]
struct ReadSlot {
    /// `None` while a call reads, while the reader task handles several frames one read
    /// brought, or once the connection ended.
    reader: Option<FrameReader>,
    /// The reader task is handling a frame it read: no call reads until it is done.
    busy: bool,
    /// The reader task's waker: it waits for the socket while a call has it.
    task: Option<Waker>,
    /// What a call handing the socket back read with the reader task's waker: the task's next.
    stash: Option<Option<Result<Frame, CodecError>>>,
    /// A call read the connection's end: the reader task ends it so.
    ended: Option<DisconnectReason>,
}

/// The socket, borrowed by a call from the reader task; dropping it hands it back.
struct Borrowed<'a> {
    conn: &'a Conn,
    reader: Option<FrameReader>,
    ended: Option<DisconnectReason>,
}

impl Borrowed<'_> {
    /// Reads and handles frames until the response to call `id` comes (`Some`), or the
    /// connection ends or another call's answer comes (`None`: the socket goes back to the
    /// reader task).
    fn poll_answer(&mut self, cx: &mut Context<'_>, id: u64) -> Poll<Option<(Reply, Response)>> {
        let conn = self.conn;
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let next = std::task::ready!(reader.poll_next_unpin(cx));
            let handled = conn
                .read_end(next)
                .and_then(|frame| conn.on_frame(tokio::time::Instant::now().into_std(), frame));
            match handled {
                Ok(Some((call, response))) if response.id == id => {
                    return Poll::Ready(Some((call, response)));
                }
                Ok(Some((call, response))) => {
                    let _ = call.send(Ok(response));
                    // Other calls are in flight: this one is no longer alone. The socket goes
                    // back to the reader task, which gathers the next requests of the calls
                    // a read answers into one write (a call reading here would let each of
                    // them write its own, and a pipelined client lose its batching).
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(why) => {
                    self.ended = Some(why);
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        let mut slot = lock(&self.conn.read);
        if let Some(why) = self.ended.take() {
            slot.ended = Some(why);
        } else if !self.conn.is_closed() {
            // Until now this call's waker was the socket's (a socket keeps one per direction):
            // the reader task's is, from now on (a read of a readiness already cleared: no
            // system call); what that read brings is the task's to handle.
            if let Some(task) = slot.task.clone() {
                let next = reader.poll_next_unpin(&mut Context::from_waker(&task));
                if let Poll::Ready(next) = next {
                    slot.stash = Some(next);
                    task.wake();
                }
            }
            slot.reader = Some(reader);
            return;
        }
        // The connection ended: the socket's read side closes; the reader task, if it still
        // runs, ends.
        if let Some(task) = &slot.task {
            task.wake_by_ref();
        }
    }
}

/// Refuses a frame larger than the session's frame limit.
pub(crate) fn check_size(session: &Session, frame: &Frame) -> Result<(), CallError> {
    let max = session.max_frame_size();
    let len = frame.encoded_len();
    if len > max as usize {
        return Err(CallError::TooLarge { len, max });
    }
    Ok(())
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
    let now = tokio::time::Instant::now().into_std();
    let mut state = ClientSession::new(hello(config), now);
    let mut reader = stream::reader(rd);
    let hello = state.poll_transmit().ok_or(ConnectError::Closed)?;
    // No other task runs for this connection yet: this one finishes the write.
    if let Err(e) = wr.send(&hello, Duration::MAX).await {
        if tls {
            return Err(server_ended_tls(e));
        }
        // The server may have refused us (access policy) and closed before our Hello arrived:
        // its Reject is still there to read, and says why.
        if let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(1), reader.next()).await
        {
            if let Err(e @ ConnectError::Handshake(HandshakeError::Rejected { .. })) =
                established(&mut state, now, frame)
            {
                return Err(e);
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
    let session = established(&mut state, tokio::time::Instant::now().into_std(), answer)?;
    let (bytes, frames) = sink_bounds(config);
    let sink = wr.into_session(&mut reader, session.max_frame_size(), bytes, frames);
    let conn = Arc::new(Conn {
        session,
        server,
        tx: Outbound(sink.clone()),
        state: Mutex::new(state),
        rearm: tokio::sync::Notify::new(),
        closed: CancellationToken::new(),
        goodbye_said: std::sync::atomic::AtomicBool::new(false),
        close_reason: Mutex::new(None),
        read: Mutex::new(ReadSlot {
            reader: Some(reader),
            ..ReadSlot::default()
        }),
        inner,
        event_seq: Mutex::new(HashMap::default()),
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
    tokio::spawn(read_loop(conn.clone()));
    Ok(conn)
}

/// The `Hello` this client opens every session with.
pub(crate) fn hello(config: &Config) -> Hello {
    Hello {
        protocol_versions: vec![],
        client_name: config.name.clone(),
        namespaces: config.namespaces.clone(),
        max_frame_size: config.max_frame_size,
        session_token: config
            .token
            .as_ref()
            .map(|t| t.0.to_vec())
            .unwrap_or_default(),
    }
}

/// The session the server's answer to `Hello` opens, or why it does not.
pub(crate) fn established<R>(
    state: &mut ClientSession<R>,
    now: std::time::Instant,
    answer: Frame,
) -> Result<Session, ConnectError> {
    let session = match state.handle_frame(now, answer) {
        Ok(ClientInput::Established(session)) => session,
        Err(ClientError::Handshake(e)) => return Err(e.into()),
        Err(ClientError::Unexpected(kind)) => {
            return Err(HandshakeError::UnexpectedFrame(kind).into());
        }
        _ => return Err(ConnectError::Closed),
    };
    for ns in session.namespaces.iter().filter(|a| a.code != 0) {
        tracing::warn!(namespace = %ns.namespace, "{}", ns.reason);
    }
    Ok(session)
}

/// Checks who listens on the socket before a single byte is sent to it.
pub(crate) fn verify_server(
    config: &Config,
    stream: &impl std::os::fd::AsFd,
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

async fn read_loop(conn: Arc<Conn>) {
    let mut corked = false;
    // The time the session is told a frame arrived: read once per read from the socket, and
    // shared by the frames that one read brought (what the session does with it, moving the
    // idle deadline, needs no finer grain, and a clock read per event is a measurable part of
    // a fan-out's cost).
    let mut batch_now: Option<std::time::Instant> = None;
    // One timer for the session's deadlines (the calls' due times, the idle timeout: the
    // server pings a quiet connection, so nothing at all for its idle timeout means it is
    // gone), armed at the earliest. Frames move the idle deadline later without touching the
    // timer (arming a timer on every frame costs more than the frame itself at small sizes):
    // when it fires early the session finds nothing due and says when to fire next.
    let timer = tokio::time::sleep_until(at(lock(&conn.state).poll_timeout()));
    // Registered once, not on every turn of the loop (the rearm wait is renewed when it fires).
    let closed = conn.closed.clone().cancelled_owned();
    let rearm = conn.rearm.notified();
    tokio::pin!(timer, closed, rearm);
    let mut held = None;
    let why = loop {
        let (frame, more) = tokio::select! {
            biased;
            next = std::future::poll_fn(|cx| conn.poll_task_read(cx, &mut held)) => match next {
                Ok(next) => next,
                Err(why) => break why,
            },
            () = &mut closed => break DisconnectReason::Closed,
            () = &mut timer => {
                let now = tokio::time::Instant::now().into_std();
                let (timeout, expired, cancels, next) = {
                    let mut state = lock(&conn.state);
                    let timeout = state.handle_timeout(now);
                    let expired: Vec<_> = std::iter::from_fn(|| state.poll_expired()).collect();
                    let cancels: Vec<_> = std::iter::from_fn(|| state.poll_transmit()).collect();
                    (timeout, expired, cancels, state.poll_timeout())
                };
                for (_, reply) in expired {
                    let _ = reply.send(Err(None));
                }
                for cancel in cancels {
                    conn.tx.try_send(cancel);
                }
                if let ClientTimeout::Idle(quiet) = timeout {
                    break DisconnectReason::Idle(quiet);
                }
                timer.as_mut().reset(at(next));
                continue;
            }
            () = &mut rearm => {
                rearm.set(conn.rearm.notified());
                timer.as_mut().reset(at(lock(&conn.state).poll_timeout()));
                continue;
            }
        };
        // Several answers in one read: the calls they wake will send their next requests at
        // once; gather those into one write (made below, once the woken tasks have run).
        if !corked && more {
            conn.tx.cork();
            corked = true;
        }
        let now = *batch_now.get_or_insert_with(|| tokio::time::Instant::now().into_std());
        if !more {
            // The next frame needs another read: it gets its own time.
            batch_now = None;
        }
        match conn.on_frame(now, frame) {
            Ok(Some((call, response))) => {
                let _ = call.send(Ok(response));
            }
            Ok(None) => {}
            Err(why) => break why,
        }
        if corked && !more {
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
    // The socket's read side closes (a call reading it now drops it when it is done).
    lock(&conn.read).reader = None;
    conn.fail_pending(&why);
    if let Some(inner) = conn.inner.upgrade() {
        inner.connection_lost();
    }
}

/// The tokio instant of a session deadline (`None`: a year from now, never in practice).
fn at(deadline: Option<std::time::Instant>) -> tokio::time::Instant {
    deadline.map_or_else(
        || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365),
        tokio::time::Instant::from_std,
    )
}
