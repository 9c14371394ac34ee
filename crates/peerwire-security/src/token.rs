//! One-time, time-limited session tokens (R8).
//!
//! A token is minted by the server side (or an operator's launch script) for one client it is
//! about to launch, handed over out of band (an inherited pipe, never argv or the environment),
//! presented once in `Hello`, and checked together with the connection's origin.
//!
//! ```text
//! offset size  field (big-endian)
//!   0     1    version = 1
//!   1     8    issued at (Unix seconds)
//!   9     8    expires at (Unix seconds)
//!  17    16    nonce (random)
//!  33     4    uid the token is for
//!  37     1    flags: bit 0 = executable bound
//!  38    32    SHA-256 of the client executable's path (zero when not bound)
//!  70    32    SHA-256 of the server socket's path
//! 102    32    HMAC-SHA256 over bytes 0..102
//! ```
//!
//! Printed as unpadded base64url with the prefix `pw1.`. The MAC key is
//! `HMAC-SHA256(device secret, "peerwire session token v1")`: the 256-bit device secret
//! (`token.key`, made by `peerwire init`) is never used directly.
//!
//! Verification is constant-time on the MAC, allows [`CLOCK_SKEW`] of clock difference, checks
//! the binding against the connection's `SO_PEERCRED` uid (and executable, socket), and accepts a
//! nonce once: used nonces are kept until their token expires, in memory (bounded: when full,
//! new tokens are refused rather than memory growing) and in a file, so a replay after a restart
//! is refused too.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::{MessageDigest, hash};
use openssl::pkey::PKey;
use openssl::sign::Signer;
use zeroize::Zeroizing;

/// Lifetime of a token unless the minter says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Longest lifetime a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(600);
/// Clock difference tolerated between minter and verifier.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Used nonces remembered at most (tokens in their lifetime); beyond this, tokens are refused.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Size of the device secret.
pub const SECRET_LEN: usize = 32;

const VERSION: u8 = 1;
const PREFIX: &str = "pw1.";
const BODY_LEN: usize = 102;
const TOKEN_LEN: usize = BODY_LEN + 32;
const KDF_LABEL: &[u8] = b"peerwire session token v1";

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of a version this build knows, or not well formed.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The MAC does not match: forged, altered, or minted with another device's secret.
    #[error("token signature is invalid (forged, altered, or from another device)")]
    BadMac,
    /// Past its expiry.
    #[error("token expired {0} s ago")]
    Expired(u64),
    /// Already used once.
    #[error("token was already used")]
    Replayed,
    /// Valid, but for another uid, executable or server.
    #[error("token is not for this peer: {0}")]
    WrongPeer(String),
    /// Too many tokens in their lifetime are already recorded; try again when some expire.
    #[error("too many unexpired tokens in use ({0}); refusing new ones until some expire")]
    StoreFull(usize),
    /// The replay record could not be read or written, so the token cannot be accepted safely.
    #[error("cannot record the token's use: {}: {source}", path.display())]
    Store {
        /// The replay record.
        path: PathBuf,
        /// The failed file operation.
        #[source]
        source: std::io::Error,
    },
    /// OpenSSL could not derive the MAC key or compute a MAC or digest: nothing can be checked.
    #[error("token cryptography failed: {0}")]
    Crypto(#[source] openssl::error::ErrorStack),
}

/// A failed operation on the replay record at `path`.
fn store_error(path: &Path) -> impl Fn(std::io::Error) -> TokenError + Copy + '_ {
    move |source| TokenError::Store {
        path: path.to_owned(),
        source,
    }
}

/// The device secret, zeroized when dropped.
pub struct DeviceSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret(<secret>)")
    }
}

/// The device secret's file name in the server's identity directory.
pub const SECRET_FILE: &str = "token.key";

