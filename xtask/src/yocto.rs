//! `cargo xtask yocto [--out DIR]`: the Yocto/OpenEmbedded layer `meta-peerwire` (D9).
//!
//! Writes `DIR/meta-peerwire/` and the release artifact `DIR/meta-peerwire.tar.gz` (default
//! `DIR`: `target/yocto`). Everything in the layer is derived from the repository when it is
//! generated, so it is always in step with it:
//!
//! - `peerwire-crates.inc`: one `crate://crates.io/NAME/VERSION` entry and its `sha256sum` for
//!   every crates.io package of `Cargo.lock`, in the format of OE-core's
//!   `cargo-update-recipe-crates` class;
//! - `LIC_FILES_CHKSUM`: the md5 of `LICENSE`; `LICENSE`, `PV` and `HOMEPAGE`: the root
//!   `Cargo.toml`; `SRCREV`: `git rev-parse HEAD`;
//! - `RUSTFLAGS`: the hardening flags of `.cargo/config.toml` (the cargo class sets `RUSTFLAGS`,
//!   which makes cargo ignore the project's own) and the overflow checks of `[profile.release]`;
//! - `files/`: copies of the systemd unit and socket, the sysusers.d and tmpfiles.d files of
//!   `deploy/`, and the service user of the unit's `User=` for `USERADD_PARAM`.
//!
//! The layer is built in memory, then written as a directory and as a tarball whose bytes
//! depend on nothing else: entries sorted, every mtime 0, owner 0:0, modes 0755/0644, and a gzip
//! header without file name or time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use md5::{Digest, Md5};

use crate::yocto_licences::{self, Licences};

/// The layer's directory name, its collection name and the directory of its recipes.
pub(crate) const LAYER: &str = "meta-peerwire";
const COLLECTION: &str = "peerwire";
const RECIPES: &str = "recipes-peerwire/peerwire";

/// The recipes: their name, and the Cargo package and binary each builds.
pub(crate) const RECIPE_PACKAGES: &[(&str, &str, &str)] = &[
    ("peerwire", "peerwire-cli", "peerwire"),
    (
        "peerwire-display-client",
        "peerwire-examples",
        "display-client",
    ),
];

/// Cargo packages a recipe builds besides its binary's: the server recipe also builds the C
/// library of `peerwire-ffi` (`libpeerwire.so.0` in `peerwire`, the header, pkg-config and CMake
/// files in `peerwire-dev`, `libpeerwire.a` in `peerwire-staticdev`).
pub(crate) const RECIPE_EXTRA_PACKAGES: &[(&str, &str)] = &[("peerwire", "peerwire-ffi")];

/// The Yocto releases the layer is for: the current LTS releases, 5.0 and 6.0.
pub(crate) const RELEASES: &[&str] = &["scarthgap", "wrynose"];

/// The branch that SRCREV is taken from: layers are generated for released commits of main.
const BRANCH: &str = "main";

/// The files of `deploy/` that the server recipe installs: the path under `deploy/` (and under
/// the recipe's `files/`), and the directory it is installed to on the device.
pub(crate) const DEPLOY_FILES: &[(&str, &str)] = &[
    ("systemd/peerwire.service", "${systemd_system_unitdir}"),
    ("systemd/peerwire.socket", "${systemd_system_unitdir}"),
    ("sysusers.d/peerwire.conf", "${nonarch_libdir}/sysusers.d"),
    ("tmpfiles.d/peerwire.conf", "${nonarch_libdir}/tmpfiles.d"),
];

/// The crates whose unit tests make up the ptest package. The integration tests of
/// `crates/peerwire-cli/tests` are left out: they run the `peerwire` binary at its path in the
/// build tree and need host tools (useradd, strace, openssl, systemd-socket-activate).
const PTEST_CRATES: &[&str] = &[
    "peerwire-proto",
    "peerwire-security",
    "peerwire-server",
    "peerwire-client",
];

/// The `source` of a crates.io package in `Cargo.lock` (git index, then sparse index).
const CRATES_IO: &[&str] = &[
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
];

pub(crate) fn run(root: &Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| root.join("target/yocto"));
    let inputs = Inputs::read(root)?;
    let layer = inputs.layer()?;
    let dir = out.join(LAYER);
    write_tree(&dir, &layer)?;
    let tarball = out.join(format!("{LAYER}.tar.gz"));
    std::fs::write(&tarball, layer.tarball()?)
        .with_context(|| format!("writing {}", tarball.display()))?;
    eprintln!(
        "xtask yocto: {} ({} files, {} crates, SRCREV {}) and {}",
        dir.display(),
        layer.files.len(),
        inputs.crates.len(),
        inputs.srcrev,
        tarball.display()
    );
    Ok(())
}

/// One crates.io package of `Cargo.lock`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Crate {
    name: String,
    version: String,
    sha256: String,
}

/// Everything the layer is made from.
#[derive(Debug)]
struct Inputs {
    version: String,
    rust_version: String,
    license: String,
    homepage: String,
    git_uri: String,
    srcrev: String,
    license_md5: String,
    rustflags: Vec<String>,
    service_user: String,
    crates: Vec<Crate>,
    /// The licences of each recipe of `RECIPE_PACKAGES`, in its order.
    licences: Vec<Licences>,
    /// The `DEPLOY_FILES`, with their content.
    deploy: Vec<(String, Vec<u8>)>,
}

/// The layer: file paths relative to its directory, and their content.
#[derive(Debug, PartialEq, Eq)]
struct Layer {
    files: BTreeMap<String, Vec<u8>>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text = String::from_utf8(read(path)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    text.parse()
        .with_context(|| format!("parsing {}", path.display()))
}

/// `table.a.b.c` as a string.
fn string_at(table: &toml::Table, keys: &[&str], file: &str) -> anyhow::Result<String> {
    let mut value = None;
    let mut current = table;
    for (i, key) in keys.iter().enumerate() {
        let v = current
            .get(*key)
            .with_context(|| format!("{file} has no {}", keys.join(".")))?;
        if i + 1 == keys.len() {
            value = v.as_str();
        } else {
            current = v
                .as_table()
                .with_context(|| format!("{file}: {key} is not a table"))?;
        }
    }
    value
        .map(str::to_owned)
        .with_context(|| format!("{file}: {} is not a string", keys.join(".")))
}

/// A word that goes into bitbake metadata as is: no white space, quotes, `$` or `\`.
pub(crate) fn plain(what: &str, s: &str) -> anyhow::Result<()> {
    ensure!(
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '$' | '\\' | ';')),
        "{what} {s:?} cannot go into a recipe"
    );
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `https://host/path` as the git fetcher's `git://host/path;protocol=https`.
fn git_uri(repository: &str) -> anyhow::Result<String> {
    let (protocol, rest) = repository
        .split_once("://")
        .with_context(|| format!("repository {repository:?} is not a URL"))?;
    ensure!(
        matches!(protocol, "https" | "http" | "ssh"),
        "repository {repository:?}: the layer fetches over https, http or ssh"
    );
    let rest = rest.trim_end_matches('/');
    plain("repository", rest)?;
    Ok(format!("git://{rest};protocol={protocol};branch={BRANCH}"))
}

