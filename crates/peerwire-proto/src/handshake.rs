//! The handshake state machines, sans I/O.
//!
//! ```text
//! client                                   server
//!   | ---- Hello{versions, namespaces} ----> |   first frame, <= 64 KiB
//!   | <--- Welcome{version, limits, ns} ---- |   or Reject{code, reason} then close
//! ```
//!
//! [`ServerHandshake`] validates the client's `Hello`, picks the highest common protocol
//! version, settles every namespace the client listed and answers `Welcome`, or `Reject` when no
//! protocol version is shared, a *required* namespace cannot be spoken, or the `Hello` is
//! malformed. [`ClientHandshake`] builds the `Hello` and checks the answer. Both produce a
//! [`Session`]: the agreed version, limits and namespaces, which then decides for every method
//! or topic whether it may be used (a mismatch is reported on the call, never dropped silently).
//!
//! Neither does I/O or reads a clock: the caller moves the frames and runs the timeout.

use std::collections::BTreeMap;

use crate::names::{self, validate_namespace};
use crate::v1::{
    Code, Frame, Hello, Limits, NamespaceAgreement, NamespaceVersions, Reject, Welcome, frame::Kind,
};
use crate::{HANDSHAKE_MAX_FRAME_SIZE, RESERVED_NAMESPACE, SUPPORTED_PROTOCOL_VERSIONS, Status};

/// Most protocol versions a `Hello` may list.
pub const MAX_PROTOCOL_VERSIONS: usize = 16;
/// Most namespaces a `Hello` may list.
pub const MAX_NAMESPACES: usize = 64;
/// Most versions per namespace a `Hello` may list.
pub const MAX_VERSIONS_PER_NAMESPACE: usize = 16;
/// Longest client or server name, in bytes.
pub const MAX_PEER_NAME_LEN: usize = 128;
/// Longest session token, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Smallest frame limit a session may agree on (room for a `Goodbye` with a reason).
pub const MIN_FRAME_SIZE: u32 = 1024;

/// What the server offers in a handshake.
#[derive(Debug, Clone)]
pub struct ServerOffer {
    /// Name the server gives in `Welcome`.
    pub server_name: String,
    /// Namespaces the server speaks and at which versions.
    pub namespaces: BTreeMap<String, Vec<u32>>,
    /// The server's limits; `max_frame_size` is lowered to the client's if the client asks.
    pub limits: Limits,
}

/// The result of a successful handshake, the same on both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Agreed envelope protocol version.
    pub protocol_version: u32,
    /// Server-assigned id of the connection.
    pub session_id: u64,
    /// Limits in force.
    pub limits: Limits,
    /// Every namespace the client listed, with the server's verdict.
    pub namespaces: Vec<NamespaceAgreement>,
}

impl Session {
    /// Whether `name` (`namespace.Name`) may be used on this session. The reserved `peerwire`
    /// namespace always may; other namespaces must have been listed by the client and agreed.
    pub fn check_name(&self, name: &str) -> Result<(), Status> {
        let ns = names::namespace_of(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if ns == RESERVED_NAMESPACE {
            return Ok(());
        }
        match self.namespaces.iter().find(|a| a.namespace == ns) {
            Some(a) if a.code == Code::Ok as i32 => Ok(()),
            Some(a) => Err(Status::new(
                Code::NamespaceVersionMismatch,
                format!("{name}: {}", a.reason),
            )),
            None => Err(Status::new(
                Code::NamespaceVersionMismatch,
                format!(
                    "{name}: namespace {ns:?} was not announced in Hello, so no version of it was agreed"
                ),
            )),
        }
    }

    /// The agreed version of a namespace, if any.
    pub fn namespace_version(&self, ns: &str) -> Option<u32> {
        self.namespaces
            .iter()
            .find(|a| a.namespace == ns && a.code == Code::Ok as i32)
            .map(|a| a.version)
    }

    /// The frame size limit in force after the handshake.
    pub fn max_frame_size(&self) -> u32 {
        self.limits.max_frame_size
    }
}

/// What the server sends back after the client's first frame.
#[derive(Debug, Clone)]
pub enum ServerOutcome {
    /// Send `welcome`, then serve the session.
    Accept {
        /// The frame to send.
        welcome: Frame,
        /// The agreed session.
        session: Session,
        /// The client's `Hello`, for the server's own checks (token, name).
        hello: Hello,
    },
    /// Send `reject`, then close.
    Reject {
        /// The frame to send.
        reject: Frame,
        /// The same, as a status for the server's log.
        status: Status,
    },
}

/// Server side of the handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    offer: ServerOffer,
    session_id: u64,
    done: bool,
}

