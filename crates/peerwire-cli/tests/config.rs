//! Sealed configuration and state at rest, with the real `peerwire` binary: sealing, opening,
//! checking, starting a server from a sealed file, refusing untrusted plain files, and crash
//! consistency of the state store under SIGKILL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, ServeProcess};
use peerwire_security::seal::{KeyProvider, KeyRing};
use peerwire_security::store::StateStore;

fn pw(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    cmd.output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn sealed_config_round_trips_and_the_server_starts_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let key = etc.join("config.key");
    ok(pw(&["config", "keygen", "--out"], &[&key]));
    let socket = tmp.path().join("run/s.sock");
    let plain = etc.join("server.toml");
    write_private(
        &plain,
        &format!(
            "socket = {:?}\n[limits]\nhandshake_timeout_ms = 2000\nshutdown_grace_ms = 500\n",
            socket.to_str().unwrap()
        ),
    );
    let sealed = etc.join("server.toml.sealed");
    ok(pw(
        &["config", "seal", "--key"],
        &[&key, Path::new("--in"), &plain, Path::new("--out"), &sealed],
    ));
    // The secret text is not in the sealed file.
    let bytes = std::fs::read(&sealed).unwrap();
    assert!(!bytes.windows(9).any(|w| w == b"handshake"));
    // Opened back, byte for byte.
    let opened = ok(pw(
        &["config", "open", "--key"],
        &[&key, Path::new("--in"), &sealed],
    ));
    assert_eq!(opened, std::fs::read_to_string(&plain).unwrap());
    // Checked without starting.
    assert!(
        ok(pw(
            &["config", "check", "--key"],
            &[&key, Path::new("--in"), &sealed]
        ))
        .contains(": ok")
    );
    // The wrong key: a clear error.
    let other = etc.join("other.key");
    ok(pw(&["config", "keygen", "--out"], &[&other]));
    let e = err(pw(
        &["config", "open", "--key"],
        &[&other, Path::new("--in"), &sealed],
    ));
    assert!(e.contains("sealed with another key"), "{e}");
    // No key at all.
    let e = err(pw(&["config", "check", "--in"], &[&sealed]));
    assert!(e.contains("is sealed: give the key"), "{e}");
    // Renamed: the file is bound to its name.
    let renamed = etc.join("client.toml.sealed");
    std::fs::copy(&sealed, &renamed).unwrap();
    let e = err(pw(
        &["config", "check", "--key"],
        &[&key, Path::new("--in"), &renamed],
    ));
    assert!(e.contains("tampered"), "{e}");
    // A byte flipped.
    let mut bad = bytes.clone();
    bad[40] ^= 0x80;
    let flipped = etc.join("flipped.toml.sealed");
    std::fs::write(&flipped, &bad).unwrap();
    assert!(
        err(pw(
            &["config", "check", "--key"],
            &[&key, Path::new("--in"), &flipped]
        ))
        .contains("tampered")
    );
    // The server runs from the sealed file.
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--allow-root", "--config"])
        .arg(&sealed)
        .arg("--key")
        .arg(&key);
    let mut server = ServeProcess::spawn(cmd, &socket);
    assert!(ok(pw(&["ping", "--count", "3", "--socket"], &[&socket])).contains("3 round trips"));
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn untrusted_or_invalid_plain_configs_are_refused_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let file = etc.join("server.toml");
    let socket = tmp.path().join("run/s.sock");
    let good = format!("socket = {:?}\n", socket.to_str().unwrap());
    write_private(&file, &good);
    ok(pw(&["config", "check", "--in"], &[&file]));
    // World-writable file.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = err(pw(&["config", "check", "--in"], &[&file]));
    assert!(
        e.contains("writable by group or others") && e.contains("chmod 0600"),
        "{e}"
    );
    let e = err(pw(&["serve", "--allow-root", "--config"], &[&file]));
    assert!(e.contains("untrusted configuration"), "{e}");
    // A safe file in a world-writable directory.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = err(pw(&["config", "check", "--in"], &[&file]));
    assert!(
        e.contains(etc.file_name().unwrap().to_str().unwrap()) && e.contains("chmod 0755"),
        "{e}"
    );
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Unknown keys and out-of-range values name the key.
    write_private(&file, &format!("{good}[limits]\nmax_in_flight = 0\n"));
    let e = err(pw(&["config", "check", "--in"], &[&file]));
    assert!(e.contains("limits.max_in_flight: 0 is out of range"), "{e}");
    write_private(
        &file,
        &format!("{good}[tls]\nmode = \"off\"\nciphers = \"all\"\n"),
    );
    let e = err(pw(&["config", "check", "--in"], &[&file]));
    assert!(e.contains("ciphers"), "{e}");
    write_private(
        &file,
        &format!("{good}[access]\nallow_uids = [\"no-such-user-pw\"]\n"),
    );
    let e = err(pw(&["config", "check", "--in"], &[&file]));
    assert!(
        e.contains("access.allow_uids") && e.contains("no-such-user-pw"),
        "{e}"
    );
    // The example is valid apart from names and paths of a real device.
    let example = ok(pw(&["config", "example"], &[]));
    assert!(example.contains("[limits]") && example.contains("handshake_timeout_ms"));
}

