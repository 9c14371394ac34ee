//! `cargo xtask yocto --bitbake [--release R] [--oe-dir DIR]`: the generated layer under a
//! real BitBake and openembedded-core, offline, for each release it claims.
//!
//! The releases come as tarballs of bitbake and openembedded-core (`oe-RELEASE.tar.xz`) in
//! `--oe-dir`, `$PEERWIRE_OE_DIR`, or `../shared/yocto` next to the repository; a missing
//! tarball is an error, not a skip. Everything happens under `target/bitbake/`, as the user
//! `peerwire-bitbake` (created when run as root: BitBake refuses root). For each release:
//!
//! - configuration `systemd` (MACHINE qemux86-64, DISTRO nodistro, INIT_MANAGER systemd,
//!   ptest, BB_NO_NETWORK): `bitbake-layers show-layers`, `bitbake-layers show-recipes
//!   'peerwire*'`, `bitbake -p`, `bitbake -e` of each recipe with checks of SRC_URI, PV, S,
//!   DEPENDS, LICENSE, LIC_FILES_CHKSUM, SYSTEMD_SERVICE, USERADD_PARAM and RRECOMMENDS,
//!   `bitbake -g` of each recipe, `bitbake -c unpack` of both recipes with DL_DIR filled from
//!   cargo's cache (`cargo fetch --locked`) and the git source a bare clone of HEAD, then in each
//!   unpacked tree the md5 of every LIC_FILES_CHKSUM file and `cargo metadata --frozen` over the
//!   vendored crates;
//! - configuration `nosystemd` (INIT_MANAGER sysvinit): `bitbake -g peerwire-display-client`
//!   must resolve without the skipped peerwire, and `bitbake -b peerwire_git.bb` must report
//!   the skip;
//! - on a release whose Rust is older than the workspace's `rust-version` (scarthgap), the
//!   recipes must be skipped at parse time with the message that names the fix; the two
//!   configurations above then stand in for meta-lts-mixins with `PEERWIRE_RUST_VERSION`.
//!
//! Any BitBake ERROR or WARNING fails the check, except the ones of `OFFLINE_WARNINGS`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use md5::{Digest, Md5};

use crate::yocto::{self, LAYER, RECIPE_PACKAGES, RELEASES};

/// The user BitBake runs as when the check runs as root.
const BUILD_USER: &str = "peerwire-bitbake";

/// The warnings that only the missing network causes (the layer's README lists them).
pub(crate) const OFFLINE_WARNINGS: &[&str] = &[
    // uninative's tarball is downloaded on first use; offline, BitBake builds without it.
    "Disabling uninative as unable to fetch uninative tarball",
    "To build your own uninative loader, please bitbake uninative-tarball and set \
     UNINATIVE_TARBALL appropriately.",
];

pub(crate) struct Options {
    pub(crate) releases: Vec<String>,
    pub(crate) oe_dir: Option<PathBuf>,
}

impl Options {
    /// `--bitbake [--release R]... [--oe-dir DIR]` (the arguments after `yocto`).
    pub(crate) fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut releases = vec![];
        let mut oe_dir = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bitbake" => {}
                "--release" => {
                    let r = args.next().context("--release scarthgap|wrynose")?;
                    ensure!(
                        RELEASES.contains(&r.as_str()),
                        "--release {r}: the layer is for {}",
                        RELEASES.join(", ")
                    );
                    releases.push(r.clone());
                }
                "--oe-dir" => oe_dir = Some(args.next().context("--oe-dir DIR")?.into()),
                other => bail!("unknown argument {other:?}"),
            }
        }
        if releases.is_empty() {
            releases = RELEASES.iter().map(|r| r.to_string()).collect();
        }
        Ok(Self { releases, oe_dir })
    }
}

/// How commands reach BitBake: as `BUILD_USER` through runuser, or as the current user.
struct Runner {
    as_user: bool,
}