impl DeviceSecret {
    /// 256 fresh bits from the OS random source (via OpenSSL's DRBG, seeded by getrandom).
    pub fn generate() -> Result<Self, openssl::error::ErrorStack> {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        openssl::rand::rand_priv_bytes(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Reads a secret file written by [`DeviceSecret::write`]; it must be exactly 32 bytes.
    /// The file and the directory holding it must be this user's (root gets no exemption)
    /// and closed to group and others, and every directory above trustworthy; the file is
    /// read from the descriptor that was checked ([`crate::securedir`]).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Self::read_owned_by(path, nix::unistd::geteuid().as_raw())
    }

    /// As [`read`](Self::read), for a secret that belongs to user `owner` (root minting tokens
    /// from the service user's identity names that user): the file, its directory and the
    /// directories above may be `owner`'s (or root's), nobody else's.
    pub fn read_owned_by(path: &Path, owner: u32) -> std::io::Result<Self> {
        use crate::securedir::{Rule, Trust, read_path};
        let rule = |want| Rule {
            owner,
            root_may_own: nix::unistd::geteuid().is_root(),
            forbidden: 0o077,
            want,
        };
        let bytes = read_path(
            path,
            &Trust::user(owner),
            Some(&rule(0o700)),
            &rule(0o600),
            SECRET_LEN,
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        if bytes.len() != SECRET_LEN {
            return Err(std::io::Error::other(format!(
                "{} holds {} bytes, a device secret is {SECRET_LEN}",
                path.display(),
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// Writes the secret 0600, refusing to replace an existing file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> std::io::Result<()> {
        if force {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.write_to(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?,
        )
    }

    /// Writes the secret into `file` (created by the caller, 0600) and syncs it.
    pub fn write_to(&self, mut file: File) -> std::io::Result<()> {
        file.write_all(&self.0)?;
        file.sync_all()
    }

    fn mac_key(&self) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
        hmac(&self.0, &[KDF_LABEL])
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    for p in parts {
        signer.update(p)?;
    }
    Ok(Zeroizing::new(signer.sign_to_vec()?))
}

fn digest(bytes: &[u8]) -> Result<[u8; 32], openssl::error::ErrorStack> {
    let d = hash(MessageDigest::sha256(), bytes)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    Ok(out)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn path_digest(path: &Path) -> Result<[u8; 32], openssl::error::ErrorStack> {
    digest(path.as_os_str().as_encoded_bytes())
}

/// Who a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The uid the client process will run as.
    pub uid: u32,
    /// The client executable, if the token is to be usable only by that program.
    pub exe: Option<PathBuf>,
    /// The server socket the token is for.
    pub socket: PathBuf,
}

/// Mints tokens with a device secret.
#[derive(Debug)]
pub struct Minter {
    key: Zeroizing<Vec<u8>>,
}

/// The decoded fields of a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The nonce.
    pub nonce: [u8; 16],
    /// The uid it was for.
    pub uid: u32,
    /// Bound to an executable: the connection must keep being spoken by that program.
    pub exe_bound: bool,
}

impl Minter {
    /// A minter for `secret`.
    pub fn new(secret: &DeviceSecret) -> Result<Self, openssl::error::ErrorStack> {
        Ok(Self {
            key: secret.mac_key()?,
        })
    }

    /// A token for `binding`, valid `ttl` (capped at [`MAX_TTL`]) from now.
    pub fn mint(
        &self,
        binding: &Binding,
        ttl: Duration,
    ) -> Result<String, openssl::error::ErrorStack> {
        self.mint_at(binding, now(), ttl)
    }

    /// A token issued at `issued_at` (Unix seconds); for tests and clock-controlled tools.
    pub fn mint_at(
        &self,
        binding: &Binding,
        issued_at: u64,
        ttl: Duration,
    ) -> Result<String, openssl::error::ErrorStack> {
        let ttl = ttl.min(MAX_TTL).as_secs().max(1);
        let mut nonce = [0u8; 16];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut body = Vec::with_capacity(TOKEN_LEN);
        body.push(VERSION);
        body.extend_from_slice(&issued_at.to_be_bytes());
        body.extend_from_slice(&issued_at.saturating_add(ttl).to_be_bytes());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&binding.uid.to_be_bytes());
        match &binding.exe {
            Some(exe) => {
                body.push(1);
                body.extend_from_slice(&path_digest(exe)?);
            }
            None => {
                body.push(0);
                body.extend_from_slice(&[0u8; 32]);
            }
        }
        body.extend_from_slice(&path_digest(&binding.socket)?);
        let mac = hmac(&self.key, &[&body])?;
        body.extend_from_slice(&mac);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&body)))
    }
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// The connection a token is presented on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presenter {
    /// `SO_PEERCRED` uid.
    pub uid: u32,
    /// The peer's executable (resolved through a pidfd), if known.
    pub exe: Option<PathBuf>,
    /// The server's socket path.
    pub socket: PathBuf,
}

/// A token's use, written to the replay record but not yet on disk (see
/// [`Verifier::verify_deferred`]).
#[derive(Debug)]
#[must_use = "a token may be honoured only once its use is durable"]
pub struct Durable {
    file: File,
    path: PathBuf,
}

impl Durable {
    /// Makes the record durable (`fdatasync` of the replay record; blocking). If the record was
    /// compacted meanwhile, the compacted file, already synced, holds it too.
    pub fn sync(self) -> Result<(), TokenError> {
        self.file.sync_data().map_err(store_error(&self.path))
    }
}

/// Verifies tokens and remembers which were used.
#[derive(Debug)]
pub struct Verifier {
    key: Zeroizing<Vec<u8>>,
    used: NonceStore,
}

impl Verifier {
    /// A verifier for `secret` whose record of used tokens lives in `store` (created 0600 if
    /// missing), remembering at most `capacity` unexpired tokens.
    pub fn new(secret: &DeviceSecret, store: &Path, capacity: usize) -> Result<Self, TokenError> {
        Ok(Self {
            key: secret.mac_key().map_err(TokenError::Crypto)?,
            used: NonceStore::open(store, capacity)?,
        })
    }

    /// Checks `token` as presented by `by`, at the current time; on success records its use,
    /// durably (on disk) before it returns.
    pub fn verify(&mut self, token: &[u8], by: &Presenter) -> Result<Claims, TokenError> {
        self.verify_at(token, by, now())
    }

    /// [`verify`](Self::verify) at time `now` (Unix seconds).
    pub fn verify_at(
        &mut self,
        token: &[u8],
        by: &Presenter,
        now: u64,
    ) -> Result<Claims, TokenError> {
        let (claims, durable) = self.verify_deferred_at(token, by, now)?;
        durable.sync()?;
        Ok(claims)
    }

    /// Like [`verify`](Self::verify), but the record of the token's use is only written, not
    /// yet on disk: the caller makes it durable with [`Durable::sync`] (a blocking `fdatasync`)
    /// before it honours the token, outside any lock it holds around the verifier, so that one
    /// slow disk write delays only its own session. The token counts as used from now on (a
    /// second presentation is [`TokenError::Replayed`] even before the sync).
    pub fn verify_deferred(
        &mut self,
        token: &[u8],
        by: &Presenter,
    ) -> Result<(Claims, Durable), TokenError> {
        self.verify_deferred_at(token, by, now())
    }

    fn verify_deferred_at(
        &mut self,
        token: &[u8],
        by: &Presenter,
        now: u64,
    ) -> Result<(Claims, Durable), TokenError> {
        let text =
            std::str::from_utf8(token).map_err(|_| TokenError::Malformed("not text".into()))?;
        let Some(encoded) = text.trim().strip_prefix(PREFIX) else {
            return Err(TokenError::Malformed(format!(
                "does not start with {PREFIX:?}"
            )));
        };
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|e| TokenError::Malformed(format!("not base64url: {e}")))?,
        );
        if bytes.len() != TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "{} bytes, expected {TOKEN_LEN}",
                bytes.len()
            )));
        }
        if bytes.first() != Some(&VERSION) {
            return Err(TokenError::Malformed(format!(
                "unknown version {:?}",
                bytes.first()
            )));
        }
        let (body, mac) = bytes.split_at(BODY_LEN);
        let expected = hmac(&self.key, &[body]).map_err(TokenError::Crypto)?;
        if !openssl::memcmp::eq(&expected, mac) {
            return Err(TokenError::BadMac);
        }
        let claims = Claims {
            issued_at: u64::from_be_bytes(field(body, 1)),
            expires_at: u64::from_be_bytes(field(body, 9)),
            nonce: field(body, 17),
            uid: u32::from_be_bytes(field(body, 33)),
            exe_bound: body.get(37) == Some(&1),
        };
        let skew = CLOCK_SKEW.as_secs();
        if claims.issued_at > now.saturating_add(skew) {
            return Err(TokenError::Malformed("issued in the future".into()));
        }
        if claims.expires_at.saturating_sub(claims.issued_at) > MAX_TTL.as_secs() {
            return Err(TokenError::Malformed("lifetime beyond the maximum".into()));
        }
        if now > claims.expires_at.saturating_add(skew) {
            return Err(TokenError::Expired(now - claims.expires_at));
        }
        if claims.uid != by.uid {
            return Err(TokenError::WrongPeer(format!(
                "minted for uid {}, presented by uid {}",
                claims.uid, by.uid
            )));
        }
        let socket: [u8; 32] = field(body, 70);
        if !openssl::memcmp::eq(
            &socket,
            &path_digest(&by.socket).map_err(TokenError::Crypto)?,
        ) {
            return Err(TokenError::WrongPeer(
                "minted for another server socket".into(),
            ));
        }
        if claims.exe_bound {
            let want: [u8; 32] = field(body, 38);
            let ok = match &by.exe {
                Some(exe) => path_digest(exe).is_ok_and(|d| openssl::memcmp::eq(&d, &want)),
                None => false,
            };
            if !ok {
                return Err(TokenError::WrongPeer(format!(
                    "minted for another executable (peer runs {})",
                    by.exe
                        .as_deref()
                        .map_or("an unknown program".into(), |p| p.display().to_string())
                )));
            }
        }
        let durable =
            self.used
                .record(claims.nonce, claims.expires_at.saturating_add(skew), now)?;
        Ok((claims, durable))
    }

    /// Unexpired tokens currently remembered.
    pub fn remembered(&self) -> usize {
        self.used.map.len()
    }
}

