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
//! a peer that called `execve` after connecting is judged by its new program.
//!
//! The process that connected need not be the one that speaks: it can fork, or pass the socket
//! on. So where the executable matters, [`SenderGuard`] judges the sender of every chunk read
//! (`SO_PASSCRED` + `SO_PASSPIDFD`: the kernel hands a pidfd of each chunk's sender and never
//! merges chunks of different senders), through the same pidfd check
//! ([`executable_of_pidfd`]).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

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

/// The executable of the process at the other end of a connected Unix socket (the one that
/// called `connect`, as it runs now).
pub fn peer_executable(socket: &impl AsFd) -> Result<Executable, ExeError> {
    let pidfd = getsockopt(socket, sockopt::PeerPidfd).map_err(|e| {
        ExeError::Unsupported(format!(
            "SO_PEERPIDFD failed ({e}); Linux 6.5 or later is needed"
        ))
    })?;
    executable_of_pidfd(&pidfd).map(|(exe, _)| exe)
}

/// The executable the process behind `pidfd` runs, and its pid (in our pid namespace).
pub fn executable_of_pidfd(pidfd: &OwnedFd) -> Result<(Executable, i32), ExeError> {
    let pid = pid_of_pidfd(pidfd)?;
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
    if exited(pidfd)? || pid_of_pidfd(pidfd)? != pid {
        return Err(ExeError::Gone);
    }
    Ok((
        Executable {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        },
        pid,
    ))
}

/// Asks the kernel to say who sent each chunk read from `socket` (`SO_PASSCRED` and
/// `SO_PASSPIDFD`, Linux 6.5), or stops it (`on == false`). Set on a listening socket, the
/// sockets it accepts have it from their first instant, so even bytes a client sent before the
/// server got to its socket carry their sender (set later, bytes sent in between would not).
pub fn pass_senders(socket: &impl AsFd, on: bool) -> Result<(), ExeError> {
    crate::sys::set_pass_pidfd(socket.as_fd(), on).map_err(|e| {
        ExeError::Unsupported(format!(
            "SO_PASSPIDFD failed ({e}): checking who sends on a connection needs Linux 6.5 or later"
        ))
    })?;
    setsockopt(socket, sockopt::PassCred, &on).map_err(io::Error::from)?;
    Ok(())
}

/// Whether [`pass_senders`] is on for `socket` (for an accepted socket: on its listener).
pub fn passes_senders(socket: &impl AsFd) -> bool {
    crate::sys::pass_pidfd(socket.as_fd()).unwrap_or(false)
        && getsockopt(socket, sockopt::PassCred).unwrap_or(false)
}

/// A chunk of a connection came from a process the connection does not admit. Paths are shown
/// quoted and escaped (`Debug`): a file name is chosen by whoever named the program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bytes from {sender}{running} on a connection opened by {conn}: {reason}",
    sender = pid_text("sender pid", *sender_pid),
    running = exe.as_ref().map_or(String::new(), |e| format!(" running {e:?}")),
    conn = pid_text("pid", *conn_pid)
)]
#[non_exhaustive]
pub struct SenderRefused {
    /// The pid that connected (`SO_PEERCRED`), if visible.
    pub conn_pid: Option<i32>,
    /// The pid that sent the chunk (`SCM_CREDENTIALS`), if visible.
    pub sender_pid: Option<i32>,
    /// The executable the sender runs, if it could be read.
    pub exe: Option<PathBuf>,
    /// Why the chunk is refused.
    pub reason: String,
}

fn pid_text(what: &str, pid: Option<i32>) -> String {
    match pid {
        Some(pid) if pid > 0 => format!("{what} {pid}"),
        _ => format!("{what} ?"),
    }
}

/// The [`SenderRefused`] inside `e`, if a read failed because a chunk's sender was refused.
pub fn sender_refused(e: &io::Error) -> Option<&SenderRefused> {
    e.get_ref()?.downcast_ref::<SenderRefused>()
}

/// Checks who sent each chunk read from one connection (see [`crate::plain::split_guarded`]).
///
/// The first chunk's sender is pinned: it must run one of the allowed executables (any, when
/// none are listed: the guard then only tracks), and every later chunk must come from a process
/// running that same file (device and inode). A chunk whose sender cannot be checked (no
/// pidfd, the sender exited, another pid namespace) is refused too. Once [`SenderGuard::stop`]
/// is called, the reader stops checking and the socket stops passing senders.
///
/// A sender is judged by the program it runs when the chunk is read. One process seen running
/// an allowed program is trusted for its later chunks (an allowed program is trusted not to
/// `execve` another). What no check at read time can see is a process that sent its bytes and
/// then `execve`d an allowed program before the server read them (the kernel keeps no record
/// of the program that sent a chunk).
#[derive(Debug)]
pub struct SenderGuard {
    allowed: Vec<Executable>,
    conn_pid: Option<i32>,
    off: std::sync::atomic::AtomicBool,
    state: std::sync::Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    first: Option<Executable>,
    /// The last sender verified, when pidfds can be told apart by inode (pidfs, Linux 6.9).
    last: Option<(OwnedFd, u64)>,
    refused: Option<SenderRefused>,
}

