//! # The privileged start-up of a process that serves peerwire
//!
//! A server started as root (by init, by systemd without `User=`, by hand) must not stay root,
//! and the steps that get it there are security-critical and order-sensitive. They live here,
//! once, for every process that serves: `peerwire serve` and an SDK process embedding this crate
//! go through the same call.
//!
//! 1. **Harden** ([`harden`]): no core dumps, not dumpable (no ptrace attach, no `/proc/PID/mem`
//!    by processes of the same uid), memory locked where `RLIMIT_MEMLOCK` allows. First thing,
//!    before a secret (a sealed configuration's key, a device secret) is read.
//! 2. **Refuse root** unless a service user is given or root is explicitly allowed
//!    ([`Daemon::allow_root`], for test setups; logged as a warning).
//! 3. As root, **prepare the socket directory**, owned by the service user (0700, or 0750 with a
//!    socket group), with the race-free checks of [`peerwire_security::sockpath`].
//! 4. **Drop privileges for good** ([`peerwire_security::privilege::drop_privileges`]): exactly
//!    the configured supplementary groups, real/effective/saved gid and uid, every capability
//!    cleared except those kept (default: none), `no_new_privs`; read back from
//!    `/proc/self/status`. Capability sets are per thread, so this runs while the process has a
//!    single thread: no async runtime exists yet, and the drop refuses if another thread does.
//! 5. **Harden again** (a uid change resets the dumpable flag) and verify the flag is clear.
//! 6. Only then does the caller get a [`Ready`] process, whose [`Ready::runtime`] builds the
//!    tokio runtime and checks that every thread it started shows the credentials of the
//!    verified main thread.
//!
//! The socket itself is bound afterwards, inside that runtime, by the service user
//! ([`crate::ServerBuilder::bind`]): `SO_PEERCRED` of a listening socket is fixed at `listen()`,
//! and clients check it.
//!
//! ```no_run
//! use peerwire_server::daemon::Daemon;
//! use peerwire_server::{Server, Status};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut daemon = Daemon::new("/run/peerwire/sdk.sock");
//!     daemon.user("peerwire");
//!     let ready = daemon.start()?; // harden, refuse root, directory, drop, harden, verify
//!     let runtime = ready.runtime()?; // the first thread other than main starts here
//!     runtime.block_on(async {
//!         let builder = Server::builder("/run/peerwire/sdk.sock")
//!             .method("echo.Echo", |_ctx, b: Vec<u8>| async move { Ok::<_, Status>(b) });
//!         builder.bind()?.run().await?;
//!         Ok(())
//!     })
//! }
//! ```

use std::path::{Path, PathBuf};

use peerwire_security::privilege::{self, DropSpec, PrivilegeError};
use peerwire_security::sockpath::PathError;

use crate::settings::{self, ConfigError};

/// Why the privileged start-up stopped. Nothing after the failed step was done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Hardening the process (core dumps, dumpable flag) failed.
    #[error("hardening the process")]
    Harden(#[source] PrivilegeError),
    /// Started as root with no service user, and root was not allowed.
    #[error(
        "refusing to run as root: name a service user to become after the privileged set-up, \
         or allow root explicitly (test setups only)"
    )]
    RootRefused,
    /// The service user cannot be looked up.
    #[error("service user {name:?}")]
    User {
        /// The name (or uid) given.
        name: String,
        /// The lookup failure.
        #[source]
        source: PrivilegeError,
    },
    /// A supplementary or socket group cannot be resolved.
    #[error("group {name:?}")]
    Group {
        /// The name (or gid) given.
        name: String,
        /// The lookup failure.
        #[source]
        source: ConfigError,
    },
    /// A capability to keep has no such name.
    #[error("capability {name:?}")]
    Capability {
        /// The name given.
        name: String,
        /// The parse failure.
        #[source]
        source: PrivilegeError,
    },
    /// The socket directory could not be created or given to the service user.
    #[error("preparing the socket directory {path}")]
    SocketDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: PathError,
    },
    /// The privilege drop failed or did not verify.
    #[error("dropping privileges")]
    Drop(#[source] PrivilegeError),
    /// The process is still dumpable after hardening again.
    #[error("the process is still dumpable after the privilege drop")]
    Dumpable,
    /// The tokio runtime could not be started.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// A thread of the new runtime does not show the main thread's credentials.
    #[error(
        "thread {tid} shows {field} = {found:?} where the verified main thread shows {expected:?}"
    )]
    Thread {
        /// The thread id.
        tid: String,
        /// The `/proc/PID/task/TID/status` field.
        field: &'static str,
        /// What the thread shows.
        found: String,
        /// What the main thread shows.
        expected: String,
    },
}

