//! The session state machines of both ends, sans I/O: what happens from the first frame to the
//! last, once, for the server and the client alike.
//!
//! ```text
//!            Hello/Welcome                 Goodbye (either way), EOF, shutdown
//! Handshaking ------------> Open ---------------------------------------> Closing -> Closed
//!      |                      |  protocol violation, idle timeout, local close        ^
//!      +-- Reject ----------->+------------------------------------------------------+
//! ```
//!
//! [`ServerSession`] and [`ClientSession`] hold the rules the tokio code of `peerwire-server`
//! and `peerwire-client` used to hold each in its own way: which frame kinds each role may
//! receive in each state (anything else is a `PROTOCOL_ERROR` that says `Goodbye` and closes),
//! request-id bookkeeping (the client allocates ids and keeps its calls' due times; the server
//! refuses id 0 and an id already in flight), the deadlines (handshake deadline, the calls' due
//! times behind one timer, keepalive pings and the idle timeout) and the `Goodbye` / close
//! reason.
//!
//! Neither does I/O or reads a clock, in the manner of quinn-proto's `Connection`: the driver
//! passes `now` in, hands every received frame to `handle_frame`, arms *one* timer at
//! `poll_timeout()` and calls `handle_timeout(now)` when it fires (a timer that fires early,
//! because traffic moved a deadline, does no harm: nothing is due yet and the next
//! `poll_timeout()` is later), and drains `poll_transmit()` (frames the session itself sends:
//! `Hello`/`Welcome`/`Reject`, `Pong`, `Ping`, `Cancel`, refusals, `Goodbye`) after each call.
//! Frames the application must act on (a request, a response, an event) are handed back by
//! value from `handle_frame`, so the per-frame path neither allocates nor queues.
//!
//! A tracked call carries a value of the driver's choosing (`R`: a task handle on the server, a
//! reply channel on the client), kept in the session's one map of calls.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::handshake::{
    ClientHandshake, HandshakeError, ServerHandshake, ServerOffer, ServerOutcome, Session,
};
use crate::v1::{
    Cancel, Code, Event, Frame, Goodbye, Hello, Ping, Pong, Reject, Request, Response, frame::Kind,
};
use crate::{SUPPORTED_PROTOCOL_VERSIONS, Status};

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Before the handshake completed (no frame but `Hello` / `Welcome` / `Reject` allowed).
    Handshaking,
    /// Calls, events and keepalives flow.
    Open,
    /// One side said `Goodbye` (or the peer stopped sending, or the server is shutting down):
    /// calls in flight still finish, no new call starts.
    Closing,
    /// Nothing more is sent or received.
    Closed,
}

/// The `Reject` frame that refuses a handshake with `status`.
pub fn reject_frame(status: &Status) -> Frame {
    Frame::new(Kind::Reject(Reject {
        code: status.code as i32,
        reason: status.message.clone(),
        supported_versions: SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
        namespaces: vec![],
    }))
}

/// The `Goodbye` frame that closes a session with `status`.
pub fn goodbye_frame(status: &Status) -> Frame {
    Frame::new(Kind::Goodbye(Goodbye {
        code: status.code as i32,
        reason: status.message.clone(),
    }))
}

/// Frames a session queued for sending. Between two drains a session queues one frame in
/// practice (a Pong, a refusal, a Goodbye): that one is held inline, so a connection keeps no
/// queue allocation for its control frames; more (expired calls' Cancels) spill onto the heap.
#[derive(Debug, Default)]
struct Outbox {
    first: Option<Frame>,
    rest: VecDeque<Frame>,
}

impl Outbox {
    fn push_back(&mut self, frame: Frame) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop_front(&mut self) -> Option<Frame> {
        let first = self.first.take();
        if first.is_some() {
            self.first = self.rest.pop_front();
        }
        first
    }
}

fn at_most_a_year(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// The server's timing and limits of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Time from accept to a handled `Hello`.
    pub handshake_timeout: Duration,
    /// The server pings a connection after this long without a frame from it, and again every
    /// `min(keepalive_interval, idle_timeout / 4)` while it stays quiet.
    pub keepalive_interval: Duration,
    /// The server closes a connection after this long without a frame from it.
    pub idle_timeout: Duration,
    /// Most requests tracked in flight at once; more are answered `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    /// How long calls in flight may still finish once the session is closing.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    fn ping_every(&self) -> Duration {
        self.keepalive_interval
            .min(self.idle_timeout / 4)
            .max(Duration::from_millis(1))
    }
}

