//! # peerwire-proto: the peerwire wire protocol, sans I/O
//!
//! This crate does no I/O, starts no runtime and reads no clock. It holds:
//!
//! - [`v1`]: the protobuf envelope generated from `proto/peerwire/v1/envelope.proto` with a
//!   pure-Rust compiler (no system `protoc`);
//! - [`codec`]: the length-prefixed frame codec, which checks the announced length against the
//!   limit in force *before* it allocates anything;
//! - [`handshake`]: the `Hello` / `Welcome` / `Reject` state machines of both ends, including
//!   protocol version and per-namespace version negotiation;
//! - [`session`]: the session state machines of both ends (states, frame rules, request ids,
//!   deadlines, keepalive, `Goodbye`), driven by the server and the client alike;
//! - [`Status`] and [`names`]: status codes and `namespace.Name` validation shared by both ends.
//!
//! No runtime is in its dependency tree (no tokio, no tokio-util). `peerwire-transport` drives
//! these types over a Unix socket (optionally TLS); anyone can drive them over an in-memory
//! buffer, which is how the unit tests run.
//!
//! Non-goals: sockets, TLS, timers, access control. Those live in `peerwire-transport`,
//! `peerwire-security`, `peerwire-server` and `peerwire-client`.
//!
//! ```
//! use bytes::BytesMut;
//! use peerwire_proto::codec::FrameCodec;
//! use peerwire_proto::v1::{frame::Kind, Frame, Ping};
//!
//! let mut codec = FrameCodec::new(64 * 1024);
//! let mut wire = BytesMut::new();
//! codec.encode(&Frame { kind: Some(Kind::Ping(Ping { nonce: 7 })) }, &mut wire)?;
//! let frame = codec.decode(&mut wire)?.ok_or("incomplete")?;
//! assert_eq!(frame.kind, Some(Kind::Ping(Ping { nonce: 7 })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
mod fast;
pub mod handshake;
pub mod names;
pub mod session;
mod status;

pub use status::{Status, code_name};

/// Generated protobuf types of the envelope, protocol version 1.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/peerwire.v1.rs"));
}

/// The envelope protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Envelope protocol versions this crate can speak, newest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// Largest frame accepted before the handshake has completed (64 KiB).
pub const HANDSHAKE_MAX_FRAME_SIZE: u32 = 64 * 1024;

/// The reserved namespace of built-in methods such as `peerwire.Subscribe`.
pub const RESERVED_NAMESPACE: &str = "peerwire";

/// Built-in method: subscribe the connection to topics (payload [`v1::SubscribeRequest`]).
pub const METHOD_SUBSCRIBE: &str = "peerwire.Subscribe";

/// Built-in method: the server's counters (response payload [`v1::ServerStats`]), for any
/// admitted peer.
pub const METHOD_STATS: &str = "peerwire.Stats";

/// Built-in method: unsubscribe the connection from topics (payload [`v1::SubscribeRequest`]).
pub const METHOD_UNSUBSCRIBE: &str = "peerwire.Unsubscribe";

impl v1::Frame {
    /// Wraps a frame kind.
    pub fn new(kind: v1::frame::Kind) -> Self {
        Self { kind: Some(kind) }
    }

    /// A short name of the frame's kind, for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        use v1::frame::Kind;
        match &self.kind {
            None => "empty",
            Some(Kind::Hello(_)) => "Hello",
            Some(Kind::Welcome(_)) => "Welcome",
            Some(Kind::Reject(_)) => "Reject",
            Some(Kind::Request(_)) => "Request",
            Some(Kind::Response(_)) => "Response",
            Some(Kind::Cancel(_)) => "Cancel",
            Some(Kind::Event(_)) => "Event",
            Some(Kind::Ping(_)) => "Ping",
            Some(Kind::Pong(_)) => "Pong",
            Some(Kind::Goodbye(_)) => "Goodbye",
        }
    }
}