/// A process hardened by [`harden`]: step 1, before any secret is read. Pass it to
/// [`Daemon::start_hardened`].
#[derive(Debug)]
#[must_use = "a hardened process still has to drop its privileges: Daemon::start_hardened"]
pub struct Hardened {
    memory_locked: bool,
}

/// Step 1 alone: no core dumps, not dumpable, memory locked where allowed. Call it first thing
/// when the process reads secrets (a sealed configuration's key) before [`Daemon::start_hardened`];
/// otherwise [`Daemon::start`] does it.
pub fn harden() -> Result<Hardened, DaemonError> {
    let h = privilege::harden_process().map_err(DaemonError::Harden)?;
    Ok(Hardened {
        memory_locked: h.memory_locked,
    })
}

/// What the process runs as once [`Daemon::start`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunningAs {
    /// The service user, exactly as asked and verified in `/proc/self/status`.
    ServiceUser(DropSpec),
    /// Root, with every capability, because it was explicitly allowed.
    Root,
    /// Started as an unprivileged user with no service user named: unchanged.
    Unprivileged {
        /// The uid.
        uid: u32,
    },
}

/// The options of the privileged start-up. Setters take `&mut self`, like
/// [`crate::ServerBuilder`]'s; [`start`](Self::start) does the sequence of the module
/// documentation.
#[derive(Debug, Clone)]
pub struct Daemon {
    socket: PathBuf,
    socket_group: Option<String>,
    user: Option<String>,
    groups: Vec<String>,
    keep: Vec<String>,
    allow_root: bool,
}