impl Runner {
    fn command(&self, dir: &Path, script: &str, release_dir: &Path) -> Command {
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            release_dir.join("bitbake/bin").display()
        );
        let mut cmd = if self.as_user {
            let mut c = Command::new("runuser");
            c.args(["-u", BUILD_USER, "--"]);
            c.arg("env");
            c
        } else {
            Command::new("env")
        };
        cmd.args([
            "-i",
            &format!("PATH={path}"),
            "LANG=en_US.UTF-8",
            "LC_ALL=en_US.UTF-8",
            &format!(
                "HOME={}",
                release_dir.parent().unwrap_or(dir).join("home").display()
            ),
            &format!("BBPATH={}", dir.display()),
            "bash",
            "-c",
            &format!("cd {} && {script}", dir.display()),
        ]);
        cmd
    }
}

/// What a BitBake command printed, and whether it succeeded.
struct Output {
    text: String,
    success: bool,
}

fn run_bitbake(
    runner: &Runner,
    build: &Path,
    release_dir: &Path,
    script: &str,
    times: &mut Vec<(String, f64)>,
) -> anyhow::Result<Output> {
    let start = Instant::now();
    eprintln!("==> [{}] {script}", build.display());
    let out = runner
        .command(build, script, release_dir)
        .output()
        .with_context(|| format!("running {script}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let secs = start.elapsed().as_secs_f64();
    eprintln!("<== {script} ({secs:.1}s): {}", out.status);
    times.push((script.to_owned(), secs));
    Ok(Output {
        text,
        success: out.status.success(),
    })
}

/// The ERROR and WARNING lines of BitBake's output that `OFFLINE_WARNINGS` does not allow.
fn unexpected_messages(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR:") || l.starts_with("WARNING:"))
        .filter(|l| !(l.starts_with("WARNING:") && OFFLINE_WARNINGS.iter().any(|w| l.contains(w))))
        .map(str::to_owned)
        .collect()
}

/// Runs `script`, which must succeed with no ERROR and no WARNING but the allowed ones.
fn clean(
    runner: &Runner,
    build: &Path,
    release_dir: &Path,
    script: &str,
    times: &mut Vec<(String, f64)>,
) -> anyhow::Result<String> {
    let out = run_bitbake(runner, build, release_dir, script, times)?;
    let bad = unexpected_messages(&out.text);
    if !out.success || !bad.is_empty() {
        let tail: Vec<&str> = out.text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} in {}: `{script}` {}:\n{}\n--- output (last 60 lines):\n{}",
            release_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            build.display(),
            if out.success { "succeeded" } else { "failed" },
            bad.join("\n"),
            tail.join("\n")
        );
    }
    Ok(out.text)
}

/// The variables of `bitbake -e` output: `NAME="value"` and `export NAME="value"`, values
/// continued over lines ending in `\`.
fn variables(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut vars = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, rest)) = line.split_once("=\"") else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.' | '+'))
        {
            continue;
        }
        let mut value = rest.to_owned();
        while value.ends_with('\\') {
            value.pop();
            match lines.next() {
                Some(next) => {
                    value.push('\n');
                    value.push_str(next);
                }
                None => break,
            }
        }
        let value = value.strip_suffix('"').unwrap_or(&value);
        vars.insert(
            name.to_owned(),
            value.replace("\\\"", "\"").replace("\\$", "$"),
        );
    }
    vars
}

fn var<'a>(
    vars: &'a std::collections::BTreeMap<String, String>,
    name: &str,
) -> anyhow::Result<&'a str> {
    vars.get(name)
        .map(String::as_str)
        .with_context(|| format!("bitbake -e has no {name}"))
}

fn words(value: &str) -> Vec<&str> {
    value.split_whitespace().filter(|w| *w != "\\").collect()
}

/// Command output, checked for success.
fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Everything the releases share: the layer, DL_DIR, the bare clone, the build user.
struct Setup {
    work: PathBuf,
    layer: PathBuf,
    downloads: PathBuf,
    git_uri: String,
    runner: Runner,
    rust_version: String,
    crates: usize,
}