/// Why the server refused a request without dispatching it (its error `Response` is queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The session is closing: `SHUTTING_DOWN`.
    Closing,
    /// `max_in_flight` requests are in flight: `RESOURCE_EXHAUSTED`.
    TooManyInFlight,
}

/// What the server application does with a received frame.
#[derive(Debug)]
#[must_use]
pub enum ServerInput<R> {
    /// Nothing (handled by the session; drain `poll_transmit`).
    None,
    /// A valid `Hello`: check what the application checks (token, sender), then
    /// [`ServerSession::accept`] or [`ServerSession::refuse`].
    Hello(Hello),
    /// The handshake is refused (its `Reject` is queued); the session is closed.
    Rejected(Status),
    /// A request to dispatch: answer it at once, or [`ServerSession::track`] it.
    Request(Request),
    /// A request refused by the session (its error `Response` is queued).
    Refused {
        /// Its id.
        id: u64,
        /// Why.
        why: Refusal,
    },
    /// The client cancelled a tracked call (its `CANCELLED` response is queued): stop it.
    Cancelled {
        /// Its id.
        id: u64,
        /// What the driver tracked it with.
        call: R,
    },
    /// A client event.
    Event(Event),
    /// The client said `Goodbye`: it sends no more; calls in flight still finish.
    Goodbye(Goodbye),
    /// A protocol violation: its `Goodbye` is queued and the session is closed.
    Violation(Status),
}

/// What a server timer found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ServerTimeout {
    /// Nothing that ends the session (a `Ping` may be queued).
    None,
    /// No `Hello` within the handshake timeout: its `Reject` is queued; closed.
    Handshake(Status),
    /// No frame within the idle timeout: its `Goodbye` is queued; closed.
    Idle(Status),
    /// The grace period of a closing session ended: take the calls still in flight with
    /// [`ServerSession::abandon`], answer them, and close.
    GraceEnded,
}

/// The server end of one session.
#[derive(Debug)]
pub struct ServerSession<R> {
    config: ServerConfig,
    state: State,
    /// Until the handshake ends; boxed, so that an open session does not carry its room.
    handshaking: Option<Box<ServerHandshaking>>,
    in_flight: HashMap<u64, R>,
    /// When the last frame came from the client (from `accept` on).
    last_rx: Instant,
    /// The earliest time of the next keepalive `Ping` (pings repeat every `ping_every` while
    /// the client stays quiet).
    next_ping: Instant,
    ping_nonce: u64,
    /// Set once closing: when calls still in flight are abandoned.
    grace_end: Option<Instant>,
    reading: bool,
    transmit: Outbox,
}

/// What only the server's handshake needs.
#[derive(Debug)]
struct ServerHandshaking {
    handshake: ServerHandshake,
    deadline: Instant,
    /// Between a valid `Hello` and `accept`: the answer and the agreed session.
    accepted: Option<(Frame, Session)>,
}

impl<R> ServerSession<R> {
    /// A session for connection `session_id` whose handshake must end by `handshake_deadline`
    /// (which may have started before, with TLS).
    pub fn new(
        offer: ServerOffer,
        session_id: u64,
        config: ServerConfig,
        handshake_deadline: Instant,
    ) -> Self {
        Self {
            config,
            state: State::Handshaking,
            handshaking: Some(Box::new(ServerHandshaking {
                handshake: ServerHandshake::new(offer, session_id),
                deadline: handshake_deadline,
                accepted: None,
            })),
            in_flight: HashMap::new(),
            // Both set by `accept`: no keepalive or idle timeout applies before.
            last_rx: handshake_deadline,
            next_ping: handshake_deadline,
            ping_nonce: 0,
            grace_end: None,
            reading: true,
            transmit: Outbox::default(),
        }
    }

    /// Where the session is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether frames from the client are still expected (false after its `Goodbye` or EOF).
    pub fn reading(&self) -> bool {
        self.reading && self.state != State::Closed
    }

