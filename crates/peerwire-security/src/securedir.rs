//! Race-free file-system access for privileged and secret-handling code: every operation goes
//! through a directory descriptor that was verified, never through a path that could change
//! underneath.
//!
//! [`SecureDir::open`] walks a path from `/` one component at a time, opening each with
//! `O_DIRECTORY | O_NOFOLLOW` relative to the directory before it, and checks what it opened
//! with `fstat` on that same descriptor:
//!
//! - every directory on the way is owned by root or by one of the trusted users, and is not
//!   writable by group or others; the one exception is a root-owned directory with the sticky
//!   bit (such as `/tmp`), where others cannot rename or remove what is not theirs;
//! - a symbolic link on the way is followed only if it is owned by root or a trusted user (it
//!   sits in a directory checked above, so nobody else can replace it); its target is read
//!   from the link's own descriptor (`O_PATH`) and walked with the same checks;
//! - missing directories can be created (`mkdirat`), then opened without following links and
//!   checked to be ours, so a directory swapped for a link after `mkdir` is refused, never
//!   followed.
//!
//! Whatever is done next (`fchown`, `fchmod`, `openat`, `mkdirat`, `unlinkat`, `renameat`)
//! is done relative to the verified descriptor. Files are opened with `O_NOFOLLOW` and checked
//! with `fstat` on the descriptor that is then read: no check-then-read window.
//!
//! Root gets no exemption: a directory another user owns is refused, whoever asks.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

pub use crate::strict::Untrusted;

/// Most symbolic links followed in one walk (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// What kind of object a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A Unix socket.
    Socket,
    /// Anything else (device, FIFO).
    Other,
}

impl Kind {
    /// The word for it in messages.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
            Kind::Symlink => "symbolic link",
            Kind::Socket => "socket",
            Kind::Other => "special file",
        }
    }
}

/// Owner, group, permission bits and kind of a file, from `fstat` or `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits, sticky/setuid/setgid included (`& 0o7777`).
    pub mode: u32,
    /// What it is.
    pub kind: Kind,
}

impl Meta {
    fn kind_of(fmt: u32) -> Kind {
        match SFlag::from_bits_truncate(fmt & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFSOCK => Kind::Socket,
            _ => Kind::Other,
        }
    }

    /// From `fstat`.
    pub fn from_stat(st: &FileStat) -> Self {
        Self {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind: Self::kind_of(st.st_mode),
        }
    }

    /// From std's metadata (`symlink_metadata` for an `lstat`).
    pub fn from_std(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            kind: Self::kind_of(meta.mode()),
        }
    }

    /// Of a descriptor.
    pub fn of(fd: impl AsFd) -> nix::Result<Self> {
        fstat(fd).map(|st| Self::from_stat(&st))
    }

    /// Writable by group or others.
    pub fn shared_write(&self) -> bool {
        self.mode & 0o022 != 0
    }

    /// A root-owned directory with the sticky bit, such as `/tmp`: others cannot rename or
    /// remove what is not theirs in it.
    pub fn sticky_root(&self) -> bool {
        self.uid == 0 && self.mode & 0o1000 != 0 && self.kind == Kind::Dir
    }
}

