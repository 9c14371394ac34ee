//! `cargo xtask fuzz --seconds N`: drives every fuzzing entry point of the libraries (the same
//! ones the cargo-fuzz targets in `fuzz/` wrap) on the stable toolchain, with random inputs and
//! mutations of the seed corpus in `fuzz/corpus/`, for N seconds in total. A panic (which the
//! entry points must never raise) fails the run and prints the input that caused it.
//!
//! This is not coverage-guided: that needs libFuzzer, a nightly toolchain and cargo-fuzz
//! (`cargo +nightly fuzz run frame`), which this project's machines cannot fetch.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

type Target = (&'static str, fn(&[u8]));

fn targets() -> Vec<Target> {
    vec![
        ("frame", |d| {
            peerwire_proto::codec::fuzz_decode(d, 64 * 1024);
        }),
        ("handshake", peerwire_proto::handshake::fuzz_handshake),
        ("token", peerwire_security::token::fuzz_verify),
        ("sealed", peerwire_security::seal::fuzz_open),
        ("config", peerwire_server::settings::fuzz_config),
        ("upgrade", peerwire_server::ws::fuzz_upgrade),
    ]
}

fn seeds(root: &Path, target: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut seeds = vec![vec![]];
    let dir = root.join("fuzz/corpus").join(target);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                seeds.push(std::fs::read(entry.path())?);
            }
        }
        // A target whose seeds are all made below (git keeps no empty directory).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    if target == "sealed" {
        // A valid file for the fixed key the entry point uses, so mutations reach the AEAD.
        let keys = peerwire_security::seal::KeyRing::new(peerwire_security::seal::Key::from_bytes(
            &[7u8; 32],
        )?);
        seeds.push(peerwire_security::seal::seal(
            &keys,
            peerwire_security::seal::Purpose::State,
            "fuzz",
            b"state record",
        )?);
    }
    Ok(seeds)
}

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..rng.usize(1..8) {
        match rng.u8(0..6) {
            0 if !d.is_empty() => {
                let i = rng.usize(0..d.len());
                let bit = 1 << rng.u8(0..8);
                if let Some(b) = d.get_mut(i) {
                    *b ^= bit;
                }
            }
            1 if !d.is_empty() => {
                let i = rng.usize(0..d.len());
                let v = rng.u8(..);
                if let Some(b) = d.get_mut(i) {
                    *b = v;
                }
            }
            2 => {
                let i = rng.usize(0..=d.len());
                d.insert(i, rng.u8(..));
            }
            3 if !d.is_empty() => {
                let i = rng.usize(0..d.len());
                d.remove(i);
            }
            4 => d.truncate(rng.usize(0..=d.len())),
            _ => {
                let n = rng.usize(0..64);
                d.extend((0..n).map(|_| rng.u8(..)));
            }
        }
    }
    d
}

pub(crate) fn run(root: &Path, seconds: u64) -> anyhow::Result<()> {
    let targets = targets();
    let per_target = Duration::from_secs(seconds.max(1)) / targets.len() as u32;
    let mut rng = fastrand::Rng::new();
    eprintln!("xtask fuzz: seed {}", rng.get_seed());
    // Entry points must not panic: report the input instead of the default hook's noise.
    std::panic::set_hook(Box::new(|_| {}));
    for (name, f) in &targets {
        let seeds = seeds(root, name)?;
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < per_target {
            let input = if rng.bool() {
                let len = rng.usize(0..512);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                let pick = rng.usize(0..seeds.len());
                let seed = seeds.get(pick).cloned().unwrap_or_default();
                mutate(&mut rng, &seed)
            };
            if std::panic::catch_unwind(|| f(&input)).is_err() {
                let _ = std::panic::take_hook();
                let path = root.join(format!("target/fuzz-crash-{name}"));
                std::fs::write(&path, &input)?;
                bail!(
                    "{name}: the entry point panicked on {} bytes, saved to {}",
                    input.len(),
                    path.display()
                );
            }
            runs += 1;
        }
        eprintln!(
            "xtask fuzz: {name}: {runs} inputs in {:.1?}, no panic",
            start.elapsed()
        );
    }
    let _ = std::panic::take_hook();
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Keeps the entry points (and so the cargo-fuzz targets, which call the same functions)
    /// compiling and panic-free on the seeds.
    #[test]
    fn entry_points_run_on_the_seed_corpus() {
        let root = super::super::root();
        for (name, f) in super::targets() {
            for seed in super::seeds(&root, name).unwrap() {
                f(&seed);
            }
            let target =
                std::fs::read_to_string(root.join(format!("fuzz/fuzz_targets/{name}.rs"))).unwrap();
            assert!(
                target.contains("fuzz_target!"),
                "fuzz/fuzz_targets/{name}.rs is not a cargo-fuzz target"
            );
        }
    }
}
