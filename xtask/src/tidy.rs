//! Repository rules, checked as tests (run by `cargo test --workspace`).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn library_sources() -> Vec<(PathBuf, String)> {
    let mut files = vec![];
    for dir in ["crates", "examples"] {
        rust_files(&root().join(dir), &mut files);
    }
    files
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "src"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (p, text)
        })
        .collect()
}

/// Every library crate root forbids unsafe code, except peerwire-security, which denies it
/// crate-wide and may allow it only in the module that makes raw socket calls, and the
/// renderer, which denies it crate-wide and allows it only in `src/gpu/` (GL and EGL are FFI).
#[test]
fn unsafe_is_forbidden_outside_the_security_crate() {
    for crate_dir in [
        "peerwire-proto",
        "peerwire-transport",
        "peerwire-server",
        "peerwire-client",
    ] {
        let lib = root().join("crates").join(crate_dir).join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{} must forbid unsafe code",
            lib.display()
        );
    }
    let lib = root().join("crates/peerwire-security/src/lib.rs");
    assert!(
        std::fs::read_to_string(lib)
            .unwrap()
            .contains("#![deny(unsafe_code)]")
    );
    let renderer = root().join("examples/renderer/src/lib.rs");
    assert!(
        std::fs::read_to_string(renderer)
            .unwrap()
            .contains("#![deny(unsafe_code)]")
    );
    for (path, text) in library_sources() {
        // The modules allowed unsafe: the security crate's raw socket calls, and the renderer's
        // GL and EGL calls (FFI: glow, khronos-egl, glutin). Every unsafe block carries a
        // SAFETY comment.
        if path.ends_with("crates/peerwire-security/src/sys.rs")
            || path.starts_with(root().join("examples/renderer/src/gpu"))
        {
            assert_eq!(
                text.matches("unsafe {").count(),
                text.matches("// SAFETY:").count(),
                "{}: every unsafe block needs a // SAFETY: comment",
                path.display()
            );
            continue;
        }
        assert!(!text.contains("unsafe {"), "{} uses unsafe", path.display());
        assert!(
            !text.contains("allow(unsafe_code)"),
            "{} allows unsafe code",
            path.display()
        );
    }
}

/// Every queue is bounded (R4): no unbounded channel anywhere in library code.
#[test]
fn no_unbounded_channels() {
    for (path, text) in library_sources() {
        assert!(
            !text.contains("unbounded_channel"),
            "{} uses an unbounded channel",
            path.display()
        );
    }
}

/// The protocol crate stays sans-IO: no sockets, no runtime, no clock, in any file (the runtime
/// code is `peerwire-transport`'s), and no runtime among its dependencies.
#[test]
fn protocol_crate_does_no_io() {
    let manifest =
        std::fs::read_to_string(root().join("crates/peerwire-proto/Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("tokio"),
        "peerwire-proto must not depend on tokio or tokio-util"
    );
    let dir = root().join("crates/peerwire-proto/src");
    let mut files = vec![];
    rust_files(&dir, &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "tokio::",
            "tokio_util",
            "std::net",
            "Instant::now",
            "SystemTime",
            "tokio::spawn",
            "std::fs",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", path.display());
        }
    }
}

/// Every crate opts into the workspace lints (the panic policy lives there).
#[test]
fn every_crate_uses_workspace_lints() {
    let mut manifests = vec![
        root().join("examples/Cargo.toml"),
        root().join("xtask/Cargo.toml"),
    ];
    for entry in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        manifests.push(entry.path().join("Cargo.toml"));
    }
    for m in manifests {
        let text = std::fs::read_to_string(&m).unwrap();
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{} must use the workspace lints",
            m.display()
        );
    }
    let root_manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for lint in [
        "unwrap_used = \"deny\"",
        "expect_used = \"deny\"",
        "panic = \"deny\"",
        "await_holding_lock = \"deny\"",
    ] {
        assert!(
            root_manifest.contains(lint),
            "workspace lints must include {lint}"
        );
    }
}

/// The threat model has a row for every requirement ID.
#[test]
fn threat_model_covers_every_requirement() {
    let text = std::fs::read_to_string(root().join("docs/threat-model.md")).unwrap();
    let ids = (1..=16)
        .map(|i| format!("R{i}"))
        .chain((1..=9).map(|i| format!("D{i}")));
    for id in ids {
        assert!(
            text.contains(&format!("| {id} |")),
            "docs/threat-model.md has no row for {id}"
        );
    }
}

/// The README's test command is what CI runs.
#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(readme.contains("cargo xtask ci"));
    assert!(ci.contains("cargo xtask ci"));
    assert!(readme.contains("cargo run --release -p peerwire-cli -- demo"));
}

