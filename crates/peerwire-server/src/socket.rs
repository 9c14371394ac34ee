//! The listening socket: bound with peerwire-security's path hardening, or inherited from
//! systemd socket activation and checked the same way; removed on exit when it is ours.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use peerwire_security::sockpath;

use crate::ServerError;

fn err(path: &Path, reason: impl Into<String>) -> ServerError {
    ServerError::Socket {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// How the listener came to be; decides whether the socket file is removed on exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Bound by this process: removed on exit.
    Bound,
    /// Passed by systemd (`LISTEN_FDS`): systemd owns the file, it stays.
    Systemd,
}

/// Binds `path`, or takes the socket systemd passed if this process is socket-activated.
pub(crate) fn listen(
    path: &Path,
    group: Option<u32>,
) -> Result<(std::os::unix::net::UnixListener, Origin), ServerError> {
    let inherited = peerwire_security::systemd_listen_fd()
        .map_err(|e| err(path, format!("socket activation: {e}")))?;
    let (listener, origin) = match inherited {
        Some(fd) => {
            let listener = std::os::unix::net::UnixListener::from(fd);
            check_inherited(&listener, path, group)?;
            tracing::info!(path = %path.display(), "using the socket passed by systemd");
            (listener, Origin::Systemd)
        }
        None => (
            sockpath::bind(path, group)
                .map_err(|e| err(path, format!("{} (fix: {})", e.problem, e.fix)))?,
            Origin::Bound,
        ),
    };
    Ok((listener, origin))
}

fn check_inherited(
    listener: &std::os::unix::net::UnixListener,
    path: &Path,
    group: Option<u32>,
) -> Result<(), ServerError> {
    if !peerwire_security::sys::is_listening_stream(listener.as_fd()) {
        return Err(err(
            path,
            "the socket passed by systemd is not a listening stream socket (ListenStream= is needed)",
        ));
    }
    let addr = listener.local_addr().map_err(|e| {
        err(
            path,
            format!("the socket passed by systemd is not a Unix socket: {e}"),
        )
    })?;
    let Some(bound) = addr.as_pathname() else {
        return Err(err(
            path,
            "the socket passed by systemd is abstract or unnamed; abstract sockets have no permissions",
        ));
    };
    if bound != path {
        return Err(err(
            path,
            format!(
                "systemd passed the socket {}, but the server is configured for this path",
                bound.display()
            ),
        ));
    }
    sockpath::check_socket_file(path, group)
        .map_err(|e| err(path, format!("{} (fix: {})", e.problem, e.fix)))
}

/// Removes the socket file when dropped, if this process created it.
#[derive(Debug)]
pub(crate) struct SocketGuard {
    path: PathBuf,
    origin: Origin,
}

impl SocketGuard {
    pub(crate) fn new(path: PathBuf, origin: Origin) -> Self {
        Self { path, origin }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.origin != Origin::Bound {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "cannot remove socket: {e}");
            }
        }
    }
}