#[test]
fn state_store_survives_sigkill_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("state.key");
    ok(pw(&["config", "keygen", "--out"], &[&key]));
    let dir = tmp.path().join("state");
    let mut kills = 0;
    let mut prev: std::collections::HashMap<String, u64> = Default::default();
    for round in 0..25u64 {
        let start = 1000 * (round + 1);
        let out = tmp.path().join("writer.out");
        let mut child = Command::new(common::TESTKIT)
            .args([
                "state-writer",
                "--count",
                "200",
                "--start",
                &start.to_string(),
                "--dir",
            ])
            .arg(&dir)
            .arg("--key")
            .arg(&key)
            .stdout(std::fs::File::create(&out).unwrap())
            .spawn()
            .unwrap();
        // Most rounds let the writer complete its first generation (one line of output) before
        // the kill, so that a loaded machine, slow to start the writer, still tests kills in the
        // middle of writes; every fourth round kills at once, before or during the first one.
        if round % 4 != 0 {
            let started = Instant::now();
            while std::fs::read_to_string(&out).unwrap_or_default().is_empty()
                && started.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // A pseudo-random moment within the writer's run.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        std::thread::sleep(Duration::from_millis(3 + jitter % 40));
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            kills += 1;
        }
        let _ = child.wait();
        // The last generation the writer completed for all five records.
        let done = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .filter_map(|l| l.parse::<u64>().ok())
            .max()
            .unwrap_or(start - 1);
        let store = StateStore::open(
            &dir,
            KeyRing::new(KeyProvider::File(key.clone()).load().unwrap()),
        )
        .unwrap();
        // Leftover temporary files of an interrupted write are cleaned up by list().
        for name in store.list().unwrap() {
            let v = store
                .get(&name)
                .unwrap_or_else(|e| panic!("round {round}: {name} does not open: {e}"))
                .unwrap();
            let text = String::from_utf8(v.to_vec()).unwrap();
            let g: u64 = text
                .strip_prefix("gen-")
                .unwrap_or_else(|| panic!("torn value {text:?}"))
                .parse()
                .unwrap();
            // Either untouched this round (its old value), or the last complete generation, or
            // the one being written when the writer died: never anything else, never torn.
            let old = prev.get(&name).copied();
            let allowed = Some(g) == old || g == done || g == done + 1 && g < start + 200;
            assert!(
                allowed,
                "round {round}: {name} = {g}, old {old:?}, last complete {done}"
            );
            prev.insert(name, g);
        }
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }
    assert!(
        kills >= 20,
        "only {kills} writers were still running when killed"
    );
    assert_eq!(prev.len(), 5, "the writer never got to write all records");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