/// The name and version of every crates.io package of the repository's `Cargo.lock`.
pub(crate) fn lock_crates(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    Ok(crates_io_packages(&read_toml(&root.join("Cargo.lock"))?)?
        .into_iter()
        .map(|c| (c.name, c.version))
        .collect())
}

/// The crates.io packages of `Cargo.lock`, sorted by name and version.
fn crates_io_packages(lock: &toml::Table) -> anyhow::Result<Vec<Crate>> {
    let packages = lock
        .get("package")
        .and_then(toml::Value::as_array)
        .context("Cargo.lock has no [[package]]")?;
    let mut crates = vec![];
    for package in packages {
        let field = |key: &str| package.get(key).and_then(toml::Value::as_str);
        let (Some(name), Some(version)) = (field("name"), field("version")) else {
            bail!("Cargo.lock: a package without name or version: {package:?}");
        };
        match field("source") {
            // A member of the workspace: built from the repository itself.
            None => continue,
            Some(source) if CRATES_IO.contains(&source) => {}
            Some(source) => bail!(
                "Cargo.lock: {name} {version} comes from {source}; the layer fetches crates.io \
                 packages only"
            ),
        }
        let sha256 = field("checksum")
            .with_context(|| format!("Cargo.lock: {name} {version} has no checksum"))?;
        plain("crate name", name)?;
        plain("crate version", version)?;
        ensure!(
            sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "Cargo.lock: {name} {version} has a malformed checksum {sha256:?}"
        );
        crates.push(Crate {
            name: name.to_owned(),
            version: version.to_owned(),
            sha256: sha256.to_ascii_lowercase(),
        });
    }
    ensure!(!crates.is_empty(), "Cargo.lock has no crates.io package");
    crates.sort();
    crates.dedup();
    Ok(crates)
}

