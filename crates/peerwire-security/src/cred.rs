//! Peer credentials of a connected Unix socket.
//!
//! `SO_PEERCRED` returns the uid, gid and pid of the process that called `connect` (as seen by
//! the server) or `listen` (as seen by the client), as they were at that moment. The kernel fills
//! them in; the peer cannot choose them. They are read before any byte of the peer is parsed.

use std::fmt;
use std::io;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// Who is at the other end of a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// Effective user id of the peer.
    pub uid: u32,
    /// Effective group id of the peer.
    pub gid: u32,
    /// Process id of the peer, if it is visible from our pid namespace.
    pub pid: Option<i32>,
}

impl PeerCredentials {
    /// Reads `SO_PEERCRED` of a connected Unix stream socket.
    pub fn of(socket: &impl AsFd) -> io::Result<Self> {
        let cred = getsockopt(socket, sockopt::PeerCredentials).map_err(io::Error::from)?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            // The kernel reports 0 when the peer's pid is not in our pid namespace.
            pid: Some(cred.pid()).filter(|pid| *pid > 0),
        })
    }
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={}", self.uid, self.gid)?;
        match self.pid {
            Some(pid) => write!(f, " pid={pid}"),
            None => write!(f, " pid=?"),
        }
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+), as of `connect`.
pub fn peer_groups(socket: &impl AsFd) -> io::Result<Vec<u32>> {
    crate::sys::peer_groups(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn reads_both_directions_of_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let me = PeerCredentials {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: Some(std::process::id() as i32),
        };
        assert_eq!(PeerCredentials::of(&server_side).unwrap(), me);
        assert_eq!(PeerCredentials::of(&client).unwrap(), me);
        assert_eq!(
            me.to_string(),
            format!("uid={} gid={} pid={}", me.uid, me.gid, std::process::id())
        );
    }

    #[test]
    fn not_a_socket_is_an_error() {
        let file = tempfile::tempfile().unwrap();
        assert!(PeerCredentials::of(&file).is_err());
    }
}
