//! The licences of what a recipe's binary links: the expression of its `LICENSE` and the
//! licence files of its `LIC_FILES_CHKSUM`, generated from the crates the binary is made of.
//!
//! The crates are those of `cargo tree -e normal,no-proc-macro` for the binary's package and
//! Linux targets: the normal dependencies with the features that package turns on, without
//! build scripts, dev-dependencies or procedural macros (which run on the build host and are
//! not linked). Each crate's SPDX expression (`license` of its manifest) is converted to
//! BitBake's syntax (`&`, `|`, parentheses) and the distinct ones are joined with `&`.
//!
//! The licence files are the crate's own, as published: the files at the root of its `.crate`
//! archive named `LICENSE*`, `LICENCE*`, `COPYING*`, `UNLICENSE*` or `COPYRIGHT*`, and its
//! manifest's `license-file`. They are listed with their md5 at the path where BitBake's crate
//! fetcher unpacks them, `${CARGO_VENDORING_DIRECTORY}/NAME-VERSION/FILE`, so `do_populate_lic`
//! checks them and ships them in the image's licence directory, copyright lines included. A
//! crate that publishes no licence file is covered by OE-core's generic text of each licence
//! its expression names (`do_populate_lic` copies those for every name in `LICENSE`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use md5::{Digest, Md5};

/// The targets the layer is built for: the dependency set is the union over them.
const LINUX_TARGETS: &[&str] = &[
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "armv7-unknown-linux-gnueabihf",
    "i686-unknown-linux-gnu",
    "riscv64gc-unknown-linux-gnu",
];

/// One package the binary links.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Linked {
    pub(crate) name: String,
    pub(crate) version: String,
    /// The SPDX expression of its manifest.
    pub(crate) spdx: String,
    /// A member of the workspace (its licence file is the repository's `LICENSE`).
    pub(crate) member: bool,
}

/// A licence file of a crate, as `LIC_FILES_CHKSUM` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LicenceFile {
    /// `NAME-VERSION/FILE`, under `${CARGO_VENDORING_DIRECTORY}`.
    pub(crate) path: String,
    pub(crate) md5: String,
}

/// What a recipe's `LICENSE` and `LIC_FILES_CHKSUM` are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Licences {
    pub(crate) linked: Vec<Linked>,
    /// The BitBake expression.
    pub(crate) expression: String,
    pub(crate) files: Vec<LicenceFile>,
    /// `NAME-VERSION` of the crates.io packages that publish no licence file.
    pub(crate) without_files: Vec<String>,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Downloads the crates of `Cargo.lock` into cargo's cache (nothing when they are there).
pub(crate) fn cargo_fetch(root: &Path) -> anyhow::Result<()> {
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["fetch", "--locked", "--quiet"])
        .status()
        .context("running cargo fetch")?;
    ensure!(status.success(), "cargo fetch --locked failed: {status}");
    Ok(())
}

/// The packages `package` links on Linux, sorted.
fn linked(root: &Path, package: &str) -> anyhow::Result<Vec<Linked>> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args([
        "tree",
        "--locked",
        "--offline",
        "-p",
        package,
        "-e",
        "normal,no-proc-macro",
        "--prefix",
        "none",
        "--format",
        "{p}\t{l}",
    ]);
    for target in LINUX_TARGETS {
        cmd.args(["--target", target]);
    }
    let out = cmd.output().context("running cargo tree")?;
    ensure!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut linked = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim_end_matches(" (*)");
        if line.trim().is_empty() {
            continue;
        }
        let (package, spdx) = line
            .split_once('\t')
            .with_context(|| format!("cargo tree: unexpected line {line:?}"))?;
        // `NAME vVERSION` or `NAME vVERSION (/path/of/a/member)`.
        let mut words = package.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            bail!("cargo tree: unexpected package {package:?}");
        };
        let version = version.trim_start_matches('v');
        ensure!(
            !spdx.trim().is_empty(),
            "{name} {version} declares no licence (`license` of its Cargo.toml)"
        );
        linked.insert(Linked {
            name: name.to_owned(),
            version: version.to_owned(),
            spdx: spdx.trim().to_owned(),
            member: words.next().is_some(),
        });
    }
    ensure!(!linked.is_empty(), "cargo tree -p {package} listed nothing");
    Ok(linked.into_iter().collect())
}