    /// Whether the session is closing or closed.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing | State::Closed)
    }

    /// The next frame the session sends.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmit.pop_front()
    }

    /// Requests tracked in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Takes a frame from the client.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) -> ServerInput<R> {
        match self.state {
            State::Handshaking => return self.handle_hello(frame),
            State::Closed => return ServerInput::None,
            State::Open | State::Closing => {}
        }
        self.last_rx = now;
        match frame.kind {
            Some(Kind::Request(req)) => self.handle_request(req),
            Some(Kind::Cancel(c)) => match self.in_flight.remove(&c.id) {
                Some(call) => {
                    self.send_response(
                        Status::new(Code::Cancelled, "cancelled by the client").to_response(c.id),
                    );
                    ServerInput::Cancelled { id: c.id, call }
                }
                None => ServerInput::None,
            },
            Some(Kind::Event(ev)) => ServerInput::Event(ev),
            Some(Kind::Ping(p)) => {
                self.transmit
                    .push_back(Frame::new(Kind::Pong(Pong { nonce: p.nonce })));
                ServerInput::None
            }
            Some(Kind::Pong(_)) => ServerInput::None,
            Some(Kind::Goodbye(g)) => {
                self.peer_closed(now);
                ServerInput::Goodbye(g)
            }
            _ => self.violation(format!(
                "unexpected {} frame after the handshake",
                frame.kind_name()
            )),
        }
    }

    fn handle_hello(&mut self, frame: Frame) -> ServerInput<R> {
        let Some(h) = self.handshaking.as_mut() else {
            return ServerInput::None;
        };
        if h.accepted.is_some() {
            let status = Status::new(Code::ProtocolError, "handshake already finished");
            return self.reject(status);
        }
        match h.handshake.receive(frame) {
            ServerOutcome::Accept {
                welcome,
                session,
                hello,
            } => {
                h.accepted = Some((welcome, session));
                ServerInput::Hello(hello)
            }
            ServerOutcome::Reject { reject, status } => {
                self.state = State::Closed;
                self.handshaking = None;
                self.transmit.push_back(reject);
                ServerInput::Rejected(status)
            }
        }
    }

    fn reject(&mut self, status: Status) -> ServerInput<R> {
        self.state = State::Closed;
        self.handshaking = None;
        self.transmit.push_back(reject_frame(&status));
        ServerInput::Rejected(status)
    }

    /// Opens the session after its `Hello` (queues the `Welcome`) and returns the agreed
    /// session; `None` if no `Hello` is waiting for an answer.
    pub fn accept(&mut self, now: Instant) -> Option<Session> {
        if self.state != State::Handshaking {
            return None;
        }
        let (welcome, session) = self.handshaking.take()?.accepted?;
        self.state = State::Open;
        self.last_rx = now;
        self.next_ping = now;
        self.transmit.push_back(welcome);
        Some(session)
    }

    /// Refuses the handshake with `status` (queues the `Reject`) and closes.
    pub fn refuse(&mut self, status: Status) {
        let _ = self.reject(status);
    }

    fn handle_request(&mut self, req: Request) -> ServerInput<R> {
        if req.id == 0 {
            return self.violation("request id 0 is not allowed".into());
        }
        if self.in_flight.contains_key(&req.id) {
            return self.violation(format!("request id {} is already in flight", req.id));
        }
        let id = req.id;
        if self.state != State::Open {
            self.send_response(
                Status::new(Code::ShuttingDown, "the server is shutting down").to_response(id),
            );
            return ServerInput::Refused {
                id,
                why: Refusal::Closing,
            };
        }
        if self.in_flight.len() >= self.config.max_in_flight {
            let max = self.config.max_in_flight;
            self.send_response(
                Status::new(
                    Code::ResourceExhausted,
                    format!("max_in_flight limit of {max} requests reached"),
                )
                .to_response(id),
            );
            return ServerInput::Refused {
                id,
                why: Refusal::TooManyInFlight,
            };
        }
        ServerInput::Request(req)
    }

    fn send_response(&mut self, response: Response) {
        self.transmit
            .push_back(Frame::new(Kind::Response(response)));
    }

    fn violation(&mut self, message: String) -> ServerInput<R> {
        let status = Status::new(Code::ProtocolError, message);
        self.close(&status);
        ServerInput::Violation(status)
    }

    /// Tracks request `id` (dispatched, not answered yet) until [`finish`](Self::finish),
    /// a `Cancel` or [`abandon`](Self::abandon). False (and `call` dropped) if `id` is already
    /// tracked, which `handle_frame` never lets happen.
    pub fn track(&mut self, id: u64, call: R) -> bool {
        match self.in_flight.entry(id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(call);
                true
            }
        }
    }

    /// A tracked call ended (its answer is the driver's to send): stops tracking it.
    pub fn finish(&mut self, id: u64) -> Option<R> {
        self.in_flight.remove(&id)
    }

    /// Takes every call still in flight (the grace period ended): answer each one.
    pub fn abandon(&mut self) -> impl Iterator<Item = (u64, R)> + '_ {
        self.in_flight.drain()
    }

    /// The client stopped sending (EOF, or its `Goodbye`): calls in flight may finish within
    /// the grace period.
    pub fn peer_closed(&mut self, now: Instant) {
        self.reading = false;
        self.start_closing(now);
    }

    fn start_closing(&mut self, now: Instant) {
        if self.state == State::Open {
            self.state = State::Closing;
        }
        self.grace_end
            .get_or_insert_with(|| at_most_a_year(now, self.config.shutdown_grace));
    }

    /// The server is shutting down: says `Goodbye(SHUTTING_DOWN)` and starts the grace
    /// period. Does nothing if the session is closing already.
    pub fn shutdown(&mut self, now: Instant) {
        if self.state != State::Open {
            return;
        }
        self.transmit.push_back(goodbye_frame(&Status::new(
            Code::ShuttingDown,
            "the server is shutting down",
        )));
        self.state = State::Closing;
        self.grace_end = Some(at_most_a_year(now, self.config.shutdown_grace));
    }

    /// Closes the session with `status`: queues its `Goodbye` (unless still handshaking).
    pub fn close(&mut self, status: &Status) {
        if matches!(self.state, State::Open | State::Closing) {
            self.transmit.push_back(goodbye_frame(status));
        }
        self.state = State::Closed;
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshaking => self.handshaking.as_ref().map(|h| h.deadline),
            State::Closed => None,
            State::Open | State::Closing => {
                let idle = at_most_a_year(self.last_rx, self.config.idle_timeout);
                let ping = at_most_a_year(self.last_rx, self.config.keepalive_interval)
                    .max(self.next_ping);
                let first = idle.min(ping);
                Some(self.grace_end.map_or(first, |g| g.min(first)))
            }
        }
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> ServerTimeout {
        match self.state {
            State::Handshaking => {
                if self.handshaking.as_ref().is_none_or(|h| now < h.deadline) {
                    return ServerTimeout::None;
                }
                let status = Status::new(
                    Code::HandshakeTimeout,
                    format!(
                        "no Hello within the handshake timeout of {:?}",
                        self.config.handshake_timeout
                    ),
                );
                self.refuse(status.clone());
                ServerTimeout::Handshake(status)
            }
            State::Closed => ServerTimeout::None,
            State::Open | State::Closing => {
                if self.grace_end.is_some_and(|g| now >= g) {
                    self.state = State::Closed;
                    return ServerTimeout::GraceEnded;
                }
                let quiet = now.saturating_duration_since(self.last_rx);
                if quiet >= self.config.idle_timeout {
                    let status = Status::new(
                        Code::IdleTimeout,
                        format!(
                            "no frame for {quiet:?}; the idle timeout is {:?}",
                            self.config.idle_timeout
                        ),
                    );
                    self.close(&status);
                    return ServerTimeout::Idle(status);
                }
                if quiet >= self.config.keepalive_interval && now >= self.next_ping {
                    self.ping_nonce += 1;
                    self.transmit.push_back(Frame::new(Kind::Ping(Ping {
                        nonce: self.ping_nonce,
                    })));
                    self.next_ping = at_most_a_year(now, self.config.ping_every());
                }
                ServerTimeout::None
            }
        }
    }
}

