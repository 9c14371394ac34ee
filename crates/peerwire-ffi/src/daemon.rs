//! The privileged start-up as one call: `peerwire_server::daemon`, the library API
//! `peerwire serve` uses (harden, refuse root, prepare the socket directory, drop to the service
//! user for good, harden again, verify). The verified process is kept here; the next
//! `peerwire_server_start` builds its runtime through it, so every runtime thread is checked to
//! show the main thread's credentials.

use std::ffi::c_char;
use std::sync::Mutex;

use ::peerwire_server::daemon::{Daemon, Ready, RunningAs};

use crate::peerwire_status::{self, *};
use crate::server::lock;
use crate::{Error, boundary, raw};

static READY: Mutex<Option<Ready>> = Mutex::new(None);

/// Takes the verified start-up, if `peerwire_daemon_start` made one, for the next runtime.
pub(crate) fn take_ready() -> Option<Ready> {
    lock(&READY).take()
}

/// Where the process stands after `peerwire_daemon_start`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct peerwire_daemon_info {
    /// The uid the process now runs as.
    pub uid: u32,
    /// The gid the process now runs as.
    pub gid: u32,
    /// True when it dropped to a service user; false when it stayed (root allowed, or it was
    /// started unprivileged).
    pub dropped: bool,
    /// True when it runs as root (only with `allow_root`).
    pub root: bool,
    /// True when memory is locked (no swapping of secrets).
    pub memory_locked: bool,
}

/// The privileged start-up of a serving process, in one call, before any other peerwire call
/// that starts threads (the drop needs a single-threaded process: call it first thing in
/// `main`, before the program starts threads of its own too): hardens the process; refuses root
/// unless `user` is given or `allow_root`; as root, prepares the directory of `socket_path`
/// for the service user (0700, or 0750 with `socket_group`); drops to `user` (name or uid) with
/// exactly the `group_count` supplementary `groups` (names or gids) and no capability,
/// `no_new_privs` set; hardens again and verifies. `user`, `groups` and `socket_group` may be
/// NULL (with count 0). `*info` (may be NULL) says what the process now runs as.
/// `PEERWIRE_PERMISSION` when a step fails (nothing after it was done), `PEERWIRE_CONFIG` for an
/// unknown user or group.
///
/// # Safety
/// `socket_path` is a NUL-terminated string; `user` and `socket_group` NULL or such strings;
/// `groups` points to `group_count` such strings; `info` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_daemon_start(
    socket_path: *const c_char,
    user: *const c_char,
    groups: *const *const c_char,
    group_count: usize,
    socket_group: *const c_char,
    allow_root: bool,
    info: *mut peerwire_daemon_info,
) -> peerwire_status {
    boundary("peerwire_daemon_start", || {
        // SAFETY: a NUL-terminated string (this function's contract).
        let socket = unsafe { raw::str(socket_path, "socket_path") }?;
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let user = unsafe { raw::opt_str(user, "user") }?;
        // SAFETY: `group_count` NUL-terminated strings (this function's contract).
        let groups = unsafe { raw::strs(groups, group_count, "groups") }?;
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let socket_group = unsafe { raw::opt_str(socket_group, "socket_group") }?;
        let mut daemon = Daemon::new(socket);
        if let Some(u) = user {
            daemon.user(u);
        }
        for g in groups {
            daemon.group(g);
        }
        if let Some(g) = socket_group {
            daemon.socket_group(g);
        }
        daemon.allow_root(allow_root);
        let ready = daemon.start().map_err(|e| {
            use ::peerwire_server::daemon::DaemonError as D;
            let status = match e {
                D::User { .. } | D::Group { .. } | D::Capability { .. } => PEERWIRE_CONFIG,
                D::SocketDirectory { .. } => PEERWIRE_IO,
                _ => PEERWIRE_PERMISSION,
            };
            // The chain of causes: the step, then why.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            Error::new(status, message)
        })?;
        let out = peerwire_daemon_info {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            dropped: matches!(ready.running_as(), RunningAs::ServiceUser(_)),
            root: matches!(ready.running_as(), RunningAs::Root),
            memory_locked: ready.memory_locked(),
        };
        *lock(&READY) = Some(ready);
        if !info.is_null() {
            // SAFETY: not NULL and writable (this function's contract).
            unsafe { raw::write(info, out) };
        }
        Ok(())
    })
}
