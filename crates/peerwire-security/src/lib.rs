//! # peerwire-security: the security mechanisms both ends share
//!
//! - [`cred`]: the credentials of the process at the other end of a Unix socket
//!   (`SO_PEERCRED`, `SO_PEERGROUPS`), set by the kernel at `connect`/`listen` time and
//!   impossible for the peer to forge;
//! - [`exe`]: the executable a peer runs, resolved race-free through a pidfd (`SO_PEERPIDFD`);
//! - [`sockpath`]: socket-path hardening (private directory, umask at bind, stale sockets,
//!   systemd-provided sockets) and an audit for operators;
//! - [`sys`]: the only `unsafe` code in peerwire, behind safe signatures: socket options the
//!   safe wrappers lack, claiming the socket systemd passes, the reactor registrations and
//!   reads of `peerwire-transport`'s plain stream, and every other raw socket call.
//!
//! - [`identity`]: per-device key pairs and self-signed, pinned certificates (`peerwire init`);
//! - [`tls`]: TLS 1.3 contexts for both ends that trust exactly the pinned peer certificate
//!   (the TLS session over a connection is `peerwire-transport`'s).
//!
//! - [`launch`]: spawning a client with its token on an inherited pipe;
//! - [`token`]: one-time, time-limited session tokens bound to a peer, with a replay record.
//!
//! - [`seal`]: AES-256-GCM sealed files bound to purpose and name, keys and key rotation;
//! - [`securedir`]: race-free file-system access through verified directory descriptors
//!   (no path that can change underneath, no symbolic link of someone else followed);
//! - [`strict`]: "StrictModes" for plain configuration files;
//! - [`store`]: the persistent state store, each record sealed and written crash-safe.
//!
//! - [`privilege`]: dropping root for a service user with only the kept capabilities, and
//!   process hardening (not dumpable, no core dumps, locked memory where allowed).
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use peerwire_security::cred::PeerCredentials;
//!
//! let (a, _b) = UnixStream::pair()?;
//! let peer = PeerCredentials::of(&a)?;
//! assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
//! assert_eq!(peer.pid, Some(std::process::id() as i32));
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cred;
pub mod exe;
pub mod identity;
pub mod launch;
pub mod privilege;
pub mod seal;
pub mod securedir;
pub mod sockpath;
pub mod store;
pub mod strict;
pub mod sys;
pub mod tls;
pub mod token;

pub use sys::systemd_listen_fd;
