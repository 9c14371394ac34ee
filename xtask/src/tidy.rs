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
