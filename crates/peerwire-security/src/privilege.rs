//! Least privilege (R13, D5) and anti-inspection (R2) for the processes of both ends.
//!
//! [`drop_privileges`]: after the privileged setup (socket, directories, ownership), a process
//! started as root becomes the service user for good: supplementary groups set to exactly the
//! configured ones, real/effective/saved gid and uid set, every capability set cleared except
//! the explicitly kept capabilities (default: none), and `no_new_privs` set. The result is read
//! back from `/proc/self/status` and the process refuses to go on if it differs. Capability sets
//! are per thread, so this must run while the process has a single thread (before the async
//! runtime starts); it checks that too.
//!
//! [`harden_process`]: no core dumps (`RLIMIT_CORE` 0), not dumpable (`PR_SET_DUMPABLE` 0: no
//! ptrace attach or `/proc/PID/mem` by processes of the same uid), and memory locked where the
//! memory-lock limit allows (otherwise logged, not fatal).

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};

/// What to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSpec {
    /// The service user.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Supplementary groups, exactly (default: none).
    pub groups: Vec<u32>,
    /// Capabilities kept in the permitted and effective (and bounding) sets (default: none).
    pub keep: Vec<Capability>,
}

impl DropSpec {
    /// The user `name` (or a uid), with its primary group, no supplementary groups and no
    /// capabilities.
    pub fn for_user(name: &str) -> Result<Self, PrivilegeError> {
        let user = match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(name),
        }
        .map_err(|e| PrivilegeError::Setup(format!("looking up user {name:?}: {e}")))?
        .ok_or_else(|| PrivilegeError::Setup(format!("no user named {name:?}")))?;
        Ok(Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: vec![],
            keep: vec![],
        })
    }
}

/// Why privileges could not be dropped as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// A step failed.
    #[error("privilege drop failed: {0}")]
    Setup(String),
    /// The process does not look as asked afterwards (read back from /proc/self/status).
    #[error(
        "after the privilege drop, /proc/self/status shows {field} = {found:?}, expected {expected:?}"
    )]
    Verify {
        /// The status field.
        field: String,
        /// What it shows.
        found: String,
        /// What was asked.
        expected: String,
    },
    /// More than one thread exists: capability sets would differ between threads.
    #[error("privileges must be dropped before any other thread starts ({0} threads now)")]
    Threads(usize),
}

fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, PrivilegeError> {
    r.map_err(|e| PrivilegeError::Setup(format!("{what}: {e}")))
}

fn status() -> Result<String, PrivilegeError> {
    step(
        "reading /proc/self/status",
        std::fs::read_to_string("/proc/self/status"),
    )
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map_or("", str::trim)
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| field(&s, "Threads").parse().ok())
        .unwrap_or(0)
}

fn mask(caps: &[Capability]) -> String {
    format!("{:016x}", caps.iter().fold(0u64, |m, c| m | c.bitmask()))
}

/// Becomes `spec` for good; see the module documentation.
pub fn drop_privileges(spec: &DropSpec) -> Result<(), PrivilegeError> {
    let threads = thread_count();
    if threads != 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    let keep: CapsHashSet = spec.keep.iter().copied().collect();
    let root = nix::unistd::geteuid().is_root();
    if root {
        // Keep the permitted set across setuid only if some capability is to be kept.
        step(
            "PR_SET_KEEPCAPS",
            caps::securebits::set_keepcaps(!keep.is_empty()),
        )?;
        // The bounding set needs CAP_SETPCAP: shrink it while still root.
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                step(
                    "dropping from the bounding set",
                    caps::drop(None, CapSet::Bounding, cap),
                )?;
            }
        }
        let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        step("setgroups", nix::unistd::setgroups(&groups))?;
        let gid = Gid::from_raw(spec.gid);
        step("setresgid", nix::unistd::setresgid(gid, gid, gid))?;
        let uid = Uid::from_raw(spec.uid);
        step("setresuid", nix::unistd::setresuid(uid, uid, uid))?;
        step("PR_SET_KEEPCAPS", caps::securebits::set_keepcaps(false))?;
    } else if nix::unistd::getuid().as_raw() != spec.uid
        || nix::unistd::geteuid().as_raw() != spec.uid
    {
        return Err(PrivilegeError::Setup(format!(
            "not root, and not the service user (uid {}) either: running as uid {}",
            spec.uid,
            nix::unistd::geteuid()
        )));
    }
    if caps::runtime::ambient_set_supported().is_ok() {
        step(
            "clearing the ambient set",
            caps::clear(None, CapSet::Ambient),
        )?;
    }
    step(
        "clearing the inheritable set",
        caps::clear(None, CapSet::Inheritable),
    )?;
    step(
        "setting the permitted set",
        caps::set(None, CapSet::Permitted, &keep),
    )?;
    step(
        "setting the effective set",
        caps::set(None, CapSet::Effective, &keep),
    )?;
    step("PR_SET_NO_NEW_PRIVS", nix::sys::prctl::set_no_new_privs())?;
    verify(spec, root)
}

