//! The one place with `unsafe`: socket calls that the safe wrappers (`nix`, `std`) do not offer.
//!
//! - `SO_PEERGROUPS` (Linux >= 4.13): the supplementary groups of the peer, as of `connect`.
//! - Taking ownership of a listening socket inherited from systemd (`LISTEN_FDS`, fd 3).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

/// `SO_PEERGROUPS` on the architectures whose `asm-generic/socket.h` value applies (not MIPS,
/// SPARC, PARISC, Alpha, which are not peerwire targets).
const SO_PEERGROUPS: libc::c_int = 59;

/// Most groups read (the kernel's NGROUPS_MAX is 65536; a peer in more is refused upstream).
const MAX_GROUPS: usize = 65536;

/// The supplementary groups of the peer of a connected Unix socket, or `ENOPROTOOPT` on kernels
/// without `SO_PEERGROUPS`.
pub(crate) fn peer_groups(socket: &impl AsFd) -> io::Result<Vec<u32>> {
    let fd = socket.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("group list too large"))?;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes; the kernel writes at
        // most `len` bytes into it and stores the size it needs (or wrote) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how much is needed.
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= MAX_GROUPS {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

/// The first socket passed by systemd socket activation, if this process is its target
/// (`LISTEN_PID` is our pid and `LISTEN_FDS` >= 1). Takes ownership of fd 3.
pub fn systemd_listen_fd() -> io::Result<Option<OwnedFd>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match fds.trim().parse::<u32>() {
        Ok(0) | Err(_) => return Ok(None),
        Ok(1) => {}
        Ok(n) => {
            return Err(io::Error::other(format!(
                "systemd passed {n} sockets; peerwire expects exactly one (ListenStream= once)"
            )));
        }
    }
    const SD_LISTEN_FDS_START: libc::c_int = 3;
    // Check the descriptor is open before claiming it.
    nix::fcntl::fcntl(
        // SAFETY: fd 3 is only borrowed for this one fcntl call, which does not close it.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(SD_LISTEN_FDS_START) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| io::Error::other(format!("LISTEN_FDS=1 but fd 3 is not open: {e}")))?;
    // SAFETY: systemd's protocol hands fd 3 to this process (LISTEN_PID matched our pid); nothing
    // else in peerwire uses fd 3, and it is claimed once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    Ok(Some(fd))
}

/// Makes `fd` survive `exec` in the child `cmd` will spawn (clears `FD_CLOEXEC` there only; in
/// this process the descriptor stays close-on-exec, so no other child inherits it).
pub(crate) fn inherit_in_child(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; it only calls fcntl(2), which is
    // async-signal-safe, allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Takes ownership of a descriptor this process inherited (named by an environment variable).
pub(crate) fn take_inherited_fd(fd: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::other(format!(
            "refusing to take standard descriptor {fd}"
        )));
    }
    nix::fcntl::fcntl(
        // SAFETY: only borrowed for this fcntl, which checks that the descriptor is open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| io::Error::other(format!("descriptor {fd} is not open: {e}")))?;
    // SAFETY: the descriptor is open, was handed to this process for this purpose by its parent,
    // and is claimed once (launch::token_from_launcher guards with a process-wide flag), so
    // nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads from `fd` into the unfilled part of `buf` without zeroing it first (as tokio's own
/// streams do): a 1 MiB frame's buffer is not cleared before every read.
pub(crate) fn read_into(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: only written to below, never read, and never de-initialised.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: `read` writes at most `unfilled.len()` bytes into memory we own exclusively for
    // the call; `fd` is a valid descriptor for the borrow's lifetime.
    let n = unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// Registers `stream` with the current tokio reactor for `interest` only.
pub(crate) fn register(
    stream: std::os::unix::net::UnixStream,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor: it stays open, and is the same descriptor,
    // for as long as the `AsyncFd` owns the stream (it is never swapped out through `get_mut`).
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(stream, interest) }?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_groups_of_a_socket_pair_are_our_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = peer_groups(&a).unwrap();
        mine.sort();
        theirs.sort();
        assert_eq!(theirs, mine);
    }
}
