//! `peerwire init`: provisions the device identity for TLS.

use std::path::Path;

use peerwire_security::identity;

pub(crate) fn run(dir: &Path, device: Option<String>, force: bool) -> anyhow::Result<()> {
    let device = match device {
        Some(d) => d,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let p = identity::provision(dir, &device, force)?;
    say!(
        "device identity for {device:?} created in {}:",
        dir.display()
    );
    for (role, fp) in &p.fingerprints {
        say!(
            "  {role}: {0}/{role}/key.pem (0600), {0}/{role}/cert.pem, {0}/{role}/peer.pem; certificate SHA-256 {fp}",
            dir.display()
        );
    }
    say!(
        "give {}/server to the server's user and {}/client to the client's user",
        dir.display(),
        dir.display()
    );
    Ok(())
}
