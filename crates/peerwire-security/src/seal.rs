//! Sealed files: AES-256-GCM with a fresh random nonce per write and associated data that binds
//! each file to its purpose and name (R1, R3, R11 at rest).
//!
//! ```text
//! offset size  field
//!   0     6    magic "PWSEAL"
//!   6     1    format version = 1
//!   7     1    purpose (1 = configuration, 2 = state record)
//!   8     8    key id: the first 8 bytes of SHA-256(key), to pick the key when rotating
//!  16    12    nonce (random for every write)
//!  28     n    ciphertext
//! 28+n   16    GCM tag over the ciphertext and the associated data
//! ```
//!
//! The associated data is the 28-byte header followed by the file's name, so a sealed
//! configuration cannot be passed off as a state record, nor one record as another.
//!
//! Keys are 32 bytes, zeroized when dropped, and come from a [`KeyProvider`]: a key file (mode
//! 0400 or 0600, owned by the service user or root), a systemd credential
//! (`$CREDENTIALS_DIRECTORY/NAME`, for `LoadCredentialEncrypted=`), or the caller. A [`KeyRing`]
//! seals with its current key and opens with any of its keys, which is how keys are rotated.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::hash::{MessageDigest, hash};
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use zeroize::Zeroizing;

use crate::securedir::{Rule, Trust, read_path};

const MAGIC: &[u8; 6] = b"PWSEAL";
const VERSION: u8 = 1;
const HEADER: usize = 28;
const TAG: usize = 16;
/// Largest plaintext accepted (16 MiB).
pub const MAX_PLAINTEXT: usize = 16 * 1024 * 1024;

/// What a sealed file is for; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A configuration file.
    Config,
    /// A record of the persistent state store.
    State,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::Config => 1,
            Purpose::State => 2,
        }
    }
}

/// Why a sealed file could not be opened (or made).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The contents were altered, or the file was sealed for another purpose or name.
    #[error("sealed data was tampered with, or belongs to another file or purpose")]
    Tampered,
    /// No key of the key ring sealed this file.
    #[error("sealed with another key (key id {0})")]
    WrongKey(String),
    /// Shorter than a header and a tag, or not a sealed file at all.
    #[error("truncated or not a sealed file ({0} bytes)")]
    Truncated(usize),
    /// A format version this build does not know.
    #[error("unknown sealed-file format version {0}")]
    UnknownVersion(u8),
    /// Larger than [`MAX_PLAINTEXT`].
    #[error("{0} bytes exceeds the maximum of {MAX_PLAINTEXT} bytes")]
    TooLarge(usize),
    /// A key could not be loaded or is unsafe to use.
    #[error("key {path}: {problem}")]
    Key {
        /// Where the key came from.
        path: PathBuf,
        /// What is wrong (and how to fix it).
        problem: String,
    },
    /// OpenSSL failed.
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// A 256-bit sealing key, zeroized when dropped.
pub struct Key {
    bytes: Zeroizing<[u8; 32]>,
    id: [u8; 8],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", self.id_hex())
    }
}

impl Key {
    /// A key from 32 caller-supplied bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(SealError::Key {
                path: PathBuf::from("<supplied>"),
                problem: format!("a key is 32 bytes, got {}", bytes.len()),
            });
        }
        key.copy_from_slice(bytes);
        let digest = hash(MessageDigest::sha256(), key.as_slice())?;
        let mut id = [0u8; 8];
        id.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
        Ok(Self { bytes: key, id })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        openssl::rand::rand_priv_bytes(bytes.as_mut_slice())?;
        Self::from_bytes(bytes.as_slice())
    }

    #[cfg(test)]
    pub(crate) fn bytes_for_test(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// The key id written into sealed files, as hex.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes the key to a new file, mode 0400 (never replacing an existing file).
    pub fn write_new(&self, path: &Path) -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(path)?;
        f.write_all(self.bytes.as_slice())?;
        f.sync_all()
    }
}

