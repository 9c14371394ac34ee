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
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

fn make_private_dir(dir: &Path, traversable: bool) -> Result<(), IdentityError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => check_private(dir, &meta, true, traversable),
        Err(_) => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
            // Exactly 0700 whatever the umask, which can only have taken bits away (a server
            // binding its socket in the same process narrows it for a moment, too).
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
        }
    }
}

/// Refuses a path that others can read (keys, key directories) or write, or that is not ours.
/// `traversable`: the top identity directory may be 0711 so that each end's user can reach its
/// own subdirectory; it must still not be readable or writable by others.
fn check_private(
    path: &Path,
    meta: &fs::Metadata,
    is_dir: bool,
    traversable: bool,
) -> Result<(), IdentityError> {
    let bad = |problem: String, fix: String| IdentityError::Permissions {
        path: path.to_owned(),
        problem,
        fix,
    };
    if meta.file_type().is_symlink() {
        return Err(bad(
            "is a symbolic link".into(),
            "replace it with the real file or directory".into(),
        ));
    }
    if is_dir != meta.is_dir() {
        return Err(bad(
            format!("is not a {}", if is_dir { "directory" } else { "file" }),
            "remove it".into(),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && me != 0 {
        return Err(bad(
            format!(
                "is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            ),
            format!("chown {me} {}", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    let forbidden = if traversable { 0o066 } else { 0o077 };
    if mode & forbidden != 0 {
        let want = if is_dir { 0o700 } else { 0o600 };
        return Err(bad(
            format!("has mode {mode:04o}: group or others can reach it"),
            format!("chmod {want:04o} {}", path.display()),
        ));
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), IdentityError> {
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists(path.to_owned()),
            _ => io_err(path)(e),
        })?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
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
pub fn provision(dir: &Path, device: &str, force: bool) -> Result<Provisioned, IdentityError> {
    if !force {
        for role in [Role::Server, Role::Client] {
            let key = dir.join(role.dir_name()).join("key.pem");
            if key.exists() {
                return Err(IdentityError::Exists(key));
            }
        }
    }
    make_private_dir(dir, true)?;
    let server = generate(Role::Server, device)?;
    let client = generate(Role::Client, device)?;
    let mut fingerprints = vec![];
    for (role, (key, cert), peer) in [
        (Role::Server, &server, &client.1),
        (Role::Client, &client, &server.1),
    ] {
        let sub = dir.join(role.dir_name());
        make_private_dir(&sub, false)?;
        let pem = Zeroizing::new(key.private_key_to_pem_pkcs8()?);
        write_file(&sub.join("key.pem"), &pem, 0o600, force)?;
        write_file(&sub.join("cert.pem"), &cert.to_pem()?, 0o644, force)?;
        write_file(&sub.join("peer.pem"), &peer.to_pem()?, 0o644, force)?;
        fingerprints.push((role, fingerprint(cert)?));
    }
    // The device secret for session tokens lives with the server's key.
    crate::token::DeviceSecret::generate()?
        .write(&dir.join("server").join("token.key"), force)
        .map_err(io_err(&dir.join("server").join("token.key")))?;
    let mut fp = fingerprints.into_iter();
    let (Some(a), Some(b)) = (fp.next(), fp.next()) else {
        return Err(IdentityError::Openssl(openssl::error::ErrorStack::get()));
    };
    Ok(Provisioned {
        dir: dir.to_owned(),
        fingerprints: [a, b],
    })
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    fs::read(path).map(Zeroizing::new).map_err(io_err(path))
}

impl Identity {
    /// Loads the identity of `role` from `dir` (the directory given to [`provision`]) or from
    /// `dir` itself when it is already the role's subdirectory. The key file and its directory
    /// must not be accessible to group or others.
    pub fn load(dir: &Path, role: Role) -> Result<Self, IdentityError> {
        let sub = dir.join(role.dir_name());
        let dir = if sub.is_dir() { sub } else { dir.to_owned() };
        let key_path = dir.join("key.pem");
        for (path, is_dir) in [(&dir, true), (&key_path, false)] {
            let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
            check_private(path, &meta, is_dir, false)?;
        }
        let pem = read(&key_path)?;
        let key = PKey::private_key_from_pem(&pem)?;
        let cert = X509::from_pem(&read(&dir.join("cert.pem"))?)?;
        let peer = X509::from_pem(&read(&dir.join("peer.pem"))?)?;
        Ok(Self {
            role,
            key,
            cert,
            peer,
        })
    }

    /// Loads only the pinned peer certificate of `role` (a server-auth client needs no key).
    pub fn load_peer(dir: &Path, role: Role) -> Result<X509, IdentityError> {
        let sub = dir.join(role.dir_name());
        let dir = if sub.is_dir() { sub } else { dir.to_owned() };
        Ok(X509::from_pem(&read(&dir.join("peer.pem"))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