/// The hardening flags: the Linux `rustflags` of `.cargo/config.toml`, and overflow checks
/// when `[profile.release]` of `Cargo.toml` has them.
fn rustflags(cargo_config: &toml::Table, manifest: &toml::Table) -> anyhow::Result<Vec<String>> {
    let flags = cargo_config
        .get("target")
        .and_then(|t| t.get("cfg(target_os = \"linux\")"))
        .and_then(|t| t.get("rustflags"))
        .and_then(toml::Value::as_array)
        .context(".cargo/config.toml has no rustflags for cfg(target_os = \"linux\")")?;
    let mut out = vec![];
    for flag in flags {
        let flag = flag
            .as_str()
            .context(".cargo/config.toml: a rustflag is not a string")?;
        plain("rustflag", flag)?;
        out.push(flag.to_owned());
    }
    let overflow_checks = manifest
        .get("profile")
        .and_then(|p| p.get("release"))
        .and_then(|r| r.get("overflow-checks"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    if overflow_checks {
        out.extend(["-C".to_owned(), "overflow-checks=on".to_owned()]);
    }
    Ok(out)
}

/// The service user: `User=` of the unit, which the sysusers.d file must create.
fn service_user(unit: &str, sysusers: &str) -> anyhow::Result<String> {
    let user = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("User="))
        .context("deploy/systemd/peerwire.service has no User=")?
        .trim();
    plain("User=", user)?;
    let created = sysusers.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("u") && words.next() == Some(user)
    });
    ensure!(
        created,
        "deploy/sysusers.d/peerwire.conf does not create the unit's User={user}"
    );
    Ok(user.to_owned())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Inputs {
    fn read(root: &Path) -> anyhow::Result<Self> {
        let manifest = read_toml(&root.join("Cargo.toml"))?;
        let field = |key| string_at(&manifest, &["workspace", "package", key], "Cargo.toml");
        let version = field("version")?;
        let license = field("license")?;
        let repository = field("repository")?;
        let rust_version = field("rust-version")?;
        plain("version", &version)?;
        plain("rust-version", &rust_version)?;
        // OE-core's names for SPDX identifiers are the SPDX identifiers themselves.
        plain("license", &license)?;

        let crates = crates_io_packages(&read_toml(&root.join("Cargo.lock"))?)?;
        let license_md5 = hex(&Md5::digest(read(&root.join("LICENSE"))?));
        let rustflags = rustflags(&read_toml(&root.join(".cargo/config.toml"))?, &manifest)?;

        let srcrev = git(root, &["rev-parse", "HEAD"])?;
        ensure!(
            srcrev.len() == 40 && srcrev.bytes().all(|b| b.is_ascii_hexdigit()),
            "git rev-parse HEAD gave {srcrev:?}"
        );
        let dirty = git(
            root,
            &[
                "status",
                "--porcelain",
                "--",
                "Cargo.toml",
                "Cargo.lock",
                "LICENSE",
                ".cargo",
                "deploy",
            ],
        )?;
        if !dirty.is_empty() {
            eprintln!(
                "xtask yocto: warning: SRCREV is HEAD, but the layer is made from a work tree \
                 with uncommitted changes:\n{dirty}"
            );
        }

        // The licence files are read from the crates as published.
        yocto_licences::cargo_fetch(root)?;
        let mut licences = vec![];
        for (recipe, package, _) in RECIPE_PACKAGES {
            let mut packages = vec![*package];
            packages.extend(
                RECIPE_EXTRA_PACKAGES
                    .iter()
                    .filter(|(r, _)| r == recipe)
                    .map(|(_, p)| *p),
            );
            licences.push(yocto_licences::licences(root, &packages)?);
        }

        let mut deploy = vec![];
        for (path, _) in DEPLOY_FILES {
            deploy.push((path.to_string(), read(&root.join("deploy").join(path))?));
        }
        let text = |path: &str| {
            deploy
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_default()
        };
        let service_user = service_user(
            &text("systemd/peerwire.service"),
            &text("sysusers.d/peerwire.conf"),
        )?;

        Ok(Self {
            version,
            rust_version,
            license,
            git_uri: git_uri(&repository)?,
            homepage: repository,
            srcrev,
            license_md5,
            rustflags,
            service_user,
            crates,
            licences,
            deploy,
        })
    }

    fn layer(&self) -> anyhow::Result<Layer> {
        let mut files = BTreeMap::new();
        let mut add = |path: String, text: String| files.insert(path, text.into_bytes());
        add("conf/layer.conf".into(), self.layer_conf());
        add("README".into(), self.readme()?);
        add(format!("{RECIPES}/peerwire.inc"), self.common_inc()?);
        add(format!("{RECIPES}/peerwire-crates.inc"), self.crates_inc());
        add(format!("{RECIPES}/peerwire_git.bb"), self.server_recipe()?);
        add(
            format!("{RECIPES}/peerwire-display-client_git.bb"),
            fill(DISPLAY_CLIENT_BB, &[("LICENCES", &self.licence_block(1)?)])?,
        );
        for (path, content) in &self.deploy {
            files.insert(format!("{RECIPES}/files/{path}"), content.clone());
        }
        Ok(Layer { files })
    }

    fn layer_conf(&self) -> String {
        format!(
            "# {LAYER}: peerwire, secure local IPC. Generated by `cargo xtask yocto`.\n\
             BBPATH .= \":${{LAYERDIR}}\"\n\
             BBFILES += \"${{LAYERDIR}}/recipes-*/*/*.bb ${{LAYERDIR}}/recipes-*/*/*.bbappend\"\n\
             \n\
             BBFILE_COLLECTIONS += \"{COLLECTION}\"\n\
             BBFILE_PATTERN_{COLLECTION} = \"^${{LAYERDIR}}/\"\n\
             BBFILE_PRIORITY_{COLLECTION} = \"6\"\n\
             LAYERVERSION_{COLLECTION} = \"1\"\n\
             LAYERDEPENDS_{COLLECTION} = \"core\"\n\
             # The current Yocto LTS releases. On scarthgap, Rust >= 1.85 comes from\n\
             # meta-lts-mixins (branch scarthgap/rust): see README.\n\
             LAYERSERIES_COMPAT_{COLLECTION} = \"{}\"\n",
            RELEASES.join(" ")
        )
    }

    /// `peerwire-crates.inc`, in the format of OE-core's `cargo-update-recipe-crates`.
    fn crates_inc(&self) -> String {
        let mut s = String::from(
            "# Generated by `cargo xtask yocto` from Cargo.lock: do not edit, regenerate.\n\
             \n\
             # from Cargo.lock\n\
             SRC_URI += \"\\\n",
        );
        for c in &self.crates {
            let _ = writeln!(
                s,
                "    crate://crates.io/{0}/{1};name={0}-{1} \\",
                c.name, c.version
            );
        }
        s.push_str("\"\n\n");
        for c in &self.crates {
            let _ = writeln!(
                s,
                "SRC_URI[{}-{}.sha256sum] = \"{}\"",
                c.name, c.version, c.sha256
            );
        }
        s
    }

    fn common_inc(&self) -> anyhow::Result<String> {
        fill(
            COMMON_INC,
            &[
                ("HOMEPAGE", &self.homepage),
                ("VERSION", &self.version),
                ("RUST_VERSION", &self.rust_version),
                ("GIT_URI", &self.git_uri),
                ("SRCREV", &self.srcrev),
                ("RUSTFLAGS", &self.rustflags.join(" ")),
            ],
        )
    }

    fn server_recipe(&self) -> anyhow::Result<String> {
        let src_uri: String = DEPLOY_FILES
            .iter()
            .map(|(path, _)| format!("    file://{path} \\\n"))
            .collect();
        let mut install = String::new();
        let mut dirs: Vec<&str> = DEPLOY_FILES.iter().map(|(_, dir)| *dir).collect();
        dirs.dedup();
        for dir in dirs {
            let _ = writeln!(install, "    install -d ${{D}}{dir}");
        }
        for (path, dir) in DEPLOY_FILES {
            let name = path.rsplit('/').next().unwrap_or(path);
            let _ = writeln!(
                install,
                "    install -m 0644 ${{PEERWIRE_FILES_DIR}}/{path} ${{D}}{dir}/{name}"
            );
        }
        let files: Vec<String> = DEPLOY_FILES
            .iter()
            .filter(|(_, dir)| !dir.contains("systemd_system_unitdir"))
            .map(|(path, dir)| {
                let name = path.rsplit('/').next().unwrap_or(path);
                format!("{dir}/{name}")
            })
            .collect();
        let ptest: Vec<String> = PTEST_CRATES.iter().map(|c| format!("-p {c}")).collect();
        fill(
            SERVER_BB,
            &[
                ("SRC_URI_FILES", &src_uri),
                ("INSTALL", &install),
                ("FILES", &files.join(" ")),
                ("PTEST_PACKAGES", &ptest.join(" ")),
                ("USER", &self.service_user),
                ("LICENCES", &self.licence_block(0)?),
                ("PEERWIRE_VERSION", &self.version),
                (
                    "PEERWIRE_VERSION_MAJOR",
                    self.version.split('.').next().unwrap_or("0"),
                ),
                (
                    "PEERWIRE_VERSION_MINOR",
                    self.version.split('.').nth(1).unwrap_or("0"),
                ),
            ],
        )
    }

    /// `LICENSE` and `LIC_FILES_CHKSUM` of recipe `index` of `RECIPE_PACKAGES`: the
    /// repository's `LICENSE`, then the licence files of the crates its binary links.
    fn licence_block(&self, index: usize) -> anyhow::Result<String> {
        let (_, package, binary) = RECIPE_PACKAGES.get(index).context("no such recipe")?;
        let licences = self.licences.get(index).context("no licences")?;
        let crates = licences.linked.iter().filter(|l| !l.member).count();
        let recipe = RECIPE_PACKAGES.get(index).map_or("", |r| r.0);
        let extra: String = RECIPE_EXTRA_PACKAGES
            .iter()
            .filter(|(r, _)| *r == recipe)
            .map(|(_, p)| format!(" and the library of {p}"))
            .collect();
        let mut s = format!(
            "\n# Generated from the {crates} crates that `{binary}` (package {package}){extra} links on Linux,\n\
             # besides peerwire's own ({}): the licence of each crate's Cargo.toml, and the\n\
             # licence files each publishes, where the crate fetcher unpacks them.\n",
            self.license
        );
        if !licences.without_files.is_empty() {
            let _ = writeln!(
                s,
                "# No licence file of their own (OE-core's generic texts cover them): {}.",
                licences.without_files.join(" ")
            );
        }
        let _ = writeln!(s, "LICENSE = \"{}\"", licences.expression);
        let _ = write!(
            s,
            "LIC_FILES_CHKSUM = \"file://LICENSE;md5={}",
            self.license_md5
        );
        for file in &licences.files {
            let _ = write!(
                s,
                " \\\n                    file://${{CARGO_VENDORING_DIRECTORY}}/{};md5={}",
                file.path, file.md5
            );
        }
        s.push_str("\"\n");
        Ok(s)
    }

    fn readme(&self) -> anyhow::Result<String> {
        fill(
            README,
            &[
                ("SRCREV", &self.srcrev),
                ("RELEASES", &RELEASES.join(" ")),
                ("VERSION", &self.version),
                ("RUST_VERSION", &self.rust_version),
                (
                    "OFFLINE_WARNINGS",
                    &crate::bitbake::OFFLINE_WARNINGS
                        .iter()
                        .map(|w| format!("    WARNING: {w}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
            ],
        )
    }
}

/// `template` with every `@KEY@` replaced by its value; an unknown placeholder is an error.
fn fill(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("@{key}@"), value);
    }
    for (start, _) in template.match_indices('@') {
        let key: String = template
            .get(start + 1..)
            .unwrap_or_default()
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        let placeholder = format!("@{key}@");
        if !key.is_empty()
            && template
                .get(start..)
                .is_some_and(|t| t.starts_with(&placeholder))
        {
            ensure!(
                values.iter().any(|(k, _)| *k == key),
                "template placeholder {placeholder} has no value"
            );
        }
    }
    Ok(text)
}

/// Writes the layer into `dir`, replacing what an earlier run left there.
fn write_tree(dir: &Path, layer: &Layer) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    for (path, content) in &layer.files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, content).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

