//! Who may connect: the access policy, checked at accept before any byte of the peer is parsed.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use peerwire_security::cred::{PeerCredentials, peer_groups};
use peerwire_security::exe::{
    Executable, SenderGuard, pass_senders, passes_senders, peer_executable,
};
use tokio::net::UnixStream;

/// Which peers may connect.
///
/// A peer is admitted when its uid is allowed **or** one of its groups (primary or
/// supplementary, via `SO_PEERGROUPS`) is allowed, **and**, if executables are listed, it runs
/// one of them (checked race-free through a pidfd; refused where the kernel cannot do that).
///
/// With executables listed, not only the process that connected is checked: every chunk the
/// server reads from the connection must come from a process running the allowed executable
/// that spoke first (the kernel says who sent each chunk: `SO_PASSCRED`, `SO_PASSPIDFD`), so a
/// socket handed to, or inherited by, another program is closed with `PERMISSION_DENIED` as
/// soon as that program speaks. This needs Linux 6.5; on older kernels the server refuses to
/// start with executables listed.
///
/// The default, [`AccessPolicy::own_uid`], admits only the server's own effective uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
    exes: Vec<Executable>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self::own_uid()
    }
}

impl AccessPolicy {
    /// Admits only the server's own effective uid (the default).
    pub fn own_uid() -> Self {
        let mut p = Self::nobody();
        p.allow_uid(nix::unistd::geteuid().as_raw());
        p
    }

    /// Admits nobody until uids or groups are added.
    pub fn nobody() -> Self {
        Self {
            uids: BTreeSet::new(),
            gids: BTreeSet::new(),
            exes: vec![],
        }
    }

    /// Admits peers running as `uid`.
    pub fn allow_uid(&mut self, uid: u32) -> &mut Self {
        self.uids.insert(uid);
        self
    }

    /// Admits peers with `gid` as primary or supplementary group.
    pub fn allow_group(&mut self, gid: u32) -> &mut Self {
        self.gids.insert(gid);
        self
    }

    /// Also requires peers to run this executable (or another one allowed this way). The file
    /// is resolved now and compared by device and inode.
    pub fn allow_exe(&mut self, path: impl AsRef<Path>) -> io::Result<&mut Self> {
        self.exes.push(Executable::from_path(path)?);
        Ok(self)
    }

    /// Allowed uids.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.uids.iter().copied()
    }

    /// Allowed groups.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.gids.iter().copied()
    }

    /// True when executables are listed.
    pub(crate) fn has_exes(&self) -> bool {
        !self.exes.is_empty()
    }

    /// Makes the listening socket pass the sender of every chunk to the sockets it accepts
    /// (from their first instant), where a connection may need it checked: executables are
    /// listed (required: an error on kernels older than Linux 6.5), or session tokens are,
    /// which may be bound to an executable (where the kernel cannot, such tokens are refused).
    pub(crate) fn prepare_listener(
        &self,
        listener: &impl AsFd,
        tokens: bool,
    ) -> Result<(), peerwire_security::exe::ExeError> {
        if !self.has_exes() && !tokens {
            return Ok(());
        }
        match pass_senders(listener, true) {
            Ok(()) => Ok(()),
            Err(e) if self.has_exes() => Err(e),
            Err(e) => {
                tracing::warn!("session tokens bound to an executable will be refused: {e}");
                Ok(())
            }
        }
    }

    /// Checks a freshly accepted connection. On success, the guard its reads go through, if it
    /// needs one (see [`AccessPolicy::prepare_listener`]); the error is the reason given to the
    /// peer.
    pub(crate) fn check(
        &self,
        stream: &UnixStream,
        peer: &PeerCredentials,
        tokens: bool,
    ) -> Result<Option<Arc<SenderGuard>>, String> {
        if !self.admits_identity(stream, peer) {
            return Err(format!(
                "peer uid {} gid {} is not allowed by the server's access policy",
                peer.uid, peer.gid
            ));
        }
        self.check_exe(stream)?;
        let passes = (self.has_exes() || tokens) && passes_senders(stream);
        if self.has_exes() && !passes {
            return Err(
                "the server cannot check who sends on this connection (SO_PASSPIDFD, Linux 6.5)"
                    .into(),
            );
        }
        Ok(passes.then(|| Arc::new(SenderGuard::new(self.exes.clone(), peer.pid))))
    }

    /// Whether the peer's uid, or one of its groups, is allowed (executables aside).
    pub(crate) fn admits_identity(&self, stream: &UnixStream, peer: &PeerCredentials) -> bool {
        let by_uid = self.uids.contains(&peer.uid);
        let by_group = !by_uid
            && !self.gids.is_empty()
            && (self.gids.contains(&peer.gid)
                || match peer_groups(stream) {
                    Ok(groups) => groups.iter().any(|g| self.gids.contains(g)),
                    Err(e) => {
                        tracing::info!(
                            "cannot read the peer's supplementary groups ({e}); judging by its primary group"
                        );
                        false
                    }
                });
        by_uid || by_group
    }

    /// A TCP peer (the WebSocket transport), known by its uid alone (from `sock_diag`): its
    /// credentials (the primary group from its account, no pid) if the uid, its account's
    /// primary group or one of its supplementary groups is allowed. Executable rules cannot
    /// apply over TCP: a WebSocket endpoint is refused under a policy that has them.
    pub(crate) fn admits_tcp_uid(&self, uid: u32) -> Result<PeerCredentials, String> {
        let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let gid = account.as_ref().map_or(u32::MAX, |u| u.gid.as_raw());
        let peer = PeerCredentials {
            uid,
            gid,
            pid: None,
        };
        let by_uid = self.uids.contains(&uid);
        let by_group = !by_uid
            && !self.gids.is_empty()
            && account.is_some_and(|u| {
                self.gids.contains(&gid)
                    || std::ffi::CString::new(u.name.as_bytes()).is_ok_and(|name| {
                        nix::unistd::getgrouplist(&name, u.gid)
                            .is_ok_and(|g| g.iter().any(|g| self.gids.contains(&g.as_raw())))
                    })
            });
        if by_uid || by_group {
            Ok(peer)
        } else {
            Err(format!(
                "peer uid {uid} is not allowed by the server's access policy"
            ))
        }
    }

    /// With executables listed: whether the peer runs one of them (through a pidfd).
    fn check_exe(&self, stream: &UnixStream) -> Result<(), String> {
        if !self.exes.is_empty() {
            match peer_executable(stream) {
                Ok(exe) if self.exes.iter().any(|a| a.same_file(&exe)) => {}
                Ok(exe) => {
                    return Err(format!(
                        "the executable {} is not allowed by the server's access policy",
                        exe.path.display()
                    ));
                }
                Err(e) => return Err(format!("the client executable cannot be verified: {e}")),
            }
        }
        Ok(())
    }
}