/// One `/proc/self/status` field, whitespace-normalised, must read `expected`.
fn expect_field(status: &str, name: &str, expected: String) -> Result<(), PrivilegeError> {
    let found = field(status, name)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if found == expected {
        return Ok(());
    }
    Err(PrivilegeError::Verify {
        field: name.into(),
        found,
        expected,
    })
}

/// Reads back `/proc/self/status` and compares it with `spec`.
fn verify(spec: &DropSpec, root_started: bool) -> Result<(), PrivilegeError> {
    let bounding_checked = root_started;
    let s = status()?;
    let mismatch = |name: &str, expected: String| expect_field(&s, name, expected);
    mismatch("Uid", [spec.uid; 4].map(|u| u.to_string()).join(" "))?;
    mismatch("Gid", [spec.gid; 4].map(|g| g.to_string()).join(" "))?;
    if !root_started {
        // Started as the service user (systemd User=): the groups are the service manager's
        // to set (SupplementaryGroups=); without CAP_SETGID they cannot be changed here.
        return verify_caps(&s, spec, bounding_checked);
    }
    let mut groups: Vec<u32> = spec.groups.clone();
    groups.sort_unstable();
    groups.dedup();
    let shown: HashSet<u32> = field(&s, "Groups")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    if shown != groups.iter().copied().collect() {
        return Err(PrivilegeError::Verify {
            field: "Groups".into(),
            found: field(&s, "Groups").into(),
            expected: groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    verify_caps(&s, spec, bounding_checked)
}

fn verify_caps(s: &str, spec: &DropSpec, bounding_checked: bool) -> Result<(), PrivilegeError> {
    let mismatch = |name: &str, expected: String| expect_field(s, name, expected);
    let keep = mask(&spec.keep);
    for set in ["CapInh", "CapAmb"] {
        mismatch(set, mask(&[]))?;
    }
    for set in ["CapPrm", "CapEff"] {
        mismatch(set, keep.clone())?;
    }
    if bounding_checked {
        mismatch("CapBnd", keep)?;
    }
    mismatch("NoNewPrivs", "1".into())
}

/// What [`harden_process`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// Memory is locked (no swapping of secrets).
    pub memory_locked: bool,
}

/// No core dumps, no ptrace attach or `/proc/PID/mem` by same-uid processes, and memory locked
/// where `RLIMIT_MEMLOCK` allows (`LimitMEMLOCK=infinity`); a failure to lock is logged.
/// Call it first thing in `main`, in the server and in the display client.
pub fn harden_process() -> Result<Hardening, PrivilegeError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    step("RLIMIT_CORE", setrlimit(Resource::RLIMIT_CORE, 0, 0))?;
    step("PR_SET_DUMPABLE", nix::sys::prctl::set_dumpable(false))?;
    let memory_locked = match getrlimit(Resource::RLIMIT_MEMLOCK) {
        // Only with no limit: MCL_FUTURE under a finite limit would make later allocations fail.
        Ok((soft, _)) if soft == nix::sys::resource::RLIM_INFINITY => {
            use nix::sys::mman::{MlockAllFlags, mlockall};
            match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("memory not locked: mlockall failed: {e}");
                    false
                }
            }
        }
        Ok((soft, _)) => {
            tracing::info!(
                "memory not locked: RLIMIT_MEMLOCK is {soft} bytes (set LimitMEMLOCK=infinity to lock); \
                 secrets are still zeroized after use and kept out of core dumps"
            );
            false
        }
        Err(e) => {
            tracing::warn!("memory not locked: cannot read RLIMIT_MEMLOCK: {e}");
            false
        }
    };
    Ok(Hardening { memory_locked })
}

/// Parses capability names such as `CAP_NET_BIND_SERVICE` (or `net_bind_service`).
pub fn parse_capability(name: &str) -> Result<Capability, PrivilegeError> {
    let canonical = caps::to_canonical(name);
    canonical
        .parse()
        .map_err(|_| PrivilegeError::Setup(format!("unknown capability {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_threads_and_parses_capabilities() {
        let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let spec = DropSpec {
            uid: 65534,
            gid: 65534,
            groups: vec![],
            keep: vec![],
        };
        assert!(matches!(
            drop_privileges(&spec),
            Err(PrivilegeError::Threads(_))
        ));
        assert_eq!(
            parse_capability("net_bind_service").unwrap(),
            Capability::CAP_NET_BIND_SERVICE
        );
        assert!(parse_capability("CAP_NOPE").is_err());
        assert_eq!(mask(&[Capability::CAP_CHOWN]), "0000000000000001");
    }
}
