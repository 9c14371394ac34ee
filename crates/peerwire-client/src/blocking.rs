//! A blocking client: no async runtime, and no thread of its own; a call runs on the caller's
//! thread, which writes the request and reads the answer itself.
//!
//! It speaks the same protocol as the async [`Client`](crate::Client), through the same code:
//! the session rules of [`peerwire_proto::session::ClientSession`] (handshake, request ids, due
//! times, `Goodbye`), the frame codec, the server checks before a byte is sent (`SO_PEERCRED`
//! uid, optionally the executable), TLS 1.3 with the pinned certificates of
//! [`ClientTls`](crate::ClientTls) (OpenSSL over the blocking socket), session tokens, and the
//! typed errors ([`ConnectError`], [`CallError`]). It is built by the same [`ClientBuilder`]:
//!
//! ```
//! use std::time::Duration;
//! use peerwire_client::Client;
//! # use peerwire_server::{Server, Status};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("sdk.sock");
//! # let rt = tokio::runtime::Runtime::new()?;
//! # let handle = rt.block_on(async {
//! #     let server = Server::builder(&path)
//! #         .method("echo.Echo", |_ctx, n: u64| async move { Ok::<_, Status>(n) })
//! #         .bind()?;
//! #     let handle = server.handle();
//! #     tokio::spawn(server.run());
//! #     Ok::<_, Box<dyn std::error::Error>>(handle)
//! # })?;
//! // A server is listening at `path` (on a runtime of its own, hidden above).
//! let client = Client::builder(&path)
//!     .name("renderer")
//!     .require_namespace("echo", &[1])
//!     .connect_blocking()?;
//! let n: u64 = client.call_with_deadline("echo.Echo", &7u64, Duration::from_secs(1))?;
//! assert_eq!(n, 7);
//! client.subscribe(&["echo.Tick"])?;
//! handle.broadcast("echo.Tick", &1u64)?;
//! let tick = client.recv_event(Duration::from_secs(5))?.ok_or("no event")?;
//! assert_eq!((tick.seq, tick.decode::<u64>()?), (1, 1));
//! client.close();
//! # Ok(()) }
//! ```
//!
//! # Threads
//!
//! A [`Client`] may be shared by threads (it is `Send + Sync`; clones share the connection).
//! Nothing is read while no thread waits: a thread that waits (for its answer, or in
//! [`Client::recv_event`]) reads for everyone, and hands the frames it reads to their waiters;
//! when it has what it waited for, another waiting thread takes over. So concurrent calls are
//! in flight together, and one thread's answer never waits for another's.
//!
//! A call's first read on a plain socket waits in `recv` (at most 2 ms, the socket's receive
//! timeout), which saves a `poll` per round trip; after that, and over TLS, a thread waits in
//! `poll`, with its deadline.
//!
//! # Events
//!
//! Events (server pushes on subscribed topics, or to this connection) are kept in one queue,
//! in the order they came, also while they arrive during a call; [`Client::recv_event`] and
//! [`Client::events`] take them. The queue holds at most the builder's
//! [`event_buffer`](ClientBuilder::event_buffer) events: more are dropped (the `seq` shows
//! the gap) and logged.
//!
//! # What differs from the async client
//!
//! - Keepalive: the server pings a client that has been quiet for its keepalive interval; the
//!   blocking client answers a ping when it next reads, that is while some thread waits. A
//!   client that neither calls nor waits for events for the server's idle timeout (60 s by
//!   default) is closed by the server; the next call then fails with
//!   [`CallError::Disconnected`]. The client's own idle check (nothing from the server for its
//!   idle timeout) counts only time spent waiting.
//! - No automatic reconnection ([`ClientBuilder::reconnect`] is not applied): after a lost
//!   connection every call fails with [`CallError::Disconnected`]; connect again.
//! - Writes block (a full socket buffer waits for the server to read); a write that cannot
//!   finish within the default deadline ([`ClientBuilder::default_deadline`]) ends the
//!   connection. Deadlines bound the wait for an answer.
//! - A request is copied once into the write buffer (the async client writes a large payload
//!   from its own buffer).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv, send};
use openssl::ssl::{HandshakeError as SslHandshakeError, SslStream};
use openssl::x509::X509VerifyResult;
use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::handshake::{HandshakeError, Session};
use peerwire_proto::session::{ClientError, ClientInput, ClientSession, ClientTimeout, NotOpen};
use peerwire_proto::v1::{Frame, SubscribeRequest, SubscribeResponse};
use peerwire_proto::{HANDSHAKE_MAX_FRAME_SIZE, METHOD_SUBSCRIBE, METHOD_UNSUBSCRIBE, Status};
use peerwire_security::tls::TlsError;
use prost::Message;

