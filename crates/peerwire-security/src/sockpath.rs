//! Socket path hardening: a private directory, a socket that is never more open than intended,
//! and stale-socket handling that never deletes what is not ours.
//!
//! - The directory is owned by the service user, mode 0700 (0750 with a deliberately allowed
//!   group, which then owns it), created if missing. An existing directory that is a symbolic
//!   link, not ours, or writable by group or others is refused, naming the fix.
//! - The socket is created under `umask 0177`, so it is 0600 from its first instant; with an
//!   allowed group it is then given to that group and opened to 0660.
//! - Abstract socket names (no file, no permissions) are refused.
//! - An existing socket file is removed only if it is ours and nobody answers on it; a live
//!   server means "already running"; anything else at the path is refused, never deleted.
//!
//! The same checks apply to a socket inherited from systemd ([`check_socket_file`]) and are
//! reported in plain words by [`audit`].

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, chown, geteuid};

use crate::securedir::{Create, Kind, Meta, SecureDir, Trust, Untrusted};

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A socket path that cannot be used, why, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem} (fix: {fix})", path.display())]
pub struct PathError {
    /// The offending path.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

fn problem(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> PathError {
    PathError {
        path: path.to_owned(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Refuses abstract, empty, relative-looking-abstract and over-long socket names.
pub fn validate_socket_path(path: &Path) -> Result<(), PathError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    match bytes.first() {
        None => {
            return Err(problem(
                path,
                "empty socket path",
                "give a path such as /run/peerwire/sdk.sock",
            ));
        }
        Some(0) | Some(b'@') => {
            return Err(problem(
                path,
                "abstract socket addresses have no file permissions, so anyone could connect",
                "use a filesystem path inside a 0700 directory, such as /run/peerwire/sdk.sock",
            ));
        }
        _ => {}
    }
    if bytes.contains(&0) {
        return Err(problem(path, "the path contains a NUL byte", "remove it"));
    }
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(problem(
            path,
            format!(
                "the path is {} bytes; Unix sockets allow {MAX_SOCKET_PATH}",
                bytes.len()
            ),
            "use a shorter path",
        ));
    }
    if path.file_name().is_none() || path.parent().is_none_or(|p| p.as_os_str().is_empty()) {
        return Err(problem(
            path,
            "the socket needs a directory of its own",
            "use a path such as /run/peerwire/sdk.sock",
        ));
    }
    Ok(())
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// The mode the socket directory gets when peerwire creates it.
pub fn directory_mode(group: Option<u32>) -> u32 {
    if group.is_some() { 0o750 } else { 0o700 }
}

/// The mode of the socket.
pub fn socket_mode(group: Option<u32>) -> u32 {
    if group.is_some() { 0o660 } else { 0o600 }
}

/// Checks an existing socket directory; returns every problem found.
fn directory_problems(dir: &Path, group: Option<u32>, owner: u32) -> Vec<PathError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta_problems(dir, &Meta::from_std(&meta), group, owner),
        Err(e) => vec![problem(
            dir,
            format!("cannot inspect the directory: {e}"),
            "check the path",
        )],
    }
}

/// The problems of the socket directory `dir` described by `meta` (from `fstat` of its
/// descriptor or from `lstat`).
fn meta_problems(dir: &Path, meta: &Meta, group: Option<u32>, owner: u32) -> Vec<PathError> {
    let want = directory_mode(group);
    let me = owner;
    if meta.kind == Kind::Symlink {
        return vec![problem(
            dir,
            "the socket directory is a symbolic link, which someone could point elsewhere",
            format!(
                "replace it with a real directory: rm {0} && mkdir -m {want:o} {0}",
                dir.display()
            ),
        )];
    }
    if meta.kind != Kind::Dir {
        return vec![problem(
            dir,
            "is not a directory",
            "remove it or choose another socket path",
        )];
    }
    let mut found = vec![];
    if meta.uid != me {
        found.push(problem(
            dir,
            format!(
                "the socket directory is owned by uid {}, but the server runs as uid {me}",
                meta.uid
            ),
            format!(
                "chown {me} {}  (or use a directory of the service user)",
                dir.display()
            ),
        ));
    }
    let mode = meta.mode;
    if mode & 0o022 != 0 {
        found.push(problem(
            dir,
            format!("the socket directory is writable by {} (mode {mode:04o}), so others could replace the socket",
                if mode & 0o002 != 0 { "everyone" } else { "its group" }),
            format!("chmod {want:04o} {}", dir.display()),
        ));
    }
    if let Some(g) = group {
        if meta.gid != g && mode & 0o050 != 0 {
            found.push(problem(
                dir,
                format!(
                    "the directory is open to group {}, not to the allowed group {g}",
                    meta.gid
                ),
                format!("chgrp {g} {}", dir.display()),
            ));
        }
    }
    found
}

/// Creates the socket directory (mode 0700, or 0750 owned by `group`) if it is missing, and
/// checks it either way. `owner` is the user that will serve on it: root calls this for the
/// service user it is about to become (the directory is then given to that user), and the
/// service user binds the socket itself after dropping root, so that `SO_PEERCRED` of the
/// listening socket, which is fixed at `listen` time, names the service user.
///
/// Everything goes through descriptors ([`crate::securedir`]): every directory above is
/// opened without following links of anyone but root and this process's user, and must be
/// owned by them and writable by nobody else (root-owned sticky directories such as `/tmp`
/// excepted); when root prepares the directory of a service user, only root counts, so a
/// directory another user (the service user included) controls is refused before anything is
/// created in it. The socket directory is made with `mkdirat`, opened with `O_NOFOLLOW`,
/// checked to be the one just made, and only then given away with `fchown`/`fchmod` on that
/// descriptor: swapping it for a link cannot redirect either call.
pub fn prepare_directory(dir: &Path, group: Option<u32>, owner: u32) -> Result<(), PathError> {
    let want = directory_mode(group);
    let trust = Trust::me();
    let name = dir.file_name().ok_or_else(|| {
        problem(
            dir,
            "names no directory",
            "use a path such as /run/peerwire/sdk.sock",
        )
    })?;
    let parent_path = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = SecureDir::open_or_create(parent_path, &trust, 0o700)?;
    if let Some(p) = trust.ancestor_problem(parent.path(), &parent.meta()) {
        return Err(p.into());
    }
    let mut made = parent.subdir(name, Create::Missing(0o700))?;
    if made.created() {
        let set = |r: nix::Result<()>, what: String, fix: &str| {
            r.map_err(|e| problem(dir, format!("{what}: {e}"), fix))
        };
        if owner != geteuid().as_raw() {
            // Root prepares the directory of the service user it is about to become.
            set(
                made.chown(Some(owner), None),
                format!("cannot give the directory to uid {owner}"),
                "run as root or as that user",
            )?;
        }
        if let Some(g) = group {
            set(
                made.chown(None, Some(g)),
                format!("cannot give the directory to group {g}"),
                "check that the server may use that group",
            )?;
        }
        // Exactly `want` whatever the umask, which can only have taken bits away (another
        // thread binding a socket narrows it for a moment, see `bind`).
        set(
            made.chmod(want),
            format!("cannot set mode {want:o}"),
            "check the directory",
        )?;
    }
    match meta_problems(dir, &made.meta(), group, owner)
        .into_iter()
        .next()
    {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

impl From<Untrusted> for PathError {
    fn from(u: Untrusted) -> Self {
        PathError {
            path: u.path,
            problem: u.problem,
            fix: u.fix,
        }
    }
}

/// Removes a stale socket of ours at `path`; refuses a live one or anything else.
fn clear_stale(path: &Path, owner: u32) -> Result<(), PathError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(problem(
                path,
                format!("cannot inspect: {e}"),
                "check the path",
            ));
        }
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(problem(
            path,
            "something that is not a socket is in the way",
            "move it away or choose another socket path; peerwire never deletes it",
        ));
    }
    let me = owner;
    if meta.uid() != me {
        return Err(problem(
            path,
            format!(
                "a socket owned by uid {} is in the way (the server runs as uid {me})",
                meta.uid()
            ),
            "find out who created it; remove it by hand only if it is stale",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(problem(
            path,
            "a server is already running on this socket",
            "stop it first, or use another socket path",
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket of ours (nobody answers on it)");
            std::fs::remove_file(path).map_err(|e| {
                problem(
                    path,
                    format!("cannot remove the stale socket: {e}"),
                    "remove it by hand",
                )
            })
        }
        Err(e) => Err(problem(
            path,
            format!("cannot probe the existing socket: {e}"),
            "remove it by hand if it is stale",
        )),
    }
}

/// Binds a listening socket at `path` with all the checks above. The socket is 0600 from the
/// moment it exists (umask 0177 around `bind`); with `group` it is then given to the group and
/// opened to 0660.
///
/// `umask` is per process: while `bind` runs, files other threads create get at most 0600 too,
/// which is only ever stricter.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, PathError> {
    validate_socket_path(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let owner = geteuid().as_raw();
    prepare_directory(dir, group, owner)?;
    clear_stale(path, owner)?;
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener =
        bound.map_err(|e| problem(path, format!("cannot bind: {e}"), "check the directory"))?;
    if let Some(g) = group {
        let opened = chown(path, None, Some(Gid::from_raw(g)))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = opened {
            let _ = std::fs::remove_file(path);
            return Err(problem(
                path,
                format!("cannot open the socket to group {g}: {e}"),
                "check that the server may use that group",
            ));
        }
    }
    Ok(listener)
}

/// A socket more open than 0600 (0660 with `group`); `fix` says how, given the allowed mode.
fn socket_mode_problem(
    path: &Path,
    meta: &std::fs::Metadata,
    group: Option<u32>,
    fix: impl Fn(u32) -> String,
) -> Option<PathError> {
    let mode = mode_of(meta);
    let allowed = socket_mode(group);
    (mode & !allowed != 0).then(|| {
        problem(
            path,
            format!("the socket has mode {mode:04o}, more open than {allowed:04o}"),
            fix(allowed),
        )
    })
}

/// Checks a socket someone else created (systemd socket activation): the same directory rules
/// (the directories above included), and the socket owned by us (or root) with no permission
/// beyond 0600 (0660 with `group`).
pub fn check_socket_file(path: &Path, group: Option<u32>) -> Result<(), PathError> {
    validate_socket_path(path)?;
    // The directories above the socket's: owned by root or us, writable by nobody else.
    if let Some(p) = path.parent().and_then(|d| {
        SecureDir::ancestor_report(d, &Trust::me())
            .into_iter()
            .next()
    }) {
        return Err(p.into());
    }
    // systemd creates a missing ListenStream= directory as root: a root-owned directory is as
    // trustworthy as our own, so only its other problems count.
    let root_owned = path
        .parent()
        .and_then(|d| std::fs::symlink_metadata(d).ok())
        .is_some_and(|m| m.uid() == 0 && !m.file_type().is_symlink());
    if let Some(p) = path
        .parent()
        .map(|d| directory_problems(d, group, geteuid().as_raw()))
        .and_then(|v| {
            v.into_iter()
                .find(|p| !(root_owned && p.problem.contains("is owned by uid 0")))
        })
    {
        return Err(p);
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        problem(
            path,
            format!("cannot inspect the socket: {e}"),
            "check the unit's ListenStream=",
        )
    })?;
    if !meta.file_type().is_socket() {
        return Err(problem(
            path,
            "is not a socket",
            "check the unit's ListenStream=",
        ));
    }
    let me = geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(problem(
            path,
            format!("the socket is owned by uid {}", meta.uid()),
            format!("SocketUser= the service user (uid {me})"),
        ));
    }
    if let Some(p) = socket_mode_problem(path, &meta, group, |a| {
        format!("SocketMode={a:04o} in the .socket unit")
    }) {
        return Err(p);
    }
    if let Some(g) = group {
        if meta.gid() != g {
            return Err(problem(
                path,
                format!("the socket belongs to group {}, not {g}", meta.gid()),
                format!("SocketGroup= group {g}"),
            ));
        }
    }
    Ok(())
}

/// What [`audit`] found.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Facts, one per line (owner, mode...).
    pub facts: Vec<String>,
    /// Problems in plain words, each with its fix. Empty means safe.
    pub problems: Vec<PathError>,
}

fn describe(path: &Path, what: &str) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let kind = if meta.file_type().is_symlink() {
        "symbolic link"
    } else if meta.is_dir() {
        "directory"
    } else if meta.file_type().is_socket() {
        "socket"
    } else {
        "file"
    };
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "?".into());
    let grp = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| "?".into());
    Some(format!(
        "{what} {}: {kind}, owner {user} (uid {}), group {grp} (gid {}), mode {:04o}",
        path.display(),
        meta.uid(),
        meta.gid(),
        mode_of(&meta)
    ))
}

