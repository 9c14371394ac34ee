//! `cargo xtask`: peerwire's one automation entry point.
//!
//! - `cargo xtask ci`: what CI runs, in order: `cargo fmt --check`, `cargo clippy --workspace
//!   --all-targets -D warnings`, `cargo test --workspace` (which includes the repository rules
//!   in `xtask/src/tidy.rs`), and `cargo doc` with warnings denied.
//!
//! - `cargo xtask hardening`: builds the release binaries and checks each ELF file for PIE,
//!   full RELRO, a non-executable stack, no RPATH/RUNPATH and no W+X segment (and runs
//!   Debian's `checksec` when installed).
//!
//! - `cargo xtask fuzz [--seconds N]`: drives the libraries' fuzzing entry points with random
//!   and mutated inputs on the stable toolchain (see `fuzz/` for the cargo-fuzz targets).
//!
//! - `cargo xtask soak [--seconds N] [--tls]`: mixed load (calls, pushes, reconnects, hostile
//!   peers) on a real `peerwire serve`, plain or in mutual TLS; fails on errors, stalls or
//!   memory growth.
//!
//! - `cargo xtask bench [--quick] [--no-peers]`: the benchmark harness in `bench/`: a raw Unix
//!   socket, peerwire plain and with TLS, tonic and ttrpc (not with `--no-peers`), separate
//!   processes, two CPU placements; see docs/performance.md.
//!
//! - `cargo xtask yocto [--out DIR]`: generates the Yocto layer `meta-peerwire` (recipes for the
//!   server and CLI and for the example display client, the crates of `Cargo.lock`, the files of
//!   `deploy/`, ptest) into `DIR` (default `target/yocto`) and its deterministic tarball
//!   `meta-peerwire.tar.gz`; see docs/yocto.md.
//!
//! - `cargo xtask yocto --bitbake [--release scarthgap|wrynose] [--oe-dir DIR]`: checks the
//!   generated layer with a real BitBake and openembedded-core of each release, offline (the
//!   tarballs of `DIR`, `$PEERWIRE_OE_DIR` or `../shared/yocto`): parse, environment, task
//!   graphs, fetch and unpack, a configuration without systemd; see docs/yocto.md.
//!
//! - `cargo xtask ffi [--bless]`: the C ABI (`crates/peerwire-ffi`): builds and installs
//!   `libpeerwire` into `target/ffi/prefix`, builds `examples/cpp` with CMake against it (and
//!   with ASan/UBSan), runs the C++ display server against the Rust client and the Rust server
//!   against the C client in mutual TLS, then the sanitizer and leak runs; see docs/c-api.md.
//!   `--bless` rewrites `include/peerwire.h` from the code first.
//!
//! Every step uses `--locked`, so a `Cargo.lock` out of step with the manifests fails.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

mod bench;
mod bitbake;
mod ffi;
mod fuzz;
mod hardening;
mod soak;
#[cfg(test)]
mod tidy;
mod yocto;
mod yocto_licences;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("hardening") => hardening::run(&root()),
        Some("fuzz") => fuzz::run(&root(), seconds(&args, 60)?),
        Some("soak") => {
            let tls = args.iter().any(|a| a == "--tls");
            let rest: Vec<String> = args.iter().filter(|a| *a != "--tls").cloned().collect();
            soak::run(&root(), seconds(&rest, 60)?, tls)
        }
        Some("ffi") => ffi::run(&root(), args.iter().any(|a| a == "--bless")),
        Some("bench") => bench::run(&root(), args.iter().any(|a| a == "--quick")),
        Some("yocto") if args.iter().any(|a| a == "--bitbake") => bitbake::run(
            &root(),
            &bitbake::Options::parse(args.get(1..).unwrap_or_default())?,
        ),
        Some("yocto") => yocto::run(&root(), out_dir(&args)?),
        _ => {
            eprintln!(
                "usage: cargo xtask ci | hardening | ffi [--bless] | fuzz [--seconds N] | soak [--seconds N] [--tls] | bench [--quick] [--no-peers] | yocto [--out DIR] | yocto --bitbake [--release R] [--oe-dir DIR]"
            );
            bail!("unknown or missing task: {args:?}");
        }
    }
}

/// `--seconds N` after the task name, or `default`.
fn seconds(args: &[String], default: u64) -> anyhow::Result<u64> {
    match args.get(1).map(String::as_str) {
        Some("--seconds") => args
            .get(2)
            .and_then(|s| s.parse().ok())
            .context("--seconds N"),
        Some(other) => bail!("unknown argument {other:?} (expected --seconds N)"),
        None => Ok(default),
    }
}

/// `--out DIR` after the task name, if given.
fn out_dir(args: &[String]) -> anyhow::Result<Option<std::path::PathBuf>> {
    match args.get(1).map(String::as_str) {
        Some("--out") => Ok(Some(args.get(2).context("--out DIR")?.into())),
        Some(other) => bail!("unknown argument {other:?} (expected --out DIR)"),
        None => Ok(None),
    }
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("==> cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    eprintln!(
        "<== cargo {} ({:.1?}): {status}",
        args.join(" "),
        start.elapsed()
    );
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn ci() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(&["test", "--workspace", "--locked"], &[])?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}
