//! The persistent state store: named records, each sealed ([`crate::seal`], purpose `State`,
//! bound to its name) in its own file, written atomically and crash-safe.
//!
//! A write creates `.<name>.<random>.tmp` with `O_EXCL` and mode 0600 in the store directory,
//! writes and fsyncs it, renames it over `<name>.sealed`, and fsyncs the directory. A reader
//! therefore sees the old record or the new one, never a torn mix, also after a crash. The
//! directory is created 0700 and must not be reachable by group or others.
//!
//! A record that does not open (tampered, wrong key, truncated, unknown version, too large) is
//! reported with a typed error for that record; the others stay readable.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use zeroize::Zeroizing;

use crate::seal::{self, KeyRing, Purpose, SealError};
use crate::securedir::{Rule, SecureDir, Trust, Untrusted};

/// Longest record name.
pub const MAX_NAME: usize = 64;
const SUFFIX: &str = ".sealed";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record exists but cannot be opened (tampered, wrong key, truncated, unknown version,
    /// too large).
    #[error("record {name:?}: {source}")]
    Record {
        /// The record.
        name: String,
        /// Why.
        source: SealError,
    },
    /// The record opened but is not the expected protobuf message.
    #[error("record {name:?} is not a valid message: {source}")]
    Decode {
        /// The record.
        name: String,
        /// Why.
        source: prost::DecodeError,
    },
    /// The name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid record name {0:?} (1-{MAX_NAME} of [A-Za-z0-9._-], not starting with '.')")]
    BadName(String),
    /// The store directory is unsafe.
    #[error("{path}: {problem}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl StoreError {
    /// The sealing error behind a record error, if that is what this is.
    pub fn seal_error(&self) -> Option<&SealError> {
        match self {
            StoreError::Record { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

/// A directory of sealed records.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    keys: KeyRing,
}

impl StateStore {
    /// Opens (creating it 0700 if missing) the store in `dir`, sealing with `keys`. The
    /// directory is reached through [`SecureDir`]: every directory above owned by root or this
    /// user and writable by nobody else, no link of anyone else followed; the store directory
    /// itself must be this user's and closed to group and others.
    pub fn open(dir: impl Into<PathBuf>, keys: KeyRing) -> Result<Self, StoreError> {
        let dir = dir.into();
        let unsafe_dir = |u: Untrusted| StoreError::Unsafe {
            path: u.path,
            problem: format!("{} (fix: {})", u.problem, u.fix),
        };
        let opened = SecureDir::open_or_create(&dir, &Trust::me(), 0o700).map_err(unsafe_dir)?;
        if let Some(p) = Rule::private(0o700).problem(&dir, &opened.meta()) {
            return Err(unsafe_dir(p));
        }
        Ok(Self { dir, keys })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// Writes `value` as record `name`, atomically.
    pub fn put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        check_name(name)?;
        let sealed = seal::seal(&self.keys, Purpose::State, name, value).map_err(|source| {
            StoreError::Record {
                name: name.to_owned(),
                source,
            }
        })?;
        let mut rand = [0u8; 8];
        openssl::rand::rand_bytes(&mut rand)
            .map_err(|e| io(&self.dir)(std::io::Error::other(e)))?;
        let suffix: String = rand.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.dir.join(format!(".{name}.{suffix}.tmp"));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&sealed)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path(name))?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(&self.path(name))(e));
        }
        Ok(())
    }

    /// Reads record `name`; `None` if it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        check_name(name)?;
        let path = self.path(name);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let limit = (seal::MAX_PLAINTEXT + 64) as u64;
        if meta.len() > limit {
            return Err(StoreError::Record {
                name: name.to_owned(),
                source: SealError::TooLarge(usize::try_from(meta.len()).unwrap_or(usize::MAX)),
            });
        }
        let bytes = fs::read(&path).map_err(io(&path))?;
        seal::open(&self.keys, Purpose::State, name, &bytes)
            .map(Some)
            .map_err(|source| StoreError::Record {
                name: name.to_owned(),
                source,
            })
    }

    /// Writes a protobuf message as record `name`.
    pub fn put_message<M: Message>(&self, name: &str, message: &M) -> Result<(), StoreError> {
        self.put(name, &Zeroizing::new(message.encode_to_vec()))
    }

    /// Reads record `name` as a protobuf message.
    pub fn get_message<M: Message + Default>(&self, name: &str) -> Result<Option<M>, StoreError> {
        match self.get(name)? {
            None => Ok(None),
            Some(bytes) => {
                M::decode(bytes.as_slice())
                    .map(Some)
                    .map_err(|source| StoreError::Decode {
                        name: name.to_owned(),
                        source,
                    })
            }
        }
    }

    /// Deletes record `name`; true if it existed.
    pub fn delete(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(&self.dir))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The names of all records, sorted. Leftover temporary files of interrupted writes are
    /// removed.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names = vec![];
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') && file.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(name) = file.strip_suffix(SUFFIX) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Re-seals every record under `new_keys`' current key (key rotation); `new_keys` must
    /// still hold the old key. Returns how many records were re-sealed; a record that cannot
    /// be opened is reported and left as it is.
    pub fn rotate(self, new_keys: KeyRing) -> Result<(Self, usize), StoreError> {
        let rotated = Self {
            dir: self.dir,
            keys: new_keys,
        };
        let mut n = 0;
        for name in rotated.list()? {
            if let Some(value) = rotated.get(&name)? {
                rotated.put(&name, &value)?;
                n += 1;
            }
        }
        Ok((rotated, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Key;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn put_get_delete_list_and_isolated_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let store = StateStore::open(&dir, KeyRing::new(Key::generate().unwrap())).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        store.put("a", b"alpha").unwrap();
        store.put("b", b"beta").unwrap();
        store.put_message("c", &"gamma".to_string()).unwrap();
        assert_eq!(
            fs::metadata(dir.join("a.sealed"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(store.get("a").unwrap().unwrap().as_slice(), b"alpha");
        assert_eq!(store.get_message::<String>("c").unwrap().unwrap(), "gamma");
        assert!(store.get("missing").unwrap().is_none());
        assert_eq!(store.list().unwrap(), ["a", "b", "c"]);
        // The plaintext is not on disk.
        assert!(
            !fs::read(dir.join("a.sealed"))
                .unwrap()
                .windows(5)
                .any(|w| w == b"alpha")
        );
        // Corrupt one record: it reports, the others read fine.
        let mut bytes = fs::read(dir.join("b.sealed")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(dir.join("b.sealed"), &bytes).unwrap();
        assert!(matches!(
            store.get("b").unwrap_err().seal_error(),
            Some(SealError::Tampered)
        ));
        assert_eq!(store.get("a").unwrap().unwrap().as_slice(), b"alpha");
        // Swap two records: detected.
        fs::copy(dir.join("a.sealed"), dir.join("c.sealed")).unwrap();
        assert!(matches!(
            store.get("c").unwrap_err().seal_error(),
            Some(SealError::Tampered)
        ));
        // Truncated.
        fs::write(dir.join("b.sealed"), &bytes[..20]).unwrap();
        assert!(matches!(
            store.get("b").unwrap_err().seal_error(),
            Some(SealError::Truncated(20))
        ));
        assert!(store.delete("a").unwrap());
        assert!(!store.delete("a").unwrap());
        assert!(matches!(
            store.put("../x", b""),
            Err(StoreError::BadName(_))
        ));
        assert!(matches!(
            store.put(".hidden", b""),
            Err(StoreError::BadName(_))
        ));
    }

    #[test]
    fn rotation_and_wrong_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let old = Key::generate().unwrap();
        let old_copy = Key::from_bytes(&old.bytes_for_test()).unwrap();
        let store = StateStore::open(&dir, KeyRing::new(old)).unwrap();
        store.put("r", b"value").unwrap();
        let wrong = StateStore::open(&dir, KeyRing::new(Key::generate().unwrap())).unwrap();
        assert!(matches!(
            wrong.get("r").unwrap_err().seal_error(),
            Some(SealError::WrongKey(_))
        ));
        let new = Key::generate().unwrap();
        let new_copy = Key::from_bytes(&new.bytes_for_test()).unwrap();
        let (rotated, n) = store
            .rotate(KeyRing::new(new).with_previous(old_copy))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(rotated.get("r").unwrap().unwrap().as_slice(), b"value");
        // After rotation the new key alone opens everything.
        let only_new = StateStore::open(&dir, KeyRing::new(new_copy)).unwrap();
        assert_eq!(only_new.get("r").unwrap().unwrap().as_slice(), b"value");
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateStore::open(&dir, KeyRing::new(Key::generate().unwrap())).unwrap_err();
        assert!(err.to_string().contains("chmod 0700"), "{err}");
    }
}