/// Inspects a socket path as the server would use it, for an operator: the server runs as
/// `owner` (root auditing a service user's setup passes that user's uid). Every directory
/// above the socket directory, and every link on the way, that someone other than root or
/// `owner` owns, or that group or others can write (root-owned sticky directories such as
/// `/tmp` excepted), is reported.
pub fn audit(path: &Path, group: Option<u32>, owner: u32) -> Audit {
    let mut audit = Audit::default();
    if let Err(p) = validate_socket_path(path) {
        audit.problems.push(p);
        return audit;
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    audit.facts.extend(describe(dir, "directory"));
    audit.facts.extend(describe(path, "socket"));
    if std::fs::symlink_metadata(dir).is_err() {
        audit.problems.push(problem(
            dir,
            "the directory does not exist",
            "start the server, which creates it 0700",
        ));
        return audit;
    }
    let trust = Trust::user(owner);
    audit.problems.extend(
        SecureDir::ancestor_report(dir, &trust)
            .into_iter()
            .map(PathError::from),
    );
    audit.problems.extend(directory_problems(dir, group, owner));
    match std::fs::symlink_metadata(path) {
        Err(_) => audit
            .facts
            .push("no socket yet: the server is not running".into()),
        Ok(meta) if !meta.file_type().is_socket() => audit.problems.push(problem(
            path,
            "is not a socket",
            "move it away; the server refuses to start while it is there",
        )),
        Ok(meta) => {
            let fix = |a: u32| format!("chmod {a:04o} {}", path.display());
            audit
                .problems
                .extend(socket_mode_problem(path, &meta, group, fix));
            if meta.uid() != owner && meta.uid() != 0 {
                audit.facts.push(format!(
                    "the socket belongs to uid {}, not to the server's user (uid {owner})",
                    meta.uid()
                ));
            }
            match UnixStream::connect(path) {
                Ok(s) => {
                    let who = crate::cred::PeerCredentials::of(&s)
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    audit.facts.push(format!("a server is listening ({who})"));
                }
                Err(e) => audit
                    .facts
                    .push(format!("nobody answers on the socket ({e}): it is stale")),
            }
        }
    }
    audit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_odd_paths_are_refused() {
        for p in ["", "@peerwire", "\0peerwire", "sock"] {
            assert!(validate_socket_path(Path::new(p)).is_err(), "{p:?}");
        }
        let long = format!("/tmp/{}", "x".repeat(120));
        assert!(
            validate_socket_path(Path::new(&long))
                .unwrap_err()
                .problem
                .contains("107")
        );
        assert!(validate_socket_path(Path::new("/run/peerwire/sdk.sock")).is_ok());
    }

    #[test]
    fn creates_private_directory_and_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/s.sock");
        let _l = bind(&path, None).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let sock_mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!((dir_mode, sock_mode), (0o700, 0o600));
        assert!(audit(&path, None, geteuid().as_raw()).problems.is_empty());
        // A live server is not clobbered.
        let err = bind(&path, None).unwrap_err();
        assert!(err.problem.contains("already running"), "{err}");
    }

    #[test]
    fn refuses_unsafe_directories_and_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        // Group/world-writable directory.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&open.join("s.sock"), None).unwrap_err();
        assert!(
            err.problem.contains("writable by everyone") && err.fix.contains("chmod 0700"),
            "{err}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(
            bind(&open.join("s.sock"), None)
                .unwrap_err()
                .problem
                .contains("its group")
        );
        // Symlinked directory.
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = bind(&link.join("s.sock"), None).unwrap_err();
        assert!(err.problem.contains("symbolic link"), "{err}");
        // A regular file at the socket path: refused and kept.
        let file = real.join("s.sock");
        std::fs::write(&file, b"data").unwrap();
        let err = bind(&file, None).unwrap_err();
        assert!(err.problem.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        let report = audit(&file, None, geteuid().as_raw());
        assert_eq!(report.problems.len(), 1);
    }

    #[test]
    fn replaces_a_dead_socket_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d/s.sock");
        drop(bind(&path, None).unwrap()); // closed listener: the file stays, nobody answers
        assert!(path.exists());
        let report = audit(&path, None, geteuid().as_raw());
        assert!(
            report.facts.iter().any(|f| f.contains("stale")),
            "{:?}",
            report.facts
        );
        let _again = bind(&path, None).unwrap();
    }
}