use crate::builder::Config;
use crate::{
    CALL_SLACK, CallError, ClientBuilder, ConnectError, DisconnectReason, EventMessage,
    PeerCredentials, call_result, conn, event_frame, lock, request_frame,
};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The longest a call's first read blocks in `recv` on a plain socket (its receive timeout)
/// before the wait goes on in `poll`, with the deadlines and wake-ups `poll` watches.
const EAGER_READ: Duration = Duration::from_millis(2);

impl ClientBuilder {
    /// Connects and completes the handshake on this thread, for a [blocking](self::Client)
    /// client (no async runtime needed). [`reconnect`](Self::reconnect) does not apply.
    pub fn connect_blocking(self) -> Result<Client, ConnectError> {
        let conn = connect(&self.config)?;
        Ok(Client {
            conn: Arc::new(conn),
            default_deadline: self.config.default_deadline,
        })
    }
}

/// A blocking connection to a peerwire server (see the [module](self)). Cheap to clone; all
/// clones share the connection.
#[derive(Clone)]
pub struct Client {
    conn: Arc<Conn>,
    default_deadline: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Client")
            .field("server", &self.conn.server)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// What [`Client::recv`] returns: an event, or the answer of a call started with
/// [`Client::start_call`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Delivery {
    /// A pushed event.
    Event(EventMessage),
    /// The answer of the call with this id.
    Answer(u64, Result<Bytes, CallError>),
}

impl Client {
    /// True until the connection is lost or closed (a `Goodbye` from the server still counts as
    /// connected: calls already sent may be answered).
    pub fn is_connected(&self) -> bool {
        lock(&self.conn.state).lost.is_none()
    }

    /// The session agreed in the handshake.
    pub fn session(&self) -> &Session {
        &self.conn.session
    }

    /// The server's credentials (`SO_PEERCRED` of the listening socket).
    pub fn server_credentials(&self) -> PeerCredentials {
        self.conn.server
    }

