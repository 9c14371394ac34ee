//! `cargo xtask bench [--quick] [--no-peers]`: builds the benchmark harness in `bench/` (a crate
//! outside the workspace, so the test suite never compiles it nor the peers tonic and ttrpc) in
//! release mode and runs it. `--quick` cuts the iterations (under 30 s); `--no-peers` builds
//! without the `peers` feature and measures peerwire against raw and bare tokio only (CI: the
//! harness cannot rot, and CI does not compile tonic and ttrpc). Results: a table on stdout,
//! then issue 21's goals (each with its figure, its floor and met / NOT met, per placement),
//! `target/bench/results.json`, `results.md` (table and goals), `goals.json` and the charts
//! `ratios.svg` and `ratios-split.svg`. Instructions per call (callgrind) are
//! `bench/callgrind.sh` after this (see docs/performance.md).
//! The C client row (`peerwire-c`): `bench/c/echo_client.c` built against the release
//! `libpeerwire.so` and `include/peerwire.h`, its 64 B round trip printed beside the Rust
//! client's with the ratio.
//! Then the renderer's benchmark (`peerwire-renderer bench`: event-to-pixel latency, frame time
//! with and without an event flood; `target/bench/renderer.json`).
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
    succeed(&mut build, "building the benchmark")?;
    let out = root.join("target/bench");
    let c_client = c_client(root, &cargo, &out)?;
    let mut cmd = Command::new(root.join("target/release/peerwire-bench"));
    cmd.env("PEERWIRE_BENCH_C_CLIENT", &c_client);
    cmd.arg("run").arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    if no_peers {
        cmd.arg("--no-peers");
    }
    succeed(&mut cmd, "running the benchmark")?;
    renderer(root, &cargo, &out, quick)?;
    println!(
        "results: {}\ntable and goals: {}\ngoals: {}\ncharts: {} and {}\nrenderer: {}",
        out.join("results.json").display(),
        out.join("results.md").display(),
        out.join("goals.json").display(),
        out.join("ratios.svg").display(),
        out.join("ratios-split.svg").display(),
        out.join("renderer.json").display()
    );
    Ok(())
}

/// Builds the C client of the benchmark against the release C library; its path.
fn c_client(root: &Path, cargo: &str, out: &Path) -> anyhow::Result<std::path::PathBuf> {
    succeed(
        Command::new(cargo).current_dir(root).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "peerwire-ffi",
        ]),
        "building the C library",
    )?;
    // Installed as for a distribution (the SONAME libpeerwire.so.0 and its link).
    let prefix = out.join("c-prefix");
    crate::ffi::install(root, &root.join("target/release"), &prefix)?;
    let program = out.join("c-echo-client");
    let lib = prefix.join("lib");
    succeed(
        Command::new("cc")
            .args(["-O2", "-std=c11", "-Wall", "-Werror", "-o"])
            .arg(&program)
            .arg(root.join("bench/c/echo_client.c"))
            .arg("-I")
            .arg(prefix.join("include"))
            .arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lpeerwire"),
        "building the C client",
    )?;
    Ok(program)
}

/// The OpenGL display client's event-to-pixel latency and frame times (headless EGL; see
/// docs/renderer.md): its own `bench` subcommand, built without the window feature.
fn renderer(root: &Path, cargo: &str, out: &Path, quick: bool) -> anyhow::Result<()> {
    succeed(
        Command::new(cargo)
            .current_dir(root)
            .args(["build", "--release", "--locked", "--no-default-features"])
            .args(["-p", "peerwire-renderer"]),
        "building the renderer",
    )?;
    let mut cmd = Command::new(root.join("target/release/peerwire-renderer"));
    cmd.arg("bench")
        .arg("--json")
        .arg(out.join("renderer.json"));
    if quick {
        cmd.arg("--quick");
    }
    succeed(&mut cmd, "running the renderer benchmark")
}

/// Runs `cmd`; an exit other than success is an error saying `what` failed.
fn succeed(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| what.to_owned())?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}