/// An SPDX licence expression (`MIT OR Apache-2.0`, `(A OR B) AND C`, `A WITH E`, and the old
/// `MIT/Apache-2.0`) in BitBake's syntax: `|`, `&`, parentheses, OE-core's licence names.
pub(crate) fn bitbake_expression(spdx: &str) -> anyhow::Result<String> {
    let spaced = spdx
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    let mut depth = 0i32;
    while let Some(word) = words.get(i) {
        match *word {
            "OR" | "or" => out.push("|".into()),
            "AND" | "and" => out.push("&".into()),
            "(" => {
                depth += 1;
                out.push("(".into());
            }
            ")" => {
                depth -= 1;
                ensure!(depth >= 0, "unbalanced parentheses in {spdx:?}");
                out.push(")".into());
            }
            "WITH" | "with" => {
                // OE-core names `A WITH E` `A-with-E` (Apache-2.0-with-LLVM-exception).
                let exception = words
                    .get(i + 1)
                    .with_context(|| format!("WITH without an exception in {spdx:?}"))?;
                let licence = out
                    .pop()
                    .with_context(|| format!("WITH without a licence in {spdx:?}"))?;
                out.push(format!("{licence}-with-{exception}"));
                i += 1;
            }
            id => {
                let id = id.trim_end_matches('+');
                ensure!(
                    !id.is_empty()
                        && id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')),
                    "licence {id:?} of {spdx:?} is not an SPDX identifier"
                );
                out.push(id.to_owned());
            }
        }
        i += 1;
    }
    ensure!(
        depth == 0 && !out.is_empty(),
        "malformed licence expression {spdx:?}"
    );
    // A plain choice between licences is written in one order: `Apache-2.0 | MIT`.
    if out.iter().all(|w| w != "&" && w != "(") {
        let mut choices: Vec<String> = out.into_iter().filter(|w| w != "|").collect();
        choices.sort();
        choices.dedup();
        return Ok(choices.join(" | "));
    }
    Ok(out.join(" ").replace("( ", "(").replace(" )", ")"))
}

/// The distinct expressions joined with `&`, each in parentheses when it has an operator.
fn combine(expressions: &BTreeSet<String>) -> String {
    let parts: Vec<String> = expressions
        .iter()
        .map(|e| {
            if e.contains(' ') {
                format!("({e})")
            } else {
                e.clone()
            }
        })
        .collect();
    parts.join(" & ")
}

/// Where cargo keeps the downloaded `.crate` archives.
pub(crate) fn crate_archive(name: &str, version: &str) -> anyhow::Result<PathBuf> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME")?)
            .join(".cargo"),
    };
    let cache = home.join("registry/cache");
    let file = format!("{name}-{version}.crate");
    let mut registries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    registries.sort();
    registries
        .into_iter()
        .map(|r| r.join(&file))
        .find(|p| p.is_file())
        .with_context(|| format!("{file} is not in {} (cargo fetch)", cache.display()))
}

/// Whether a file at the root of a crate is one of its licence files.
fn is_licence_file(file: &str) -> bool {
    let upper = file.to_ascii_uppercase();
    ["LICENSE", "LICENCE", "COPYING", "UNLICENSE", "COPYRIGHT"]
        .iter()
        .any(|p| upper.starts_with(p))
}