/// Why a client call cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotOpen {
    /// The handshake has not completed.
    #[error("the handshake has not completed")]
    Handshaking,
    /// The server said `Goodbye`.
    #[error("the server is closing the session: {0}")]
    Closing(Status),
    /// The session is closed.
    #[error("connection closed")]
    Closed,
}

/// What the client application does with a received frame.
#[derive(Debug)]
#[must_use]
pub enum ClientInput<R> {
    /// Nothing (handled by the session; drain `poll_transmit`).
    None,
    /// The handshake completed: the agreed session.
    Established(Session),
    /// The answer to a pending call (a response to a call no longer pending is dropped).
    Response {
        /// The call's value.
        call: R,
        /// The answer.
        response: Response,
    },
    /// A pushed event.
    Event(Event),
    /// The server said `Goodbye`: no new call starts; pending ones may still be answered.
    Goodbye(Status),
}

/// Why the client's session ended on a received frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The handshake failed (rejected, or an invalid answer).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server sent a frame kind the client may not receive in this state.
    #[error("unexpected {0} frame from the server")]
    Unexpected(&'static str),
}

/// What a client timer found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClientTimeout {
    /// Nothing ends the session; expired calls (if any) are in
    /// [`poll_expired`](ClientSession::poll_expired).
    None,
    /// Nothing came from the server for this long, the idle timeout or more: the session is
    /// closed.
    Idle(Duration),
}