/// Where a key comes from.
#[derive(Debug, Clone)]
pub enum KeyProvider {
    /// A 32-byte key file, mode 0400 or 0600, owned by this user or root.
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential[Encrypted]=`).
    SystemdCredential(String),
}

impl KeyProvider {
    /// Loads the key, refusing a file that others could read or replace.
    pub fn load(&self) -> Result<Key, SealError> {
        let path = match self {
            KeyProvider::File(p) => p.clone(),
            KeyProvider::SystemdCredential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| SealError::Key {
                    path: PathBuf::from(name),
                    problem: "CREDENTIALS_DIRECTORY is not set (not started by systemd with LoadCredential=)".into(),
                })?;
                PathBuf::from(dir).join(name)
            }
        };
        let bad = |problem: String| SealError::Key {
            path: path.clone(),
            problem,
        };
        // Every check on descriptors, and the key read from the descriptor checked: the
        // directories above and the one holding the key owned by root or this user and
        // writable by nobody else, no link of anyone else followed ([`crate::securedir`]).
        // systemd >= 256 grants the service access to a credential through an ACL on tmpfs, so
        // the group bits show the ACL mask (0440): for credentials only others are checked.
        let mut rule = Rule::private(0o400);
        rule.root_may_own = true;
        if let KeyProvider::SystemdCredential(_) = self {
            rule.forbidden = 0o007;
        }
        let bytes = read_path(&path, &Trust::me(), None, &rule, 4096).map_err(|u| {
            let mut problem = u.problem;
            if u.path != path {
                problem = format!("{}: {problem}", u.path.display());
            }
            bad(format!("{problem} (fix: {})", u.fix))
        })?;
        Key::from_bytes(&bytes)
            .map_err(|_| bad(format!("holds {} bytes; a key is 32 bytes", bytes.len())))
    }
}

/// The current key, which seals, and older keys, which still open.
#[derive(Debug)]
pub struct KeyRing {
    current: Key,
    previous: Vec<Key>,
}

impl KeyRing {
    /// A ring of one key.
    pub fn new(current: Key) -> Self {
        Self {
            current,
            previous: vec![],
        }
    }

    /// Adds an older key that can still open files (for rotation).
    pub fn with_previous(mut self, key: Key) -> Self {
        self.previous.push(key);
        self
    }

    /// The sealing key.
    pub fn current(&self) -> &Key {
        &self.current
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id.as_slice() == id)
    }
}

fn header(purpose: Purpose, key: &Key, nonce: &[u8; 12]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.push(purpose.byte());
    h.extend_from_slice(&key.id);
    h.extend_from_slice(nonce);
    h
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut a = header.to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

/// Seals `plaintext` as the file `name` for `purpose` with the ring's current key.
pub fn seal(
    keys: &KeyRing,
    purpose: Purpose,
    name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let key = keys.current();
    let mut nonce = [0u8; 12];
    openssl::rand::rand_bytes(&mut nonce)?;
    let header = header(purpose, key, &nonce);
    let mut tag = [0u8; TAG];
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        key.bytes.as_slice(),
        Some(&nonce),
        &aad(&header, name),
        plaintext,
        &mut tag,
    )?;
    let mut out = header;
    out.extend_from_slice(&ciphertext);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a file sealed by [`seal`] for the same purpose and name.
pub fn open(
    keys: &KeyRing,
    purpose: Purpose,
    name: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() > MAX_PLAINTEXT + HEADER + TAG {
        return Err(SealError::TooLarge(sealed.len()));
    }
    if sealed.len() < HEADER + TAG || sealed.get(..6) != Some(MAGIC.as_slice()) {
        return Err(SealError::Truncated(sealed.len()));
    }
    let version = sealed.get(6).copied().unwrap_or_default();
    if version != VERSION {
        return Err(SealError::UnknownVersion(version));
    }
    let (header, rest) = sealed.split_at(HEADER);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
    let id = header.get(8..16).unwrap_or_default();
    let Some(key) = keys.find(id) else {
        return Err(SealError::WrongKey(
            id.iter().map(|b| format!("{b:02x}")).collect(),
        ));
    };
    if header.get(7) != Some(&purpose.byte()) {
        return Err(SealError::Tampered);
    }
    let nonce = header.get(16..28).unwrap_or_default();
    decrypt_aead(
        Cipher::aes_256_gcm(),
        key.bytes.as_slice(),
        Some(nonce),
        &aad(header, name),
        ciphertext,
        tag,
    )
    .map(Zeroizing::new)
    .map_err(|_| SealError::Tampered)
}

/// Fuzzing entry point: opens arbitrary bytes as a sealed file with a fixed key. Never panics.
pub fn fuzz_open(data: &[u8]) {
    if let Ok(key) = Key::from_bytes(&[7u8; 32]) {
        let keys = KeyRing::new(key);
        let _ = open(&keys, Purpose::State, "fuzz", data);
        let _ = open(&keys, Purpose::Config, "fuzz", data);
    }
}

/// True when `bytes` look like a sealed file (for tools that accept plain or sealed input).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ring() -> KeyRing {
        KeyRing::new(Key::generate().unwrap())
    }

    #[test]
    fn round_trip_and_every_byte_flip_detected() {
        let keys = ring();
        let sealed = seal(
            &keys,
            Purpose::Config,
            "server.toml",
            b"socket = \"/run/x.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            open(&keys, Purpose::Config, "server.toml", &sealed)
                .unwrap()
                .as_slice(),
            b"socket = \"/run/x.sock\"\n"
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = open(&keys, Purpose::Config, "server.toml", &bad).unwrap_err();
            let expected = match i {
                0..=5 => matches!(err, SealError::Truncated(_)),
                6 => matches!(err, SealError::UnknownVersion(_)),
                8..=15 => matches!(err, SealError::WrongKey(_)),
                _ => matches!(err, SealError::Tampered),
            };
            assert!(expected, "byte {i}: {err}");
        }
        for len in 0..sealed.len() {
            assert!(
                open(&keys, Purpose::Config, "server.toml", &sealed[..len]).is_err(),
                "truncated to {len}"
            );
        }
        assert!(matches!(
            open(&keys, Purpose::Config, "server.toml", &sealed[..10]),
            Err(SealError::Truncated(10))
        ));
    }

    #[test]
    fn bound_to_purpose_and_name_and_key() {
        let keys = ring();
        let sealed = seal(&keys, Purpose::State, "a", b"1").unwrap();
        assert!(matches!(
            open(&keys, Purpose::State, "b", &sealed),
            Err(SealError::Tampered)
        ));
        assert!(matches!(
            open(&keys, Purpose::Config, "a", &sealed),
            Err(SealError::Tampered)
        ));
        assert!(matches!(
            open(&ring(), Purpose::State, "a", &sealed),
            Err(SealError::WrongKey(_))
        ));
        // Nonces are fresh: sealing twice gives different bytes.
        assert_ne!(sealed, seal(&keys, Purpose::State, "a", b"1").unwrap());
        // Rotation: a new current key still opens what the old one sealed.
        let old = Key::from_bytes(&keys.current.bytes[..]).unwrap();
        let rotated = KeyRing::new(Key::generate().unwrap()).with_previous(old);
        assert_eq!(
            open(&rotated, Purpose::State, "a", &sealed)
                .unwrap()
                .as_slice(),
            b"1"
        );
    }

    #[test]
    fn key_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = Key::generate().unwrap();
        key.write_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(KeyProvider::File(path.clone()).load().unwrap().id, key.id);
        assert!(key.write_new(&path).is_err(), "never replaced");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyProvider::File(path).load().unwrap_err().to_string();
        assert!(err.contains("chmod 0400"), "{err}");
        let err = KeyProvider::SystemdCredential("peerwire.key".into())
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
    }
}
