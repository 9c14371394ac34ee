//! The one place with `unsafe`: socket calls that the safe wrappers (`nix`, `std`) do not offer.
//!
//! - `SO_PEERGROUPS` (Linux >= 4.13): the supplementary groups of the peer, as of `connect`.
//! - Taking ownership of a listening socket inherited from systemd (`LISTEN_FDS`, fd 3).
//! - `SO_PASSPIDFD` (Linux >= 6.5) and `recvmsg` with `SCM_PIDFD`/`SCM_CREDENTIALS`: who sent
//!   each chunk of a Unix stream (`recv_with_sender`, behind `SenderGuard::read_checked`).
//! - A reactor registration for one interest only ([`register`]) and `read` into a tokio
//!   `ReadBuf` without zeroing it ([`read_into`]): `peerwire-transport`'s plain stream.
//! - The remaining raw socket calls of the other crates, so that every one is here (in the
//!   spirit of quinn-udp: one audited module with safe signatures): a peek at whether the peer
//!   hung up ([`peer_hung_up`]) and whether an inherited socket listens for streams
//!   ([`is_listening_stream`]).
//!
//! Every function here has a safe signature; callers need no `unsafe`.
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
pub fn read_into(
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
pub fn register(
    stream: std::os::unix::net::UnixStream,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor: it stays open, and is the same descriptor,
    // for as long as the `AsyncFd` owns the stream (it is never swapped out through `get_mut`).
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(stream, interest) }?;
    Ok(fd)
}

/// True if the peer of the connected stream `socket` hung up without sending a byte: a
/// non-blocking `recv(MSG_PEEK)` reads the end of the stream. Nothing is consumed; no data,
/// nothing to read yet, or an error, is false.
pub fn peer_hung_up(socket: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            socket.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(0)
    )
}

