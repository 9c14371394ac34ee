//! # peerwire-transport: the framed stream over a Unix socket, plain or TLS
//!
//! What both ends run between a connected socket and the session (whose rules are
//! `peerwire_proto`'s, sans I/O):
//!
//! - [`plain`]: the plain Unix stream, registered with the reactor for exactly what each side
//!   waits for ([`PlainReader`](plain::PlainReader), [`PlainWriter`](plain::PlainWriter));
//! - [`tls`]: the TLS 1.3 session over it ([`TlsSession`](tls::TlsSession), the record layer),
//!   with the contexts, identities and pinning of `peerwire_security::tls`;
//! - [`FrameSink`]: the outbound side of a connection, where the sending task writes its frame
//!   itself, sealed first through a [`Seal`] over TLS; [`Opened`], a sealed connection's read
//!   side; [`SinkIo`], what a sink writes to;
//! - [`Codec`]: the protocol's frame codec as tokio-util's `Decoder`/`Encoder`;
//! - [`stream`]: the set-up both ends share: the two sides of a plain or TLS connection, the
//!   write side until the session starts, the session's sink, the idle/keepalive ticker.
//!
//! The raw socket calls it needs are `peerwire_security::sys`'s; this crate has no `unsafe`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
pub mod plain;
mod sink;
pub mod stream;
pub mod tls;

pub use codec::Codec;
pub use sink::{
    BULK_FRAME, Drained, FrameSink, Opened, OutboundFull, SEAL_CHUNK, Seal, SinkError, SinkIo,
    WRITE_BATCH, recycle,
};