    /// Calls `method` with the default deadline.
    pub fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_with_deadline(method, request, self.default_deadline)
    }

    /// Calls `method`; fails with `DEADLINE_EXCEEDED` if no answer comes within `deadline`, and
    /// then tells the server to cancel the handler.
    pub fn call_with_deadline<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, CallError> {
        let payload = self.raw_call(method, request.encode_to_vec(), deadline)?;
        Resp::decode(payload).map_err(CallError::Decode)
    }

    /// Calls `method` with an already encoded payload and returns the encoded response.
    pub fn raw_call(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
        deadline: Duration,
    ) -> Result<Bytes, CallError> {
        let due = Instant::now() + deadline.saturating_add(CALL_SLACK);
        let id = self
            .conn
            .start(method, payload.into(), deadline, due, Slot::Wait)?;
        let waited = self.conn.wait(Some(due), true, |st| st.done.remove(&id));
        let answer = match waited {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                // Due, and no one has run the timer yet: give up now (queues the Cancel).
                self.conn.abandon(id);
                Err(None)
            }
            Err(why) => Err(Some(CallError::Disconnected(why))),
        };
        call_result(method, deadline, answer)
    }

    /// Sends a call without waiting for its answer, which [`recv`](Self::recv) returns
    /// (`Delivery::Answer` with the id returned here), `DEADLINE_EXCEEDED` once `deadline`
    /// passed. A way to have many calls in flight from one thread.
    pub fn start_call(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
        deadline: Duration,
    ) -> Result<u64, CallError> {
        let due = Instant::now() + deadline.saturating_add(CALL_SLACK);
        self.conn.start(
            method,
            payload.into(),
            deadline,
            due,
            Slot::Detached(method.to_owned(), deadline),
        )
    }

    /// Sends a one-way event (for example a touch or key event) to the server.
    pub fn notify<M: Message>(&self, topic: &str, event: &M) -> Result<(), CallError> {
        let conn = &self.conn;
        conn.session.check_name(topic).map_err(CallError::Status)?;
        let frame = {
            let mut st = lock(&conn.state);
            st.usable()?;
            let seq = st.event_seq.entry(topic.to_owned()).or_insert(0);
            *seq += 1;
            event_frame(topic, *seq, event)
        };
        conn::check_size(&conn.session, &frame)?;
        conn.send(&frame)
    }

    /// Subscribes to server pushes on `topics` (waits for the server's confirmation, with the
    /// default deadline): their events arrive in this client's event queue. Returns the topics
    /// the server subscribed.
    pub fn subscribe(&self, topics: &[&str]) -> Result<Vec<String>, CallError> {
        self.subscription(METHOD_SUBSCRIBE, topics)
    }

    /// Ends the subscription of `topics`: the server stops pushing them (events already queued
    /// stay).
    pub fn unsubscribe(&self, topics: &[&str]) -> Result<Vec<String>, CallError> {
        self.subscription(METHOD_UNSUBSCRIBE, topics)
    }

    fn subscription(&self, method: &str, topics: &[&str]) -> Result<Vec<String>, CallError> {
        for topic in topics {
            self.conn
                .session
                .check_name(topic)
                .map_err(CallError::Status)?;
        }
        let request = SubscribeRequest {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        };
        let resp: SubscribeResponse = self.call(method, &request)?;
        Ok(resp.topics)
    }

    /// The next event, waiting at most `timeout`: `Ok(None)` when none came; an error once the
    /// connection is lost and every event received before is taken. With a zero `timeout` it
    /// takes only what was already read (during calls, or by another waiting thread).
    pub fn recv_event(&self, timeout: Duration) -> Result<Option<EventMessage>, CallError> {
        let until = Instant::now().checked_add(timeout);
        self.conn
            .wait(until, false, |st| st.events.pop_front())
            .map_err(CallError::Disconnected)
    }

    /// The events, in order, waiting as long as it takes; the iterator ends when the connection
    /// is lost or closed.
    pub fn events(&self) -> impl Iterator<Item = EventMessage> + '_ {
        std::iter::from_fn(|| {
            self.conn
                .wait(None, false, |st| st.events.pop_front())
                .ok()
                .flatten()
        })
    }

    /// The next event or answer of a [started](Self::start_call) call, waiting at most
    /// `timeout` (`None`: as long as it takes): `Ok(None)` when none came; an error once the
    /// connection is lost and everything received before is taken (calls still pending then
    /// are answered with the error first).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Option<Delivery>, CallError> {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        self.conn
            .wait(until, false, |st| {
                st.answers
                    .pop_front()
                    .map(|(id, answer)| Delivery::Answer(id, answer))
                    .or_else(|| st.events.pop_front().map(Delivery::Event))
            })
            .map_err(CallError::Disconnected)
    }

    /// Says `Goodbye` and closes the connection. Calls waiting in other threads fail with
    /// [`CallError::Disconnected`]; events already received can still be taken.
    pub fn close(&self) {
        self.conn.close();
    }
}

/// What a call in flight is waited for by.
#[derive(Debug)]
enum Slot {
    /// A thread in `raw_call`: the answer goes to `State::done`.
    Wait,
    /// A [started](Client::start_call) call (its method and deadline, for the error message):
    /// the answer goes to `State::answers`.
    Detached(String, Duration),
}

struct State {
    session: ClientSession<Slot>,
    /// A thread is reading (the others wait on `Conn::cond`).
    reading: bool,
    /// Threads waiting on `Conn::cond`.
    sleepers: usize,
    /// Answers for threads in `raw_call`, by request id.
    done: HashMap<u64, conn::Answer>,
    /// Answers of started calls, in the order they came.
    answers: VecDeque<(u64, Result<Bytes, CallError>)>,
    events: VecDeque<EventMessage>,
    event_buffer: usize,
    /// Events dropped since the queue was last taken from (logged once per burst).
    dropped: u64,
    event_seq: HashMap<String, u64>,
    /// Set once the connection is gone.
    lost: Option<DisconnectReason>,
}

impl State {
    /// Whether a new call or notification may start.
    fn usable(&self) -> Result<(), CallError> {
        if let Some(why) = &self.lost {
            return Err(CallError::Disconnected(why.clone()));
        }
        match self.session.check_open() {
            Ok(()) => Ok(()),
            Err(NotOpen::Closing(status)) => {
                Err(CallError::Disconnected(DisconnectReason::Closing(status)))
            }
            Err(_) => Err(CallError::Disconnected(DisconnectReason::Closed)),
        }
    }

    /// Hands the answer of a call to whoever waits for it.
    fn answer(&mut self, id: u64, slot: Slot, answer: conn::Answer) {
        match slot {
            Slot::Wait => {
                self.done.insert(id, answer);
            }
            Slot::Detached(method, deadline) => {
                let result = call_result(&method, deadline, answer);
                self.answers.push_back((id, result));
            }
        }
    }

