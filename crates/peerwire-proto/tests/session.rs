//! The session state machines of both ends against each other, in memory: no sockets, no
//! runtime, a simulated clock advanced explicitly (quinn-proto's `tests/util` `Pair` is the
//! model). Every frame crosses as protobuf bytes, as it would on a socket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peerwire_proto::Status;
use peerwire_proto::handshake::{HandshakeError, ServerOffer};
use peerwire_proto::session::{
    ClientError, ClientInput, ClientSession, ClientTimeout, NotOpen, Refusal, ServerConfig,
    ServerInput, ServerSession, ServerTimeout, State,
};
use peerwire_proto::v1::{
    Code, Event, Frame, Hello, Limits, NamespaceVersions, Request, Response, Welcome, frame::Kind,
};
use prost::Message;

const KEEPALIVE: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_secs(8);
const HANDSHAKE: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(3);

fn offer() -> ServerOffer {
    ServerOffer {
        server_name: "pair".into(),
        namespaces: BTreeMap::from([("display".to_string(), vec![1, 2])]),
        limits: Limits {
            max_frame_size: 1 << 20,
            max_in_flight: 2,
            default_deadline_ms: 1000,
            max_deadline_ms: 10_000,
            keepalive_interval_ms: KEEPALIVE.as_millis() as u32,
            idle_timeout_ms: IDLE.as_millis() as u32,
        },
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: HANDSHAKE,
        keepalive_interval: KEEPALIVE,
        idle_timeout: IDLE,
        max_in_flight: 2,
        shutdown_grace: GRACE,
    }
}

fn hello(required: bool) -> Hello {
    Hello {
        client_name: "renderer".into(),
        namespaces: vec![NamespaceVersions {
            namespace: if required { "system" } else { "display" }.into(),
            versions: vec![1],
            required,
        }],
        ..Default::default()
    }
}

/// Crosses the "wire": encoded and decoded like the codec does.
fn wire(frame: Frame) -> Frame {
    Frame::decode(frame.encode_to_vec().as_slice()).unwrap()
}

/// A tracked server call: the stand-in for a handler task.
#[derive(Debug, PartialEq)]
struct Task(u64);

/// The two ends, the frames between them, and the clock.
struct Pair {
    now: Instant,
    server: ServerSession<Task>,
    client: ClientSession<&'static str>,
    /// What the server application saw, in order.
    server_saw: Vec<ServerInput<Task>>,
    /// What the client application saw, in order.
    client_saw: Vec<Result<ClientInput<&'static str>, ClientError>>,
    /// Requests for this method are answered at once; others are tracked (in flight).
    instant_method: &'static str,
    /// Whether the server application accepts a valid Hello (else: refused, as a bad token).
    admit: bool,
    /// Whether the client hears the server at all (else what the server sends is lost).
    client_deaf: bool,
    /// What the server sent a deaf client.
    lost: Vec<Frame>,
}

impl Pair {
    fn new(hello: Hello) -> Self {
        let now = Instant::now();
        Self {
            now,
            server: ServerSession::new(offer(), 7, config(), now + HANDSHAKE),
            client: ClientSession::new(hello, now),
            server_saw: vec![],
            client_saw: vec![],
            instant_method: "display.Echo",
            admit: true,
            client_deaf: false,
            lost: vec![],
        }
    }

    /// A pair whose handshake completed.
    fn open() -> Self {
        let mut pair = Self::new(hello(false));
        pair.drive();
        assert_eq!(pair.server.state(), State::Open);
        assert_eq!(pair.client.state(), State::Open);
        assert!(matches!(
            pair.client_saw.as_slice(),
            [Ok(ClientInput::Established(_))]
        ));
        pair.server_saw.clear();
        pair.client_saw.clear();
        pair
    }

