//! Which executable a peer process runs, resolved race-free through a pidfd.
//!
//! A pid alone is racy: the peer can exit and its pid be reused by another program between the
//! moment we read the pid and the moment we look at `/proc/PID/exe`. `SO_PEERPIDFD` (Linux 6.5)
//! gives a pidfd that pins the peer process. We read `/proc/PID/exe`, then check through the
//! pidfd that the process is still alive and still has that pid: if it is, the pid was not reused
//! and the executable we saw is the peer's. Where the kernel has no `SO_PEERPIDFD` the check is
//! refused ([`ExeError::Unsupported`]), never silently skipped.
//!
//! Executables are compared by device and inode, not by path, so a renamed or replaced file is
//! not mistaken for the allowed one. Note that the check sees the executable the peer runs *now*:
//! a peer that called `execve` after connecting is judged by its new program, which is the one
//! that would talk on the socket.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};

/// An executable file, identified by device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// The path it was found at (informational).
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Executable {
    /// The executable at `path` (symbolic links followed).
    pub fn from_path(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = fs::canonicalize(path)?;
        let meta = fs::metadata(&path)?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            path,
        })
    }

    /// True when both name the same file.
    pub fn same_file(&self, other: &Executable) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Why a peer's executable could not be determined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExeError {
    /// The kernel cannot give a pidfd for the peer, so the check cannot be made race-free.
    #[error("the peer's executable cannot be checked safely: {0}")]
    Unsupported(String),
    /// The peer exited (its pid may already belong to another process).
    #[error("the peer process exited before its executable could be checked")]
    Gone,
    /// `/proc` could not be read (for example a peer of another user without CAP_SYS_PTRACE).
    #[error("cannot read the peer's executable: {0}")]
    Io(#[from] io::Error),
}

fn pid_of_pidfd(pidfd: &OwnedFd) -> Result<i32, ExeError> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ExeError::Unsupported("no Pid in the pidfd's fdinfo".into()))
}

fn exited(pidfd: &OwnedFd) -> Result<bool, ExeError> {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
    Ok(n > 0)
}

/// The executable of the process at the other end of a connected Unix socket.
pub fn peer_executable(socket: &impl AsFd) -> Result<Executable, ExeError> {
    let pidfd = getsockopt(socket, sockopt::PeerPidfd).map_err(|e| {
        ExeError::Unsupported(format!(
            "SO_PEERPIDFD failed ({e}); Linux 6.5 or later is needed"
        ))
    })?;
    let pid = pid_of_pidfd(&pidfd)?;
    if pid <= 0 {
        // -1: exited; 0: not in our pid namespace.
        return Err(if pid < 0 {
            ExeError::Gone
        } else {
            ExeError::Unsupported("the peer is in another pid namespace".into())
        });
    }
    let link = format!("/proc/{pid}/exe");
    let meta = fs::metadata(&link)?;
    let path = fs::read_link(&link)?;
    if exited(&pidfd)? || pid_of_pidfd(&pidfd)? != pid {
        return Err(ExeError::Gone);
    }
    Ok(Executable {
        path,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn our_own_executable_through_a_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_executable(&a).unwrap();
        let me = Executable::from_path(std::env::current_exe().unwrap()).unwrap();
        assert!(peer.same_file(&me), "{peer:?} vs {me:?}");
        let other = Executable::from_path("/bin/sh").unwrap();
        assert!(!peer.same_file(&other));
        assert!(Executable::from_path("/").is_err());
    }
}
