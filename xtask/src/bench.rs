//! `cargo xtask bench [--quick] [--no-peers]`: builds the benchmark harness in `bench/` (a crate
//! outside the workspace, so the test suite never compiles it nor the peers tonic and ttrpc) in
//! release mode and runs it. `--quick` cuts the iterations (under 30 s); `--no-peers` builds
//! without the `peers` feature and measures peerwire against raw and bare tokio only (CI: the
//! harness cannot rot, and CI does not compile tonic and ttrpc). Results: a table on stdout,
//! `target/bench/results.json`, `results.md` and the charts `ratios.svg` and `ratios-split.svg`.
//! No timing is asserted: figures belong to the benchmark, not to tests.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

pub(crate) fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let root = &root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    // Read here rather than in the dispatcher: the flag only concerns this command.
    let no_peers = std::env::args().any(|a| a == "--no-peers");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Share the workspace's target directory: the dependencies are already built there.
    let mut build = Command::new(&cargo);
    build
        .current_dir(root.join("bench"))
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(root.join("target"));
    if no_peers {
        build.arg("--no-default-features");
    }
    let status = build.status().context("building the benchmark")?;
    if !status.success() {
        bail!("building the benchmark failed: {status}");
    }
    let out = root.join("target/bench");
    let mut cmd = Command::new(root.join("target/release/peerwire-bench"));
    cmd.arg("run").arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    if no_peers {
        cmd.arg("--no-peers");
    }
    let status = cmd.status().context("running the benchmark")?;
    if !status.success() {
        bail!("the benchmark failed: {status}");
    }
    println!(
        "results: {}\ntable and goals: {}\ncharts: {} and {}",
        out.join("results.json").display(),
        out.join("results.md").display(),
        out.join("ratios.svg").display(),
        out.join("ratios-split.svg").display()
    );
    Ok(())
}