impl Daemon {
    /// The start-up of a server that will listen on `socket` (its directory is prepared for
    /// the service user when started as root).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            socket_group: None,
            user: None,
            groups: vec![],
            keep: vec![],
            allow_root: false,
        }
    }

    /// The service user (name or uid) to become after the privileged set-up. Default: none
    /// (then a process started as root is refused unless [`allow_root`](Self::allow_root)).
    pub fn user(&mut self, user: impl Into<String>) -> &mut Self {
        self.user = Some(user.into());
        self
    }

    /// A supplementary group (name or gid) of the service user; repeatable. Default: none.
    pub fn group(&mut self, group: impl Into<String>) -> &mut Self {
        self.groups.push(group.into());
        self
    }

    /// A capability to keep after the drop (e.g. `CAP_NET_BIND_SERVICE`); repeatable.
    /// Default: none.
    pub fn keep_capability(&mut self, cap: impl Into<String>) -> &mut Self {
        self.keep.push(cap.into());
        self
    }

    /// The group (name or gid) the socket is deliberately opened to: its directory is then
    /// 0750, owned by that group. Use the same group in [`crate::ServerBuilder::socket_group`].
    pub fn socket_group(&mut self, group: impl Into<String>) -> &mut Self {
        self.socket_group = Some(group.into());
        self
    }

    /// Allows running as root without a service user (every capability kept; test setups
    /// only: it is logged as a warning). Ignored when a user is named.
    pub fn allow_root(&mut self, allow: bool) -> &mut Self {
        self.allow_root = allow;
        self
    }

    /// The socket path given to [`new`](Self::new).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The whole sequence: [`harden`], then [`start_hardened`](Self::start_hardened).
    pub fn start(&self) -> Result<Ready, DaemonError> {
        self.start_hardened(harden()?)
    }

    /// Steps 2 to 5 of the module documentation, on a process hardened by [`harden`].
    pub fn start_hardened(&self, hardened: Hardened) -> Result<Ready, DaemonError> {
        let root = nix::unistd::geteuid().is_root();
        let spec = match &self.user {
            Some(name) => self.spec(name)?,
            None if root && !self.allow_root => return Err(DaemonError::RootRefused),
            None if root => {
                tracing::warn!(
                    "RUNNING AS ROOT (allowed explicitly): every capability is kept; name a \
                     service user in production"
                );
                return Ok(Ready::new(RunningAs::Root, hardened));
            }
            None => {
                let uid = nix::unistd::geteuid().as_raw();
                return Ok(Ready::new(RunningAs::Unprivileged { uid }, hardened));
            }
        };
        if root {
            let group = self
                .socket_group
                .as_deref()
                .map(|g| resolve_gid("socket_group", g))
                .transpose()?;
            if let Some(dir) = self.socket.parent() {
                peerwire_security::sockpath::prepare_directory(dir, group, spec.uid).map_err(
                    |source| DaemonError::SocketDirectory {
                        path: dir.to_owned(),
                        source,
                    },
                )?;
            }
        }
        privilege::drop_privileges(&spec).map_err(DaemonError::Drop)?;
        // setresuid cleared the dumpable flag's setting: set it again, and check it held.
        let again = harden()?;
        if nix::sys::prctl::get_dumpable().map_or(true, |dumpable| dumpable) {
            return Err(DaemonError::Dumpable);
        }
        Ok(Ready::new(RunningAs::ServiceUser(spec), again))
    }

    fn spec(&self, name: &str) -> Result<DropSpec, DaemonError> {
        let mut spec = DropSpec::for_user(name).map_err(|source| DaemonError::User {
            name: name.to_owned(),
            source,
        })?;
        spec.groups = self
            .groups
            .iter()
            .map(|g| resolve_gid("group", g))
            .collect::<Result<_, _>>()?;
        spec.keep = self
            .keep
            .iter()
            .map(|c| {
                privilege::parse_capability(c).map_err(|source| DaemonError::Capability {
                    name: c.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(spec)
    }
}

fn resolve_gid(key: &str, group: &str) -> Result<u32, DaemonError> {
    settings::resolve_gid(key, group).map_err(|source| DaemonError::Group {
        name: group.to_owned(),
        source,
    })
}

/// A process through the privileged start-up: it runs as [`running_as`](Self::running_as)
/// says, verified, and still has a single thread. Build the runtime with
/// [`runtime`](Self::runtime).
#[derive(Debug)]
#[must_use = "the server runs in the runtime Ready::runtime builds"]
pub struct Ready {
    running_as: RunningAs,
    memory_locked: bool,
}

/// The `/proc` status fields every thread must share with the verified main thread.
const THREAD_FIELDS: [&str; 9] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
];

impl Ready {
    fn new(running_as: RunningAs, hardened: Hardened) -> Self {
        Self {
            running_as,
            memory_locked: hardened.memory_locked,
        }
    }

    /// What the process runs as.
    pub fn running_as(&self) -> &RunningAs {
        &self.running_as
    }

    /// Whether memory is locked (no swapping of secrets); see
    /// [`peerwire_security::privilege::harden_process`].
    pub fn memory_locked(&self) -> bool {
        self.memory_locked
    }

    /// Builds the multi-threaded tokio runtime (all features), then checks that every thread of
    /// the process shows the main thread's credentials.
    pub fn runtime(self) -> Result<tokio::runtime::Runtime, DaemonError> {
        self.runtime_from(tokio::runtime::Builder::new_multi_thread().enable_all())
    }

    /// [`runtime`](Self::runtime) with the caller's runtime settings (worker threads, names...).
    pub fn runtime_from(
        self,
        builder: &mut tokio::runtime::Builder,
    ) -> Result<tokio::runtime::Runtime, DaemonError> {
        let runtime = builder.build().map_err(DaemonError::Runtime)?;
        check_threads()?;
        Ok(runtime)
    }
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Every thread's credentials are the main thread's (which the drop verified).
fn check_threads() -> Result<(), DaemonError> {
    let read = |path: &Path| std::fs::read_to_string(path).map_err(DaemonError::Runtime);
    let main = read(Path::new("/proc/self/status"))?;
    let tasks = std::fs::read_dir("/proc/self/task").map_err(DaemonError::Runtime)?;
    for task in tasks {
        let task = task.map_err(DaemonError::Runtime)?;
        let status = match std::fs::read_to_string(task.path().join("status")) {
            Ok(s) => s,
            // A thread that ended in between has nothing to check.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DaemonError::Runtime(e)),
        };
        for field in THREAD_FIELDS {
            let (found, expected) = (status_field(&status, field), status_field(&main, field));
            if found != expected {
                return Err(DaemonError::Thread {
                    tid: task.file_name().to_string_lossy().into_owned(),
                    field,
                    found,
                    expected,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_runtime_s_threads_share_the_main_thread_s_credentials() {
        let runtime = Ready::new(
            RunningAs::Unprivileged { uid: 0 },
            Hardened {
                memory_locked: false,
            },
        )
        .runtime_from(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all(),
        )
        .unwrap();
        let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
        assert!(threads >= 3, "{threads} threads: the workers were checked");
        drop(runtime);
    }

    #[test]
    fn unknown_names_are_typed_errors_before_anything_changes() {
        let mut d = Daemon::new("/nonexistent-peerwire-test/s.sock");
        d.user("root").group("no-such-group-pwt");
        assert!(matches!(
            d.spec("root"),
            Err(DaemonError::Group { ref name, .. }) if name == "no-such-group-pwt"
        ));
        let mut d = Daemon::new("/nonexistent-peerwire-test/s.sock");
        d.keep_capability("CAP_NOPE");
        assert!(matches!(
            d.spec("root"),
            Err(DaemonError::Capability { .. })
        ));
        assert!(matches!(
            d.spec("no-such-user-pwt"),
            Err(DaemonError::User { .. })
        ));
    }
}
