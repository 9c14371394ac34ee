//! Who may connect: the access policy, checked at accept before any byte of the peer is parsed.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use peerwire_security::cred::{PeerCredentials, peer_groups};
use peerwire_security::exe::{Executable, peer_executable};
use tokio::net::UnixStream;

/// Which peers may connect.
///
/// A peer is admitted when its uid is allowed **or** one of its groups (primary or
/// supplementary, via `SO_PEERGROUPS`) is allowed, **and**, if executables are listed, it runs
/// one of them (checked race-free through a pidfd; refused where the kernel cannot do that).
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

    /// Checks a freshly accepted connection. The error is the reason given to the peer.
    pub(crate) fn check(&self, stream: &UnixStream, peer: &PeerCredentials) -> Result<(), String> {
        if !self.admits_identity(stream, peer) {
            return Err(format!(
                "peer uid {} gid {} is not allowed by the server's access policy",
                peer.uid, peer.gid
            ));
        }
        self.check_exe(stream)
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