    fn event(&mut self, msg: EventMessage) {
        if self.events.len() >= self.event_buffer {
            if self.dropped == 0 {
                tracing::warn!(topic = %msg.topic, seq = msg.seq, "events are not taken fast enough: dropped");
            }
            self.dropped += 1;
            return;
        }
        self.dropped = 0;
        self.events.push_back(msg);
    }

    /// The connection is gone: every call still waiting fails with `why`.
    fn lose(&mut self, why: DisconnectReason) {
        if self.lost.is_some() {
            return;
        }
        tracing::info!("connection lost: {why}");
        let pending: Vec<_> = self.session.lost().collect();
        for (id, slot) in pending {
            self.answer(id, slot, Err(Some(CallError::Disconnected(why.clone()))));
        }
        self.lost = Some(why);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
    }
}

struct Conn {
    session: Session,
    server: PeerCredentials,
    /// The socket for `poll` and `shutdown`, outside the `io` lock.
    socket: UnixStream,
    /// Wakes the reading thread's `poll` (a call due before it would wake).
    waker: (UnixStream, UnixStream),
    /// Plain socket (no TLS): writes go through `wr`, and a call's first read may block.
    plain: bool,
    /// The write buffer and codec of a plain socket.
    wr: Mutex<(BytesMut, FrameCodec)>,
    io: Mutex<Io>,
    state: Mutex<State>,
    cond: Condvar,
}

fn relock<'a, T>(
    r: std::sync::LockResult<(MutexGuard<'a, T>, std::sync::WaitTimeoutResult)>,
) -> MutexGuard<'a, T> {
    r.map_or_else(|e| e.into_inner().0, |(g, _)| g)
}