fn untrusted(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> Untrusted {
    Untrusted {
        path: path.to_owned(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Who may own the directories (and links) on the way to what peerwire uses: root always,
/// plus the listed users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    user: u32,
}

impl Trust {
    /// Root and this process's effective user (for root: root alone).
    pub fn me() -> Self {
        Self::user(nix::unistd::geteuid().as_raw())
    }

    /// Root and `uid`.
    pub fn user(uid: u32) -> Self {
        Self { user: uid }
    }

    /// Whether `uid` may own a directory on the way.
    pub fn owner_ok(&self, uid: u32) -> bool {
        uid == 0 || uid == self.user
    }

    fn names(&self) -> String {
        match self.user {
            0 => "root".into(),
            u => format!("root or {}", user_name(u)),
        }
    }

    /// The problem with a directory on the way to something, if any.
    pub fn ancestor_problem(&self, path: &Path, meta: &Meta) -> Option<Untrusted> {
        if !self.owner_ok(meta.uid) {
            return Some(untrusted(
                path,
                format!(
                    "is owned by {}, not by {}: that user could replace what is inside",
                    user_name(meta.uid),
                    self.names()
                ),
                format!(
                    "run it as {} instead, or use a directory only root can change (chown root {})",
                    user_name(meta.uid),
                    path.display()
                ),
            ));
        }
        if meta.kind == Kind::Dir && meta.shared_write() && !meta.sticky_root() {
            return Some(untrusted(
                path,
                format!(
                    "is writable by {} (mode {:04o}): they could replace what is inside",
                    if meta.mode & 0o002 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    },
                    meta.mode
                ),
                format!("chmod {:04o} {}", meta.mode & !0o022, path.display()),
            ));
        }
        None
    }
}

/// What a walk does when it finds a problem.
enum OnProblem<'a> {
    /// Stop with it.
    Fail,
    /// Note it and go on (for reports).
    Collect(&'a mut Vec<Untrusted>),
}

impl OnProblem<'_> {
    fn found(&mut self, p: Option<Untrusted>) -> Result<(), Untrusted> {
        match (p, self) {
            (None, _) => Ok(()),
            (Some(p), OnProblem::Fail) => Err(p),
            (Some(p), OnProblem::Collect(v)) => {
                if !v.contains(&p) {
                    v.push(p);
                }
                Ok(())
            }
        }
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A directory opened by descriptor after every directory above it was checked.
#[derive(Debug)]
pub struct SecureDir {
    fd: OwnedFd,
    path: PathBuf,
    meta: Meta,
    created: bool,
}

/// How to open the last directory of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// It must exist.
    No,
    /// Create it (and missing directories above it) with this mode if missing.
    Missing(u32),
}

impl SecureDir {
    /// Opens directory `path` after checking every directory and symbolic link on the way
    /// (see the module documentation). The directory itself is returned unchecked, with its
    /// [`meta`](Self::meta): its owner and mode rules are the caller's.
    pub fn open(path: &Path, trust: &Trust) -> Result<Self, Untrusted> {
        walk(path, trust, Create::No, &mut OnProblem::Fail)
    }

    /// As [`open`](Self::open), creating missing directories with `mode` (exactly, whatever
    /// the umask). A directory created here is checked to be ours after opening it without
    /// following links: one swapped for a link or for someone else's directory after `mkdir`
    /// is refused. [`created`](Self::created) says whether the last one was created now.
    pub fn open_or_create(path: &Path, trust: &Trust, mode: u32) -> Result<Self, Untrusted> {
        walk(path, trust, Create::Missing(mode), &mut OnProblem::Fail)
    }

    /// Every problem on the way to `path` (the directories above it and the links followed),
    /// for a report; stops only where it cannot go on. `path` itself is not judged.
    pub fn ancestor_report(path: &Path, trust: &Trust) -> Vec<Untrusted> {
        let mut found = vec![];
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            if let Err(e) = walk(
                parent,
                trust,
                Create::No,
                &mut OnProblem::Collect(&mut found),
            ) {
                found.push(e);
            } else if let Ok(dir) = SecureDir::open(parent, trust) {
                found.extend(trust.ancestor_problem(parent, &dir.meta));
            }
        }
        found
    }

    /// The path this directory was opened by (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Owner, group and mode of the directory, from `fstat` of its descriptor when opened.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Whether the last directory was created by this walk.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Gives the directory to `uid` and/or `gid` (`fchown` on the descriptor).
    pub fn chown(&mut self, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()> {
        fchown(&self.fd, uid.map(Uid::from_raw), gid.map(Gid::from_raw))?;
        self.meta = Meta::of(&self.fd)?;
        Ok(())
    }

    /// Sets the mode exactly (`fchmod` on the descriptor).
    pub fn chmod(&mut self, mode: u32) -> nix::Result<()> {
        fchmod(&self.fd, Mode::from_bits_truncate(mode))?;
        self.meta = Meta::of(&self.fd)?;
        Ok(())
    }

    /// A subdirectory, opened (created with `mode` if missing and `create`) without following
    /// links; returned with its meta for the caller to judge.
    pub fn subdir(&self, name: &OsStr, create: Create) -> Result<SecureDir, Untrusted> {
        let path = self.path.join(name);
        single_name(&path, name)?;
        open_child_dir(self.fd.as_fd(), &path, name, create)
    }

    /// Opens `name` in this directory read-only without following a link, and returns the
    /// open file with the `fstat` of that descriptor: check the meta, then read the same file.
    pub fn open_file(&self, name: &OsStr) -> Result<(File, Meta), Untrusted> {
        let path = self.path.join(name);
        single_name(&path, name)?;
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP => untrusted(&path, "is a symbolic link", "replace it with the real file"),
            e => untrusted(&path, format!("cannot open: {e}"), "check the path"),
        })?;
        let meta = Meta::of(&fd).map_err(|e| untrusted(&path, e.to_string(), "check the path"))?;
        if meta.kind != Kind::File {
            return Err(untrusted(
                &path,
                format!("is a {}, not a regular file", meta.kind.word()),
                "replace it with the real file",
            ));
        }
        Ok((File::from(fd), meta))
    }

    /// Creates `name` in this directory with `mode` (`O_CREAT | O_EXCL | O_NOFOLLOW`): never
    /// an existing file, never through a link.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> std::io::Result<File> {
        single_name(&self.path.join(name), name).map_err(std::io::Error::other)?;
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        // Exactly `mode`, whatever the umask took away.
        fchmod(&fd, Mode::from_bits_truncate(mode))?;
        Ok(File::from(fd))
    }

    /// Removes the file (or link) `name` from this directory, if there is one.
    pub fn remove_file(&self, name: &OsStr) -> std::io::Result<()> {
        single_name(&self.path.join(name), name).map_err(std::io::Error::other)?;
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `name` exists in this directory (without following a link).
    pub fn contains(&self, name: &OsStr) -> bool {
        nix::sys::stat::fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses a name that is not one plain path component.
fn single_name(path: &Path, name: &OsStr) -> Result<(), Untrusted> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(untrusted(
            path,
            "is not a plain file name",
            "give a name without '/'",
        ));
    }
    Ok(())
}

