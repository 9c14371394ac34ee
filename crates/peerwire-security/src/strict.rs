//! "StrictModes" for plain configuration files: a file others could have written is not
//! trusted.
//!
//! The file and every directory above it must be owned by root or by this process's user and
//! not writable by group or others. The one exception, for ancestors only, is a root-owned
//! directory with the sticky bit (such as `/tmp`): others cannot rename or remove what is in it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Checks `file` and its ancestors.
pub fn check_file(file: &Path) -> Result<(), Untrusted> {
    let me = nix::unistd::geteuid().as_raw();
    let bad = |path: &Path, problem: String, fix: String| Untrusted {
        path: path.to_owned(),
        problem,
        fix,
    };
    let file = std::fs::canonicalize(file)
        .map_err(|e| bad(file, e.to_string(), "check the path".into()))?;
    // 0: the file; 1: the directory holding it; 2..: the directories above.
    for (depth, path) in file.ancestors().enumerate() {
        let meta = std::fs::metadata(path)
            .map_err(|e| bad(path, e.to_string(), "check the path".into()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(bad(
                path,
                format!(
                    "is owned by uid {}, neither root nor this user (uid {me})",
                    meta.uid()
                ),
                format!("chown {me} {}", path.display()),
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        // A sticky root directory (like /tmp) is fine further up: others cannot rename or
        // remove what is in it. The directory holding the file gets no such pass: the file
        // could have been planted there before it was ours.
        let sticky_root_ancestor = depth >= 2 && meta.uid() == 0 && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_root_ancestor {
            let want = if meta.is_dir() { "0755" } else { "0600" };
            return Err(bad(
                path,
                format!(
                    "is writable by group or others (mode {mode:04o}), so someone else could have changed the configuration"
                ),
                format!("chmod {want} {}", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
        assert_eq!(err.path, fs::canonicalize(&dir).unwrap());
        // Even a sticky world-writable directory directly holding the file is refused.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_file(&file).is_err());
    }
}