    /// Moves frames both ways until neither end has anything to send.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(frame) = self.client.poll_transmit() {
                moved = true;
                let input = self.server.handle_frame(self.now, wire(frame));
                self.serve(input);
            }
            while let Some(frame) = self.server.poll_transmit() {
                moved = true;
                if self.client_deaf {
                    self.lost.push(frame);
                    continue;
                }
                let input = self.client.handle_frame(self.now, wire(frame));
                self.client_saw.push(input);
            }
            if !moved {
                return;
            }
        }
    }

    /// The server application: admits or refuses Hellos, answers or tracks requests.
    fn serve(&mut self, input: ServerInput<Task>) {
        match &input {
            ServerInput::Hello(_) if self.admit => {
                let session = self.server.accept(self.now).unwrap();
                assert_eq!(session.session_id, 7);
            }
            ServerInput::Hello(_) => self
                .server
                .refuse(Status::new(Code::Unauthenticated, "bad token")),
            ServerInput::Request(req) if req.method == self.instant_method => {
                // Answered by the application itself, straight onto the wire.
                let response = Response {
                    id: req.id,
                    code: Code::Ok as i32,
                    payload: req.payload.clone(),
                    ..Default::default()
                };
                let got = self
                    .client
                    .handle_frame(self.now, wire(Frame::new(Kind::Response(response))));
                self.client_saw.push(got);
            }
            ServerInput::Request(req) => assert!(self.server.track(req.id, Task(req.id))),
            _ => {}
        }
        self.server_saw.push(input);
    }

    /// The server application answers tracked call `id`.
    fn finish(&mut self, id: u64) {
        assert_eq!(self.server.finish(id), Some(Task(id)));
        let response = Response {
            id,
            code: Code::Ok as i32,
            ..Default::default()
        };
        let got = self
            .client
            .handle_frame(self.now, wire(Frame::new(Kind::Response(response))));
        self.client_saw.push(got);
    }

    /// Advances the clock by `d`, firing each end's timer whenever it is due on the way, as a
    /// driver's single timer would.
    fn advance(&mut self, d: Duration) -> (Vec<ServerTimeout>, Vec<ClientTimeout>) {
        let end = self.now + d;
        let (mut server, mut client) = (vec![], vec![]);
        loop {
            let next = [self.server.poll_timeout(), self.client.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
                let t = self.server.handle_timeout(self.now);
                if t != ServerTimeout::None {
                    server.push(t);
                }
            }
            if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                let t = self.client.handle_timeout(self.now);
                if t != ClientTimeout::None {
                    client.push(t);
                }
            }
            self.drive();
        }
        self.now = end;
        (server, client)
    }

    /// Starts a call of `method`, due `deadline` from now, and sends its request.
    fn call(&mut self, method: &str, deadline: Duration, tag: &'static str) -> u64 {
        let (id, _) = self.client.start_call(tag, self.now + deadline).unwrap();
        let request = Frame::new(Kind::Request(Request {
            id,
            method: method.into(),
            deadline_ms: deadline.as_millis() as u32,
            ..Default::default()
        }));
        let input = self.server.handle_frame(self.now, wire(request));
        self.serve(input);
        self.drive();
        id
    }

    fn client_frames_to_server(&mut self, frame: Frame) {
        let input = self.server.handle_frame(self.now, wire(frame));
        self.serve(input);
        self.drive();
    }

    fn server_frame_to_client(&mut self, frame: Frame) {
        let got = self.client.handle_frame(self.now, wire(frame));
        self.client_saw.push(got);
        self.drive();
    }
}

