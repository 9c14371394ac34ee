//! `peerwire audit`: the socket's and its directory's owner, mode and problems.

use std::path::Path;

use anyhow::bail;

use crate::args::{resolve_gid, resolve_uid};

pub(crate) fn run(socket: &Path, group: Option<&str>, user: Option<&str>) -> anyhow::Result<()> {
    let group = group.map(resolve_gid).transpose()?;
    let owner = match user {
        Some(u) => resolve_uid(u)?,
        None => nix::unistd::geteuid().as_raw(),
    };
    let report = peerwire_security::sockpath::audit(socket, group, owner);
    for fact in &report.facts {
        say!("{fact}");
    }
    if report.problems.is_empty() {
        say!("ok: no problem found");
        return Ok(());
    }
    for p in &report.problems {
        say!("PROBLEM: {}: {}", p.path.display(), p.problem);
        say!("    fix: {}", p.fix);
    }
    bail!(
        "{} problem(s) found with {}",
        report.problems.len(),
        socket.display()
    )
}