/// The magic number of pidfs (pidfds with one inode per process, Linux 6.9).
const PIDFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x5049_4446);

impl SenderGuard {
    /// A guard admitting senders that run one of `allowed` (any, when empty), on a connection
    /// opened by `conn_pid`.
    pub fn new(allowed: Vec<Executable>, conn_pid: Option<i32>) -> Self {
        Self {
            allowed,
            conn_pid,
            off: std::sync::atomic::AtomicBool::new(false),
            state: std::sync::Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The executable of the first chunk's sender, once a chunk was read.
    pub fn first_sender(&self) -> Option<Executable> {
        self.state().first.clone()
    }

    /// Why a chunk was refused, if one was.
    pub fn refusal(&self) -> Option<SenderRefused> {
        self.state().refused.clone()
    }

    /// Stops checking (the connection needs no executable any more).
    pub fn stop(&self) {
        self.off.store(true, std::sync::atomic::Ordering::Release);
    }

    /// True once [`SenderGuard::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.off.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads one chunk from `fd` into the unfilled part of `buf` (one `recvmsg` with the chunk's
    /// sender) and checks its sender: a refused chunk is not kept, and fails the read with
    /// `PermissionDenied` wrapping [`SenderRefused`] (see [`sender_refused`]); so does every
    /// read after a refusal. Returns the bytes read (0: the end of the stream).
    pub fn read_checked(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::io::Result<usize> {
        let refused = |r| std::io::Error::new(std::io::ErrorKind::PermissionDenied, r);
        if let Some(r) = self.refusal() {
            return Err(refused(r));
        }
        let before = buf.filled().len();
        let (n, sender) = crate::sys::recv_with_sender(fd, buf)?;
        if n > 0 {
            if let Err(r) = self.check(sender) {
                buf.set_filled(before);
                return Err(refused(r));
            }
        }
        Ok(n)
    }

    /// Checks the sender of a chunk just read (`pidfd` and `pid` from the kernel).
    fn check(&self, sender: crate::sys::Sender) -> Result<(), SenderRefused> {
        let mut state = self.state();
        if let Some(refused) = &state.refused {
            return Err(refused.clone());
        }
        let verdict = self.judge(&mut state, sender);
        if let Err(refused) = &verdict {
            state.refused = Some(refused.clone());
        }
        verdict
    }

    fn judge(
        &self,
        state: &mut GuardState,
        sender: crate::sys::Sender,
    ) -> Result<(), SenderRefused> {
        let refuse = |exe: Option<&Executable>, reason: String| SenderRefused {
            conn_pid: self.conn_pid,
            sender_pid: sender.pid,
            exe: exe.map(|e| e.path.clone()),
            reason,
        };
        let Some(pidfd) = sender.pidfd else {
            return Err(refuse(
                None,
                "the kernel gave no pidfd of the sender (it exited, or the kernel is older \
                 than Linux 6.5), so its executable cannot be checked"
                    .into(),
            ));
        };
        let ino = pidfs_ino(&pidfd);
        if let (Some(ino), Some((_, last))) = (ino, &state.last) {
            if ino == *last {
                return Ok(());
            }
        }
        let exe = executable_of_pidfd(&pidfd)
            .map_err(|e| refuse(None, format!("its executable cannot be checked: {e}")))?
            .0;
        match &state.first {
            None if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a.same_file(&exe)) => {
                return Err(refuse(
                    Some(&exe),
                    "the executable is not allowed by the server's access policy".into(),
                ));
            }
            None => state.first = Some(exe),
            Some(first) if !first.same_file(&exe) => {
                return Err(refuse(
                    Some(&exe),
                    format!(
                        "another program than the one that spoke first ({:?})",
                        first.path
                    ),
                ));
            }
            Some(_) => {}
        }
        state.last = ino.map(|ino| (pidfd, ino));
        Ok(())
    }
}

/// The inode of a pidfd where pidfds have one inode per process (pidfs); `None` on kernels
/// where all pidfds share one anonymous inode.
fn pidfs_ino(pidfd: &OwnedFd) -> Option<u64> {
    static PIDFS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let pidfs = *PIDFS.get_or_init(|| {
        nix::sys::statfs::fstatfs(pidfd).is_ok_and(|fs| fs.filesystem_type() == PIDFS_MAGIC)
    });
    if !pidfs {
        return None;
    }
    nix::sys::stat::fstat(pidfd).ok().map(|st| st.st_ino)
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