impl Layer {
    /// Every directory that holds a file, parents first.
    fn directories(&self) -> Vec<String> {
        let mut dirs = std::collections::BTreeSet::new();
        for path in self.files.keys() {
            let mut dir = path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                dirs.insert(parent.to_owned());
                dir = parent;
            }
        }
        dirs.into_iter().collect()
    }

    /// The `.tar.gz` of the layer under `meta-peerwire/`: the same files give the same bytes.
    fn tarball(&self) -> anyhow::Result<Vec<u8>> {
        let mut entries: Vec<(String, Option<&[u8]>)> = vec![(LAYER.to_owned(), None)];
        for dir in self.directories() {
            entries.push((format!("{LAYER}/{dir}"), None));
        }
        for (path, content) in &self.files {
            entries.push((format!("{LAYER}/{path}"), Some(content.as_slice())));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));

        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        for (path, content) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match content {
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    header.set_cksum();
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())
                }
                Some(content) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(content.len() as u64);
                    header.set_cksum();
                    tar.append_data(&mut header, &path, content)
                }
            }
            .with_context(|| format!("adding {path} to the tarball"))?;
        }
        let gz = tar.into_inner().context("finishing the tar archive")?;
        gz.finish().context("finishing the gzip stream")
    }
}

const COMMON_INC: &str = r#"# What both peerwire recipes share: the source, the crates, the toolchain and the build flags.
# Generated by `cargo xtask yocto` from the peerwire repository: do not edit, regenerate.

# nooelint: oelint.vars.homepageping
HOMEPAGE = "@HOMEPAGE@"

# openssl-sys links the target's OpenSSL, found with pkg-config.
DEPENDS += "openssl"

# A git snapshot: the package version gets the revision appended (@VERSION@+git0+<hash>).
PV = "@VERSION@+git"

# The source: the commit this layer was generated from, by default. In local.conf, point
# PEERWIRE_GIT_URI at a mirror of the repository when the one of Cargo.toml cannot be reached
# from the build host, and PEERWIRE_SRCREV at another commit of it (its Cargo.lock must then
# be the one peerwire-crates.inc was generated from: regenerate the layer from that commit).
# For a local checkout, use externalsrc instead (README).
PEERWIRE_GIT_URI ?= "@GIT_URI@"
PEERWIRE_SRCREV ?= "@SRCREV@"
SRC_URI = "${PEERWIRE_GIT_URI};destsuffix=${BP}"
SRCREV = "${PEERWIRE_SRCREV}"
# S is the release's default, ${WORKDIR}/${BP} (scarthgap) or ${UNPACKDIR}/${BP} (wrynose),
# where destsuffix puts the git source; externalsrc replaces it with the local checkout.

require peerwire-crates.inc

inherit cargo pkgconfig

# Both recipes are built from the peerwire project.
CVE_PRODUCT = "peerwire"

# One workspace, one binary per recipe (PEERWIRE_CARGO_PACKAGES, set by the recipe).
CARGO_BUILD_FLAGS += "${PEERWIRE_CARGO_PACKAGES}"

# The hardening of the project's .cargo/config.toml (full RELRO with immediate binding, a
# non-executable stack) and the overflow checks of its [profile.release]: cargo ignores the
# project's rustflags here because the cargo class sets RUSTFLAGS. rustc links PIE by default.
RUSTFLAGS += "@RUSTFLAGS@"

# The workspace needs Rust @RUST_VERSION@ or newer (its rust-version; edition 2024). The Rust
# OE-core builds is PREFERRED_VERSION_rust (RUSTVERSION): scarthgap's 1.75 would fail only at
# do_compile, after the toolchain is built, so the recipes are skipped at parse time instead.
# Set PEERWIRE_RUST_VERSION when the Rust comes from a layer that does not set
# PREFERRED_VERSION_rust (a prebuilt toolchain, for instance).
PEERWIRE_RUST_VERSION ??= "${PREFERRED_VERSION_rust}"
# nooelint: oelint.task.noanonpython
python __anonymous() {
    rust = (d.getVar("PEERWIRE_RUST_VERSION") or "").rstrip("%")
    if rust and bb.utils.vercmp_string_op(rust, "@RUST_VERSION@", "<"):
        raise bb.parse.SkipRecipe(
            "peerwire needs Rust @RUST_VERSION@ or newer (edition 2024) and this build uses Rust %s "
            "(PREFERRED_VERSION_rust or PEERWIRE_RUST_VERSION). On scarthgap, add the layer meta-lts-mixins, branch "
            "scarthgap/rust (https://git.yoctoproject.org/meta-lts-mixins), whose Rust is newer; "
            "or build with Yocto 6.0 (wrynose) or later." % rust)
}
"#;

