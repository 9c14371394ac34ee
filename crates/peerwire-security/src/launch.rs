//! Secure client launch: hand a freshly minted token to a child process through an inherited
//! pipe. The token is never in the child's argv, environment or any file: only the *number* of
//! the descriptor is in the environment ([`TOKEN_FD_ENV`]).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command};

use zeroize::Zeroizing;

/// Environment variable naming the inherited descriptor the token can be read from.
pub const TOKEN_FD_ENV: &str = "PEERWIRE_TOKEN_FD";

/// Spawns `cmd` with `token` readable (once, to end of file) on an inherited pipe whose
/// descriptor number is in `PEERWIRE_TOKEN_FD`.
pub fn spawn_with_token(cmd: &mut Command, token: &str) -> io::Result<Child> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // A token is far smaller than a pipe's buffer: write it all, then close, before spawning.
    let mut writer = std::fs::File::from(write_end);
    writer.write_all(token.as_bytes())?;
    drop(writer);
    let fd = read_end.as_raw_fd();
    crate::sys::inherit_in_child(cmd, fd);
    cmd.env(TOKEN_FD_ENV, fd.to_string());
    let child = cmd.spawn();
    drop(read_end);
    child
}

/// In a launched client: reads the token from the descriptor named by `PEERWIRE_TOKEN_FD`, if
/// set, and closes it. Only the first call in a process reads it; later calls fail.
pub fn token_from_launcher() -> io::Result<Option<Zeroizing<String>>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // The descriptor is claimed once per process: a second call must not take over whatever
    // file has reused that number since.
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Ok(value) = std::env::var(TOKEN_FD_ENV) else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(format!(
            "the token descriptor named by {TOKEN_FD_ENV} was already read by this process"
        )));
    }
    let fd: i32 = value.trim().parse().map_err(|_| {
        io::Error::other(format!(
            "{TOKEN_FD_ENV}={value:?} is not a descriptor number"
        ))
    })?;
    let mut file = std::fs::File::from(crate::sys::take_inherited_fd(fd)?);
    let mut token = Zeroizing::new(String::new());
    Read::by_ref(&mut file)
        .take(4096)
        .read_to_string(&mut token)?;
    let trimmed = Zeroizing::new(token.trim().to_owned());
    Ok(Some(trimmed))
}
