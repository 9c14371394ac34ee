//! `peerwire launch`: starts a client with a fresh session token on an inherited pipe.

use anyhow::{Context, bail};
use peerwire_server::spawn_with_token;

use crate::args::MintArgs;

pub(crate) async fn run(mint: &MintArgs, command: &[String]) -> anyhow::Result<()> {
    let token = zeroize::Zeroizing::new(mint.mint()?);
    let (program, args) = command.split_first().context("no command to launch")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let mut child =
        spawn_with_token(&mut cmd, &token).with_context(|| format!("starting {program}"))?;
    drop(token);
    eprintln!(
        "peerwire launch: started {program} as pid {} with a session token on an inherited pipe",
        child.id()
    );
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    if !status.success() {
        bail!("{program} exited with {status}");
    }
    Ok(())
}