/// The client end of one session.
#[derive(Debug)]
pub struct ClientSession<R> {
    state: State,
    /// Until the handshake ends (dropped then, with the `Hello` it keeps).
    handshake: Option<ClientHandshake>,
    /// Keyed by ids this client chose (never by what the peer sends): a cheap hash.
    calls: HashMap<u64, (R, Instant), rustc_hash::FxBuildHasher>,
    /// When the calls' timer fires: at or before the earliest due time (a call that ended early
    /// leaves it armed; firing then finds nothing and re-arms for the next).
    armed: Option<Instant>,
    next_id: u64,
    last_rx: Instant,
    idle: Duration,
    goodbye: Option<Status>,
    said_goodbye: bool,
    expired: VecDeque<(u64, R)>,
    transmit: Outbox,
}

impl<R> ClientSession<R> {
    /// A session that starts with `hello` (queued for sending).
    pub fn new(hello: Hello, now: Instant) -> Self {
        let handshake = ClientHandshake::new(hello);
        let mut transmit = Outbox::default();
        transmit.push_back(handshake.hello_frame());
        Self {
            state: State::Handshaking,
            handshake: Some(handshake),
            calls: HashMap::default(),
            armed: None,
            next_id: 1,
            last_rx: now,
            idle: Duration::from_secs(1),
            goodbye: None,
            said_goodbye: false,
            expired: VecDeque::new(),
            transmit,
        }
    }

    /// Where the session is.
    pub fn state(&self) -> State {
        self.state
    }

    /// The server's `Goodbye`, once it said it.
    pub fn goodbye(&self) -> Option<&Status> {
        self.goodbye.as_ref()
    }