/// Whether `name` in `parent` is a symbolic link (`O_DIRECTORY | O_NOFOLLOW` on a link fails
/// with `ELOOP` or `ENOTDIR`, depending on the kernel).
fn is_link(parent: BorrowedFd<'_>, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| Meta::from_stat(&st).kind == Kind::Symlink)
}

/// Opens (creating if asked) the directory `name` in `parent` without following a link.
fn open_child_dir(
    parent: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    create: Create,
) -> Result<SecureDir, Untrusted> {
    let mut created = false;
    // Someone creating and removing the name in turn cannot keep us looping.
    let mut attempts = 0;
    let fd = loop {
        attempts += 1;
        match openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) if !created && attempts <= 8 => {
                let Create::Missing(mode) = create else {
                    return Err(untrusted(
                        path,
                        "does not exist",
                        "create it, or check the path",
                    ));
                };
                match mkdirat(parent, name, Mode::from_bits_truncate(mode & 0o777)) {
                    Ok(()) => created = true,
                    Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(untrusted(
                            path,
                            format!("cannot create the directory: {e}"),
                            "check the directory above",
                        ));
                    }
                }
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) if is_link(parent, name) => {
                return Err(untrusted(
                    path,
                    "is a symbolic link, which someone could point elsewhere (not followed here)",
                    format!(
                        "replace it with a real directory: rm {0} && mkdir -m 0700 {0}",
                        path.display()
                    ),
                ));
            }
            Err(Errno::ENOTDIR) => {
                return Err(untrusted(
                    path,
                    "is not a directory",
                    "remove it or choose another path",
                ));
            }
            Err(e) => {
                return Err(untrusted(
                    path,
                    format!("cannot open the directory: {e}"),
                    "check the path",
                ));
            }
        }
    };
    let mut meta = Meta::of(&fd).map_err(|e| untrusted(path, e.to_string(), "check the path"))?;
    if created {
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid != me {
            // Swapped between our mkdirat and openat for a directory of someone else.
            return Err(untrusted(
                path,
                format!(
                    "was replaced by a directory of {} right after it was created",
                    user_name(meta.uid)
                ),
                "find out who is tampering with the directory above",
            ));
        }
        if let Create::Missing(mode) = create {
            fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| {
                untrusted(
                    path,
                    format!("cannot set mode {mode:o}: {e}"),
                    "check the directory",
                )
            })?;
            meta.mode = mode & 0o7777;
        }
    }
    Ok(SecureDir {
        fd,
        path: path.to_owned(),
        meta,
        created,
    })
}

