//! The C client row (issue 18): `bench/c/echo_client.c` over peerwire's C API
//! (`libpeerwire.so`), blocking calls of 64 B echoes against the same plain peerwire server as
//! the Rust client. `cargo xtask bench` builds it and names it in `PEERWIRE_BENCH_C_CLIENT`;
//! without that variable the row is left out. It runs as a child of this process, so it
//! inherits the client's CPU placement.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::measure::{Figures, Params, Target};

/// The C client program, if the harness was given one.
pub(crate) fn program() -> Option<PathBuf> {
    std::env::var_os("PEERWIRE_BENCH_C_CLIENT").map(PathBuf::from)
}

/// Round-trip latency of `size`-byte echoes, measured by the C program itself.
pub(crate) async fn rtt(t: &Target, size: usize, p: &Params) -> anyhow::Result<Figures> {
    let program = program().context("PEERWIRE_BENCH_C_CLIENT is not set")?;
    // Blocking here is fine: the server is another process, and nothing else runs meanwhile.
    let out = std::process::Command::new(&program)
        .arg(&t.socket)
        .arg(p.rtt.to_string())
        .arg(p.rtt_warm.to_string())
        .arg(size.to_string())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let samples = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse::<u64>().map(Duration::from_nanos))
        .collect::<Result<Vec<_>, _>>()
        .context("the C client's samples")?;
    if samples.len() != p.rtt {
        bail!("the C client gave {} samples, not {}", samples.len(), p.rtt);
    }
    Ok(Figures::latency(samples))
}
