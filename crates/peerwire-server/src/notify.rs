//! systemd's `Type=notify` protocol: `READY=1` once listening, `WATCHDOG=1` from the accept
//! loop (so a stuck server stops pinging and systemd restarts it), `STOPPING=1` on shutdown.
//! Without `$NOTIFY_SOCKET` every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` to the service manager, if there is one.
pub(crate) fn notify(state: &str) {
    if let Some(target) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&target, state);
    }
}

fn notify_to(target: &std::ffi::OsStr, state: &str) {
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(bytes.get(1..).unwrap_or_default()),
        _ => SocketAddr::from_pathname(std::path::Path::new(target)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("cannot notify the service manager ({state}): {e}");
    }
}

/// The watchdog interval asked for by systemd (`WATCHDOG_USEC`, for this pid): half of it.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.as_os_str(), "READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