/// The walk behind [`SecureDir::open`]: see the module documentation.
fn walk(
    path: &Path,
    trust: &Trust,
    create: Create,
    on_problem: &mut OnProblem<'_>,
) -> Result<SecureDir, Untrusted> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| {
                untrusted(
                    path,
                    format!("no current directory: {e}"),
                    "use an absolute path",
                )
            })?
            .join(path)
    };
    let root = Path::new("/");
    let open_root = || -> Result<SecureDir, Untrusted> {
        let fd = nix::fcntl::open(root, dir_flags(), Mode::empty())
            .map_err(|e| untrusted(root, e.to_string(), "check the system"))?;
        let meta = Meta::of(&fd).map_err(|e| untrusted(root, e.to_string(), "check the system"))?;
        Ok(SecureDir {
            fd,
            path: root.to_owned(),
            meta,
            created: false,
        })
    };
    // The directories walked so far (for ".."), the last is the current one.
    let mut stack = vec![open_root()?];
    let mut todo: VecDeque<OsString> = components(&abs);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let Some(cur) = stack.last() else {
            return Err(untrusted(&abs, "walk lost its place", "report a bug"));
        };
        // The directory we are in will hold something we use: it must be trustworthy.
        on_problem.found(trust.ancestor_problem(&cur.path, &cur.meta))?;
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let here = cur.path.join(&name);
        let last = todo.is_empty();
        let step_create = if last {
            create
        } else {
            match create {
                Create::Missing(_) => Create::Missing(0o700),
                Create::No => Create::No,
            }
        };
        match open_child_dir(cur.fd.as_fd(), &here, &name, step_create) {
            Ok(dir) => stack.push(dir),
            Err(not_dir) => {
                // A symbolic link? Look at the link itself, through its own descriptor.
                let Some((target, problem)) = link_at(cur.fd.as_fd(), &name, &here, trust)? else {
                    return Err(not_dir);
                };
                on_problem.found(problem)?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(untrusted(
                        &here,
                        "too many symbolic links",
                        "check the path",
                    ));
                }
                let mut next = components(&target);
                next.extend(todo);
                todo = next;
                if target.is_absolute() {
                    stack.truncate(1);
                }
            }
        }
    }
    let mut dir = stack
        .pop()
        .ok_or_else(|| untrusted(&abs, "walk lost its place", "report a bug"))?;
    dir.path = abs;
    Ok(dir)
}

