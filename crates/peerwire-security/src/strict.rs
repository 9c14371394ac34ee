//! "StrictModes" for plain configuration files: a file others could have written is not
//! trusted.
//!
//! The file and every directory above it must be owned by root or by this process's user and
//! not writable by group or others. The one exception, for ancestors only, is a root-owned
//! directory with the sticky bit (such as `/tmp`): others cannot rename or remove what is in it.
//! A symbolic link on the way is followed only if root or this user owns it. The checks are
//! done on descriptors ([`crate::securedir`]) and the file is read from the descriptor that was
//! checked, so nothing can be swapped between the check and the read.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::securedir::{self, Rule, Trust};

/// A file or directory that makes a configuration file untrustworthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem} (fix: {fix})", path.display())]
pub struct Untrusted {
    /// The offending file or directory.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

/// Largest configuration file read (plain or sealed).
pub const MAX_FILE: usize = 16 << 20;

/// Opens `file` for reading with every check done on descriptors (see
/// [`crate::securedir`]): each directory above it and each link on the way owned by root or
/// this user and writable by nobody else (root-owned sticky directories such as `/tmp` allowed
/// above the directory holding the file, never as that directory), and the file itself,
/// checked with `fstat` on the returned descriptor: owned by root or this user, not writable
/// by group or others. Read what it returns: there is no window between check and read.
pub fn open_file(file: &Path) -> Result<(std::fs::File, PathBuf), Untrusted> {
    let (dir, name) = securedir::parent_and_name(file, &Trust::me())?;
    let (f, meta) = dir.open_file(&name)?;
    let path = dir.path().join(&name);
    if let Some(p) = Rule::unwritable(0o600).problem(&path, &meta) {
        return Err(p);
    }
    Ok((f, path))
}

/// Reads `file` after the checks of [`open_file`], from the checked descriptor.
pub fn read_file(file: &Path) -> Result<Zeroizing<Vec<u8>>, Untrusted> {
    let (dir, name) = securedir::parent_and_name(file, &Trust::me())?;
    securedir::read_in(&dir, &name, &Rule::unwritable(0o600), MAX_FILE)
}

/// Checks `file` and its ancestors (see [`open_file`]).
pub fn check_file(file: &Path) -> Result<(), Untrusted> {
    open_file(file).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn strict_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc");
        fs::create_dir(&dir).unwrap();
        let file = dir.join("server.toml");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        check_file(&file).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(check_file(&file).unwrap_err().fix.contains("chmod 0600"));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_file(&file).unwrap_err();
        assert_eq!(
            fs::canonicalize(&err.path).unwrap(),
            fs::canonicalize(&dir).unwrap()
        );
        // Even a sticky world-writable directory directly holding the file is refused.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_file(&file).is_err());
    }
}