fn reject(code: Code, reason: String, namespaces: Vec<NamespaceAgreement>) -> ServerOutcome {
    let status = Status::new(code, reason.clone());
    ServerOutcome::Reject {
        reject: Frame::new(Kind::Reject(Reject {
            code: code as i32,
            reason,
            supported_versions: SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
            namespaces,
        })),
        status,
    }
}

fn validate_hello(hello: &Hello) -> Result<(), String> {
    if hello.protocol_versions.is_empty() {
        return Err("Hello lists no protocol version".into());
    }
    if hello.protocol_versions.len() > MAX_PROTOCOL_VERSIONS {
        return Err(format!(
            "Hello lists {} protocol versions, the maximum is {MAX_PROTOCOL_VERSIONS}",
            hello.protocol_versions.len()
        ));
    }
    if hello.client_name.len() > MAX_PEER_NAME_LEN {
        return Err(format!(
            "client name is {} bytes, the maximum is {MAX_PEER_NAME_LEN}",
            hello.client_name.len()
        ));
    }
    if hello.session_token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "session token is {} bytes, the maximum is {MAX_TOKEN_LEN}",
            hello.session_token.len()
        ));
    }
    if hello.namespaces.len() > MAX_NAMESPACES {
        return Err(format!(
            "Hello lists {} namespaces, the maximum is {MAX_NAMESPACES}",
            hello.namespaces.len()
        ));
    }
    for (i, ns) in hello.namespaces.iter().enumerate() {
        if !validate_namespace(&ns.namespace) {
            return Err(format!("invalid namespace name {:?}", ns.namespace));
        }
        if ns.namespace == RESERVED_NAMESPACE {
            return Err(format!("namespace {RESERVED_NAMESPACE:?} is reserved"));
        }
        if hello
            .namespaces
            .iter()
            .take(i)
            .any(|o| o.namespace == ns.namespace)
        {
            return Err(format!("namespace {:?} is listed twice", ns.namespace));
        }
        if ns.versions.is_empty() || ns.versions.len() > MAX_VERSIONS_PER_NAMESPACE {
            return Err(format!(
                "namespace {:?} lists {} versions (1 to {MAX_VERSIONS_PER_NAMESPACE} allowed)",
                ns.namespace,
                ns.versions.len()
            ));
        }
    }
    Ok(())
}

fn settle(ns: &NamespaceVersions, server: Option<&Vec<u32>>) -> NamespaceAgreement {
    let mut agreement = NamespaceAgreement {
        namespace: ns.namespace.clone(),
        version: 0,
        server_versions: server.cloned().unwrap_or_default(),
        code: Code::Ok as i32,
        reason: String::new(),
    };
    match server {
        None => {
            agreement.code = Code::NotFound as i32;
            agreement.reason = format!("the server does not know namespace {:?}", ns.namespace);
        }
        Some(versions) => match ns.versions.iter().filter(|v| versions.contains(v)).max() {
            Some(v) => agreement.version = *v,
            None => {
                agreement.code = Code::NamespaceVersionMismatch as i32;
                agreement.reason = format!(
                    "namespace {:?}: the client speaks versions {:?}, the server speaks {:?}",
                    ns.namespace, ns.versions, versions
                );
            }
        },
    }
    agreement
}

impl ServerHandshake {
    /// A handshake for the connection that will get `session_id`.
    pub fn new(offer: ServerOffer, session_id: u64) -> Self {
        Self {
            offer,
            session_id,
            done: false,
        }
    }

    /// The frame limit while waiting for `Hello`.
    pub fn max_frame_size(&self) -> u32 {
        HANDSHAKE_MAX_FRAME_SIZE
    }