    /// The next frame the session sends.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmit.pop_front()
    }

    /// The next call whose due time passed (its `Cancel` is queued): fail it.
    pub fn poll_expired(&mut self) -> Option<(u64, R)> {
        self.expired.pop_front()
    }

    /// Calls waiting for an answer.
    pub fn pending(&self) -> usize {
        self.calls.len()
    }

    /// Takes a frame from the server.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        frame: Frame,
    ) -> Result<ClientInput<R>, ClientError> {
        match self.state {
            State::Handshaking => {
                let Some(mut handshake) = self.handshake.take() else {
                    self.state = State::Closed;
                    return Err(HandshakeError::AlreadyDone.into());
                };
                return match handshake.receive(frame) {
                    Ok(session) => {
                        self.state = State::Open;
                        self.last_rx = now;
                        // The server pings a quiet connection every keepalive interval; nothing
                        // at all for its idle timeout (at least a second) means it is gone.
                        self.idle = Duration::from_millis(u64::from(
                            session.limits.idle_timeout_ms.max(1000),
                        ));
                        Ok(ClientInput::Established(session))
                    }
                    Err(e) => {
                        self.state = State::Closed;
                        Err(e.into())
                    }
                };
            }
            State::Closed => return Ok(ClientInput::None),
            State::Open | State::Closing => {}
        }
        self.last_rx = now;
        match frame.kind {
            Some(Kind::Response(response)) => Ok(match self.calls.remove(&response.id) {
                Some((call, _)) => ClientInput::Response { call, response },
                None => ClientInput::None,
            }),
            Some(Kind::Event(ev)) => Ok(ClientInput::Event(ev)),
            Some(Kind::Ping(p)) => {
                self.transmit
                    .push_back(Frame::new(Kind::Pong(Pong { nonce: p.nonce })));
                Ok(ClientInput::None)
            }
            Some(Kind::Pong(_)) => Ok(ClientInput::None),
            Some(Kind::Goodbye(g)) => {
                let status = Status::from_wire(g.code, &g.reason)
                    .err()
                    .unwrap_or_else(|| Status::new(Code::Ok, g.reason));
                self.goodbye = Some(status.clone());
                self.state = State::Closing;
                Ok(ClientInput::Goodbye(status))
            }
            _ => {
                self.state = State::Closed;
                Err(ClientError::Unexpected(frame.kind_name()))
            }
        }
    }

    /// Whether a call may start now.
    pub fn check_open(&self) -> Result<(), NotOpen> {
        match self.state {
            State::Open => Ok(()),
            State::Handshaking => Err(NotOpen::Handshaking),
            State::Closing => Err(self
                .goodbye
                .clone()
                .map_or(NotOpen::Closed, NotOpen::Closing)),
            State::Closed => Err(NotOpen::Closed),
        }
    }

    /// Starts a call that gives up at `due`: returns its request id, and whether the driver
    /// must re-arm its timer (the call is due before the timer fires). No timer per call.
    pub fn start_call(&mut self, call: R, due: Instant) -> Result<(u64, bool), NotOpen> {
        self.check_open()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.calls.insert(id, (call, due));
        let rearm = self.armed.is_none_or(|armed| due < armed);
        if rearm {
            self.armed = Some(due);
        }
        Ok((id, rearm))
    }

    /// Stops waiting for call `id` without telling the server (it was never sent).
    pub fn forget_call(&mut self, id: u64) -> Option<R> {
        self.calls.remove(&id).map(|(call, _)| call)
    }

    /// The caller gave up on call `id` (dropped it): if it was still pending, queues a `Cancel`
    /// (unless closed) and returns true.
    pub fn abandon_call(&mut self, id: u64) -> bool {
        if self.calls.remove(&id).is_none() {
            return false;
        }
        if self.state != State::Closed {
            self.transmit
                .push_back(Frame::new(Kind::Cancel(Cancel { id })));
        }
        true
    }

    /// Says `Goodbye` with `status` (queued, if open): no new call starts; pending calls may
    /// still be answered until the connection is [`lost`](Self::lost).
    pub fn close(&mut self, status: &Status) {
        if matches!(self.state, State::Open | State::Closing) && !self.said_goodbye {
            self.said_goodbye = true;
            self.transmit.push_back(goodbye_frame(status));
            self.state = State::Closing;
        }
    }

    /// The connection is gone: closed, and every pending call taken (to fail them).
    pub fn lost(&mut self) -> impl Iterator<Item = (u64, R)> + '_ {
        self.state = State::Closed;
        self.armed = None;
        self.calls.drain().map(|(id, (call, _))| (id, call))
    }

    /// The driver reads again after a time it did not (a blocking client reads only while a
    /// caller waits): the silence before `now` says nothing about the server, so the idle
    /// timeout counts from `now` at the earliest.
    pub fn resume_reading(&mut self, now: Instant) {
        if matches!(self.state, State::Open | State::Closing) {
            self.last_rx = self.last_rx.max(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next, if ever (the handshake's
    /// time is the driver's connect timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Open | State::Closing => {
                let idle = at_most_a_year(self.last_rx, self.idle);
                Some(self.armed.map_or(idle, |a| a.min(idle)))
            }
            State::Handshaking | State::Closed => None,
        }
    }

    /// Runs what is due at `now`: calls past their due time move to
    /// [`poll_expired`](Self::poll_expired) (each with a `Cancel` queued); the idle timeout
    /// closes the session.
    pub fn handle_timeout(&mut self, now: Instant) -> ClientTimeout {
        if !matches!(self.state, State::Open | State::Closing) {
            return ClientTimeout::None;
        }
        if self.armed.is_some_and(|a| a <= now) {
            let due: Vec<u64> = self
                .calls
                .iter()
                .filter(|(_, (_, due))| *due <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                if let Some((call, _)) = self.calls.remove(&id) {
                    self.expired.push_back((id, call));
                    self.transmit
                        .push_back(Frame::new(Kind::Cancel(Cancel { id })));
                }
            }
            self.armed = self.calls.values().map(|(_, due)| *due).min();
        }
        let quiet = now.saturating_duration_since(self.last_rx);
        if quiet >= self.idle {
            self.state = State::Closed;
            return ClientTimeout::Idle(quiet);
        }
        ClientTimeout::None
    }
}