#[test]
fn handshake_succeeds_and_both_ends_agree() {
    let mut pair = Pair::new(hello(false));
    assert_eq!(pair.client.state(), State::Handshaking);
    assert_eq!(
        pair.client.start_call("x", pair.now),
        Err(NotOpen::Handshaking)
    );
    assert_eq!(pair.server.poll_timeout(), Some(pair.now + HANDSHAKE));
    pair.drive();
    match pair.server_saw.as_slice() {
        [ServerInput::Hello(h)] => assert_eq!(h.client_name, "renderer"),
        other => panic!("{other:?}"),
    }
    match pair.client_saw.as_slice() {
        [Ok(ClientInput::Established(s))] => {
            assert_eq!(s.session_id, 7);
            assert_eq!(s.namespace_version("display"), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.server.state(), State::Open);
    // Open: the server's next timer is its first keepalive, the client's its idle timeout.
    assert_eq!(pair.server.poll_timeout(), Some(pair.now + KEEPALIVE));
    assert_eq!(pair.client.poll_timeout(), Some(pair.now + IDLE));
}

#[test]
fn handshake_rejections_reach_the_client_with_their_reason() {
    // Refused by the protocol: a required namespace the server does not speak.
    let mut pair = Pair::new(hello(true));
    pair.drive();
    assert!(matches!(
        pair.server_saw.as_slice(),
        [ServerInput::Rejected(s)] if s.code == Code::NamespaceVersionMismatch
    ));
    assert_eq!(pair.server.state(), State::Closed);
    assert_eq!(pair.server.poll_timeout(), None);
    match pair.client_saw.as_slice() {
        [Err(ClientError::Handshake(HandshakeError::Rejected { status, .. }))] => {
            assert_eq!(status.code, Code::NamespaceVersionMismatch)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.client.state(), State::Closed);

    // Refused by the application (for example a bad token) after a valid Hello.
    let mut pair = Pair::new(hello(false));
    pair.admit = false;
    pair.drive();
    match pair.client_saw.as_slice() {
        [Err(ClientError::Handshake(HandshakeError::Rejected { status, .. }))] => {
            assert_eq!(*status, Status::new(Code::Unauthenticated, "bad token"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.server.accept(pair.now), None);
}

#[test]
fn a_first_frame_other_than_hello_or_welcome_ends_the_handshake() {
    let mut pair = Pair::new(hello(false));
    let _ = pair.client.poll_transmit(); // the Hello, never sent
    pair.client_frames_to_server(Frame::new(Kind::Ping(peerwire_proto::v1::Ping {
        nonce: 1,
    })));
    assert!(matches!(
        pair.server_saw.as_slice(),
        [ServerInput::Rejected(s)] if s.code == Code::ProtocolError && s.message.contains("Ping")
    ));
    // And the client takes nothing but Welcome or Reject before its session opens.
    let mut pair = Pair::new(hello(false));
    let got = pair
        .client
        .handle_frame(pair.now, wire(Frame::new(Kind::Event(Event::default()))));
    assert!(matches!(
        got,
        Err(ClientError::Handshake(HandshakeError::UnexpectedFrame(
            "Event"
        )))
    ));
    assert_eq!(pair.client.state(), State::Closed);
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn no_hello_within_the_handshake_timeout_is_rejected() {
    let mut pair = Pair::new(hello(false));
    let _ = pair.client.poll_transmit(); // a client that never sends its Hello
    let (server, _) = pair.advance(HANDSHAKE - Duration::from_millis(1));
    assert!(server.is_empty());
    let (server, _) = pair.advance(Duration::from_millis(1));
    match server.as_slice() {
        [ServerTimeout::Handshake(s)] => {
            assert_eq!(s.code, Code::HandshakeTimeout);
            assert!(s.message.contains("5s"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
    match pair.client_saw.as_slice() {
        [Err(ClientError::Handshake(HandshakeError::Rejected { status, .. }))] => {
            assert_eq!(status.code, Code::HandshakeTimeout)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn calls_get_their_own_responses() {
    let mut pair = Pair::open();
    let a = pair.call("display.Echo", Duration::from_secs(1), "a");
    let b = pair.call("display.Slow", Duration::from_secs(1), "b");
    let c = pair.call("display.Slow", Duration::from_secs(1), "c");
    assert_eq!((a, b, c), (1, 2, 3));
    assert_eq!(pair.server.in_flight(), 2);
    assert_eq!(pair.client.pending(), 2);
    pair.finish(c);
    pair.finish(b);
    let answered: Vec<_> = pair
        .client_saw
        .iter()
        .map(|input| match input {
            Ok(ClientInput::Response { call, response }) => (*call, response.id),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(answered, [("a", 1), ("c", 3), ("b", 2)]);
    assert_eq!(pair.client.pending(), 0);
    // A response to no pending call (late, or forged) is dropped, not mistaken for another's.
    pair.server_frame_to_client(Frame::new(Kind::Response(Response {
        id: 99,
        ..Default::default()
    })));
    assert!(matches!(
        pair.client_saw.last(),
        Some(Ok(ClientInput::None))
    ));
}

#[test]
fn the_in_flight_limit_refuses_with_resource_exhausted() {
    let mut pair = Pair::open();
    pair.call("display.Slow", Duration::from_secs(5), "1");
    pair.call("display.Slow", Duration::from_secs(5), "2");
    let third = pair.call("display.Slow", Duration::from_secs(5), "3");
    assert!(matches!(
        pair.server_saw.last(),
        Some(ServerInput::Refused { id, why: Refusal::TooManyInFlight }) if *id == third
    ));
    match pair.client_saw.last() {
        Some(Ok(ClientInput::Response { call, response })) => {
            assert_eq!(*call, "3");
            assert_eq!(response.code, Code::ResourceExhausted as i32);
            assert!(response.message.contains("max_in_flight limit of 2"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_call_past_its_due_time_expires_and_is_cancelled_on_the_server() {
    let mut pair = Pair::open();
    let early = pair.call("display.Slow", Duration::from_millis(100), "early");
    let late = pair.call("display.Slow", Duration::from_millis(300), "late");
    // One timer for all calls: armed for the earliest due time.
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.now + Duration::from_millis(100))
    );
    let (_, client) = pair.advance(Duration::from_millis(150));
    assert!(client.is_empty());
    assert_eq!(pair.client.poll_expired(), Some((early, "early")));
    assert_eq!(pair.client.poll_expired(), None);
    // The Cancel reached the server, which stops the call and answers CANCELLED; the client,
    // no longer waiting, drops that answer.
    assert!(matches!(
        pair.server_saw.last(),
        Some(ServerInput::Cancelled { id, call: Task(t) }) if *id == early && *t == early
    ));
    assert!(matches!(
        pair.client_saw.last(),
        Some(Ok(ClientInput::None))
    ));
    assert_eq!(pair.server.in_flight(), 1);
    // Re-armed for the next call due.
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.now + Duration::from_millis(150))
    );
    // A caller that gives up (drops its call) cancels it too.
    assert!(pair.client.abandon_call(late));
    assert!(!pair.client.abandon_call(late));
    pair.drive();
    assert!(matches!(
        pair.server_saw.last(),
        Some(ServerInput::Cancelled { id, .. }) if *id == late
    ));
    assert_eq!(pair.server.in_flight(), 0);
    // A Cancel for nothing in flight is ignored.
    pair.client_frames_to_server(Frame::new(Kind::Cancel(peerwire_proto::v1::Cancel {
        id: 42,
    })));
    assert!(matches!(pair.server_saw.last(), Some(ServerInput::None)));
}

#[test]
fn an_earlier_call_rearms_the_timer_a_later_one_does_not() {
    let mut pair = Pair::open();
    let now = pair.now;
    assert_eq!(
        pair.client.start_call("a", now + Duration::from_secs(2)),
        Ok((1, true))
    );
    assert_eq!(
        pair.client.start_call("b", now + Duration::from_secs(3)),
        Ok((2, false))
    );
    assert_eq!(
        pair.client.start_call("c", now + Duration::from_secs(1)),
        Ok((3, true))
    );
    // A timer that fires early (nothing due) does nothing.
    assert_eq!(
        pair.client.handle_timeout(now + Duration::from_millis(500)),
        ClientTimeout::None
    );
    assert_eq!(pair.client.poll_expired(), None);
    assert_eq!(pair.client.poll_transmit(), None);
    // A call never sent is forgotten without a Cancel.
    assert_eq!(pair.client.forget_call(2), Some("b"));
    assert_eq!(pair.client.poll_transmit(), None);
}

#[test]
fn a_quiet_client_is_pinged_and_a_live_one_stays() {
    let mut pair = Pair::open();
    // Nothing before the keepalive interval.
    let (server, client) = pair.advance(KEEPALIVE - Duration::from_millis(1));
    assert!(server.is_empty() && client.is_empty() && pair.client_saw.is_empty());
    // Then a Ping, which the client answers (the Pong counts as traffic from it).
    pair.advance(Duration::from_millis(1));
    assert!(matches!(
        pair.client_saw.as_slice(),
        [Ok(ClientInput::None)]
    ));
    // Well past the idle timeout, pinging all along, the session stays open on both ends.
    let (server, client) = pair.advance(IDLE * 3);
    assert!(server.is_empty(), "{server:?}");
    assert!(client.is_empty(), "{client:?}");
    assert_eq!(pair.server.state(), State::Open);
    assert_eq!(pair.client.state(), State::Open);
    assert!(pair.client_saw.len() >= 3, "{}", pair.client_saw.len());
}

#[test]
fn a_silent_client_is_pinged_then_closed_with_idle_timeout() {
    let mut pair = Pair::open();
    pair.client_deaf = true;
    let (server, client) = pair.advance(IDLE - Duration::from_millis(1));
    assert!(server.is_empty() && client.is_empty());
    let (server, client) = pair.advance(Duration::from_millis(1));
    match server.as_slice() {
        [ServerTimeout::Idle(s)] => {
            assert_eq!(s.code, Code::IdleTimeout);
            assert_eq!(s.message, "no frame for 8s; the idle timeout is 8s");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.server.state(), State::Closed);
    assert_eq!(pair.server.poll_timeout(), None);
    // The client heard nothing either (its pings were lost), so it gave up at the same time.
    assert!(matches!(client.as_slice(), [ClientTimeout::Idle(_)]));
    // On the wire: a Ping after 2, 4 and 6 s of silence, then the Goodbye.
    let sent: Vec<_> = pair.lost.iter().map(Frame::kind_name).collect();
    assert_eq!(sent, ["Ping", "Ping", "Ping", "Goodbye"]);
    match &pair.lost[3].kind {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, Code::IdleTimeout as i32),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_server_pings_at_its_keepalive_cadence() {
    let mut pair = Pair::open();
    let start = pair.now;
    let mut sent = vec![];
    // The server's timer alone, nothing received: pings until the idle timeout is next.
    while let Some(at) = pair.server.poll_timeout().filter(|t| *t < start + IDLE) {
        pair.now = at;
        assert_eq!(pair.server.handle_timeout(at), ServerTimeout::None);
        while let Some(f) = pair.server.poll_transmit() {
            match f.kind {
                Some(Kind::Ping(p)) => sent.push(((at - start).as_secs(), p.nonce)),
                other => panic!("{other:?}"),
            }
        }
    }
    // First after 2 s of silence, then every 2 s (= min(keepalive 2 s, idle 8 s / 4)).
    assert_eq!(sent, [(2, 1), (4, 2), (6, 3)]);
    // A timer that fires early (traffic moved the deadlines) does nothing.
    pair.client_frames_to_server(Frame::new(Kind::Pong(Default::default())));
    assert_eq!(pair.server.handle_timeout(pair.now), ServerTimeout::None);
    assert_eq!(pair.server.poll_transmit(), None);
    assert_eq!(pair.server.poll_timeout(), Some(pair.now + KEEPALIVE));
}

#[test]
fn a_silent_server_is_given_up_by_the_client() {
    let mut pair = Pair::open();
    // The server's pings never arrive: only the client's timer runs.
    let at = pair.client.poll_timeout().unwrap();
    assert_eq!(at, pair.now + IDLE);
    assert_eq!(
        pair.client.handle_timeout(at - Duration::from_millis(1)),
        ClientTimeout::None
    );
    assert_eq!(pair.client.handle_timeout(at), ClientTimeout::Idle(IDLE));
    assert_eq!(pair.client.state(), State::Closed);
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn a_lost_connection_hands_back_every_pending_call() {
    let mut pair = Pair::open();
    let a = pair.call("display.Slow", Duration::from_secs(5), "a");
    let b = pair.call("display.Slow", Duration::from_secs(9), "b");
    let mut failed: Vec<_> = pair.client.lost().collect();
    failed.sort();
    assert_eq!(failed, [(a, "a"), (b, "b")]);
    assert_eq!(pair.client.state(), State::Closed);
    assert_eq!(pair.client.pending(), 0);
    // Nothing is due any more, and a late drop of a call sends no Cancel.
    assert_eq!(pair.client.poll_timeout(), None);
    assert!(!pair.client.abandon_call(a));
    assert_eq!(pair.client.poll_transmit(), None);
}

#[test]
fn frames_a_role_may_not_receive_close_the_session() {
    // The server receives a Welcome (a server's frame) after the handshake.
    let mut pair = Pair::open();
    pair.client_frames_to_server(Frame::new(Kind::Welcome(Welcome::default())));
    match pair.server_saw.as_slice() {
        [ServerInput::Violation(s)] => {
            assert_eq!(s.code, Code::ProtocolError);
            assert_eq!(s.message, "unexpected Welcome frame after the handshake");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.server.state(), State::Closed);
    assert!(!pair.server.reading());
    // Its Goodbye told the client why.
    match pair.client_saw.as_slice() {
        [Ok(ClientInput::Goodbye(s))] => assert_eq!(s.code, Code::ProtocolError),
        other => panic!("{other:?}"),
    }
    // Nothing more is taken from a closed session.
    pair.client_frames_to_server(Frame::new(Kind::Ping(Default::default())));
    assert!(matches!(pair.server_saw.last(), Some(ServerInput::None)));
    assert_eq!(pair.server.poll_transmit(), None);

    // The client receives a Request (a client's frame).
    let mut pair = Pair::open();
    pair.server_frame_to_client(Frame::new(Kind::Request(Request::default())));
    assert!(matches!(
        pair.client_saw.as_slice(),
        [Err(ClientError::Unexpected("Request"))]
    ));
    assert_eq!(pair.client.state(), State::Closed);
    assert_eq!(pair.client.start_call("x", pair.now), Err(NotOpen::Closed));
}

#[test]
fn duplicate_and_zero_request_ids_are_protocol_errors() {
    let mut pair = Pair::open();
    let id = pair.call("display.Slow", Duration::from_secs(5), "slow");
    pair.client_frames_to_server(Frame::new(Kind::Request(Request {
        id,
        method: "display.Slow".into(),
        ..Default::default()
    })));
    match pair.server_saw.last() {
        Some(ServerInput::Violation(s)) => {
            assert_eq!(s.message, format!("request id {id} is already in flight"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pair.client_saw.last(),
        Some(Ok(ClientInput::Goodbye(s))) if s.code == Code::ProtocolError
    ));

    let mut pair = Pair::open();
    pair.client_frames_to_server(Frame::new(Kind::Request(Request {
        id: 0,
        method: "display.Echo".into(),
        ..Default::default()
    })));
    assert!(matches!(
        pair.server_saw.last(),
        Some(ServerInput::Violation(s)) if s.message == "request id 0 is not allowed"
    ));
}

#[test]
fn the_clients_goodbye_lets_calls_in_flight_finish() {
    let mut pair = Pair::open();
    let id = pair.call("display.Slow", Duration::from_secs(5), "slow");
    let status = Status::new(Code::Ok, "client closed");
    // The client says Goodbye: it starts nothing new, its pending call still waits.
    pair.client.close(&status);
    assert_eq!(pair.client.state(), State::Closing);
    assert_eq!(pair.client.start_call("x", pair.now), Err(NotOpen::Closed));
    assert_eq!(pair.client.pending(), 1);
    pair.drive();
    match pair.server_saw.last() {
        Some(ServerInput::Goodbye(g)) => assert_eq!(g.reason, "client closed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.server.state(), State::Closing);
    assert!(!pair.server.reading());
    // The server's call may still finish within the grace period, and its answer arrives ...
    pair.finish(id);
    assert!(matches!(
        pair.client_saw.last(),
        Some(Ok(ClientInput::Response { call: "slow", .. }))
    ));
    // ... and once the connection is gone, whatever still waits is handed back to be failed.
    pair.client.start_call("never", pair.now).unwrap_err();
    assert_eq!(pair.client.lost().count(), 0);
    assert_eq!(pair.client.state(), State::Closed);
    // ... after which whatever is left is abandoned.
    pair.server.track(9, Task(9));
    let (server, _) = pair.advance(GRACE);
    assert_eq!(server, [ServerTimeout::GraceEnded]);
    assert_eq!(pair.server.abandon().collect::<Vec<_>>(), [(9, Task(9))]);
    assert_eq!(pair.server.state(), State::Closed);
}

#[test]
fn the_servers_goodbye_stops_new_calls_on_both_ends() {
    let mut pair = Pair::open();
    let id = pair.call("display.Slow", Duration::from_secs(5), "slow");
    pair.server.shutdown(pair.now);
    pair.drive();
    match pair.client_saw.last() {
        Some(Ok(ClientInput::Goodbye(s))) => {
            assert_eq!(
                *s,
                Status::new(Code::ShuttingDown, "the server is shutting down")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pair.client.goodbye().map(|s| s.code),
        Some(Code::ShuttingDown)
    );
    // The client starts nothing new ...
    match pair.client.start_call("x", pair.now) {
        Err(e @ NotOpen::Closing(_)) => assert_eq!(
            e.to_string(),
            "the server is closing the session: SHUTTING_DOWN: the server is shutting down"
        ),
        other => panic!("{other:?}"),
    }
    // ... and a request that crossed the Goodbye is refused by the server.
    pair.client_frames_to_server(Frame::new(Kind::Request(Request {
        id: 50,
        method: "display.Echo".into(),
        ..Default::default()
    })));
    assert!(matches!(
        pair.server_saw.last(),
        Some(ServerInput::Refused {
            id: 50,
            why: Refusal::Closing
        })
    ));
    // A second shutdown says nothing more.
    pair.server.shutdown(pair.now);
    assert_eq!(pair.server.poll_transmit(), None);
    // The client still says its own Goodbye when it closes, once.
    pair.client.close(&Status::new(Code::Ok, "client closed"));
    pair.client.close(&Status::new(Code::Ok, "client closed"));
    let goodbyes: Vec<_> = std::iter::from_fn(|| pair.client.poll_transmit()).collect();
    assert_eq!(goodbyes.len(), 1);
    assert!(matches!(&goodbyes[0].kind, Some(Kind::Goodbye(g)) if g.reason == "client closed"));
    // The call in flight is still answered.
    pair.finish(id);
    assert!(matches!(
        pair.client_saw.last(),
        Some(Ok(ClientInput::Response { call: "slow", .. }))
    ));
    // Client events still reach the server while it drains.
    pair.client_frames_to_server(Frame::new(Kind::Event(Event {
        topic: "display.Touch".into(),
        ..Default::default()
    })));
    assert!(
        matches!(pair.server_saw.last(), Some(ServerInput::Event(e)) if e.topic == "display.Touch")
    );
}