    /// Takes the client's first frame and says what to answer. Any frame but a valid `Hello`,
    /// or a second call, is a rejection.
    pub fn receive(&mut self, frame: Frame) -> ServerOutcome {
        if std::mem::replace(&mut self.done, true) {
            return reject(
                Code::ProtocolError,
                "handshake already finished".into(),
                vec![],
            );
        }
        let hello = match frame.kind {
            Some(Kind::Hello(hello)) => hello,
            _ => {
                return reject(
                    Code::ProtocolError,
                    format!(
                        "expected Hello as the first frame, got {}",
                        frame.kind_name()
                    ),
                    vec![],
                );
            }
        };
        if let Err(reason) = validate_hello(&hello) {
            return reject(Code::InvalidArgument, reason, vec![]);
        }
        let Some(version) = SUPPORTED_PROTOCOL_VERSIONS
            .iter()
            .copied()
            .find(|v| hello.protocol_versions.contains(v))
        else {
            return reject(
                Code::UnsupportedVersion,
                format!(
                    "no common protocol version: the client speaks {:?}, the server speaks {:?}",
                    hello.protocol_versions, SUPPORTED_PROTOCOL_VERSIONS
                ),
                vec![],
            );
        };
        let namespaces: Vec<_> = hello
            .namespaces
            .iter()
            .map(|ns| settle(ns, self.offer.namespaces.get(&ns.namespace)))
            .collect();
        let failed_required: Vec<_> = hello
            .namespaces
            .iter()
            .zip(&namespaces)
            .filter(|(ns, a)| ns.required && a.code != Code::Ok as i32)
            .map(|(_, a)| a.reason.clone())
            .collect();
        if !failed_required.is_empty() {
            return reject(
                Code::NamespaceVersionMismatch,
                format!(
                    "required namespaces unavailable: {}",
                    failed_required.join("; ")
                ),
                namespaces,
            );
        }
        let mut limits = self.offer.limits;
        if hello.max_frame_size != 0 {
            limits.max_frame_size = limits
                .max_frame_size
                .min(hello.max_frame_size.max(MIN_FRAME_SIZE));
        }
        let welcome = Welcome {
            protocol_version: version,
            session_id: self.session_id,
            server_name: self.offer.server_name.clone(),
            limits: Some(limits),
            namespaces: namespaces.clone(),
        };
        ServerOutcome::Accept {
            welcome: Frame::new(Kind::Welcome(welcome)),
            session: Session {
                protocol_version: version,
                session_id: self.session_id,
                limits,
                namespaces,
            },
            hello,
        }
    }
}

/// Why the client's handshake failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server refused the session.
    #[error("server rejected the session: {status}")]
    Rejected {
        /// Code and reason given by the server.
        status: Status,
        /// The server's verdict on each namespace, when the rejection is about namespaces.
        namespaces: Vec<NamespaceAgreement>,
        /// Protocol versions the server speaks.
        supported_versions: Vec<u32>,
    },
    /// The server answered with something other than `Welcome` or `Reject`.
    #[error("expected Welcome or Reject, got {0}")]
    UnexpectedFrame(&'static str),
    /// The `Welcome` is not consistent with the `Hello`.
    #[error("invalid Welcome: {0}")]
    InvalidWelcome(String),
    /// `receive` was called after the handshake finished.
    #[error("handshake already finished")]
    AlreadyDone,
}

/// Client side of the handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    hello: Hello,
    done: bool,
}

impl ClientHandshake {
    /// A handshake that will send `hello`. Empty `protocol_versions` are filled with
    /// [`SUPPORTED_PROTOCOL_VERSIONS`].
    pub fn new(mut hello: Hello) -> Self {
        if hello.protocol_versions.is_empty() {
            hello.protocol_versions = SUPPORTED_PROTOCOL_VERSIONS.to_vec();
        }
        Self { hello, done: false }
    }

    /// The `Hello` frame to send first.
    pub fn hello_frame(&self) -> Frame {
        Frame::new(Kind::Hello(self.hello.clone()))
    }

    /// Takes the server's answer.
    pub fn receive(&mut self, frame: Frame) -> Result<Session, HandshakeError> {
        if std::mem::replace(&mut self.done, true) {
            return Err(HandshakeError::AlreadyDone);
        }
        let welcome = match frame.kind {
            Some(Kind::Welcome(w)) => w,
            Some(Kind::Reject(r)) => {
                let status = Status::from_wire(r.code, &r.reason)
                    .err()
                    .unwrap_or_else(|| Status::new(Code::Unknown, r.reason.clone()));
                return Err(HandshakeError::Rejected {
                    status,
                    namespaces: r.namespaces,
                    supported_versions: r.supported_versions,
                });
            }
            _ => return Err(HandshakeError::UnexpectedFrame(frame.kind_name())),
        };
        if !self
            .hello
            .protocol_versions
            .contains(&welcome.protocol_version)
        {
            return Err(HandshakeError::InvalidWelcome(format!(
                "server chose protocol version {} which the client did not offer",
                welcome.protocol_version
            )));
        }
        let Some(limits) = welcome.limits else {
            return Err(HandshakeError::InvalidWelcome("no limits".into()));
        };
        if limits.max_frame_size < MIN_FRAME_SIZE {
            return Err(HandshakeError::InvalidWelcome(format!(
                "max_frame_size {} is below the minimum {MIN_FRAME_SIZE}",
                limits.max_frame_size
            )));
        }
        if welcome.namespaces.len() != self.hello.namespaces.len()
            || welcome
                .namespaces
                .iter()
                .zip(&self.hello.namespaces)
                .any(|(a, n)| {
                    a.namespace != n.namespace
                        || (a.code == Code::Ok as i32 && !n.versions.contains(&a.version))
                })
        {
            return Err(HandshakeError::InvalidWelcome(
                "namespace answers do not match the namespaces offered".into(),
            ));
        }
        Ok(Session {
            protocol_version: welcome.protocol_version,
            session_id: welcome.session_id,
            limits,
            namespaces: welcome.namespaces,
        })
    }
}