/// If `name` in `parent` is a symbolic link: its target, read from the link's own descriptor
/// (`O_PATH`), and the problem with its owner if neither root nor a trusted user owns it.
/// `None` if it is not a link.
fn link_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    here: &Path,
    trust: &Trust,
) -> Result<Option<(PathBuf, Option<Untrusted>)>, Untrusted> {
    let Ok(link) = openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(None);
    };
    let meta = Meta::of(&link).map_err(|e| untrusted(here, e.to_string(), "check the path"))?;
    if meta.kind != Kind::Symlink {
        return Ok(None);
    }
    let problem = (!trust.owner_ok(meta.uid)).then(|| {
        untrusted(
            here,
            format!(
                "is a symbolic link owned by {}, not by {}",
                user_name(meta.uid),
                trust.names()
            ),
            format!(
                "replace the link with the real path (rm {})",
                here.display()
            ),
        )
    });
    let target = readlinkat(&link, "")
        .map_err(|e| untrusted(here, format!("cannot read the link: {e}"), "check the path"))?;
    Ok(Some((PathBuf::from(target), problem)))
}

/// The plain components of a path ("." dropped, ".." kept, the root implied).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Opens file `path` for reading after checking every directory and link on the way, and
/// the directory holding it (owned by root or a trusted user, writable by nobody else, no
/// sticky pass: the file could have been planted before it was ours). Returns the open file
/// and its `fstat`; the caller judges the file's owner and mode on that meta and then reads
/// the same descriptor.
pub fn open_checked_file(path: &Path, trust: &Trust) -> Result<(File, Meta), Untrusted> {
    let (dir, name) = parent_and_name(path, trust)?;
    dir.open_file(&name)
}

/// The verified directory holding `path` (links on the way followed if trusted) and the last
/// name, itself a link resolved the same way. The holding directory gets no sticky pass.
pub fn parent_and_name(path: &Path, trust: &Trust) -> Result<(SecureDir, OsString), Untrusted> {
    let mut path = path.to_owned();
    for _ in 0..MAX_LINKS {
        let name = match path.file_name() {
            Some(n) => n.to_owned(),
            None => return Err(untrusted(&path, "names no file", "give a file path")),
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir = SecureDir::open(&parent, trust)?;
        if let Some(p) = trust.ancestor_problem(dir.path(), &dir.meta) {
            return Err(p);
        }
        if dir.meta.shared_write() {
            return Err(untrusted(
                dir.path(),
                format!(
                    "is writable by group or others (mode {:04o}), so someone else could have put the file there",
                    dir.meta.mode
                ),
                format!(
                    "chmod {:04o} {}",
                    dir.meta.mode & !0o022,
                    dir.path().display()
                ),
            ));
        }
        // The last name: a link is followed only if trusted, then resolved again.
        let here = dir.path().join(&name);
        let target = match link_at(dir.fd(), &name, &here, trust)? {
            None => return Ok((dir, name)),
            Some((_, Some(problem))) => return Err(problem),
            Some((target, None)) => target,
        };
        path = if target.is_absolute() {
            target
        } else {
            dir.path().join(target)
        };
    }
    Err(untrusted(
        &path,
        "too many symbolic links",
        "check the path",
    ))
}

/// What a file (or the directory holding it) must look like: its owner, and the permission
/// bits that must be clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The user that must own it.
    pub owner: u32,
    /// Whether root may own it instead.
    pub root_may_own: bool,
    /// Permission bits that must be clear (`0o077`: nobody else may reach it; `0o022`: nobody
    /// else may write it).
    pub forbidden: u32,
    /// The mode to suggest in the fix.
    pub want: u32,
}

impl Rule {
    /// Private to this process's user: owned by it (root gets no exemption), no access for
    /// group or others (a key file, a key directory).
    pub fn private(want: u32) -> Self {
        Self {
            owner: nix::unistd::geteuid().as_raw(),
            root_may_own: false,
            forbidden: 0o077,
            want,
        }
    }

    /// Trusted but readable: owned by this user or root, writable by nobody else (a pinned
    /// certificate, a configuration file).
    pub fn unwritable(want: u32) -> Self {
        Self {
            owner: nix::unistd::geteuid().as_raw(),
            root_may_own: true,
            forbidden: 0o022,
            want,
        }
    }