/// The systemd unit is valid: `systemd-analyze verify` on a copy whose ExecStart points at an
/// executable that exists here (verify checks it), with no output at all (verify exits 0 on
/// mere warnings).
#[test]
fn systemd_unit_verifies() {
    let dir = std::env::temp_dir().join(format!("peerwire-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = std::fs::read_to_string(root().join("deploy/systemd/peerwire.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/peerwire "));
    std::fs::write(
        dir.join("peerwire.service"),
        unit.replace("ExecStart=/usr/bin/peerwire ", "ExecStart=/bin/true "),
    )
    .unwrap();
    std::fs::copy(
        root().join("deploy/systemd/peerwire.socket"),
        dir.join("peerwire.socket"),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("peerwire.service"))
        .arg(dir.join("peerwire.socket"))
        .output()
        .expect("systemd-analyze is installed (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}

/// `systemd-analyze security --offline=true` rates the unit 1.0 or lower ("SAFE").
#[test]
fn systemd_unit_exposure_is_at_most_one() {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(root().join("deploy/systemd/peerwire.service"))
        .output()
        .expect("systemd-analyze is installed (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for peerwire.service"))
        .unwrap_or_else(|| panic!("no overall exposure line in: {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the figure in {line:?}"));
    assert!(score <= 1.0, "exposure {score} > 1.0: {line}");
}

/// The unit keeps the directives the threat model relies on.
#[test]
fn systemd_unit_keeps_its_hardening() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/peerwire.service")).unwrap();
    for directive in [
        "User=peerwire",
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "UMask=0077",
        "RuntimeDirectoryMode=0700",
        "LoadCredentialEncrypted=",
        "ProtectSystem=strict",
        "SystemCallFilter=",
    ] {
        let present = unit.contains(directive);
        assert!(present, "the unit lost {directive:?}");
    }
    assert!(
        unit.lines().any(|l| l.trim() == "CapabilityBoundingSet="),
        "the bounding set must stay empty"
    );
    assert!(
        !unit
            .lines()
            .any(|l| l.trim_start().starts_with("PrivateUsers=")),
        "PrivateUsers= would hide peers' uids"
    );
    let socket = std::fs::read_to_string(root().join("deploy/systemd/peerwire.socket")).unwrap();
    assert!(
        socket.contains("SocketMode=0600"),
        "SocketMode must be explicit (systemd's default is 0666)"
    );
}

/// The crate graph in `docs/architecture.md` (its `mermaid` block, one `a --> b` per arrow) is
/// the graph the manifests declare: every workspace member's normal and build dependencies on
/// other members, no more and no fewer, so the picture cannot drift from `Cargo.toml`.
#[test]
fn architecture_diagram_matches_the_crate_graph() {
    use std::collections::BTreeSet;
    let manifest = |path: &Path| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let workspace = manifest(&root().join("Cargo.toml"));
    let members: Vec<toml::Table> = workspace["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| manifest(&root().join(m.as_str().unwrap()).join("Cargo.toml")))
        .collect();
    let name = |m: &toml::Table| m["package"]["name"].as_str().unwrap().to_owned();
    let names: BTreeSet<String> = members.iter().map(name).collect();
    let mut declared = BTreeSet::new();
    for m in &members {
        let tables = ["dependencies", "build-dependencies"]
            .into_iter()
            .filter_map(|k| m.get(k))
            .chain(
                m.get("target")
                    .and_then(|t| t.as_table())
                    .into_iter()
                    .flat_map(|t| t.values())
                    .flat_map(|t| ["dependencies", "build-dependencies"].map(|k| t.get(k)))
                    .flatten(),
            );
        for table in tables.filter_map(|t| t.as_table()) {
            for (key, spec) in table {
                let dep = spec.get("package").and_then(|p| p.as_str()).unwrap_or(key);
                if names.contains(dep) {
                    declared.insert((name(m), dep.to_owned()));
                }
            }
        }
    }
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let block = doc
        .split("```mermaid")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a ```mermaid block with the crate graph");
    let mut drawn = BTreeSet::new();
    for line in block.lines() {
        if let Some((from, to)) = line.split_once("-->") {
            let node = |s: &str| {
                let s = s.trim();
                s.split(['[', '(']).next().unwrap_or(s).trim().to_owned()
            };
            drawn.insert((node(from), node(to)));
        }
    }
    let missing: Vec<_> = declared.difference(&drawn).collect();
    let extra: Vec<_> = drawn.difference(&declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/architecture.md's crate graph differs from Cargo.toml:\n  arrows in Cargo.toml, not drawn: {missing:?}\n  arrows drawn, not in Cargo.toml: {extra:?}"
    );
    for n in &names {
        assert!(
            block.contains(n.as_str()),
            "the crate graph does not show the workspace member {n}"
        );
    }
}