impl Conn {
    /// Registers a call and sends its request.
    fn start(
        &self,
        method: &str,
        payload: Bytes,
        deadline: Duration,
        due: Instant,
        slot: Slot,
    ) -> Result<u64, CallError> {
        self.session.check_name(method).map_err(CallError::Status)?;
        let (id, rearm, reading) = {
            let mut st = lock(&self.state);
            st.usable()?;
            let (id, rearm) = st
                .session
                .start_call(slot, due)
                .map_err(|_| CallError::Disconnected(DisconnectReason::Closed))?;
            (id, rearm, st.reading)
        };
        let frame = request_frame(id, method, payload, deadline);
        if let Err(e) = conn::check_size(&self.session, &frame) {
            lock(&self.state).session.forget_call(id);
            return Err(e);
        }
        if let Err(e) = self.send(&frame) {
            lock(&self.state).session.forget_call(id);
            return Err(e);
        }
        if rearm && reading {
            // The reading thread sleeps past this call's due time: wake it to re-arm.
            let _ = send(
                self.waker.0.as_raw_fd(),
                &[1],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
        }
        Ok(id)
    }

    /// Gives up on call `id` (its due time passed): queues and sends its `Cancel`.
    fn abandon(&self, id: u64) {
        let mut st = lock(&self.state);
        if st.session.abandon_call(id) {
            self.flush(&mut st);
        }
    }

    /// Writes one frame: on a plain socket through `wr` (the reading thread may hold `io`),
    /// over TLS through the TLS stream in `io`.
    fn write(&self, frame: &Frame) -> Result<(), CodecError> {
        if !self.plain {
            return lock(&self.io).write_frame(frame);
        }
        let mut wr = lock(&self.wr);
        let (wbuf, codec) = &mut *wr;
        wbuf.clear();
        codec.encode(frame, wbuf)?;
        let mut rest: &[u8] = wbuf;
        while !rest.is_empty() {
            match send(self.socket.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Ok(0) => return Err(CodecError::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(CodecError::Io(e.into())),
            }
        }
        Ok(())
    }

    /// Writes one frame; a failed write ends the connection (a frame may be half written).
    fn send(&self, frame: &Frame) -> Result<(), CallError> {
        let written = self.write(frame);
        match written {
            Ok(()) => Ok(()),
            Err(CodecError::OutgoingTooLarge { len, max }) => Err(CallError::TooLarge { len, max }),
            Err(e) => {
                let why = DisconnectReason::BadFrame(Arc::new(e));
                let mut st = lock(&self.state);
                st.lose(why.clone());
                self.wake(&st);
                drop(st);
                let _ = self.socket.shutdown(std::net::Shutdown::Both);
                Err(CallError::Disconnected(why))
            }
        }
    }

    /// Sends what the session queued (pongs, cancels, `Goodbye`), in order; called with the
    /// state locked, so that nothing the session queues later overtakes them.
    fn flush(&self, st: &mut State) {
        if st.lost.is_some() {
            while st.session.poll_transmit().is_some() {}
            return;
        }
        while let Some(frame) = st.session.poll_transmit() {
            if let Err(e) = self.write(&frame) {
                st.lose(DisconnectReason::BadFrame(Arc::new(e)));
                let _ = self.socket.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }

    fn close(&self) {
        let mut st = lock(&self.state);
        if st.lost.is_none() {
            st.session
                .close(&Status::new(peerwire_proto::v1::Code::Ok, "client closed"));
            self.flush(&mut st);
            st.lose(DisconnectReason::Closed);
        }
        self.wake(&st);
        drop(st);
        // Wakes a thread in `poll`: it reads the end of the stream.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Wakes the threads waiting on `cond`, if any (a `notify_all` with none waiting still
    /// costs a `futex` system call: one per round trip).
    fn wake(&self, st: &State) {
        if st.sleepers > 0 {
            self.cond.notify_all();
        }
    }

    /// Runs the session's timers if due: expired calls are answered, their `Cancel`s sent.
    fn run_timers(&self, st: &mut State, now: Instant) {
        if st.lost.is_some() || st.session.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        let timeout = st.session.handle_timeout(now);
        while let Some((id, slot)) = st.session.poll_expired() {
            st.answer(id, slot, Err(None));
        }
        self.flush(st);
        if let ClientTimeout::Idle(quiet) = timeout {
            st.lose(DisconnectReason::Idle(quiet));
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
        self.wake(st);
    }

    /// Waits until `take` finds what the caller waits for (`Ok(Some)`), `until` passes
    /// (`Ok(None)`) or the connection is lost with nothing for the caller (`Err`). One waiting
    /// thread at a time reads, for all of them. `eager`: the answer is expected soon (a call
    /// just sent), so the first read on a plain socket blocks in `recv` for it (see
    /// [`EAGER_READ`]) rather than `poll` first.
    fn wait<T>(
        &self,
        until: Option<Instant>,
        mut eager: bool,
        mut take: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<Option<T>, DisconnectReason> {
        let mut st = lock(&self.state);
        loop {
            if let Some(t) = take(&mut st) {
                return Ok(Some(t));
            }
            if let Some(why) = &st.lost {
                return Err(why.clone());
            }
            let now = Instant::now();
            if !st.reading {
                // Nobody read until now: the server's silence meanwhile is not its fault.
                st.session.resume_reading(now);
            }
            self.run_timers(&mut st, now);
            if let Some(t) = take(&mut st) {
                return Ok(Some(t));
            }
            if st.lost.is_some() {
                continue;
            }
            if until.is_some_and(|u| now >= u) {
                return Ok(None);
            }
            let wake = match (until, st.session.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if st.reading {
                st.sleepers += 1;
                st = match wake {
                    Some(w) => relock(self.cond.wait_timeout(st, w.saturating_duration_since(now))),
                    None => self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
                st.sleepers -= 1;
                continue;
            }
            st.reading = true;
            drop(st);
            let read = self.read(wake, eager);
            eager = false;
            st = lock(&self.state);
            st.reading = false;
            self.dispatch(&mut st, read);
            self.wake(&st);
        }
    }

    /// Reads what arrives until `until` (one batch), without holding the state.
    fn read(&self, until: Option<Instant>, eager: bool) -> Batch {
        if eager && self.plain && until.is_some_and(|u| u > Instant::now() + EAGER_READ) {
            // A blocking `recv` (bounded by the socket's receive timeout, `EAGER_READ`) saves
            // the `poll` of every round trip. Only the reading thread takes `io` on a plain
            // socket (writes go through `wr`), so nobody waits for it meanwhile.
            let mut io = lock(&self.io);
            if !io.buffered() {
                match io.fill_blocking() {
                    Ok(true) => {
                        let frames = io.frames();
                        return frames.map_or_else(Batch::Failed, Batch::End);
                    }
                    Ok(false) => {}
                    Err(why) => return Batch::Failed(why),
                }
            }
            return io.frames().map_or_else(Batch::Failed, Batch::Frames);
        }
        if !lock(&self.io).buffered() {
            let timeout = match until {
                None => PollTimeout::NONE,
                Some(u) => {
                    // Rounded up: a poll that returns before the time only comes back here.
                    let ms = u.saturating_duration_since(Instant::now()).as_micros() + 999;
                    PollTimeout::try_from(ms / 1000).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.waker.1.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => return Batch::Frames(vec![]),
                Ok(_) => {}
                Err(e) => return Batch::Failed(io_reason(std::io::Error::from(e))),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) {
                let mut sink = [0u8; 64];
                while matches!(
                    recv(
                        self.waker.1.as_raw_fd(),
                        &mut sink,
                        MsgFlags::MSG_DONTWAIT
                    ),
                    Ok(n) if n > 0
                ) {}
            }
            if !ready(&fds[0]) {
                return Batch::Frames(vec![]);
            }
        }
        lock(&self.io).read_frames()
    }

    /// Hands what was read to the session and the waiters.
    fn dispatch(&self, st: &mut State, read: Batch) {
        let (frames, end) = match read {
            Batch::Frames(f) => (f, None),
            Batch::End(f) => (f, Some(None)),
            Batch::Failed(why) => (vec![], Some(Some(why))),
        };
        let now = Instant::now();
        for frame in frames {
            if st.lost.is_some() {
                break;
            }
            match st.session.handle_frame(now, frame) {
                Ok(ClientInput::Response { call, response }) => {
                    st.answer(response.id, call, Ok(response));
                }
                Ok(ClientInput::Event(ev)) => st.event(EventMessage {
                    topic: ev.topic,
                    seq: ev.seq,
                    payload: ev.payload,
                }),
                Ok(ClientInput::Goodbye(status)) => {
                    tracing::info!("server says goodbye: {status}");
                }
                Ok(_) => {}
                Err(ClientError::Unexpected(kind)) => {
                    st.lose(DisconnectReason::UnexpectedFrame(kind));
                }
                Err(_) => st.lose(DisconnectReason::Closed),
            }
            self.flush(st);
        }
        match end {
            None => {}
            Some(Some(why)) => st.lose(why),
            Some(None) => {
                let why = match st.session.goodbye() {
                    Some(status) => DisconnectReason::ServerClosedSession(status.clone()),
                    None => DisconnectReason::ServerClosed,
                };
                st.lose(why);
            }
        }
    }
}

fn io_reason(e: std::io::Error) -> DisconnectReason {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            DisconnectReason::ServerClosed
        }
        _ => DisconnectReason::BadFrame(Arc::new(CodecError::Io(e))),
    }
}

/// One batch read from the connection.
enum Batch {
    Frames(Vec<Frame>),
    /// The frames read before the end of the stream.
    End(Vec<Frame>),
    Failed(DisconnectReason),
}

/// The socket as the blocking client uses it: reads never block (a thread waits in `poll`,
/// with its deadline, without holding the connection), writes do (bounded by the socket's
/// send timeout), and never raise `SIGPIPE`.
#[derive(Debug)]
struct Sock {
    stream: UnixStream,
    /// Read from the socket, not yet taken (OpenSSL asks for a record's header, then its body:
    /// one `recv` serves both).
    inbuf: BytesMut,
    chunk: Box<[u8]>,
    /// Until TLS is up: the first bytes read, to make sense of a plain `Reject` sent instead.
    seen: Option<Vec<u8>>,
}

impl Sock {
    fn recv_chunk(&mut self) -> std::io::Result<usize> {
        let n = recv(
            self.stream.as_raw_fd(),
            &mut self.chunk,
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)?;
        if let (Some(seen), Some(got)) = (self.seen.as_mut(), self.chunk.get(..n)) {
            if seen.len() < HANDSHAKE_MAX_FRAME_SIZE as usize {
                seen.extend_from_slice(got);
            }
        }
        Ok(n)
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inbuf.is_empty() {
            let n = self.recv_chunk()?;
            self.inbuf
                .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        }
        let n = self.inbuf.len().min(buf.len());
        let taken = self.inbuf.split_to(n);
        if let Some(dst) = buf.get_mut(..n) {
            dst.copy_from_slice(&taken);
        }
        Ok(n)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        send(self.stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Link {
    Plain(Sock),
    Tls(Box<SslStream<Sock>>),
}

/// The connection's byte side: the link, the read buffer and the codec.
struct Io {
    link: Link,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Where OpenSSL puts what it opens.
    scratch: Box<[u8]>,
    codec: FrameCodec,
}

impl Io {
    fn new(link: Link) -> Self {
        Self {
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            scratch: match &link {
                Link::Plain(_) => Box::default(),
                Link::Tls(_) => vec![0; 16 * 1024].into_boxed_slice(),
            },
            codec: FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE),
            link,
        }
    }

    /// Bytes received but not yet read out (inside OpenSSL, read ahead, or a whole frame not
    /// yet decoded): no need to wait.
    fn buffered(&self) -> bool {
        if peerwire_proto::codec::frame_ready(&self.rbuf) {
            return true;
        }
        match &self.link {
            Link::Plain(s) => !s.inbuf.is_empty(),
            Link::Tls(s) => s.ssl().pending() > 0 || !s.get_ref().inbuf.is_empty(),
        }
    }

    fn write_frame(&mut self, frame: &Frame) -> Result<(), CodecError> {
        self.wbuf.clear();
        self.codec.encode(frame, &mut self.wbuf)?;
        match &mut self.link {
            Link::Plain(s) => s.write_all(&self.wbuf)?,
            Link::Tls(s) => s.write_all(&self.wbuf)?,
        }
        Ok(())
    }

    /// Reads what is there now, without waiting: true at the end of the stream.
    fn fill(&mut self) -> Result<bool, DisconnectReason> {
        loop {
            let n = match &mut self.link {
                Link::Plain(s) => s.recv_chunk().inspect(|&n| {
                    self.rbuf
                        .extend_from_slice(s.chunk.get(..n).unwrap_or_default());
                }),
                Link::Tls(s) => s.read(&mut self.scratch).inspect(|&n| {
                    self.rbuf
                        .extend_from_slice(self.scratch.get(..n).unwrap_or_default());
                }),
            };
            match n {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    let more = match &self.link {
                        Link::Plain(_) => n == READ_CHUNK,
                        Link::Tls(s) => s.ssl().pending() > 0 || !s.get_ref().inbuf.is_empty(),
                    };
                    if !more {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_reason(e)),
            }
        }
    }

    /// Waits in `recv` for what comes on a plain socket, at most the socket's receive timeout
    /// ([`EAGER_READ`]): true at the end of the stream.
    fn fill_blocking(&mut self) -> Result<bool, DisconnectReason> {
        let Link::Plain(s) = &mut self.link else {
            return self.fill();
        };
        match recv(s.stream.as_raw_fd(), &mut s.chunk, MsgFlags::empty()) {
            Ok(0) => Ok(true),
            Ok(n) => {
                self.rbuf
                    .extend_from_slice(s.chunk.get(..n).unwrap_or_default());
                if n == READ_CHUNK {
                    return self.fill();
                }
                Ok(false)
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(io_reason(e.into())),
        }
    }

    /// Every complete frame read.
    fn frames(&mut self) -> Result<Vec<Frame>, DisconnectReason> {
        let mut frames = vec![];
        while let Some(frame) = self.decode()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// The next complete frame read, if any.
    fn decode(&mut self) -> Result<Option<Frame>, DisconnectReason> {
        self.codec
            .decode(&mut self.rbuf)
            .map_err(|e| DisconnectReason::BadFrame(Arc::new(e)))
    }

    /// Reads what is there now, without waiting, and decodes the complete frames.
    fn read_frames(&mut self) -> Batch {
        let end = match self.fill() {
            Ok(end) => end,
            Err(why) => return Batch::Failed(why),
        };
        match self.frames() {
            Ok(frames) if end => Batch::End(frames),
            Ok(frames) => Batch::Frames(frames),
            Err(why) => Batch::Failed(why),
        }
    }

    fn sock(&self) -> &Sock {
        match &self.link {
            Link::Plain(s) => s,
            Link::Tls(s) => s.get_ref(),
        }
    }
}

/// Waits until `socket` is readable, at most until `until` (the end of the connect timeout).
fn readable(socket: &UnixStream, until: Instant, config: &Config) -> Result<(), ConnectError> {
    let left = until.saturating_duration_since(Instant::now());
    let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, ms) {
        Ok(0) => Err(ConnectError::Timeout(config.connect_timeout)),
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(ConnectError::Io {
            path: config.path.clone(),
            source: e.into(),
        }),
    }
}

/// Connects to the socket at `config.path`; a full listen backlog is waited out until
/// `until` (the socket's send timeout bounds a blocking `connect` on a Unix socket).
fn connect_socket(config: &Config, until: Instant) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt,
    };
    let addr = UnixAddr::new(&config.path)?;
    let mut pause = Duration::from_millis(1);
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let left = until.saturating_duration_since(Instant::now());
        let tv = nix::sys::time::TimeVal::new(
            left.as_secs().try_into().unwrap_or(i64::MAX),
            left.subsec_micros().into(),
        );
        setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < until => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn connect(config: &Config) -> Result<Conn, ConnectError> {
    let until = Instant::now() + config.connect_timeout;
    let io_err = |source| ConnectError::Io {
        path: config.path.clone(),
        source,
    };
    let stream = connect_socket(config, until).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => ConnectError::Timeout(config.connect_timeout),
        _ => io_err(e),
    })?;
    let server = PeerCredentials::of(&stream).map_err(io_err)?;
    conn::verify_server(config, &stream, &server)?;
    let socket = stream.try_clone().map_err(io_err)?;
    let sock = Sock {
        stream,
        inbuf: BytesMut::new(),
        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        seen: config.tls.as_ref().map(|_| Vec::new()),
    };
    let link = match &config.tls {
        None => Link::Plain(sock),
        Some(tls) => {
            let ssl = tls.ssl().map_err(ConnectError::Tls)?;
            let mut step = ssl.connect(sock);
            let mut s = loop {
                match step {
                    Ok(s) => break s,
                    Err(SslHandshakeError::WouldBlock(mid)) => {
                        readable(&socket, until, config)?;
                        step = mid.handshake();
                    }
                    Err(SslHandshakeError::Failure(mid)) => {
                        let refused = mid.get_ref().seen.as_deref().and_then(conn::reject_in);
                        let e = if mid.ssl().verify_result()
                            == X509VerifyResult::APPLICATION_VERIFICATION
                        {
                            TlsError::NotPinned("server")
                        } else {
                            TlsError::Handshake(mid.into_error())
                        };
                        return Err(refused.unwrap_or(ConnectError::Tls(e)));
                    }
                    Err(SslHandshakeError::SetupFailure(e)) => {
                        return Err(ConnectError::Tls(TlsError::Openssl(e)));
                    }
                }
            };
            s.get_mut().seen = None;
            Link::Tls(Box::new(s))
        }
    };
    let tls = config.tls.is_some();
    let mut io = Io::new(link);
    io.sock()
        .stream
        .set_write_timeout(Some(config.connect_timeout))
        .map_err(io_err)?;
    let mut state = ClientSession::new(conn::hello(config), Instant::now());
    let hello = state.poll_transmit().ok_or(ConnectError::Closed)?;
    let next_frame = |io: &mut Io, until: Instant| -> Result<Frame, ConnectError> {
        loop {
            let error = |why| match why {
                DisconnectReason::BadFrame(e) => match Arc::try_unwrap(e) {
                    Ok(CodecError::Io(e)) if tls => conn::server_ended_tls(e),
                    Ok(e) => ConnectError::Protocol(e),
                    Err(_) => ConnectError::Closed,
                },
                _ => ConnectError::Closed,
            };
            if let Some(frame) = io.decode().map_err(error)? {
                return Ok(frame);
            }
            if !io.buffered() {
                readable(&socket, until, config)?;
            }
            if io.fill().map_err(error)? {
                return io.decode().map_err(error)?.ok_or(ConnectError::Closed);
            }
        }
    };
    if let Err(e) = io.write_frame(&hello) {
        let e = match e {
            CodecError::Io(e) => e,
            other => return Err(ConnectError::Protocol(other)),
        };
        if tls {
            return Err(conn::server_ended_tls(e));
        }
        // The server may have refused us (access policy) and closed before our Hello arrived:
        // its Reject is still there to read, and says why.
        if let Ok(frame) = next_frame(&mut io, Instant::now() + Duration::from_secs(1)) {
            if let Err(e @ ConnectError::Handshake(HandshakeError::Rejected { .. })) =
                conn::established(&mut state, Instant::now(), frame)
            {
                return Err(e);
            }
        }
        return Err(io_err(e));
    }
    let answer = next_frame(&mut io, until)?;
    let session = conn::established(&mut state, Instant::now(), answer)?;
    io.codec.set_max_frame_size(session.max_frame_size());
    io.sock()
        .stream
        .set_write_timeout(Some(config.default_deadline))
        .map_err(io_err)?;
    let waker = UnixStream::pair().map_err(io_err)?;
    let plain = config.tls.is_none();
    if plain {
        socket.set_read_timeout(Some(EAGER_READ)).map_err(io_err)?;
    }
    let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME_SIZE);
    codec.set_max_frame_size(session.max_frame_size());
    Ok(Conn {
        plain,
        wr: Mutex::new((BytesMut::new(), codec)),
        session,
        server,
        socket,
        waker,
        io: Mutex::new(io),
        state: Mutex::new(State {
            session: state,
            reading: false,
            sleepers: 0,
            done: HashMap::new(),
            answers: VecDeque::new(),
            events: VecDeque::new(),
            event_buffer: config.event_buffer,
            dropped: 0,
            event_seq: HashMap::new(),
            lost: None,
        }),
        cond: Condvar::new(),
    })
}