fn setup(root: &Path) -> anyhow::Result<Setup> {
    let work = root.join("target/bitbake");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = work.canonicalize()?;

    // The build user's home (BitBake's HOME).
    std::fs::create_dir_all(work.join("home"))?;

    // The layer, as `cargo xtask yocto` makes it.
    yocto::run(root, Some(work.clone()))?;
    let layer = work.join(LAYER);

    // DL_DIR: every crate of Cargo.lock as the crate fetcher names it, NAME-VERSION.crate,
    // copied from cargo's cache; BitBake checks each against the sha256 of the recipes.
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let crates = yocto::lock_crates(root)?;
    for (name, version) in &crates {
        let to = downloads.join(format!("{name}-{version}.crate"));
        if !to.exists() {
            let from = crate::yocto_licences::crate_archive(name, version)?;
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }

    // The git source: a bare clone holding HEAD as main, the branch of the recipes' URI.
    let git = work.join("peerwire.git");
    if git.exists() {
        std::fs::remove_dir_all(&git)?;
    }
    sh(Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&git))?;
    sh(Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["push", "--quiet", "--force"])
        .arg(&git)
        .arg("HEAD:refs/heads/main"))?;
    let git_uri = format!("git://{};protocol=file;branch=main", git.display());

    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))?.parse()?;
    let rust_version = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("rust-version"))
        .and_then(toml::Value::as_str)
        .context("Cargo.toml has no workspace.package.rust-version")?
        .to_owned();

    let as_user = sh(Command::new("id").arg("-u"))? == "0";
    let user_missing = || {
        Command::new("id")
            .arg(BUILD_USER)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
    };
    if as_user && user_missing() {
        sh(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            BUILD_USER,
        ]))?;
    }
    Ok(Setup {
        work,
        layer,
        downloads,
        git_uri,
        runner: Runner { as_user },
        rust_version,
        crates: crates.len(),
    })
}

/// The tarball of `release`, unpacked into `work/RELEASE` once.
fn unpack_release(oe_dir: &Path, work: &Path, release: &str) -> anyhow::Result<PathBuf> {
    let tarball = oe_dir.join(format!("oe-{release}.tar.xz"));
    ensure!(
        tarball.is_file(),
        "{} is missing: the BitBake check needs bitbake and openembedded-core of {release} \
         there (see /work/shared/yocto/README.md; --oe-dir DIR or PEERWIRE_OE_DIR=DIR to use \
         another directory)",
        tarball.display()
    );
    let dir = work.join(release);
    if !dir.join("bitbake/bin/bitbake").is_file() || !dir.join("openembedded-core/meta").is_dir() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        sh(Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dir))?;
    }
    Ok(dir)
}

/// A build directory with its `local.conf` and `bblayers.conf`.
fn build_dir(
    setup: &Setup,
    release_dir: &Path,
    name: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let build = release_dir.join(name);
    std::fs::create_dir_all(build.join("conf"))?;
    let local = format!(
        "# Written by `cargo xtask yocto --bitbake`.\n\
         MACHINE = \"qemux86-64\"\n\
         DISTRO = \"nodistro\"\n\
         CONF_VERSION = \"2\"\n\
         BB_NO_NETWORK = \"1\"\n\
         DL_DIR = \"{}\"\n\
         PEERWIRE_GIT_URI = \"{}\"\n\
         {extra}",
        setup.downloads.display(),
        setup.git_uri
    );
    let layers = format!(
        "LCONF_VERSION = \"7\"\n\
         BBPATH = \"${{TOPDIR}}\"\n\
         BBFILES ?= \"\"\n\
         BBLAYERS = \"{} {}\"\n",
        release_dir.join("openembedded-core/meta").display(),
        setup.layer.display()
    );
    // A changed configuration reparses everything: keep the files as they are when equal.
    for (file, text) in [("local.conf", local), ("bblayers.conf", layers)] {
        let path = build.join("conf").join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, text)?;
        }
    }
    Ok(build)
}

