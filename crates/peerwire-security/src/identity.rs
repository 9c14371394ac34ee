//! Per-device identities: a key pair and a self-signed certificate for the server and for the
//! display client, generated on the device (`peerwire init`).
//!
//! ```text
//! DIR/            0700
//!   server/       0700   key.pem (0600)  cert.pem  peer.pem (= the client's cert.pem)
//!                        token.key (0600: the 256-bit device secret for session tokens)
//!   client/       0700   key.pem (0600)  cert.pem  peer.pem (= the server's cert.pem)
//! ```
//!
//! Each side can be given only its own subdirectory (for example `chown -R sdk DIR/server`),
//! so neither process can read the other's private key. Each side trusts exactly its
//! `peer.pem` (pinning), never a CA.
//!
//! Certificates: X.509 v3, EC P-256 keys, a random 159-bit serial, valid from 2000-01-01 (before
//! any possible first power-on, so a device with a wrong clock still works) to 2199-12-31
//! (about 200 years), basicConstraints critical CA:FALSE, keyUsage critical digitalSignature
//! only (no keyCertSign, no cRLSign), extendedKeyUsage serverAuth (server) or clientAuth
//! (client), subject `CN=peerwire <role> <device>, O=peerwire`.
//!
//! Private keys are written 0600 with `O_EXCL` (never overwritten without `force`), and their
//! PEM bytes are zeroized in memory after use.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};
use zeroize::Zeroizing;

use crate::securedir::{Create, Rule, SecureDir, Trust, Untrusted, read_in};

/// Start of validity of every certificate: before any device can have been powered on.
pub const NOT_BEFORE: &str = "20000101000000Z";
/// End of validity: about 200 years later.
pub const NOT_AFTER: &str = "21991231235959Z";

/// Which end an identity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The SDK side (TLS server).
    Server,
    /// The display client (TLS client).
    Client,
}

impl Role {
    /// The subdirectory of this role.
    pub fn dir_name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Why an identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// An identity already exists and `force` was not given.
    #[error("{0} already exists; pass --force to replace the device identity")]
    Exists(PathBuf),
    /// A file or directory is readable or writable by others, or not ours.
    #[error("{path}: {problem} (fix: {fix})")]
    Permissions {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// OpenSSL failed (key generation, certificate building, parsing).
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A loaded identity: our key and certificate, and the one peer certificate we trust.
pub struct Identity {
    /// Which end this is.
    pub role: Role,
    /// Our private key.
    pub key: PKey<Private>,
    /// Our certificate.
    pub cert: X509,
    /// The only certificate we accept from the peer.
    pub peer: X509,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("role", &self.role)
            .field("cert", &self.cert.subject_name())
            .field("key", &"<private>")
            .finish()
    }
}

fn subject(role: Role, device: &str) -> Result<openssl::x509::X509Name, IdentityError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "peerwire")?;
    name.append_entry_by_nid(Nid::COMMONNAME, &format!("peerwire {role} {device}"))?;
    Ok(name.build())
}

/// Generates a key pair and a self-signed certificate for `role` on `device`.
pub fn generate(role: Role, device: &str) -> Result<(PKey<Private>, X509), IdentityError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(159, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    let name = subject(role, device)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let not_before = Asn1Time::from_str_x509(NOT_BEFORE)?;
    let not_after = Asn1Time::from_str_x509(NOT_AFTER)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    let eku = match role {
        Role::Server => ExtendedKeyUsage::new().server_auth().build()?,
        Role::Client => ExtendedKeyUsage::new().client_auth().build()?,
    };
    b.append_extension(eku)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((key, b.build()))
}

/// The directory `dir`, created 0700 if missing, else checked to be ours (root gets no
/// exemption) and closed to others; opened through [`SecureDir`], so nothing on the way can be
/// swapped. `traversable`: the top identity directory may be 0711, so that each end's user can
/// reach its own subdirectory.
fn private_dir(dir: SecureDir, traversable: bool) -> Result<SecureDir, IdentityError> {
    if dir.created() {
        return Ok(dir);
    }
    let mut rule = Rule::private(0o700);
    if traversable {
        rule.forbidden = 0o066;
    }
    match rule.problem(dir.path(), &dir.meta()) {
        Some(p) => Err(p.into()),
        None => Ok(dir),
    }
}

