//! `cargo xtask hardening`: builds the release binaries and checks each ELF file itself.
//!
//! Required of every binary: an ELF of type DYN that is a PIE executable (`PT_INTERP`, and
//! `DF_1_PIE` where the linker records it); `PT_GNU_RELRO` and immediate binding (`BIND_NOW`),
//! i.e. full RELRO; a `PT_GNU_STACK` that is not executable; no `RPATH`/`RUNPATH`; no segment
//! that is both writable and executable. When Debian's `checksec` is installed its verdict is
//! printed and must agree (full RELRO, NX, PIE, no RPATH, no RUNPATH).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use object::Endianness;
use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};

/// The binaries the project ships.
pub(crate) const BINARIES: &[&str] = &[
    "peerwire",
    "display-server",
    "display-client",
    "peerwire-renderer",
];

/// What one ELF file showed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ElfReport {
    pub(crate) pie: bool,
    pub(crate) relro: bool,
    pub(crate) bind_now: bool,
    pub(crate) nx_stack: bool,
    pub(crate) rpath: bool,
    pub(crate) wx_segment: bool,
}

impl ElfReport {
    pub(crate) fn problems(&self) -> Vec<&'static str> {
        let mut p = vec![];
        if !self.pie {
            p.push("not a PIE executable");
        }
        if !self.relro {
            p.push("no PT_GNU_RELRO");
        }
        if !self.bind_now {
            p.push("no BIND_NOW (partial RELRO only)");
        }
        if !self.nx_stack {
            p.push("executable or missing PT_GNU_STACK");
        }
        if self.rpath {
            p.push("has RPATH/RUNPATH");
        }
        if self.wx_segment {
            p.push("has a writable and executable segment");
        }
        p
    }
}

/// Reads the hardening properties of one ELF file.
pub(crate) fn inspect(data: &[u8]) -> anyhow::Result<ElfReport> {
    let file = ElfFile64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let e = file.endian();
    let header = file.elf_header();
    let mut r = ElfReport::default();
    let dyn_type = header.e_type(e) == elf::ET_DYN;
    let mut interp = false;
    let mut pie_flag = None;
    for ph in file.elf_program_headers() {
        let flags = ph.p_flags(e);
        match ph.p_type(e) {
            elf::PT_INTERP => interp = true,
            elf::PT_GNU_RELRO => r.relro = true,
            elf::PT_GNU_STACK => r.nx_stack = flags & elf::PF_X == 0,
            _ => {}
        }
        if flags & elf::PF_W != 0 && flags & elf::PF_X != 0 {
            r.wx_segment = true;
        }
        if let Some(dynamic) = ph.dynamic(e, data).context("reading the dynamic section")? {
            for d in dynamic {
                let val = d.d_val(e);
                match d.tag32(e) {
                    Some(elf::DT_BIND_NOW) => r.bind_now = true,
                    Some(elf::DT_FLAGS) if val & u64::from(elf::DF_BIND_NOW) != 0 => {
                        r.bind_now = true
                    }
                    Some(elf::DT_FLAGS_1) => {
                        if val & u64::from(elf::DF_1_NOW) != 0 {
                            r.bind_now = true;
                        }
                        pie_flag = Some(val & u64::from(elf::DF_1_PIE) != 0);
                    }
                    Some(elf::DT_RPATH | elf::DT_RUNPATH) => r.rpath = true,
                    _ => {}
                }
            }
        }
    }
    r.pie = dyn_type && interp && pie_flag.unwrap_or(true);
    Ok(r)
}

fn checksec(bin: &Path) -> anyhow::Result<()> {
    let Ok(out) = Command::new("checksec")
        .arg(format!("--file={}", bin.display()))
        .arg("--output=csv")
        .output()
    else {
        eprintln!("    checksec: not installed (apt-get install checksec)");
        return Ok(());
    };
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("    checksec: {line}");
    for want in [
        "Full RELRO",
        "NX enabled",
        "PIE enabled",
        "No RPATH",
        "No RUNPATH",
    ] {
        if !line.contains(want) {
            bail!("checksec does not report {want:?} for {}", bin.display());
        }
    }
    Ok(())
}

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--locked", "--bins"])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed: {status}");
    }
    let mut failed = vec![];
    for name in BINARIES {
        let bin: PathBuf = root.join("target/release").join(name);
        let report =
            inspect(&std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?)?;
        let problems = report.problems();
        eprintln!(
            "{}: {}",
            bin.display(),
            if problems.is_empty() {
                "PIE, full RELRO (BIND_NOW), NX stack, no RPATH/RUNPATH, no W+X segment".to_string()
            } else {
                problems.join(", ")
            }
        );
        checksec(&bin)?;
        if !problems.is_empty() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("hardening check failed for {failed:?}");
    }
    eprintln!("xtask hardening: all binaries pass");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check itself is checked on this test binary (built with the same flags) and on a
    /// file that is not ELF.
    #[test]
    fn inspects_a_real_binary() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let r = inspect(&me).unwrap();
        assert!(r.problems().is_empty(), "{r:?}");
        assert!(inspect(b"#!/bin/sh\n").is_err());
        let bad = ElfReport {
            pie: true,
            relro: true,
            bind_now: false,
            nx_stack: true,
            rpath: true,
            wx_segment: false,
        };
        assert_eq!(
            bad.problems(),
            ["no BIND_NOW (partial RELRO only)", "has RPATH/RUNPATH"]
        );
    }
}
