//! `cargo xtask bench [--quick]`: builds the benchmark harness in `bench/` (a crate outside the
//! workspace, so the test suite never compiles it) in release mode and runs it. Results: a table
//! on stdout and `target/bench/results.json`. No timing is asserted: figures belong to the
//! benchmark, not to tests.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

pub(crate) fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Share the workspace's target directory: the dependencies are already built there.
    let status = Command::new(&cargo)
        .current_dir(root.join("bench"))
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(root.join("target"))
        .status()
        .context("building the benchmark")?;
    if !status.success() {
        bail!("building the benchmark failed: {status}");
    }
    let mut cmd = Command::new(root.join("target/release/peerwire-bench"));
    cmd.arg("run").arg("--out").arg(root.join("target/bench"));
    if quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().context("running the benchmark")?;
    if !status.success() {
        bail!("the benchmark failed: {status}");
    }
    Ok(())
}