    /// The problem with `meta` (found at `path`), if any.
    pub fn problem(&self, path: &Path, meta: &Meta) -> Option<Untrusted> {
        if meta.uid != self.owner && !(self.root_may_own && meta.uid == 0) {
            return Some(untrusted(
                path,
                format!(
                    "is owned by {}, not by {}{}",
                    user_name(meta.uid),
                    user_name(self.owner),
                    if self.root_may_own { " or root" } else { "" }
                ),
                format!(
                    "chown {} {}  (or recreate it as that user)",
                    self.owner,
                    path.display()
                ),
            ));
        }
        if meta.mode & self.forbidden != 0 {
            let problem = if self.forbidden & 0o044 != 0 {
                format!("has mode {:04o}: group or others can reach it", meta.mode)
            } else {
                format!(
                    "is writable by group or others (mode {:04o}), so someone else could have changed it",
                    meta.mode
                )
            };
            return Some(untrusted(
                path,
                problem,
                format!("chmod {:04o} {}", self.want, path.display()),
            ));
        }
        None
    }
}

/// Reads `name` in `dir` after checking, on the open descriptor, that it is a regular file
/// that obeys `rule` and holds at most `max` bytes.
pub fn read_in(
    dir: &SecureDir,
    name: &OsStr,
    rule: &Rule,
    max: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Untrusted> {
    let (file, meta) = dir.open_file(name)?;
    let path = dir.path().join(name);
    if let Some(p) = rule.problem(&path, &meta) {
        return Err(p);
    }
    read_open(file, &path, max)
}

fn read_open(
    file: File,
    path: &Path,
    max: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Untrusted> {
    use std::io::Read;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| untrusted(path, format!("cannot read: {e}"), "check the file"))?;
    if bytes.len() > max {
        return Err(untrusted(
            path,
            format!("is larger than {max} bytes"),
            "check that this is the right file",
        ));
    }
    Ok(bytes)
}

/// Reads the file at `path` with every check: the directories and links on the way (`trust`),
/// the directory holding it (`dir_rule`, and never writable by others), and the file itself
/// (`rule`, on the descriptor that is then read).
pub fn read_path(
    path: &Path,
    trust: &Trust,
    dir_rule: Option<&Rule>,
    rule: &Rule,
    max: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Untrusted> {
    let (dir, name) = parent_and_name(path, trust)?;
    if let Some(p) = dir_rule.and_then(|r| r.problem(dir.path(), &dir.meta())) {
        return Err(p);
    }
    read_in(&dir, &name, rule, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn walks_checks_and_creates() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let made = SecureDir::open_or_create(&base.join("a/b"), &Trust::me(), 0o750).unwrap();
        assert!(made.created());
        assert_eq!(made.meta().mode, 0o750);
        assert_eq!(
            std::fs::metadata(base.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // A trusted link on the way is followed; the directory it leads to is opened.
        std::os::unix::fs::symlink(base.join("a"), base.join("l")).unwrap();
        let via = SecureDir::open(&base.join("l/b"), &Trust::me()).unwrap();
        assert!(!via.created());
        // A group-writable directory on the way is refused, with the fix.
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = SecureDir::open(&base.join("a/b"), &Trust::me()).unwrap_err();
        assert!(
            err.problem.contains("its group") && err.fix.contains("chmod 0750"),
            "{err}"
        );
        let report = SecureDir::ancestor_report(&base.join("a/b/x"), &Trust::me());
        assert_eq!(report.len(), 1, "{report:?}");
        // A file read through a link in a shared directory is refused, not read.
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(base.join("a/f"), b"x").unwrap();
        let (_, meta) = open_checked_file(&base.join("l/f"), &Trust::me()).unwrap();
        assert_eq!(meta.kind, Kind::File);
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(open_checked_file(&base.join("a/f"), &Trust::me()).is_err());
    }
}