/// Gives the work tree to the build user, and checks that it can reach it.
fn hand_over(setup: &Setup) -> anyhow::Result<()> {
    if !setup.runner.as_user {
        return Ok(());
    }
    sh(Command::new("chown")
        .args(["-R", &format!("{BUILD_USER}:{BUILD_USER}")])
        .arg(&setup.work))?;
    let probe = setup.layer.join("conf/layer.conf");
    let ok = Command::new("runuser")
        .args(["-u", BUILD_USER, "--", "test", "-r"])
        .arg(&probe)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ensure!(
        ok,
        "{BUILD_USER} cannot read {}: every directory above it must be searchable by others \
         (chmod o+x)",
        probe.display()
    );
    Ok(())
}

pub(crate) fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    let total = Instant::now();
    let oe_dir = match (&options.oe_dir, std::env::var_os("PEERWIRE_OE_DIR")) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => root.join("../shared/yocto"),
    };
    ensure!(
        oe_dir.is_dir(),
        "{} does not exist: the BitBake check needs the bitbake and openembedded-core tarballs \
         (--oe-dir DIR or PEERWIRE_OE_DIR=DIR)",
        oe_dir.display()
    );
    let setup = setup(root)?;
    let mut times = vec![];
    for release in &options.releases {
        let start = Instant::now();
        check_release(&setup, &oe_dir, release, &mut times)?;
        eprintln!(
            "xtask yocto --bitbake: {release} passed ({:.0}s)",
            start.elapsed().as_secs_f64()
        );
    }
    eprintln!("xtask yocto --bitbake: times");
    for (script, secs) in &times {
        eprintln!("  {secs:7.1}s  {script}");
    }
    eprintln!(
        "xtask yocto --bitbake: {} passed in {:.0}s",
        options.releases.join(", "),
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the Rust that `release` resolves by default is older than the workspace needs.
fn default_rust_too_old(release_dir: &Path, wanted: &str) -> anyhow::Result<Option<String>> {
    let tcmode = release_dir.join("openembedded-core/meta/conf/distro/include/tcmode-default.inc");
    let text = std::fs::read_to_string(&tcmode)
        .with_context(|| format!("reading {}", tcmode.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("RUSTVERSION ?= "))
        .context("tcmode-default.inc sets no RUSTVERSION")?
        .trim_matches(|c| c == '"' || c == '%')
        .to_owned();
    let parse = |v: &str| -> Vec<u64> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    Ok((parse(&version) < parse(wanted)).then_some(version))
}

fn check_release(
    setup: &Setup,
    oe_dir: &Path,
    release: &str,
    times: &mut Vec<(String, f64)>,
) -> anyhow::Result<()> {
    let release_dir = unpack_release(oe_dir, &setup.work, release)?;
    let old_rust = default_rust_too_old(&release_dir, &setup.rust_version)?;
    // With an old default Rust, the configurations stand in for meta-lts-mixins.
    let newer_rust = match &old_rust {
        Some(_) => format!(
            "# Stands in for meta-lts-mixins (scarthgap/rust), which is not available offline.\n\
             PEERWIRE_RUST_VERSION = \"{}\"\n",
            setup.rust_version
        ),
        None => String::new(),
    };
    let systemd = build_dir(
        setup,
        &release_dir,
        "build-systemd",
        &format!("INIT_MANAGER = \"systemd\"\nDISTRO_FEATURES:append = \" ptest\"\n{newer_rust}"),
    )?;
    let nosystemd = build_dir(
        setup,
        &release_dir,
        "build-nosystemd",
        &format!("INIT_MANAGER = \"sysvinit\"\n{newer_rust}"),
    )?;
    let stock = match old_rust {
        Some(_) => Some(build_dir(
            setup,
            &release_dir,
            "build-stock",
            "INIT_MANAGER = \"systemd\"\n",
        )?),
        None => None,
    };
    hand_over(setup)?;
    let r = &setup.runner;
    let rd = release_dir.as_path();
    let recipes = setup.layer.join("recipes-peerwire/peerwire");

    // The recipes are skipped at parse time when the Rust is too old, with the fix named.
    if let (Some(stock), Some(version)) = (&stock, &old_rust) {
        for (recipe, _, _) in RECIPE_PACKAGES {
            let file = recipes.join(format!("{recipe}_git.bb"));
            let out = run_bitbake(
                r,
                stock,
                rd,
                &format!("bitbake -b {} -c listtasks", file.display()),
                times,
            )?;
            ensure!(
                !out.success
                    && out.text.contains(&format!(
                        "was skipped: peerwire needs Rust {} or newer",
                        setup.rust_version
                    ))
                    && out
                        .text
                        .contains(&format!("this build uses Rust {version}"))
                    && out.text.contains("meta-lts-mixins"),
                "{release}: {recipe} was not skipped for its Rust {version}:\n{}",
                out.text
            );
        }
    }

    let layers = clean(r, &systemd, rd, "bitbake-layers show-layers", times)?;
    ensure!(
        layers.contains(&setup.layer.display().to_string())
            && layers.lines().any(|l| l.starts_with("core ")),
        "{release}: show-layers lacks core or {LAYER}:\n{layers}"
    );
    let shown = clean(
        r,
        &systemd,
        rd,
        "bitbake-layers show-recipes 'peerwire*'",
        times,
    )?;
    for (recipe, _, _) in RECIPE_PACKAGES {
        ensure!(
            shown.lines().any(|l| l.trim_end() == format!("{recipe}:")),
            "{release}: show-recipes does not list {recipe}:\n{shown}"
        );
    }
    clean(r, &systemd, rd, "bitbake -p", times)?;

    let mut sources = vec![];
    for (recipe, _, _) in RECIPE_PACKAGES {
        let env = clean(r, &systemd, rd, &format!("bitbake -e {recipe}"), times)?;
        let vars = variables(&env);
        check_variables(setup, release, recipe, &vars, true)?;
        let pns = task_graph(r, &systemd, rd, recipe, times)?;
        if *recipe != "peerwire" {
            ensure!(
                pns.iter().any(|p| p == "peerwire"),
                "{release}: with systemd, the task graph of {recipe} lacks peerwire (RRECOMMENDS)"
            );
        }
        let s = PathBuf::from(var(&vars, "S")?);
        let vendor = PathBuf::from(var(&vars, "CARGO_VENDORING_DIRECTORY")?);
        let lic = var(&vars, "LIC_FILES_CHKSUM")?.to_owned();
        sources.push((recipe.to_string(), s, vendor, lic));
    }

    let names: Vec<&str> = RECIPE_PACKAGES.iter().map(|(r, _, _)| *r).collect();
    clean(
        r,
        &systemd,
        rd,
        &format!("bitbake -c unpack {}", names.join(" ")),
        times,
    )?;
    for (recipe, s, vendor, lic) in &sources {
        check_unpacked(setup, release, recipe, s, vendor, lic)?;
    }

    // Without systemd: peerwire is skipped, and the display client still resolves, without
    // it. One full parse: the global environment needs none, -b parses one recipe.
    let env = clean(r, &nosystemd, rd, "bitbake -e", times)?;
    ensure!(
        !words(var(&variables(&env), "DISTRO_FEATURES")?).contains(&"systemd"),
        "{release}: the nosystemd configuration has systemd in DISTRO_FEATURES"
    );
    let pns = task_graph(r, &nosystemd, rd, "peerwire-display-client", times)?;
    ensure!(
        !pns.iter().any(|p| p == "peerwire"),
        "{release}: without systemd, the task graph of peerwire-display-client holds peerwire"
    );
    let file = recipes.join("peerwire_git.bb");
    let skipped = run_bitbake(
        r,
        &nosystemd,
        rd,
        &format!("bitbake -b {} -c listtasks", file.display()),
        times,
    )?;
    ensure!(
        !skipped.success
            && skipped
                .text
                .lines()
                .any(|l| l.contains("was skipped") && l.contains("systemd")),
        "{release}: without systemd, peerwire was not skipped:\n{}",
        skipped.text
    );
    Ok(())
}

/// `bitbake -g RECIPE`: the recipes of its task graph (`pn-buildlist`), which must hold the
/// recipe, its build dependencies and the Rust toolchain.
fn task_graph(
    r: &Runner,
    build: &Path,
    rd: &Path,
    recipe: &str,
    times: &mut Vec<(String, f64)>,
) -> anyhow::Result<Vec<String>> {
    let list = build.join("pn-buildlist");
    if list.exists() {
        std::fs::remove_file(&list)?;
    }
    clean(r, build, rd, &format!("bitbake -g {recipe}"), times)?;
    let pns: Vec<String> = std::fs::read_to_string(&list)
        .with_context(|| format!("bitbake -g {recipe} wrote no pn-buildlist"))?
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    for needed in [recipe, "openssl", "cargo-native", "rust-native"] {
        ensure!(
            pns.iter().any(|p| p == needed),
            "{}: the task graph of {recipe} lacks {needed}",
            rd.display()
        );
    }
    Ok(pns)
}

/// The values of `bitbake -e RECIPE` that matter.
fn check_variables(
    setup: &Setup,
    release: &str,
    recipe: &str,
    vars: &std::collections::BTreeMap<String, String>,
    systemd: bool,
) -> anyhow::Result<()> {
    let ctx = |what: &str| format!("{release}: {recipe}: {what}");
    let version = var(vars, "PV")?;
    ensure!(
        version.ends_with("+git") && version.len() > 4,
        "{}",
        ctx(&format!("PV {version:?} is not VERSION+git"))
    );
    let src_uri = words(var(vars, "SRC_URI")?);
    ensure!(
        src_uri
            .first()
            .is_some_and(|u| u.starts_with(&setup.git_uri) && u.contains(";destsuffix=")),
        "{}",
        ctx(&format!("SRC_URI does not start with {}", setup.git_uri))
    );
    let crates = src_uri.iter().filter(|u| u.starts_with("crate://")).count();
    ensure!(
        crates == setup.crates,
        "{}",
        ctx(&format!(
            "SRC_URI has {crates} crates, Cargo.lock {}",
            setup.crates
        ))
    );
    let s = var(vars, "S")?;
    let bp = var(vars, "BP")?;
    let unpackdir = vars
        .get("UNPACKDIR")
        .map(String::as_str)
        .unwrap_or(var(vars, "WORKDIR")?);
    ensure!(
        s == format!("{unpackdir}/{bp}"),
        "{}",
        ctx(&format!("S is {s}, not {unpackdir}/{bp}"))
    );
    let srcrev = var(vars, "SRCREV")?;
    ensure!(
        srcrev.len() == 40 && srcrev == var(vars, "PEERWIRE_SRCREV")?,
        "{}",
        ctx(&format!("SRCREV {srcrev:?} is not PEERWIRE_SRCREV"))
    );
    let depends = words(var(vars, "DEPENDS")?);
    for needed in ["openssl", "cargo-native"] {
        ensure!(
            depends.contains(&needed),
            "{}",
            ctx(&format!("DEPENDS lacks {needed}: {depends:?}"))
        );
    }
    let licence = var(vars, "LICENSE")?;
    for needed in ["Apache-2.0", "MIT"] {
        ensure!(
            licence.contains(needed),
            "{}",
            ctx(&format!("LICENSE {licence:?} lacks {needed}"))
        );
    }
    let rrecommends = vars
        .get(&format!("RRECOMMENDS:{recipe}"))
        .map(String::as_str)
        .unwrap_or_default();
    if recipe == "peerwire" {
        let service = var(vars, "SYSTEMD_SERVICE:peerwire")?;
        ensure!(
            service == "peerwire.socket peerwire.service",
            "{}",
            ctx(&format!("SYSTEMD_SERVICE is {service:?}"))
        );
        let param = var(vars, "USERADD_PARAM:peerwire")?;
        ensure!(
            param.contains("--system") && param.trim_end().ends_with(" peerwire"),
            "{}",
            ctx(&format!("USERADD_PARAM is {param:?}"))
        );
    } else {
        ensure!(
            !vars.contains_key(&format!("SYSTEMD_SERVICE:{recipe}")),
            "{}",
            ctx("has a SYSTEMD_SERVICE")
        );
        ensure!(
            words(rrecommends).contains(&"peerwire") == systemd,
            "{}",
            ctx(&format!(
                "RRECOMMENDS {rrecommends:?} with systemd {systemd}"
            ))
        );
    }
    Ok(())
}

/// After `do_unpack`: every licence file has its md5, and cargo resolves the workspace from
/// the vendored crates alone.
fn check_unpacked(
    setup: &Setup,
    release: &str,
    recipe: &str,
    s: &Path,
    vendor: &Path,
    lic_files_chksum: &str,
) -> anyhow::Result<()> {
    let mut checked = 0;
    for entry in words(lic_files_chksum) {
        let rest = entry
            .strip_prefix("file://")
            .with_context(|| format!("{recipe}: LIC_FILES_CHKSUM entry {entry:?}"))?;
        let (path, params) = rest.split_once(';').unwrap_or((rest, ""));
        let md5 = params
            .split(';')
            .find_map(|p| p.strip_prefix("md5="))
            .with_context(|| format!("{recipe}: {entry:?} has no md5"))?;
        let file = s.join(path);
        let data = std::fs::read(&file)
            .with_context(|| format!("{release}: {recipe}: reading {}", file.display()))?;
        ensure!(
            yocto::hex(&Md5::digest(&data)) == md5,
            "{release}: {recipe}: the md5 of {} is not {md5}",
            file.display()
        );
        checked += 1;
    }
    ensure!(
        checked > 1,
        "{release}: {recipe}: LIC_FILES_CHKSUM has {checked} file"
    );

    // cargo's view of the unpacked tree, with only the crates the fetcher unpacked.
    let cargo_home = setup.work.join(format!("cargo-home-{release}-{recipe}"));
    std::fs::create_dir_all(&cargo_home)?;
    std::fs::write(
        cargo_home.join("config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"bitbake\"\n\n[source.bitbake]\ndirectory = \"{}\"\n",
            vendor.display()
        ),
    )?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata = sh(Command::new(cargo)
        .current_dir(s)
        .env("CARGO_HOME", &cargo_home)
        .args(["metadata", "--frozen", "--format-version", "1"]))?;
    let packages = metadata.matches("\"manifest_path\"").count();
    ensure!(
        packages > setup.crates,
        "{release}: {recipe}: cargo metadata lists {packages} packages"
    );
    eprintln!(
        "    {release} {recipe}: {checked} licence files match, cargo metadata --frozen resolves \
         {packages} packages in {}",
        s.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitbake_env_output_is_parsed() {
        let text = "#\n# $PV\nPV=\"0.1.0+git\"\nexport S=\"/w/peerwire-0.1.0+git\"\n\
                    SRC_URI=\"git://x;protocol=file \\\n    crate://crates.io/a/1.0 \\\n\"\n\
                    SYSTEMD_SERVICE:peerwire=\"a b\"\ndo_x() {\n  FOO=\"no\"\n}\n";
        let vars = variables(text);
        assert_eq!(vars["PV"], "0.1.0+git");
        assert_eq!(vars["S"], "/w/peerwire-0.1.0+git");
        assert_eq!(
            words(&vars["SRC_URI"]),
            vec!["git://x;protocol=file", "crate://crates.io/a/1.0"]
        );
        assert_eq!(vars["SYSTEMD_SERVICE:peerwire"], "a b");
    }

    #[test]
    fn only_offline_warnings_pass() {
        let text = "NOTE: x\nWARNING: Disabling uninative as unable to fetch uninative tarball: x\n\
                    WARNING: something else\nERROR: broken\n";
        assert_eq!(
            unexpected_messages(text),
            vec!["WARNING: something else", "ERROR: broken"]
        );
        assert!(unexpected_messages("NOTE: fine\n").is_empty());
    }

    #[test]
    fn options() {
        let args: Vec<String> = ["--bitbake", "--release", "wrynose", "--oe-dir", "/x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&args).unwrap();
        assert_eq!(o.releases, vec!["wrynose"]);
        assert_eq!(o.oe_dir, Some(PathBuf::from("/x")));
        assert_eq!(
            Options::parse(&["--bitbake".into()]).unwrap().releases,
            vec!["scarthgap", "wrynose"]
        );
        assert!(Options::parse(&["--release".into(), "kirkstone".into()]).is_err());
    }
}