impl From<Untrusted> for IdentityError {
    fn from(u: Untrusted) -> Self {
        IdentityError::Permissions {
            path: u.path,
            problem: u.problem,
            fix: u.fix,
        }
    }
}

/// Writes `name` in `dir` (`O_CREAT | O_EXCL | O_NOFOLLOW`, exactly `mode`); with `force` an
/// existing file is removed first.
fn write_file(
    dir: &SecureDir,
    name: &str,
    bytes: &[u8],
    mode: u32,
    force: bool,
) -> Result<(), IdentityError> {
    let path = dir.path().join(name);
    if force {
        dir.remove_file(name.as_ref()).map_err(io_err(&path))?;
    }
    let mut file = dir
        .create_file(name.as_ref(), mode)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists(path.clone()),
            _ => io_err(&path)(e),
        })?;
    file.write_all(bytes).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))
}

/// What [`provision`] created.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The identity directory.
    pub dir: PathBuf,
    /// SHA-256 fingerprints of the server and client certificates (hex).
    pub fingerprints: [(Role, String); 2],
}

/// SHA-256 fingerprint of a certificate, as colon-separated hex.
pub fn fingerprint(cert: &X509) -> Result<String, IdentityError> {
    let digest = cert.digest(MessageDigest::sha256())?;
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Creates the device identity in `dir`: a key pair and certificate for each role, and each
/// role's pinned peer certificate. Refuses to overwrite an existing identity unless `force`.
///
/// Every step goes through descriptors ([`SecureDir`]): the directories above `dir` must be
/// owned by root or this user and writable by nobody else, and `dir` and its subdirectories,
/// if they exist, must be this user's (root included) and closed to others; a directory
/// someone else prepared is refused with the reason and the fix, never written into.
pub fn provision(dir: &Path, device: &str, force: bool) -> Result<Provisioned, IdentityError> {
    let trust = Trust::me();
    let top = private_dir(SecureDir::open_or_create(dir, &trust, 0o700)?, true)?;
    let mut subs = vec![];
    for role in [Role::Server, Role::Client] {
        let sub = private_dir(
            top.subdir(role.dir_name().as_ref(), Create::Missing(0o700))?,
            false,
        )?;
        if !force && sub.contains("key.pem".as_ref()) {
            return Err(IdentityError::Exists(sub.path().join("key.pem")));
        }
        subs.push(sub);
    }
    let server = generate(Role::Server, device)?;
    let client = generate(Role::Client, device)?;
    let mut fingerprints = vec![];
    for ((role, (key, cert), peer), sub) in [
        (Role::Server, &server, &client.1),
        (Role::Client, &client, &server.1),
    ]
    .into_iter()
    .zip(&subs)
    {
        let pem = Zeroizing::new(key.private_key_to_pem_pkcs8()?);
        write_file(sub, "key.pem", &pem, 0o600, force)?;
        write_file(sub, "cert.pem", &cert.to_pem()?, 0o644, force)?;
        write_file(sub, "peer.pem", &peer.to_pem()?, 0o644, force)?;
        fingerprints.push((role, fingerprint(cert)?));
    }
    // The device secret for session tokens lives with the server's key.
    if let Some(server_dir) = subs.first() {
        let secret = crate::token::DeviceSecret::generate()?;
        let path = server_dir.path().join(crate::token::SECRET_FILE);
        if force {
            server_dir
                .remove_file(crate::token::SECRET_FILE.as_ref())
                .map_err(io_err(&path))?;
        }
        let file = server_dir
            .create_file(crate::token::SECRET_FILE.as_ref(), 0o600)
            .map_err(io_err(&path))?;
        secret.write_to(file).map_err(io_err(&path))?;
    }
    let mut fp = fingerprints.into_iter();
    let (Some(a), Some(b)) = (fp.next(), fp.next()) else {
        return Err(IdentityError::Openssl(openssl::error::ErrorStack::get()));
    };
    Ok(Provisioned {
        dir: dir.to_owned(),
        fingerprints: [a, b],
    })
}

/// Largest certificate or key file read.
const MAX_PEM: usize = 64 * 1024;

/// The directory of `role` in `dir` (the directory given to [`provision`]) or `dir` itself
/// when it is already the role's subdirectory, opened through [`SecureDir`]: the directories
/// above are checked, and the top directory, when `dir` is it, too.
fn role_dir(dir: &Path, role: Role) -> Result<SecureDir, IdentityError> {
    let trust = Trust::me();
    let base = SecureDir::open(dir, &trust)?;
    match base.subdir(role.dir_name().as_ref(), Create::No) {
        Ok(sub) => {
            if let Some(p) = trust.ancestor_problem(base.path(), &base.meta()) {
                return Err(p.into());
            }
            Ok(sub)
        }
        Err(_) if !base.contains(role.dir_name().as_ref()) => Ok(base),
        Err(e) => Err(e.into()),
    }
}

impl Identity {
    /// Loads the identity of `role` from `dir` (the directory given to [`provision`]) or from
    /// `dir` itself when it is already the role's subdirectory. The key file and its directory
    /// must be this user's (root gets no exemption) and closed to group and others; the
    /// certificates must be this user's or root's and writable by nobody else; every directory
    /// above must be trustworthy ([`SecureDir`]). Each file is checked on the descriptor it is
    /// read from.
    pub fn load(dir: &Path, role: Role) -> Result<Self, IdentityError> {
        let dir = role_dir(dir, role)?;
        if let Some(p) = Rule::private(0o700).problem(dir.path(), &dir.meta()) {
            return Err(p.into());
        }
        let pem = read_in(&dir, "key.pem".as_ref(), &Rule::private(0o600), MAX_PEM)?;
        let key = PKey::private_key_from_pem(&pem)?;
        let cert = X509::from_pem(&read_in(
            &dir,
            "cert.pem".as_ref(),
            &Rule::unwritable(0o644),
            MAX_PEM,
        )?)?;
        let peer = Self::read_peer(&dir)?;
        Ok(Self {
            role,
            key,
            cert,
            peer,
        })
    }

    fn read_peer(dir: &SecureDir) -> Result<X509, IdentityError> {
        Ok(X509::from_pem(&read_in(
            dir,
            "peer.pem".as_ref(),
            &Rule::unwritable(0o644),
            MAX_PEM,
        )?)?)
    }

    /// Loads only the pinned peer certificate of `role` (a server-auth client needs no key).
    /// What is pinned decides whom we trust: the file and its directory must be owned by this
    /// user or root and writable by nobody else, and so must every directory above.
    pub fn load_peer(dir: &Path, role: Role) -> Result<X509, IdentityError> {
        let dir = role_dir(dir, role)?;
        if let Some(p) = Rule::unwritable(0o700).problem(dir.path(), &dir.meta()) {
            return Err(p.into());
        }
        Self::read_peer(&dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn provision_load_and_refuse_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("id");
        let p = provision(&dir, "dev1", false).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let key = dir.join("server/key.pem");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let server = Identity::load(&dir, Role::Server).unwrap();
        let client = Identity::load(&dir, Role::Client).unwrap();
        assert_eq!(server.peer.to_der().unwrap(), client.cert.to_der().unwrap());
        assert_eq!(client.peer.to_der().unwrap(), server.cert.to_der().unwrap());
        assert_eq!(p.fingerprints[0].1, fingerprint(&server.cert).unwrap());
        // Never overwritten without force.
        let before = fs::read(&key).unwrap();
        assert!(matches!(
            provision(&dir, "dev1", false),
            Err(IdentityError::Exists(_))
        ));
        assert_eq!(fs::read(&key).unwrap(), before);
        provision(&dir, "dev1", true).unwrap();
        assert_ne!(fs::read(&key).unwrap(), before);
        // A key readable by others is refused.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&dir, Role::Server).unwrap_err();
        assert!(err.to_string().contains("chmod 0600"), "{err}");
    }
}