const SERVER_BB: &str = r#"# nooelint: oelint.var.bbclassextend,oelint.var.suggestedvar.BUGTRACKER
SUMMARY = "peerwire secure local IPC server and command line tool"
DESCRIPTION = "The peerwire command: the SDK-side IPC server over a Unix domain socket \
               (peer credential checks, access policy, optional mutual TLS and session \
               tokens), run as the hardened systemd service peerwire.service, and the tools \
               that provision the device identity and the sealed configuration."
SECTION = "net"
@LICENCES@
require peerwire.inc

SRC_URI += "\
@SRC_URI_FILES@"
# Where the files of SRC_URI are: UNPACKDIR on wrynose, WORKDIR on scarthgap (no UNPACKDIR).
PEERWIRE_FILES_DIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit features_check ptest-cargo systemd useradd

# The unit, the socket, sysusers.d, tmpfiles.d and LoadCredentialEncrypted= are systemd's.
REQUIRED_DISTRO_FEATURES = "systemd"

PEERWIRE_CARGO_PACKAGES = "-p peerwire-cli --bin peerwire -p peerwire-ffi --lib"
# ptest: the unit tests of the libraries the server is made of. The integration tests of
# crates/peerwire-cli run the peerwire binary at its path in the build tree and need host
# tools, so they stay in the project's CI.
PEERWIRE_CARGO_PACKAGES:task-compile-ptest-cargo = "@PTEST_PACKAGES@"

# The service user of the unit (User=@USER@), also declared in sysusers.d/peerwire.conf:
# a system user and group, no home directory, no login shell.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /nonexistent --shell ${base_sbindir}/nologin --user-group @USER@"

SYSTEMD_SERVICE:${PN} = "peerwire.socket peerwire.service"
# The service cannot start before the device is provisioned (README: first boot), which
# then enables it: systemctl enable --now peerwire.socket peerwire.service
SYSTEMD_AUTO_ENABLE:${PN} = "disable"

# The C library (docs/c-api.md): its SONAME is libpeerwire.so.0; the header, the pkg-config
# file and the CMake package are filled in for this prefix and libdir.
PEERWIRE_LIBDIR_REL = "${@os.path.relpath(d.getVar('libdir'), d.getVar('prefix'))}"
PEERWIRE_POINTER_BYTES = "${@'8' if d.getVar('SITEINFO_BITS') == '64' else '4'}"