/// True if `socket` is a stream socket in the listening state (`SO_ACCEPTCONN`, `SO_TYPE`):
/// what an inherited socket (systemd's `ListenStream=`) must be.
pub fn is_listening_stream(socket: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    let listening = getsockopt(&socket, sockopt::AcceptConn).unwrap_or(false);
    let stream = getsockopt(&socket, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    listening && stream
}

/// `SO_PASSPIDFD` and `SCM_PIDFD` (asm-generic values; `libc` does not define them yet).
const SO_PASSPIDFD: libc::c_int = 76;
const SCM_PIDFD: libc::c_int = 4;
/// Most descriptors one `SCM_RIGHTS` message can carry (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Turns `SO_PASSPIDFD` on or off: with it, every `recvmsg` carries a pidfd of the chunk's
/// sender. `ENOPROTOOPT` before Linux 6.5.
pub(crate) fn set_pass_pidfd(socket: std::os::fd::BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    // SAFETY: `value` is a live c_int and the length passed is its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `SO_PASSPIDFD` is on.
pub(crate) fn pass_pidfd(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable c_int and `len` its size; the kernel writes at most
    // `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value != 0)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What one [`recv_with_sender`] got besides the bytes.
#[derive(Debug, Default)]
pub(crate) struct Sender {
    /// A pidfd of the process that sent the chunk (`SCM_PIDFD`); `None` when the kernel gave
    /// none (it was not asked, or the sender could not be pinned).
    pub(crate) pidfd: Option<OwnedFd>,
    /// The sender's pid as `SCM_CREDENTIALS` gives it (0: not in our pid namespace).
    pub(crate) pid: Option<i32>,
}

/// Control space for one pidfd, one `ucred` and the most descriptors `SCM_RIGHTS` can carry, so
/// a well-formed message is never truncated.
const CONTROL_LEN: usize = 64 + std::mem::size_of::<libc::ucred>() + 4 * SCM_MAX_FD + 64;

/// Reads one chunk from `fd` into the unfilled part of `buf` with `recvmsg`, and says who sent
/// it. With `SO_PASSCRED` on, the kernel never merges chunks of different senders into one
/// read. Every descriptor the peer passed with `SCM_RIGHTS` is closed; a truncated control
/// message is an error. Advances `buf` by the bytes read.
pub(crate) fn recv_with_sender(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> io::Result<(usize, Sender)> {
    #[repr(C, align(8))]
    struct Control([u8; CONTROL_LEN]);
    let mut control = Control([0; CONTROL_LEN]);
    // SAFETY: only written to below (by the kernel), never read, never de-initialised.
    let unfilled = unsafe { buf.unfilled_mut() };
    let mut iov = libc::iovec {
        iov_base: unfilled.as_mut_ptr().cast(),
        iov_len: unfilled.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one (null name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN as _;
    // SAFETY: `msg` points at one iovec covering memory we own exclusively for the call and at
    // a control buffer of `msg_controllen` bytes; both outlive the call. MSG_CMSG_CLOEXEC: any
    // descriptor received is close-on-exec from its first instant.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut sender = Sender::default();
    let mut received: Vec<OwnedFd> = Vec::new();
    // SAFETY: `msg` was filled in by a successful recvmsg: its control pointer and length
    // describe the initialised control messages in `control`, which is still alive.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a pointer to a complete header
        // inside the control buffer.
        let hdr = unsafe { &*cmsg };
        // SAFETY: as above; the data of a header starts at CMSG_DATA.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: CMSG_LEN(0) is a constant computation.
        let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
        let len = (hdr.cmsg_len as usize).saturating_sub(header_len);
        let ints = len / std::mem::size_of::<libc::c_int>();
        let int_at = |i: usize| {
            // SAFETY: `i < ints`, so the c_int lies within this message's data; the data may be
            // unaligned, hence read_unaligned.
            unsafe { data.cast::<libc::c_int>().add(i).read_unaligned() }
        };
        if hdr.cmsg_level == libc::SOL_SOCKET {
            match hdr.cmsg_type {
                libc::SCM_RIGHTS => {
                    for i in 0..ints {
                        let raw = int_at(i);
                        if raw >= 0 {
                            // SAFETY: the kernel just installed this descriptor in our table
                            // for us; nothing else knows it, so this is its only owner.
                            received.push(unsafe { OwnedFd::from_raw_fd(raw) });
                        }
                    }
                }
                SCM_PIDFD if ints >= 1 => {
                    let raw = int_at(0);
                    // A negative value is the error the kernel met making the pidfd.
                    if raw >= 0 {
                        // SAFETY: as for SCM_RIGHTS: a fresh descriptor that only we own.
                        sender.pidfd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                libc::SCM_CREDENTIALS if len >= std::mem::size_of::<libc::ucred>() => {
                    // SAFETY: the data holds a whole ucred (checked above); unaligned read.
                    let cred = unsafe { data.cast::<libc::ucred>().read_unaligned() };
                    sender.pid = Some(cred.pid);
                }
                _ => {}
            }
        }
        // SAFETY: `cmsg` is a header inside `msg`'s control buffer (see above).
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    // Descriptors passed by the peer are closed here: peerwire never takes any.
    drop(received);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "the peer sent more control data than a Unix stream chunk can carry",
        ));
    }
    // SAFETY: the kernel initialised the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok((n, sender))
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

    /// Reads every chunk waiting on `sock` with [`recv_with_sender`]: (bytes, sender pid,
    /// whether a pidfd came).
    fn chunks(sock: &UnixStream) -> Vec<(Vec<u8>, Option<i32>, bool)> {
        sock.set_nonblocking(true).unwrap();
        let mut out = vec![];
        loop {
            let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = tokio::io::ReadBuf::uninit(&mut storage);
            match recv_with_sender(sock.as_fd(), &mut buf) {
                Ok((0, _)) => break,
                Ok((n, sender)) => {
                    assert_eq!(buf.filled().len(), n);
                    out.push((buf.filled().to_vec(), sender.pid, sender.pidfd.is_some()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// Chunks of different senders are never merged into one read, each carries its sender,
    /// and bytes of one sender written in several pieces are read at once.
    #[test]
    fn chunks_of_two_senders_are_never_merged() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        crate::exe::pass_senders(&a, true).unwrap();
        assert!(crate::exe::passes_senders(&a));
        b.write_all(b"AA").unwrap();
        b.write_all(b"AA").unwrap();
        // `printf` writes to its standard output: this socket.
        let mut child = std::process::Command::new("printf")
            .arg("BBBB")
            .stdout(OwnedFd::from(b.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let child_pid = child.id() as i32;
        assert!(child.wait().unwrap().success());
        b.write_all(b"CCCC").unwrap();
        let me = Some(std::process::id() as i32);
        let got = chunks(&a);
        let summary: Vec<_> = got.iter().map(|(d, pid, _)| (d.clone(), *pid)).collect();
        assert_eq!(
            summary,
            vec![
                (b"AAAA".to_vec(), me),
                (b"BBBB".to_vec(), Some(child_pid)),
                (b"CCCC".to_vec(), me)
            ]
        );
        // A live sender comes with its pidfd, which names this very program.
        assert!(got[0].2 && got[2].2);
        b.write_all(b"D").unwrap();
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 16];
        let mut buf = tokio::io::ReadBuf::uninit(&mut storage);
        let (_, sender) = recv_with_sender(a.as_fd(), &mut buf).unwrap();
        let (exe, pid) = crate::exe::executable_of_pidfd(&sender.pidfd.unwrap()).unwrap();
        assert_eq!(Some(pid), me);
        let current = crate::exe::Executable::from_path(std::env::current_exe().unwrap()).unwrap();
        assert!(exe.same_file(&current));
    }

    /// Descriptors a peer passes with `SCM_RIGHTS` are closed by the read: the write end of a
    /// pipe passed (and closed here) leaves no writer behind, so the pipe reads its end.
    #[test]
    fn passed_descriptors_are_closed() {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::io::Read;
        let (a, b) = UnixStream::pair().unwrap();
        crate::exe::pass_senders(&a, true).unwrap();
        let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
        let fds = [pipe_w.as_raw_fd(), pipe_w.as_raw_fd()];
        let iov = [io::IoSlice::new(b"with fds")];
        sendmsg::<()>(
            b.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(pipe_w);
        let got = chunks(&a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"with fds");
        let mut rest = vec![];
        assert_eq!(pipe_r.read_to_end(&mut rest).unwrap(), 0);
    }
}
