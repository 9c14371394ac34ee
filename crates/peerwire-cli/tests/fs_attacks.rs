//! File-system attacks by another local user (issue 14, items 2 and 7): racing swaps of
//! directories for symbolic links while root prepares them, directories prepared by someone
//! else, secret and configuration files others can reach or replace, and a symlink flipped
//! between the check and the read of a configuration file.
//!
//! The attacker is a real other user (`nobody`): this test binary, copied where that user can
//! run it, re-executed as `nobody` with its ignored `attacker` test selected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, as_user};
use peerwire_security::sockpath;
use peerwire_server::settings::ServerConfig;

const ROLE: &str = "PEERWIRE_TEST_ATTACKER";
/// The uid root prepares a socket directory for (a service user; a uid is all it needs).
const SERVICE_UID: u32 = 61_014;

fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    nix::unistd::chown(path, Some(uid.into()), Some(gid.into())).unwrap();
}

/// A temporary directory others can traverse.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    dir
}

/// A copy of this test binary in `dir` (a test's own 0755 temporary directory, removed with
/// it), where `nobody` can run it.
fn attacker_exe(dir: &Path) -> PathBuf {
    let exe = dir.join("attacker-exe");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        chmod(&exe, 0o755);
    }
    exe
}

/// Starts this binary (copied into `top`) as `nobody`, playing `role`; returns once it is
/// ready (it creates `ready` in `dir` when its watch is in place).
///
/// A start can fail with "Text file busy": another test's child, forked while the copy was
/// being written, may briefly hold the copy open. Such a start is retried.
fn start_attacker(top: &Path, role: &str, dir: &Path) -> Child {
    let (uid, gid) = nobody();
    let exe = attacker_exe(top);
    let ready = dir.join("ready");
    for _attempt in 0..10 {
        let mut child = as_user(uid, gid, &[])
            .arg(&exe)
            .args(["--ignored", "--exact", "attacker", "--nocapture"])
            .env(ROLE, role)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if ready.exists() {
                return child;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the attacker never got ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the attacker could not be started");
}

/// Kills the attacker process started by this test (by its pid) when dropped.
struct Attacker(Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The attacker, run as `nobody` by the tests below (never on its own).
#[test]
#[ignore = "the attacker process of the race tests, started by them as another user"]
fn attacker() {
    let role = std::env::var(ROLE).expect("run by the race tests only");
    let mut parts = role.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        // Inotify-driven: as soon as `run` appears in DIR as a directory, move it away and put
        // a link to TARGET in its place.
        (Some("swap"), Some(dir), Some(target), None) => {
            use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
            let dir = Path::new(dir);
            let ino = Inotify::init(InitFlags::empty()).unwrap();
            ino.add_watch(dir, AddWatchFlags::IN_CREATE).unwrap();
            std::fs::write(dir.join("ready"), b"").unwrap();
            let mut n = 0u64;
            loop {
                for ev in ino.read_events().unwrap() {
                    if ev.name.as_deref() != Some(OsStr::new("run")) {
                        continue;
                    }
                    let run = dir.join("run");
                    let is_dir = std::fs::symlink_metadata(&run).is_ok_and(|m| m.is_dir());
                    if is_dir && std::fs::rename(&run, dir.join(format!("moved-{n}"))).is_ok() {
                        let _ = symlink(target, &run);
                        n += 1;
                    }
                }
            }
        }
        // Flip LINK between two targets as fast as possible (atomic renames of a new link).
        (Some("flip"), Some(link), Some(a), Some(b)) => {
            let link = Path::new(link);
            let dir = link.parent().unwrap();
            let tmp = dir.join("flip.tmp");
            std::fs::write(dir.join("ready"), b"").unwrap();
            for target in [a, b].iter().cycle() {
                let _ = std::fs::remove_file(&tmp);
                if symlink(target, &tmp).is_ok() {
                    let _ = std::fs::rename(&tmp, link);
                }
            }
        }
        _ => panic!("unknown role {role:?}"),
    }
}

/// Removes what a try left in the attacker's directory (as root).
fn clear(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name() == Some(OsStr::new("ready")) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

fn stat(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// The attack on `serve --user svc --socket /tmp/pw/run/s.sock` started as root with
/// `/tmp/pw` made by another user: that user swaps `run` for a link to a root-owned file right
/// after root's mkdir. 1000 tries: root never changes the owner or mode of anything outside
/// the intended directory (the old code, chown/chmod by path, gave the file away within a few
/// tries), and the directory another user owns is refused with the reason every time.
///
/// Then the same attacker in a root-owned sticky world-writable directory (like /tmp), where
/// creating is allowed: 1000 more tries, each ending with a real directory given to the service
/// user, mode 0700, and the attacker's target untouched.
#[test]
fn racing_swapper_never_redirects_root_preparing_a_socket_directory() {
    if !common::root_or_skip("racing_swapper_never_redirects_root_preparing_a_socket_directory") {
        return;
    }
    let (uid, gid) = nobody();
    let top = open_tempdir();
    // The root-owned file (and directory) the attacker wants: outside the attacker's reach.
    let vault = top.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    chmod(&vault, 0o700);
    let target = vault.join("secret");
    std::fs::write(&target, b"root's").unwrap();
    chmod(&target, 0o600);
    let target_dir = vault.join("secret-dir");
    std::fs::create_dir(&target_dir).unwrap();
    chmod(&target_dir, 0o700);
    let before = (stat(&target), stat(&target_dir));

    // The attacker's directory (like /tmp/pw made by another user).
    let pw = top.path().join("pw");
    std::fs::create_dir(&pw).unwrap();
    chown(&pw, uid, gid);
    let attacker = Attacker(start_attacker(
        top.path(),
        &format!("swap|{}|{}", pw.display(), target.display()),
        &pw,
    ));
    let run = pw.join("run");
    let mut outcomes = vec![];
    for i in 0..1000 {
        let outcome = sockpath::prepare_directory(&run, None, SERVICE_UID);
        assert_eq!(
            (stat(&target), stat(&target_dir)),
            before,
            "try {i}: root changed the owner or mode of a file outside {} ({outcome:?})",
            run.display()
        );
        outcomes.push(outcome);
        clear(&pw);
    }
    drop(attacker);
    for (i, outcome) in outcomes.iter().enumerate() {
        let e = outcome.as_ref().err().unwrap_or_else(|| {
            panic!("try {i}: root prepared a directory inside another user's directory")
        });
        assert!(
            e.path == pw && e.problem.contains("owned by") && e.problem.contains("nobody"),
            "try {i}: {e}"
        );
    }

    // A root-owned sticky directory: creating is fine, swapping is not possible.
    let shared = top.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let _attacker = Attacker(start_attacker(
        top.path(),
        &format!("swap|{}|{}", shared.display(), target_dir.display()),
        &shared,
    ));
    let run = shared.join("run");
    for i in 0..1000 {
        let outcome = sockpath::prepare_directory(&run, None, SERVICE_UID);
        assert_eq!(
            (stat(&target), stat(&target_dir)),
            before,
            "try {i}: {outcome:?}"
        );
        outcome.unwrap_or_else(|e| panic!("try {i}: {e}"));
        let meta = std::fs::symlink_metadata(&run).unwrap();
        assert!(meta.is_dir(), "try {i}");
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (SERVICE_UID, 0o700),
            "try {i}"
        );
        std::fs::remove_dir(&run).unwrap();
    }
}

/// `serve --user` as root with the socket under a directory another user made: refused before
/// anything is created, naming the directory, its owner and the fix.
#[test]
fn serve_as_root_refuses_a_socket_path_under_another_users_directory() {
    if !common::root_or_skip("serve_as_root_refuses_a_socket_path_under_another_users_directory") {
        return;
    }
    let (uid, gid) = nobody();
    let top = open_tempdir();
    let pw = top.path().join("pw");
    std::fs::create_dir(&pw).unwrap();
    chown(&pw, uid, gid);
    let mut child = Command::new(BIN)
        .args(["serve", "--user", "nobody", "--socket"])
        .arg(pw.join("run/s.sock"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started under another user's directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&pw.display().to_string())
            && err.contains("owned by nobody")
            && err.contains("fix"),
        "{err}"
    );
    assert!(!pw.join("run").exists(), "nothing was created");
}

/// `peerwire init` as root into a directory another user prepared (or under one) is refused
/// with the reason and the fix; nothing is written there. The old code let root through (the
/// owner check exempted root), and that user could then replace `server/` with a `token.key`
/// they know.
#[test]
fn init_refuses_a_directory_prepared_by_another_user() {
    if !common::root_or_skip("init_refuses_a_directory_prepared_by_another_user") {
        return;
    }
    let (uid, gid) = nobody();
    let top = open_tempdir();
    let init = |dir: &Path| init(Command::new(BIN), dir);
    // The identity directory itself is theirs.
    let theirs = top.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o700);
    chown(&theirs, uid, gid);
    let out = init(&theirs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("owned by nobody") && err.contains("fix: chown"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        0,
        "nothing written"
    );
    // A directory above is theirs.
    let above = top.path().join("above");
    std::fs::create_dir(&above).unwrap();
    chown(&above, uid, gid);
    let out = init(&above.join("id"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&above.display().to_string())
            && err.contains("could replace what is inside")
            && err.contains("fix:"),
        "{err}"
    );
    assert!(!above.join("id").exists());
    // A subdirectory planted by them in an otherwise fresh identity directory.
    let planted = top.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    chmod(&planted, 0o700);
    std::fs::create_dir(planted.join("server")).unwrap();
    chmod(&planted.join("server"), 0o700);
    chown(&planted.join("server"), uid, gid);
    let out = init(&planted);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by nobody"));
    // Our own fresh directory works.
    let ours = top.path().join("ours");
    let out = init(&ours);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `peerwire init` for `dir` (`cmd` is the binary, or a prefix that runs it).
fn init(mut cmd: Command, dir: &Path) -> std::process::Output {
    cmd.args(["init", "--device", "t", "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn write_config(path: &Path, socket: &str) {
    std::fs::write(path, format!("socket = \"{socket}\"\n")).unwrap();
}

/// A configuration path through a link in another user's directory, flipped between their
/// file and a trusted one: the old code read first and checked the canonical path after, so
/// a flip in between loaded the attacker's file. Now the file is opened once, through checked
/// descriptors, and the same descriptor is judged and read: their file is never loaded.
#[test]
fn config_symlink_flip_never_loads_the_attackers_file() {
    if !common::root_or_skip("config_symlink_flip_never_loads_the_attackers_file") {
        return;
    }
    let (uid, gid) = nobody();
    let top = open_tempdir();
    let etc = top.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let good = etc.join("good.toml");
    write_config(&good, "/good/s.sock");
    chmod(&good, 0o644);
    assert_eq!(
        ServerConfig::load(&good, None).unwrap().socket,
        Path::new("/good/s.sock")
    );
    let att = top.path().join("att");
    std::fs::create_dir(&att).unwrap();
    chown(&att, uid, gid);
    let evil = att.join("evil.toml");
    write_config(&evil, "/evil/s.sock");
    chown(&evil, uid, gid);
    let link = att.join("cfg");
    symlink(&good, &link).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &link,
        Some(uid.into()),
        Some(gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let _attacker = Attacker(start_attacker(
        top.path(),
        &format!(
            "flip|{}|{}|{}",
            link.display(),
            good.display(),
            evil.display()
        ),
        &att,
    ));
    let (mut refused, mut good_loads) = (0, 0);
    for i in 0..5000 {
        match ServerConfig::load(&link, None) {
            Ok(c) if c.socket == Path::new("/evil/s.sock") => {
                panic!("try {i}: the attacker's configuration was loaded")
            }
            Ok(_) => good_loads += 1,
            Err(_) => refused += 1,
        }
    }
    // Through their directory and their link, nothing is trusted.
    assert_eq!((refused, good_loads), (5000, 0));
}

/// Item 7: the token key, the identity directory, the pinned certificate and the sealing key
/// are checked in every mode, TLS off included.
#[test]
fn secrets_are_checked_in_every_mode() {
    if !common::root_or_skip("secrets_are_checked_in_every_mode") {
        return;
    }
    let top = open_tempdir();
    let id = top.path().join("id");
    let out = init(Command::new(BIN), &id);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = |id: &Path| {
        ServerConfig::parse(
            &format!(
                "socket = \"/tmp/x/s.sock\"\n[tls]\nmode = \"off\"\nrequire_token = true\nidentity = \"{}\"\n",
                id.display()
            ),
            Path::new("t.toml"),
        )
        .unwrap()
    };
    config(&id).builder().unwrap();
    // A 0644 token key in a 0755 directory, with TLS off and tokens required: refused.
    let key = id.join("server/token.key");
    chmod(&key, 0o644);
    chmod(&id.join("server"), 0o755);
    let err = config(&id).builder().unwrap_err().to_string();
    assert!(
        err.contains("server") && err.contains("chmod 0700"),
        "{err}"
    );
    chmod(&id.join("server"), 0o700);
    let err = config(&id).builder().unwrap_err().to_string();
    assert!(
        err.contains("token.key") && err.contains("chmod 0600"),
        "{err}"
    );
    chmod(&key, 0o600);
    config(&id).builder().unwrap();
    // A token key owned by someone else: root gets no exemption.
    let (uid, gid) = nobody();
    chown(&key, uid, gid);
    let err = config(&id).builder().unwrap_err().to_string();
    assert!(err.contains("owned by nobody"), "{err}");
    chown(&key, 0, 0);

    // A server-auth client pins peer.pem only from a directory nobody else can write.
    use peerwire_security::tls::{ClientTls, TlsMode};
    ClientTls::from_dir(&id, TlsMode::ServerAuth).unwrap();
    chmod(&id.join("client"), 0o777);
    let err = ClientTls::from_dir(&id, TlsMode::ServerAuth)
        .unwrap_err()
        .to_string();
    assert!(err.contains("client") && err.contains("chmod"), "{err}");
    chmod(&id.join("client"), 0o700);
    chmod(&id.join("client/peer.pem"), 0o666);
    let err = ClientTls::from_dir(&id, TlsMode::ServerAuth)
        .unwrap_err()
        .to_string();
    assert!(err.contains("peer.pem"), "{err}");
    chmod(&id.join("client/peer.pem"), 0o644);
    chown(&id.join("client/peer.pem"), uid, gid);
    assert!(ClientTls::from_dir(&id, TlsMode::ServerAuth).is_err());
    chown(&id.join("client/peer.pem"), 0, 0);
    ClientTls::from_dir(&id, TlsMode::ServerAuth).unwrap();

    // The sealing key in a directory others can write: refused although the file is 0400.
    let keys = top.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let keyfile = keys.join("k");
    peerwire_security::seal::Key::generate()
        .unwrap()
        .write_new(&keyfile)
        .unwrap();
    let provider = peerwire_security::seal::KeyProvider::File(keyfile.clone());
    provider.load().unwrap();
    chmod(&keys, 0o777);
    let err = provider.load().unwrap_err().to_string();
    assert!(err.contains("writable"), "{err}");
    chmod(&keys, 0o755);
    // ... and through a link someone else owns.
    let linkdir = top.path().join("links");
    std::fs::create_dir(&linkdir).unwrap();
    chown(&linkdir, uid, gid);
    symlink(&keyfile, linkdir.join("k")).unwrap();
    assert!(
        peerwire_security::seal::KeyProvider::File(linkdir.join("k"))
            .load()
            .is_err()
    );
}

/// `peerwire audit` names every directory above the socket that others can write, and with
/// `--user` root audits a service user's correct setup without a problem.
#[test]
fn audit_reports_writable_ancestors_and_takes_the_service_user() {
    if !common::root_or_skip("audit_reports_writable_ancestors_and_takes_the_service_user") {
        return;
    }
    let (uid, gid) = nobody();
    let top = open_tempdir();
    let shared = top.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o775);
    let run = shared.join("run");
    std::fs::create_dir(&run).unwrap();
    chmod(&run, 0o700);
    chown(&run, uid, gid);
    let audit = |user: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["audit", "--socket"]).arg(run.join("s.sock"));
        if let Some(u) = user {
            cmd.args(["--user", u]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = audit(Some("nobody"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("PROBLEM: {}", shared.display())) && text.contains("its group"),
        "{text}"
    );
    assert!(
        !text.contains(&format!("PROBLEM: {}:", run.display())),
        "{text}"
    );
    chmod(&shared, 0o755);
    let (ok, text) = audit(Some("nobody"));
    assert!(ok, "the service user's own directory is no problem: {text}");
    // Without --user, root is the server's user: nobody's directory is a problem.
    let (ok, text) = audit(None);
    assert!(!ok && text.contains("owned by uid"), "{text}");
}

/// Root minting a token reads the device secret of the service user's identity only when told
/// which user that is (`token mint --server-user`): without it, a `server/token.key` (and
/// directories) of another user is refused like any file root does not own, so a key planted
/// by someone else is never used.
#[test]
fn root_uses_a_service_users_token_key_only_when_that_user_is_named() {
    if !common::root_or_skip("root_uses_a_service_users_token_key_only_when_that_user_is_named") {
        return;
    }
    let (uid, gid) = nobody();
    let top = open_tempdir();
    let state = top.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o700);
    chown(&state, uid, gid);
    let id = state.join("identity");
    let mut as_nobody = as_user(uid, gid, &[]);
    as_nobody.arg(common::shared_bin());
    let out = init(as_nobody, &id);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mint = |extra: &[&str]| {
        Command::new(BIN)
            .args(["token", "mint", "--for-uid", "0", "--socket", "/tmp/s.sock"])
            .arg("--identity")
            .arg(&id)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = mint(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("owned by nobody") && err.contains("fix:"),
        "{err}"
    );
    let out = mint(&["--server-user", "nobody"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pw1."));
    // Named or not, the key must still be private.
    chmod(&id.join("server/token.key"), 0o644);
    let out = mint(&["--server-user", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 0600"));
}