do_install:append() {
@INSTALL@    install -d ${D}${libdir}/pkgconfig ${D}${libdir}/cmake/peerwire ${D}${includedir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/libpeerwire.so ${D}${libdir}/libpeerwire.so.0
    ln -sf libpeerwire.so.0 ${D}${libdir}/libpeerwire.so
    install -m 0644 ${B}/target/${CARGO_TARGET_SUBDIR}/libpeerwire.a ${D}${libdir}/libpeerwire.a
    install -m 0644 ${S}/include/peerwire.h ${D}${includedir}/peerwire.h
    for f in peerwire.pc:pkgconfig peerwireConfig.cmake:cmake/peerwire peerwireConfigVersion.cmake:cmake/peerwire; do
        sed -e 's|@[P]REFIX@|${prefix}|g' -e 's|@[L]IBDIR@|${PEERWIRE_LIBDIR_REL}|g' \
            -e 's|@[V]ERSION@|@PEERWIRE_VERSION@|g' -e 's|@[V]ERSION_MAJOR@|@PEERWIRE_VERSION_MAJOR@|g' \
            -e 's|@[V]ERSION_MINOR@|@PEERWIRE_VERSION_MINOR@|g' -e 's|@[S]IZEOF_VOID_P@|${PEERWIRE_POINTER_BYTES}|g' \
            ${S}/crates/peerwire-ffi/pkg/${f%%:*}.in > ${D}${libdir}/${f#*:}/${f%%:*}
    done
    # The sealed configuration and the encrypted key go here (tmpfiles.d sets the same).
    install -d -m 0750 ${D}${sysconfdir}/peerwire
    chown root:@USER@ ${D}${sysconfdir}/peerwire
}

FILES:${PN} += "@FILES@ ${libdir}/libpeerwire.so.0"
FILES:${PN}-dev += "${includedir}/peerwire.h ${libdir}/libpeerwire.so ${libdir}/pkgconfig/peerwire.pc ${libdir}/cmake/peerwire"
FILES:${PN}-staticdev += "${libdir}/libpeerwire.a"
"#;

const DISPLAY_CLIENT_BB: &str = r#"# nooelint: oelint.var.bbclassextend,oelint.var.suggestedvar.BUGTRACKER
SUMMARY = "peerwire example display client"
DESCRIPTION = "display-client, the renderer side of peerwire's example display protocol: \
               it connects to the peerwire server of the device, subscribes to display \
               updates and sends input events, with mutual TLS and session tokens when the \
               server asks for them."
SECTION = "net"
@LICENCES@
require peerwire.inc

PEERWIRE_CARGO_PACKAGES = "-p peerwire-examples --bin display-client"

# The server it talks to, and the tool that provisions the client's identity. peerwire needs
# systemd: without it in DISTRO_FEATURES, it is skipped and not recommended.
RRECOMMENDS:${PN} += "${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'peerwire', '', d)}"
"#;

const README: &str = r#"meta-peerwire
=============

The Yocto/OpenEmbedded layer of peerwire @VERSION@, secure local IPC between the SDK process
and the display client of a device. It was generated by `cargo xtask yocto` from commit
@SRCREV@ of the peerwire repository, which is also the default revision of its recipes
(PEERWIRE_SRCREV): do not edit it, regenerate it. docs/yocto.md in the repository has the details.

Recipes
-------

- peerwire: the `peerwire` command (server and provisioning tools), the systemd unit and
  socket, sysusers.d and tmpfiles.d files, the service user `peerwire` (useradd), and the
  ptest package peerwire-ptest (the libraries' unit tests).
- peerwire-display-client: the example display client `display-client`.

Both (peerwire_git.bb, peerwire-display-client_git.bb) build the Cargo workspace at SRCREV
with OE-core's cargo class; every crate comes from peerwire-crates.inc (generated from
Cargo.lock), so the build needs no network after do_fetch. PV is "@VERSION@+git": the
package version gets the revision appended (@VERSION@+git0+<hash>), so each revision is a
new package version.

LICENSE and LIC_FILES_CHKSUM of each recipe are generated from the crates its binary links
on Linux (cargo tree, normal dependencies, no build scripts or procedural macros): the SPDX
expression of every crate in BitBake's syntax, joined with `&`, and the licence files each
crate publishes (LICENSE*, COPYING*, ...) at the path where the crate fetcher unpacks them,
${CARGO_VENDORING_DIRECTORY}/NAME-VERSION/FILE. do_populate_lic checks their md5 and ships
them with the image's licences; a crate without a licence file of its own is covered by
OE-core's generic text of its licences (listed in a comment of the recipe).

Dependencies
------------

- openembedded-core (layer `core`), branch scarthgap or wrynose (LAYERSERIES_COMPAT: @RELEASES@).
- Rust >= @RUST_VERSION@ (edition 2024). wrynose ships 1.94. scarthgap ships 1.75: add
  meta-lts-mixins, branch scarthgap/rust (https://git.yoctoproject.org/meta-lts-mixins),
  which replaces it. The recipes compare PREFERRED_VERSION_rust (RUSTVERSION) with
  @RUST_VERSION@ at parse time and skip themselves, naming this fix, when it is older. If your
  Rust comes from a layer that does not set PREFERRED_VERSION_rust, set
  PEERWIRE_RUST_VERSION to its version.
- peerwire: DISTRO_FEATURES systemd (INIT_MANAGER = "systemd"), otherwise it is skipped;
  ptest for peerwire-ptest. peerwire-display-client builds without systemd too (it then does
  not recommend peerwire).

Adding the layer
----------------

    bitbake-layers add-layer /path/to/meta-peerwire

or add the path to BBLAYERS in conf/bblayers.conf. Then, in conf/local.conf (or the image):

    INIT_MANAGER = "systemd"
    IMAGE_INSTALL:append = " peerwire peerwire-display-client"
    # optional, the test suite on the device (run with: ptest-runner peerwire)
    DISTRO_FEATURES:append = " ptest"
    IMAGE_INSTALL:append = " peerwire-ptest ptest-runner"

The source
----------

    # a mirror, when the repository URL of the recipes cannot be reached from the build host
    PEERWIRE_GIT_URI = "git://your.mirror/peerwire;protocol=https;branch=main"
    # another commit of that branch (its Cargo.lock must be the one peerwire-crates.inc was
    # generated from: better, regenerate the layer from that commit)
    PEERWIRE_SRCREV = "<40-hex commit>"

Developers building from a local checkout use externalsrc (the crates still come from
peerwire-crates.inc; S is the checkout):

    INHERIT += "externalsrc"
    EXTERNALSRC:pn-peerwire = "/path/to/peerwire"
    EXTERNALSRC:pn-peerwire-display-client = "/path/to/peerwire"

First boot: provisioning the device
-----------------------------------

The image ships the service disabled: it needs the device's identity, its sealed
configuration and its sealing key, which are made on the device, once, as root (the
credential is bound to the device's host key and TPM2). In short (deploy/README.md in the
repository has every step and why):

    setpriv --reuid=peerwire --regid=peerwire --init-groups \
        peerwire init --dir /var/lib/peerwire/identity --device "$SERIAL_NUMBER"
    # move identity/client to the display client's user (deploy/README.md)
    umask 077
    peerwire config example > /run/peerwire-server.toml   # then edit it
    peerwire config keygen --out /run/peerwire.key
    peerwire config seal --key /run/peerwire.key --in /run/peerwire-server.toml \
        --out /etc/peerwire/server.toml.sealed
    systemd-creds encrypt --name=peerwire.key /run/peerwire.key /etc/peerwire/peerwire.key.cred
    shred -u /run/peerwire.key /run/peerwire-server.toml
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/peerwire.conf
    systemctl enable --now peerwire.socket peerwire.service

Checks
------

The layer passes oelint-adv for both releases with no finding at all, errors, warnings or
information (the project's CI runs this from the layer's directory, for each release):

    oelint-adv --quiet --mode all --release wrynose conf/layer.conf \
        recipes-peerwire/peerwire/*.bb recipes-peerwire/peerwire/*.inc

Rules suppressed, each with a `# nooelint:` comment on the line before the one it is about:

- oelint.vars.homepageping (peerwire.inc, warning): it fetches HOMEPAGE over the network at
  lint time. HOMEPAGE is the repository URL of peerwire's Cargo.toml, which is not a public
  web page, and the lint must not depend on a web server being reachable.
- oelint.var.bbclassextend (both recipes, information): the recipes build programs for the
  device only; no -native or nativesdk variant of them is of use.
- oelint.var.suggestedvar.BUGTRACKER (both recipes, information): peerwire has no public
  bug tracker whose address could be given.
- oelint.task.noanonpython (peerwire.inc, warning): the Rust version check must run at parse
  time to skip the recipes (SkipRecipe), which only anonymous python can do.

The project's CI also runs `cargo xtask yocto --bitbake`: for scarthgap and wrynose, BitBake
and openembedded-core (MACHINE qemux86-64, DISTRO nodistro, systemd and ptest; and a
configuration without systemd), offline (BB_NO_NETWORK = "1", DL_DIR filled beforehand):
show-layers, show-recipes, bitbake -p, bitbake -e and bitbake -g of each recipe, do_fetch and
do_unpack, the md5 of every licence file in the unpacked tree, and cargo metadata --frozen
over the unpacked crates. Any BitBake ERROR or WARNING fails it except these, which only the
missing network causes (uninative's tarball cannot be downloaded):

@OFFLINE_WARNINGS@

License
-------

Apache-2.0, like peerwire.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Generates the layer into a new temporary directory.
    fn generate() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        run(&root(), Some(tmp.path().to_owned())).unwrap();
        let layer = tmp.path().join(LAYER);
        (tmp, layer)
    }

    fn recipes_text(layer: &Path) -> String {
        let dir = layer.join(RECIPES);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// Every crates.io package of Cargo.lock is in the .inc with its checksum, and nothing
    /// else is. Both sides are read here on their own, not through the generator's types.
    #[test]
    fn crates_inc_lists_every_crates_io_package_of_cargo_lock() {
        let (_tmp, layer) = generate();
        let inc = std::fs::read_to_string(layer.join(RECIPES).join("peerwire-crates.inc")).unwrap();

        // name;name=KEY -> (name, version), KEY -> sha256
        let mut uris = BTreeMap::new();
        let mut sums = BTreeMap::new();
        for line in inc.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("crate://crates.io/") {
                let uri = rest.trim_end_matches('\\').trim();
                let (path, key) = uri.split_once(";name=").unwrap();
                let (name, version) = path.split_once('/').unwrap();
                assert_eq!(key, format!("{name}-{version}"));
                assert!(
                    uris.insert(key.to_owned(), (name.to_owned(), version.to_owned()))
                        .is_none()
                );
            } else if let Some(rest) = line.strip_prefix("SRC_URI[") {
                let (key, value) = rest.split_once(".sha256sum] = ").unwrap();
                assert!(
                    sums.insert(key.to_owned(), value.trim_matches('"').to_owned())
                        .is_none()
                );
            }
        }

        let lock: toml::Value = std::fs::read_to_string(root().join("Cargo.lock"))
            .unwrap()
            .parse::<toml::Table>()
            .unwrap()
            .into();
        let mut expected = BTreeMap::new();
        for package in lock["package"].as_array().unwrap() {
            let Some(source) = package.get("source").and_then(|s| s.as_str()) else {
                continue;
            };
            assert!(source.contains("crates.io"), "unexpected source {source}");
            let name = package["name"].as_str().unwrap();
            let version = package["version"].as_str().unwrap();
            let checksum = package["checksum"].as_str().unwrap();
            expected.insert(format!("{name}-{version}"), checksum.to_owned());
            assert_eq!(
                uris.get(&format!("{name}-{version}")),
                Some(&(name.to_owned(), version.to_owned())),
                "{name} {version} is not fetched by the .inc"
            );
        }
        assert!(expected.len() > 100, "only {} crates", expected.len());
        assert_eq!(
            sums, expected,
            "the .inc's checksums differ from Cargo.lock"
        );
        assert_eq!(
            uris.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
    }

    /// The tarball is the same bytes from two runs, holds exactly the layer's files, and
    /// carries no time, owner or host detail.
    #[test]
    fn tarball_is_reproducible() {
        let (tmp_a, layer_a) = generate();
        let (tmp_b, _) = generate();
        let name = format!("{LAYER}.tar.gz");
        let a = std::fs::read(tmp_a.path().join(&name)).unwrap();
        let b = std::fs::read(tmp_b.path().join(&name)).unwrap();
        assert!(a == b, "two runs gave different tarballs");

        // gzip header: magic, deflate, no FNAME/FCOMMENT/FEXTRA, MTIME 0.
        assert_eq!(&a[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(
            a[3] & 0b1_1100,
            0,
            "gzip header carries a name, comment or extra"
        );
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip header carries a time");

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
        let mut paths = vec![];
        let mut files = 0;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            assert_eq!(header.uid().unwrap(), 0);
            assert_eq!(header.gid().unwrap(), 0);
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if header.entry_type().is_dir() {
                assert_eq!(header.mode().unwrap(), 0o755, "{path}");
            } else {
                assert_eq!(header.mode().unwrap(), 0o644, "{path}");
                let mut content = vec![];
                std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
                let on_disk = layer_a
                    .parent()
                    .unwrap()
                    .join(&path)
                    .canonicalize()
                    .unwrap();
                assert_eq!(content, std::fs::read(on_disk).unwrap(), "{path}");
                files += 1;
            }
            paths.push(path);
        }
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "entries are not sorted");
        assert!(paths.iter().all(|p| p.starts_with("meta-peerwire/")));
        let mut on_disk = 0;
        let mut stack = vec![layer_a];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk += 1;
                }
            }
        }
        assert_eq!(files, on_disk, "the tarball and the directory differ");
    }

    /// Each recipe's LIC_FILES_CHKSUM starts with the md5 of LICENSE (the Apache-2.0 text of
    /// Cargo.toml's licence), then lists licence files of crates of Cargo.lock, and LICENSE
    /// names the licences of the crates the binary links; the server links more than the
    /// client.
    #[test]
    fn licences_come_from_the_linked_crates() {
        let (_tmp, layer) = generate();
        let license = std::fs::read(root().join("LICENSE")).unwrap();
        let md5 = hex(&Md5::digest(&license));
        let license = String::from_utf8(license).unwrap();
        assert!(license.contains("Apache License") && license.contains("Version 2.0"));
        let lock: toml::Table = std::fs::read_to_string(root().join("Cargo.lock"))
            .unwrap()
            .parse()
            .unwrap();
        let locked: Vec<String> = lock["package"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}-{}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                )
            })
            .collect();
        let mut counts = vec![];
        for (recipe, _, _) in RECIPE_PACKAGES {
            let text =
                std::fs::read_to_string(layer.join(RECIPES).join(format!("{recipe}_git.bb")))
                    .unwrap();
            let start = text.find("LIC_FILES_CHKSUM = \"").unwrap();
            let value = &text[start..];
            let value = &value[..value[20..].find('"').unwrap() + 20];
            let entries: Vec<&str> = value
                .split_whitespace()
                .filter(|w| w.starts_with("file://") || w.starts_with("\"file://"))
                .collect();
            assert_eq!(
                entries[0].trim_start_matches('"'),
                format!("file://LICENSE;md5={md5}")
            );
            for entry in &entries[1..] {
                let path = entry
                    .strip_prefix("file://${CARGO_VENDORING_DIRECTORY}/")
                    .unwrap();
                let (dir, rest) = path.split_once('/').unwrap();
                let (_, sum) = rest.split_once(";md5=").unwrap();
                assert_eq!(sum.len(), 32, "{entry}");
                assert!(
                    locked.iter().any(|l| l == dir),
                    "{dir} is not in Cargo.lock"
                );
            }
            let licence = text
                .lines()
                .find_map(|l| l.strip_prefix("LICENSE = "))
                .unwrap();
            for id in ["Apache-2.0", "MIT", "Apache-2.0 | MIT"] {
                assert!(licence.contains(id), "{recipe}: {licence} lacks {id}");
            }
            counts.push(entries.len());
        }
        assert!(counts[0] > counts[1] && counts[1] > 50, "{counts:?}");
    }

    /// The server recipe fetches each deploy/ file from files/, whose content is deploy/'s,
    /// installs it where systemd looks for it, and creates the unit's service user.
    #[test]
    fn server_recipe_installs_the_deploy_files() {
        let (_tmp, layer) = generate();
        let dir = layer.join(RECIPES);
        let recipe = std::fs::read_to_string(dir.join("peerwire_git.bb")).unwrap();
        for (path, install_dir) in DEPLOY_FILES {
            assert_eq!(
                std::fs::read(dir.join("files").join(path)).unwrap(),
                std::fs::read(root().join("deploy").join(path)).unwrap(),
                "files/{path} differs from deploy/{path}"
            );
            assert!(
                recipe.contains(&format!("file://{path} ")),
                "{path} not fetched"
            );
            let name = path.rsplit('/').next().unwrap();
            let install = format!(
                "install -m 0644 ${{PEERWIRE_FILES_DIR}}/{path} ${{D}}{install_dir}/{name}"
            );
            assert!(recipe.contains(&install), "no `{install}`");
        }
        assert!(recipe.contains("${systemd_system_unitdir}"));
        assert!(recipe.contains("${nonarch_libdir}/tmpfiles.d/peerwire.conf"));
        assert!(recipe.contains("SYSTEMD_SERVICE:${PN} = \"peerwire.socket peerwire.service\""));

        let unit = std::fs::read_to_string(root().join("deploy/systemd/peerwire.service")).unwrap();
        let user = unit.lines().find_map(|l| l.strip_prefix("User=")).unwrap();
        let param = recipe
            .lines()
            .find(|l| l.starts_with("USERADD_PARAM:${PN} = "))
            .unwrap();
        for option in ["--system", "--no-create-home", "/nologin", "--user-group"] {
            assert!(param.contains(option), "USERADD_PARAM lacks {option}");
        }
        assert!(param.ends_with(&format!(" {user}\"")), "{param}");
    }

    /// SRCREV is the commit the layer was made from, and the build keeps the project's
    /// hardening flags.
    #[test]
    fn recipes_build_head_with_the_project_hardening() {
        let (_tmp, layer) = generate();
        let text = recipes_text(&layer);
        let head = git(&root(), &["rev-parse", "HEAD"]).unwrap();
        assert!(text.contains(&format!("PEERWIRE_SRCREV ?= \"{head}\"")));
        assert!(text.contains("SRCREV = \"${PEERWIRE_SRCREV}\""));
        assert!(text.contains("PV = \"0.1.0+git\""));
        let rustflags = text
            .lines()
            .find(|l| l.starts_with("RUSTFLAGS += "))
            .unwrap();
        for flag in [
            "-Wl,-z,relro,-z,now",
            "-Wl,-z,noexecstack",
            "overflow-checks=on",
        ] {
            assert!(rustflags.contains(flag), "RUSTFLAGS lacks {flag}");
        }
        let conf = std::fs::read_to_string(layer.join("conf/layer.conf")).unwrap();
        assert!(conf.contains("LAYERDEPENDS_peerwire = \"core\""));
        assert!(conf.contains("LAYERSERIES_COMPAT_peerwire = \"scarthgap wrynose\""));
    }

    /// What Cargo.lock may not contain for the layer, and what may not reach a recipe.
    #[test]
    fn server_recipe_packages_the_c_library() {
        let (_tmp, layer) = generate();
        let recipe = std::fs::read_to_string(layer.join(RECIPES).join("peerwire_git.bb")).unwrap();
        for line in [
            "PEERWIRE_CARGO_PACKAGES = \"-p peerwire-cli --bin peerwire -p peerwire-ffi --lib\"",
            "${D}${libdir}/libpeerwire.so.0",
            "ln -sf libpeerwire.so.0 ${D}${libdir}/libpeerwire.so",
            "${S}/include/peerwire.h ${D}${includedir}/peerwire.h",
            "FILES:${PN}-dev += \"${includedir}/peerwire.h ${libdir}/libpeerwire.so \
             ${libdir}/pkgconfig/peerwire.pc ${libdir}/cmake/peerwire\"",
            "FILES:${PN}-staticdev += \"${libdir}/libpeerwire.a\"",
            "and the library of peerwire-ffi links on Linux",
        ] {
            assert!(recipe.contains(line), "missing {line:?} in\n{recipe}");
        }
        assert!(
            recipe.contains(" ${libdir}/libpeerwire.so.0\"\n"),
            "{recipe}"
        );
        // The templates it fills exist, and each placeholder the sed lines replace is in them.
        for t in [
            "peerwire.pc.in",
            "peerwireConfig.cmake.in",
            "peerwireConfigVersion.cmake.in",
        ] {
            let text =
                std::fs::read_to_string(root().join("crates/peerwire-ffi/pkg").join(t)).unwrap();
            assert!(text.contains('@'), "{t}");
            for (start, _) in text.match_indices('@') {
                let key: String = text[start + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if text[start..].starts_with(&format!("@{key}@")) && !key.is_empty() {
                    let first = key.chars().next().unwrap();
                    let pattern = format!("@[{first}]{}@", &key[1..]);
                    assert!(
                        recipe.contains(&pattern),
                        "{t}: @{key}@ is not filled by the recipe"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_inputs_the_layer_cannot_express() {
        let package = |source: &str| -> toml::Table {
            format!("[[package]]\nname = \"x\"\nversion = \"1.0.0\"\nsource = \"{source}\"\n")
                .parse()
                .unwrap()
        };
        let git_dep = package("git+https://example.invalid/x#0123");
        let err = crates_io_packages(&git_dep).unwrap_err().to_string();
        assert!(err.contains("crates.io packages only"), "{err}");
        let no_checksum = package("registry+https://github.com/rust-lang/crates.io-index");
        let err = crates_io_packages(&no_checksum).unwrap_err().to_string();
        assert!(err.contains("has no checksum"), "{err}");
        assert!(plain("flag", "-C link-arg=x").is_err());
        assert!(plain("flag", "${EVIL}").is_err());
        assert_eq!(
            git_uri("https://example.invalid/peerwire/").unwrap(),
            "git://example.invalid/peerwire;protocol=https;branch=main"
        );
        assert!(git_uri("file:///tmp/x").is_err());
        assert!(fill("a @B@", &[]).is_err());
        assert!(service_user("User=peerwire\n", "u other - x /nonexistent -\n").is_err());
    }
}