/// Fuzzing entry point: decodes `data` as a frame (as the codec would hand it over) and runs
/// the server's handshake on it, then a client's on whatever the server answered. Never panics.
pub fn fuzz_handshake(data: &[u8]) {
    use prost::Message;
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let offer = ServerOffer {
        server_name: "fuzz".into(),
        namespaces: BTreeMap::from([("display".to_string(), vec![1, 2])]),
        limits: Limits {
            max_frame_size: 1 << 20,
            max_in_flight: 8,
            default_deadline_ms: 1000,
            max_deadline_ms: 2000,
            keepalive_interval_ms: 1000,
            idle_timeout_ms: 3000,
        },
    };
    let answer = match ServerHandshake::new(offer, 1).receive(frame.clone()) {
        ServerOutcome::Accept {
            welcome, session, ..
        } => {
            let _ = session.check_name("display.X");
            welcome
        }
        ServerOutcome::Reject { reject, .. } => reject,
    };
    if let Some(Kind::Hello(hello)) = frame.kind {
        let _ = ClientHandshake::new(hello).receive(answer);
    }
    let _ = ClientHandshake::new(Hello::default()).receive(Frame::decode(data).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn offer() -> ServerOffer {
        ServerOffer {
            server_name: "test".into(),
            namespaces: BTreeMap::from([
                ("display".to_string(), vec![1, 2]),
                ("system".to_string(), vec![3]),
            ]),
            limits: Limits {
                max_frame_size: 1 << 20,
                max_in_flight: 64,
                default_deadline_ms: 5000,
                max_deadline_ms: 60000,
                keepalive_interval_ms: 10000,
                idle_timeout_ms: 30000,
            },
        }
    }

    fn ns(name: &str, versions: &[u32], required: bool) -> NamespaceVersions {
        NamespaceVersions {
            namespace: name.into(),
            versions: versions.to_vec(),
            required,
        }
    }

    fn hello(namespaces: Vec<NamespaceVersions>) -> Hello {
        Hello {
            protocol_versions: vec![],
            client_name: "renderer".into(),
            namespaces,
            max_frame_size: 0,
            session_token: vec![],
        }
    }

    /// Runs both state machines against each other, as the in-memory pair of the tests.
    fn pair(h: Hello) -> (ServerOutcome, Result<Session, HandshakeError>) {
        let mut client = ClientHandshake::new(h);
        let mut server = ServerHandshake::new(offer(), 42);
        let out = server.receive(client.hello_frame());
        let answer = match &out {
            ServerOutcome::Accept { welcome, .. } => welcome.clone(),
            ServerOutcome::Reject { reject, .. } => reject.clone(),
        };
        (out, client.receive(answer))
    }

    #[test]
    fn agrees_on_highest_common_versions() {
        let (out, session) = pair(hello(vec![ns("display", &[1, 2, 3], true)]));
        let session = session.unwrap();
        assert!(matches!(out, ServerOutcome::Accept { session: ref s, .. } if *s == session));
        assert_eq!(session.protocol_version, 1);
        assert_eq!(session.session_id, 42);
        assert_eq!(session.namespace_version("display"), Some(2));
        assert!(session.check_name("display.GetState").is_ok());
        assert!(session.check_name("peerwire.Subscribe").is_ok());
    }

    #[test]
    fn optional_mismatch_is_reported_in_welcome_and_on_the_call() {
        let (_, session) = pair(hello(vec![
            ns("display", &[2], false),
            ns("system", &[1, 2], false),
            ns("alexa", &[1], false),
        ]));
        let session = session.unwrap();
        let sys = &session.namespaces[1];
        assert_eq!(sys.code, Code::NamespaceVersionMismatch as i32);
        assert_eq!(sys.server_versions, vec![3]);
        assert!(
            sys.reason.contains("[1, 2]") && sys.reason.contains("[3]"),
            "{}",
            sys.reason
        );
        assert_eq!(session.namespaces[2].code, Code::NotFound as i32);
        let err = session.check_name("system.SetState").unwrap_err();
        assert_eq!(err.code, Code::NamespaceVersionMismatch);
        assert!(err.message.contains("system.SetState"));
        let err = session.check_name("window.Show").unwrap_err();
        assert!(err.message.contains("not announced"));
        assert_eq!(
            session.check_name("bad name").unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn required_mismatch_is_rejected_with_reason() {
        let (out, session) = pair(hello(vec![ns("system", &[1], true)]));
        assert!(matches!(out, ServerOutcome::Reject { .. }));
        match session.unwrap_err() {
            HandshakeError::Rejected {
                status, namespaces, ..
            } => {
                assert_eq!(status.code, Code::NamespaceVersionMismatch);
                assert!(status.message.contains("system"));
                assert_eq!(namespaces[0].server_versions, vec![3]);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn unknown_protocol_version_is_rejected() {
        let mut h = hello(vec![]);
        h.protocol_versions = vec![7, 9];
        let (_, session) = pair(h);
        match session.unwrap_err() {
            HandshakeError::Rejected {
                status,
                supported_versions,
                ..
            } => {
                assert_eq!(status.code, Code::UnsupportedVersion);
                assert_eq!(supported_versions, SUPPORTED_PROTOCOL_VERSIONS);
                assert!(status.message.contains("[7, 9]"));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn first_frame_must_be_hello() {
        let mut server = ServerHandshake::new(offer(), 1);
        let out = server.receive(Frame::new(Kind::Ping(v1::Ping { nonce: 1 })));
        match out {
            ServerOutcome::Reject { status, .. } => {
                assert_eq!(status.code, Code::ProtocolError);
                assert!(status.message.contains("Ping"));
            }
            _ => panic!("accepted a Ping"),
        }
        // And a second frame is refused too, whatever it is.
        let again = server.receive(ClientHandshake::new(hello(vec![])).hello_frame());
        assert!(matches!(again, ServerOutcome::Reject { .. }));
    }

    #[test]
    fn malformed_hellos_are_rejected() {
        let cases = [
            hello(vec![ns("Bad", &[1], false)]),
            hello(vec![ns("peerwire", &[1], false)]),
            hello(vec![ns("display", &[1], false), ns("display", &[2], false)]),
            hello(vec![ns("display", &[], false)]),
            hello((0..65).map(|i| ns(&format!("n{i}"), &[1], false)).collect()),
            Hello {
                client_name: "x".repeat(200),
                ..hello(vec![])
            },
            Hello {
                session_token: vec![0; 2000],
                ..hello(vec![])
            },
        ];
        for h in cases {
            let (_, session) = pair(h.clone());
            match session {
                Err(HandshakeError::Rejected { status, .. }) => {
                    assert_eq!(status.code, Code::InvalidArgument, "{h:?}")
                }
                other => panic!("{h:?} -> {other:?}"),
            }
        }
    }

    #[test]
    fn client_frame_limit_lowers_the_session_limit() {
        let mut h = hello(vec![]);
        h.max_frame_size = 4096;
        let (_, session) = pair(h);
        assert_eq!(session.unwrap().max_frame_size(), 4096);
        let mut h = hello(vec![]);
        h.max_frame_size = 10;
        assert_eq!(pair(h).1.unwrap().max_frame_size(), MIN_FRAME_SIZE);
    }

    #[test]
    fn client_checks_the_welcome() {
        let mut client = ClientHandshake::new(hello(vec![ns("display", &[1], false)]));
        let bad = Welcome {
            protocol_version: 9,
            limits: Some(offer().limits),
            ..Default::default()
        };
        assert!(matches!(
            client.receive(Frame::new(Kind::Welcome(bad))),
            Err(HandshakeError::InvalidWelcome(_))
        ));
        assert_eq!(
            client.receive(Frame::new(Kind::Ping(v1::Ping { nonce: 0 }))),
            Err(HandshakeError::AlreadyDone)
        );
        let mut client = ClientHandshake::new(hello(vec![ns("display", &[1], false)]));
        let wrong_version = Welcome {
            protocol_version: 1,
            limits: Some(offer().limits),
            namespaces: vec![NamespaceAgreement {
                namespace: "display".into(),
                version: 5,
                code: Code::Ok as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            client.receive(Frame::new(Kind::Welcome(wrong_version))),
            Err(HandshakeError::InvalidWelcome(_))
        ));
        let mut client = ClientHandshake::new(hello(vec![]));
        assert_eq!(
            client.receive(Frame::new(Kind::Ping(v1::Ping { nonce: 0 }))),
            Err(HandshakeError::UnexpectedFrame("Ping"))
        );
    }
}