/// The licence files of a `.crate` archive (`NAME-VERSION/...`), with their md5, sorted.
fn licence_files(archive: &Path, name: &str, version: &str) -> anyhow::Result<Vec<LicenceFile>> {
    let prefix = format!("{name}-{version}/");
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifest = String::new();
    for entry in tar
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some(inner) = path.strip_prefix(&prefix) else {
            continue;
        };
        let inner = inner.to_owned();
        if inner == "Cargo.toml" {
            entry.read_to_string(&mut manifest)?;
        } else if is_licence_file(inner.rsplit('/').next().unwrap_or(&inner)) {
            let mut data = vec![];
            entry.read_to_end(&mut data)?;
            contents.insert(inner, data);
        }
    }
    let license_file = manifest
        .parse::<toml::Table>()
        .ok()
        .and_then(|m| {
            m.get("package")?
                .get("license-file")?
                .as_str()
                .map(str::to_owned)
        })
        .map(|f| f.trim_start_matches("./").to_owned());
    let mut files = vec![];
    for (inner, data) in contents {
        let wanted = (!inner.contains('/') && is_licence_file(&inner))
            || license_file.as_deref() == Some(inner.as_str());
        if wanted {
            super::yocto::plain("licence file", &inner)?;
            files.push(LicenceFile {
                path: format!("{prefix}{inner}"),
                md5: super::yocto::hex(&Md5::digest(&data)),
            });
        }
    }
    Ok(files)
}

/// The licences of what `packages` link (a recipe may build several: the server recipe builds
/// the `peerwire` binary and the C library). `own` is the workspace's licence, whose file is
/// the repository's `LICENSE`.
pub(crate) fn licences(root: &Path, packages: &[&str]) -> anyhow::Result<Licences> {
    let mut linked: Vec<Linked> = vec![];
    for package in packages {
        linked.extend(self::linked(root, package)?);
    }
    linked.sort();
    linked.dedup();
    let mut expressions = BTreeSet::new();
    let mut files = vec![];
    let mut without_files = vec![];
    for l in &linked {
        expressions.insert(
            bitbake_expression(&l.spdx)
                .with_context(|| format!("the licence of {} {}", l.name, l.version))?,
        );
        if l.member {
            continue;
        }
        let found = licence_files(&crate_archive(&l.name, &l.version)?, &l.name, &l.version)?;
        if found.is_empty() {
            without_files.push(format!("{}-{}", l.name, l.version));
        }
        files.extend(found);
    }
    Ok(Licences {
        expression: combine(&expressions),
        linked,
        files,
        without_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_expressions_become_bitbake_expressions() {
        let cases = [
            ("MIT", "MIT"),
            ("MIT OR Apache-2.0", "Apache-2.0 | MIT"),
            ("Apache-2.0 OR MIT", "Apache-2.0 | MIT"),
            ("MIT/Apache-2.0", "Apache-2.0 | MIT"),
            ("Unlicense OR MIT", "MIT | Unlicense"),
            (
                "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
                "Apache-2.0 | Apache-2.0-with-LLVM-exception | MIT",
            ),
            (
                "(MIT OR Apache-2.0) AND Unicode-3.0",
                "(MIT | Apache-2.0) & Unicode-3.0",
            ),
            ("Apache-2.0 AND ISC", "Apache-2.0 & ISC"),
        ];
        for (spdx, bitbake) in cases {
            assert_eq!(bitbake_expression(spdx).unwrap(), bitbake, "{spdx}");
        }
        for bad in ["", "MIT OR (Apache-2.0", "MIT)", "MIT WITH", "${X}", "A;B"] {
            assert!(bitbake_expression(bad).is_err(), "{bad:?} accepted");
        }
        let set: BTreeSet<String> = ["MIT", "Apache-2.0 | MIT", "Zlib"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(combine(&set), "(Apache-2.0 | MIT) & MIT & Zlib");
    }

    #[test]
    fn licence_file_names() {
        for yes in [
            "LICENSE",
            "LICENSE-MIT",
            "license-apache",
            "LICENCE.txt",
            "COPYING",
            "UNLICENSE",
            "COPYRIGHT",
        ] {
            assert!(is_licence_file(yes), "{yes}");
        }
        for no in ["README.md", "Cargo.toml", "src", "NOTICE-not"] {
            assert!(!is_licence_file(no), "{no}");
        }
    }
}