/// Fuzzing entry point: verifies arbitrary bytes as a token presented by uid 1000 on a fixed
/// socket, with a fixed secret and a replay record in the temporary directory. Never panics.
pub fn fuzz_verify(data: &[u8]) {
    use std::sync::{Mutex, OnceLock};
    static VERIFIER: OnceLock<Option<Mutex<Verifier>>> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        let secret = DeviceSecret(Zeroizing::new(vec![9u8; SECRET_LEN]));
        // One file for every run (no token can pass, so it stays empty): nothing piles up.
        let store = std::env::temp_dir().join("peerwire-fuzz-tokens");
        Verifier::new(&secret, &store, 64).ok().map(Mutex::new)
    });
    let by = Presenter {
        uid: 1000,
        exe: None,
        socket: PathBuf::from("/run/peerwire/sdk.sock"),
    };
    if let Some(v) = verifier {
        let _ = v
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verify(data, &by);
    }
}

/// Used nonces with their expiry, in memory and in an append-only file.
#[derive(Debug)]
struct NonceStore {
    path: PathBuf,
    file: File,
    map: HashMap<[u8; 16], u64>,
    capacity: usize,
}

const RECORD: usize = 24;

impl NonceStore {
    fn open(path: &Path, capacity: usize) -> Result<Self, TokenError> {
        let err = store_error(path);
        let mut map = HashMap::new();
        match fs::read(path) {
            Ok(bytes) => {
                let t = now();
                for rec in bytes.chunks_exact(RECORD) {
                    let exp = u64::from_be_bytes(field(rec, 16));
                    if exp >= t {
                        map.insert(field(rec, 0), exp);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut store = Self {
            path: path.to_owned(),
            file: File::open("/dev/null").map_err(err)?,
            map,
            capacity: capacity.max(1),
        };
        store.compact()?;
        Ok(store)
    }

    /// Rewrites the file with only the unexpired records (temporary file, fsync, rename).
    fn compact(&mut self) -> Result<(), TokenError> {
        let err = store_error(&self.path);
        let tmp = self.path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let mut bytes = Vec::with_capacity(self.map.len() * RECORD);
        for (nonce, exp) in &self.map {
            bytes.extend_from_slice(nonce);
            bytes.extend_from_slice(&exp.to_be_bytes());
        }
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        Ok(())
    }

    fn record(&mut self, nonce: [u8; 16], expires: u64, now: u64) -> Result<Durable, TokenError> {
        if self.map.contains_key(&nonce) {
            return Err(TokenError::Replayed);
        }
        if self.map.len() >= self.capacity {
            let before = self.map.len();
            self.map.retain(|_, exp| *exp >= now);
            if self.map.len() >= self.capacity {
                return Err(TokenError::StoreFull(self.map.len()));
            }
            if self.map.len() < before {
                self.compact()?;
            }
        }
        let mut rec = [0u8; RECORD];
        rec[..16].copy_from_slice(&nonce);
        rec[16..].copy_from_slice(&expires.to_be_bytes());
        // Durable before the token is honoured (the caller syncs, see `Durable`): a crash
        // right after cannot forget it.
        let err = store_error(&self.path);
        self.file.write_all(&rec).map_err(err)?;
        let file = self.file.try_clone().map_err(err)?;
        self.map.insert(nonce, expires);
        Ok(Durable {
            file,
            path: self.path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, DeviceSecret, Binding, Presenter) {
        let dir = tempfile::tempdir().unwrap();
        let secret = DeviceSecret::generate().unwrap();
        let binding = Binding {
            uid: 1000,
            exe: None,
            socket: "/run/peerwire/sdk.sock".into(),
        };
        let by = Presenter {
            uid: 1000,
            exe: Some("/usr/bin/renderer".into()),
            socket: "/run/peerwire/sdk.sock".into(),
        };
        (dir, secret, binding, by)
    }

    #[test]
    fn once_only_also_after_restart() {
        let (dir, secret, binding, by) = setup();
        let store = dir.path().join("used");
        let token = Minter::new(&secret)
            .unwrap()
            .mint(&binding, DEFAULT_TTL)
            .unwrap();
        assert!(token.starts_with("pw1.") && token.len() < 200);
        let mut v = Verifier::new(&secret, &store, 16).unwrap();
        assert_eq!(v.verify(token.as_bytes(), &by).unwrap().uid, 1000);
        assert!(matches!(
            v.verify(token.as_bytes(), &by),
            Err(TokenError::Replayed)
        ));
        drop(v);
        let mut v = Verifier::new(&secret, &store, 16).unwrap();
        assert!(matches!(
            v.verify(token.as_bytes(), &by),
            Err(TokenError::Replayed)
        ));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let (dir, secret, binding, by) = setup();
        let token = Minter::new(&secret)
            .unwrap()
            .mint(&binding, DEFAULT_TTL)
            .unwrap();
        let raw = URL_SAFE_NO_PAD
            .decode(token.strip_prefix(PREFIX).unwrap())
            .unwrap();
        let mut v = Verifier::new(&secret, &dir.path().join("used"), 16).unwrap();
        for bit in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let forged = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&bad));
            let err = v.verify(forged.as_bytes(), &by).unwrap_err();
            assert!(
                matches!(err, TokenError::BadMac | TokenError::Malformed(_)),
                "bit {bit}: {err}"
            );
        }
        assert_eq!(v.remembered(), 0);
        // And the untouched token still works.
        v.verify(token.as_bytes(), &by).unwrap();
    }

    #[test]
    fn expiry_binding_and_foreign_secrets() {
        let (dir, secret, binding, by) = setup();
        let minter = Minter::new(&secret).unwrap();
        let mut v = Verifier::new(&secret, &dir.path().join("used"), 16).unwrap();
        let t = now();
        let old = minter
            .mint_at(&binding, t - 100, Duration::from_secs(30))
            .unwrap();
        assert!(matches!(
            v.verify_at(old.as_bytes(), &by, t),
            Err(TokenError::Expired(70))
        ));
        // Within the clock-skew allowance it is still accepted.
        let just = minter
            .mint_at(&binding, t - 33, Duration::from_secs(30))
            .unwrap();
        assert!(v.verify_at(just.as_bytes(), &by, t).is_ok());
        let future = minter
            .mint_at(&binding, t + 60, Duration::from_secs(30))
            .unwrap();
        assert!(matches!(
            v.verify(future.as_bytes(), &by),
            Err(TokenError::Malformed(_))
        ));
        let other = Minter::new(&DeviceSecret::generate().unwrap())
            .unwrap()
            .mint(&binding, DEFAULT_TTL)
            .unwrap();
        assert!(matches!(
            v.verify(other.as_bytes(), &by),
            Err(TokenError::BadMac)
        ));
        let wrong_uid = Presenter {
            uid: 1001,
            ..by.clone()
        };
        let tok = minter.mint(&binding, DEFAULT_TTL).unwrap();
        assert!(matches!(
            v.verify(tok.as_bytes(), &wrong_uid),
            Err(TokenError::WrongPeer(_))
        ));
        let wrong_socket = Presenter {
            socket: "/tmp/other.sock".into(),
            ..by.clone()
        };
        assert!(matches!(
            v.verify(tok.as_bytes(), &wrong_socket),
            Err(TokenError::WrongPeer(_))
        ));
        let exe_bound = Binding {
            exe: Some("/usr/bin/renderer".into()),
            ..binding.clone()
        };
        let tok = minter.mint(&exe_bound, DEFAULT_TTL).unwrap();
        let other_exe = Presenter {
            exe: Some("/usr/bin/evil".into()),
            ..by.clone()
        };
        assert!(matches!(
            v.verify(tok.as_bytes(), &other_exe),
            Err(TokenError::WrongPeer(_))
        ));
        v.verify(tok.as_bytes(), &by).unwrap();
        assert!(matches!(
            v.verify(b"garbage", &by),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn a_record_that_cannot_be_written_is_a_store_error_naming_it() {
        let (dir, secret, _, _) = setup();
        let path = dir.path().join("missing-dir").join("used");
        let err = Verifier::new(&secret, &path, 3).unwrap_err();
        assert!(
            matches!(&err, TokenError::Store { path: p, source }
                if *p == path && source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn the_record_is_bounded() {
        let (dir, secret, binding, by) = setup();
        let minter = Minter::new(&secret).unwrap();
        let mut v = Verifier::new(&secret, &dir.path().join("used"), 3).unwrap();
        for _ in 0..3 {
            v.verify(minter.mint(&binding, DEFAULT_TTL).unwrap().as_bytes(), &by)
                .unwrap();
        }
        let fourth = minter.mint(&binding, DEFAULT_TTL).unwrap();
        assert!(matches!(
            v.verify(fourth.as_bytes(), &by),
            Err(TokenError::StoreFull(3))
        ));
        // Once they expire, room is made again.
        let later = now() + MAX_TTL.as_secs() + 60;
        let fresh = minter.mint_at(&binding, later, DEFAULT_TTL).unwrap();
        v.verify_at(fresh.as_bytes(), &by, later).unwrap();
        assert_eq!(v.remembered(), 1);
    }
}
