//! `peerwire token mint`: a one-time session token, printed alone on the last line.

use anyhow::Context;
use peerwire_server::{Binding, DeviceSecret, Minter};

use crate::args::{MintArgs, resolve_uid};

/// Mints a token and prints it.
pub(crate) fn mint(args: &MintArgs) -> anyhow::Result<()> {
    let token = args.mint()?;
    say!(
        "token for uid {} on {}, valid {:?}:",
        args.for_uid,
        args.socket.display(),
        args.ttl
    );
    say!("{token}");
    Ok(())
}

impl MintArgs {
    pub(crate) fn mint(&self) -> anyhow::Result<String> {
        let secret_path = self.identity.join("server").join("token.key");
        let owner = match &self.server_user {
            Some(u) => resolve_uid(u)?,
            None => nix::unistd::geteuid().as_raw(),
        };
        let secret = DeviceSecret::read_owned_by(&secret_path, owner)
            .with_context(|| format!("reading the device secret {}", secret_path.display()))?;
        let socket = std::fs::canonicalize(&self.socket).unwrap_or_else(|_| self.socket.clone());
        let exe = self.exe.as_ref().map(std::fs::canonicalize).transpose()?;
        let binding = Binding {
            uid: resolve_uid(&self.for_uid)?,
            exe,
            socket,
        };
        Ok(Minter::new(&secret)?.mint(&binding, self.ttl)?)
    }
}
