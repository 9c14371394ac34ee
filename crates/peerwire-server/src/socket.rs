//! Binding the listening socket, and removing it on exit.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::ServerError;

fn err(path: &Path, reason: impl Into<String>) -> ServerError {
    ServerError::Socket {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Binds a filesystem Unix socket at `path` (abstract sockets have no permissions and are
/// refused). A missing parent directory is created 0700. An existing socket is replaced only if
/// nobody answers on it (a stale one left by a crash); anything else at the path is an error.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.is_empty() || bytes.first() == Some(&0) || bytes.first() == Some(&b'@') {
        return Err(err(
            path,
            "abstract or empty socket names are refused: use a filesystem path in a 0700 directory",
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    err(
                        path,
                        format!("cannot create directory {}: {e}", dir.display()),
                    )
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(err(
                        path,
                        "another server is already listening on this socket",
                    ));
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale socket");
                    std::fs::remove_file(path)
                        .map_err(|e| err(path, format!("cannot remove stale socket: {e}")))?;
                }
                Err(e) => return Err(err(path, format!("cannot probe existing socket: {e}"))),
            }
        }
        Ok(_) => {
            return Err(err(
                path,
                "the path exists and is not a socket; remove it or choose another path",
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(path, e.to_string())),
    }
    let listener = UnixListener::bind(path).map_err(|e| err(path, e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(path, format!("cannot restrict socket permissions: {e}")))?;
    Ok(listener)
}

/// Removes the socket file when dropped (the server stopped or its future was dropped).
#[derive(Debug)]
pub(crate) struct SocketGuard(PathBuf);

impl SocketGuard {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), "cannot remove socket: {e}");
            }
        }
    }
}
