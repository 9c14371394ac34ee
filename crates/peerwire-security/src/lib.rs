//! # peerwire-security: the security mechanisms both ends share
//!
//! - [`cred`]: the credentials of the process at the other end of a Unix socket
//!   (`SO_PEERCRED`), read by the kernel at `connect`/`listen` time and impossible for the peer
//!   to forge. This is the one module that makes raw socket-option calls.
//!
//! Later additions (socket-path hardening, device identities and TLS contexts, session tokens,
//! sealed storage, privilege dropping) each get a module of their own.
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
