//! Access control with real other users (created by the test; CI runs as root), real processes
//! and real sockets: the access policy, executable allowlists, socket and directory modes,
//! startup refusals, a client that verifies its server, and systemd socket activation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ServeProcess, as_user, ensure_group, ensure_user, init_logs, open_tempdir, shared_bin,
};
use nix::sys::signal::Signal;
use peerwire_client::{Client, ConnectError, HandshakeError};
use peerwire_proto::v1::Code;
use peerwire_server::Server;

const DISPLAY_GROUP: &str = "pwt-display";
const RENDER_GROUP: &str = "pwt-render";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn ping(cmd: &mut Command, socket: &Path) -> std::process::Output {
    cmd.arg(shared_bin())
        .args(["ping", "--count", "3", "--socket"])
        .arg(socket)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn policy_admits_allowed_uids_and_groups_and_denies_others() {
    if !common::root_or_skip("policy_admits_allowed_uids_and_groups_and_denies_others") {
        return;
    }
    init_logs();
    let display = ensure_group(DISPLAY_GROUP);
    let render = ensure_group(RENDER_GROUP);
    let alice = ensure_user("pwt-alice", DISPLAY_GROUP);
    let bob = ensure_user("pwt-bob", DISPLAY_GROUP);
    let dir = open_tempdir();
    let socket = dir.path().join("run/s.sock");
    let log = dir.path().join("server.log");
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root"])
        .arg("--socket")
        .arg(&socket)
        .args([
            "--socket-group",
            DISPLAY_GROUP,
            "--allow-uid",
            "pwt-alice",
            "--allow-group",
            RENDER_GROUP,
            "--allow-uid",
            "0",
        ])
        .stderr(std::fs::File::create(&log).unwrap());
    let mut server = ServeProcess::spawn(cmd, &socket);

    // The socket is opened to the display group only: directory 0750, socket 0660.
    let d = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!((mode(socket.parent().unwrap()), d.gid()), (0o750, display));
    let s = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!((mode(&socket), s.gid()), (0o660, display));

    // An allowed uid is admitted.
    let out = ping(&mut as_user(alice, display, &[]), &socket);
    assert!(
        out.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another uid that can reach the socket (same group) but is not allowed: denied, clearly.
    let out = ping(&mut as_user(bob, display, &[]), &socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains(&format!("uid {bob}")),
        "bob: {err}"
    );
    // The same uid, now a member of the allowed group (supplementary, via SO_PEERGROUPS): admitted.
    let out = ping(&mut as_user(bob, display, &[display, render]), &socket);
    assert!(
        out.status.success(),
        "bob in {RENDER_GROUP}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the server goes on serving allowed clients.
    let out = ping(&mut Command::new("env"), &socket);
    assert!(
        out.status.success(),
        "root: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let log = std::fs::read_to_string(&log).unwrap();
    // The warn line names the denied peer's uid, gid and pid.
    let denied: Vec<_> = log
        .lines()
        .filter(|l| l.contains("access denied"))
        .collect();
    assert_eq!(denied.len(), 1, "{log}");
    assert!(
        denied[0].contains("WARN") && denied[0].contains(&format!("uid={bob} gid={display} pid=")),
        "{}",
        denied[0]
    );
    // Admitted: the start-up probe, alice, bob in the render group, root.
    assert!(log.contains("(4 admitted, 1 denied,"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executable_allowlist_rejects_another_binary_of_the_same_uid() {
    init_logs();
    let dir = open_tempdir();
    let socket = dir.path().join("run/s.sock");
    let bin = shared_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--allow-root"])
        .arg("--socket")
        .arg(&socket)
        .arg("--allow-exe")
        .arg(&bin);
    let _server = ServeProcess::spawn(cmd, &socket);
    // The allowed program is admitted.
    let out = ping(&mut Command::new("env"), &socket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // This test binary: same uid, different executable.
    let err = Client::builder(&socket)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap_err();
    match err {
        ConnectError::Handshake(HandshakeError::Rejected { status, .. }) => {
            assert_eq!(status.code, Code::PermissionDenied);
            assert!(
                status.message.contains("executable") && status.message.contains("not allowed"),
                "{status}"
            );
        }
        other => panic!("{other}"),
    }
}

/// Watches `path` from another thread while `create` runs and returns every mode observed.
/// The watcher has looked at least once before `create` starts and once after it returned, and
/// the test fails if it never saw `path` at all (then it would prove nothing).
fn observe_modes(path: &Path, create: impl FnOnce()) -> Vec<u32> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let looks = std::sync::Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (path, stop, looks) = (path.to_owned(), stop.clone(), looks.clone());
        std::thread::spawn(move || {
            let mut seen = vec![];
            while !stop.load(Ordering::SeqCst) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    let m = m.permissions().mode() & 0o777;
                    if seen.last() != Some(&m) {
                        seen.push(m);
                    }
                }
                looks.fetch_add(1, Ordering::SeqCst);
            }
            seen
        })
    };
    // Until the watcher runs (on a loaded machine its thread may not for a while) ...
    let wait_for_look = |after: usize| {
        let start = Instant::now();
        while looks.load(Ordering::SeqCst) <= after {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the mode watcher of {} did not run within 10 s",
                path.display()
            );
            std::thread::yield_now();
        }
    };
    wait_for_look(0);
    create();
    // ... and until a whole look began after `create` returned: it saw the final state.
    wait_for_look(looks.load(Ordering::SeqCst) + 1);
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    assert!(
        !seen.is_empty(),
        "the mode watcher never saw {}: the test would prove nothing",
        path.display()
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_and_directory_are_never_more_open_than_configured() {
    if !common::root_or_skip("socket_and_directory_are_never_more_open_than_configured") {
        return;
    }
    let display = ensure_group(DISPLAY_GROUP);
    for group in [None, Some(display)] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/s.sock");
        let mut server = None;
        let dir_modes = observe_modes(socket.parent().unwrap(), || {
            let socket_modes = observe_modes(&socket, || {
                let mut b = Server::builder(&socket);
                if let Some(g) = group {
                    b = b.socket_group(g);
                }
                server = Some(b.bind().unwrap());
            });
            let allowed = if group.is_some() { 0o660 } else { 0o600 };
            assert!(!socket_modes.is_empty());
            // Never more open than configured at any observable instant (with a group the 0600
            // instant before the group gets access may be too short to observe).
            assert!(
                socket_modes.iter().all(|m| m & !allowed == 0),
                "socket modes seen: {socket_modes:?}"
            );
            assert_eq!(socket_modes.last(), Some(&allowed));
        });
        let allowed = if group.is_some() { 0o750 } else { 0o700 };
        assert!(
            dir_modes.iter().all(|m| m & !allowed == 0),
            "directory modes seen: {dir_modes:?}"
        );
        if group.is_none() {
            assert_eq!(dir_modes, vec![0o700]);
        }
        assert_eq!(dir_modes.last(), Some(&allowed));
        drop(server);
    }
}

fn serve_fails(socket: &Path) -> String {
    let out = Command::new(shared_bin())
        .args(["serve", "--allow-root"])
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve started on {}",
        socket.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_refuses_unsafe_paths_and_never_deletes_what_is_not_its_own() {
    if !common::root_or_skip("startup_refuses_unsafe_paths_and_never_deletes_what_is_not_its_own") {
        return;
    }
    let bob = ensure_user("pwt-bob", DISPLAY_GROUP);
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &str, m: u32| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).unwrap();
        d
    };
    // A directory owned by another user.
    let theirs = mk("theirs", 0o700);
    nix::unistd::chown(&theirs, Some(bob.into()), None).unwrap();
    let err = serve_fails(&theirs.join("s.sock"));
    assert!(
        err.contains(&format!("owned by uid {bob}")) && err.contains("chown"),
        "{err}"
    );
    // Group- and world-writable directories.
    let err = serve_fails(&mk("group-w", 0o770).join("s.sock"));
    assert!(
        err.contains("writable by its group") && err.contains("chmod 0700"),
        "{err}"
    );
    let err = serve_fails(&mk("world-w", 0o777).join("s.sock"));
    assert!(err.contains("writable by everyone"), "{err}");
    // A symlinked directory.
    let real = mk("real", 0o700);
    std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
    let err = serve_fails(&dir.path().join("link/s.sock"));
    assert!(err.contains("symbolic link"), "{err}");
    // A regular file at the socket path: refused and left alone.
    std::fs::write(real.join("file.sock"), b"precious").unwrap();
    let err = serve_fails(&real.join("file.sock"));
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(real.join("file.sock")).unwrap(), b"precious");
    // A dead socket of another user: refused and left alone.
    let foreign = real.join("foreign.sock");
    drop(std::os::unix::net::UnixListener::bind(&foreign).unwrap());
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &foreign,
        Some(bob.into()),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let err = serve_fails(&foreign);
    assert!(err.contains(&format!("owned by uid {bob}")), "{err}");
    assert!(foreign.exists());
    // A dead socket of our own is replaced; a live server is not clobbered.
    let own = real.join("own.sock");
    drop(std::os::unix::net::UnixListener::bind(&own).unwrap());
    let _live = ServeProcess::start(&own, &[]);
    let err = serve_fails(&own);
    assert!(err.contains("already running"), "{err}");
    // Abstract addresses are refused at configuration time.
    let err = serve_fails(Path::new("@peerwire"));
    assert!(
        err.contains("abstract socket addresses have no file permissions"),
        "{err}"
    );
    assert!(matches!(
        Server::builder("\0peerwire").bind(),
        Err(peerwire_server::ServerError::Config {
            problem: peerwire_server::ConfigProblem::SocketPath(_),
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_server_running_as_another_uid() {
    if !common::root_or_skip("client_refuses_a_server_running_as_another_uid") {
        return;
    }
    init_logs();
    let bob = ensure_user("pwt-bob", DISPLAY_GROUP);
    let bob_gid = ensure_group(DISPLAY_GROUP);
    // Bob squats on the path the display client will use.
    let dir = open_tempdir();
    let home = dir.path().join("bob");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(bob.into()), Some(bob_gid.into())).unwrap();
    let socket = home.join("run/display.sock");
    let mut cmd = as_user(bob, bob_gid, &[]);
    cmd.arg(shared_bin())
        .args(["serve", "--allow-root"])
        .arg("--socket")
        .arg(&socket)
        .args(["--allow-uid", "0"]);
    let _squatter = ServeProcess::spawn(cmd, &socket);
    assert_eq!(std::fs::symlink_metadata(&socket).unwrap().uid(), bob);

    // By default the client trusts only its own uid (root here) and root: it refuses, and
    // sends nothing.
    let err = Client::builder(&socket)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap_err();
    match &err {
        ConnectError::UntrustedServer { reason, .. } => {
            assert!(
                reason.contains(&format!("served by uid {bob}"))
                    && reason.contains("expected to run as uid 0"),
                "{reason}"
            )
        }
        other => panic!("{other}"),
    }
    // Naming the expected server uid explicitly: the same.
    let out = Command::new(shared_bin())
        .args(["ping", "--expect-server-uid", "0", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to talk to the server"));
    // A client that does expect bob's uid talks to it.
    let client = Client::builder(&socket)
        .namespace("echo", &[1])
        .expect_server_uid(bob)
        .connect()
        .await
        .unwrap();
    let back: Vec<u8> = client.call("echo.Echo", &b"hi".to_vec()).await.unwrap();
    assert_eq!(back, b"hi");
    // Right uid, wrong executable: refused too.
    let err = Client::builder(&socket)
        .namespace("echo", &[1])
        .expect_server_uid(bob)
        .expect_server_exe("/bin/sh")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::UntrustedServer { ref reason, .. } if reason.contains("runs")),
        "{err}"
    );
    let ok = Client::builder(&socket)
        .expect_server_uid(bob)
        .expect_server_exe(shared_bin())
        .connect()
        .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_is_checked_like_a_bound_socket() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = run.join("s.sock");
    let activate = |log: &Path| {
        let mut cmd = Command::new("systemd-socket-activate");
        // The activator passes the service a clean environment plus what -E names.
        cmd.args(["-E", "RUST_LOG=info", "-E", "NO_COLOR=1", "-l"])
            .arg(&socket)
            .arg(shared_bin())
            .args(["serve", "--allow-root"])
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        cmd
    };
    // systemd-socket-activate creates the socket 0644 and starts the service on the first
    // connection. Like systemd with SocketMode=0600, make it 0600 before anyone connects:
    // accepted and served.
    let log = dir.path().join("ok.log");
    let activator = activate(&log).spawn().unwrap();
    wait_for(&socket);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut server = ServeProcess::adopt(activator, &socket);
    let client = Client::builder(&socket)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap();
    let back: Vec<u8> = client
        .call("echo.Echo", &b"activated".to_vec())
        .await
        .unwrap();
    assert_eq!(back, b"activated");
    client.close().await;
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("using the socket passed by systemd"),
        "{text}"
    );
    // The socket belongs to systemd: it is left in place.
    assert!(socket.exists());
    std::fs::remove_file(&socket).unwrap();

    // systemd created it world-accessible: the server refuses to serve on it and says how to fix it.
    let log = dir.path().join("bad.log");
    let mut activator = activate(&log).spawn().unwrap();
    wait_for(&socket);
    assert_eq!(mode(&socket), 0o644);
    // The first connection starts the service. The file exists from bind(), a moment before
    // systemd-socket-activate listens: until then a connect is refused and starts nothing.
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "systemd-socket-activate never listened on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = loop {
        if let Some(status) = activator.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SocketMode=0600"), "{text}");
}

fn wait_for(path: &Path) {
    for _ in 0..2000 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn audit_reports_problems_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = run.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(common::BIN)
        .args(["audit", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("writable by everyone") && text.contains("fix: chmod 0700"),
        "{text}"
    );
    assert!(text.contains("mode 0666, more open than 0600"), "{text}");
    assert!(text.contains("stale"), "{text}");

    // A server's own socket audits clean.
    let good = tempfile::tempdir().unwrap();
    let socket = good.path().join("run/s.sock");
    let _server = ServeProcess::start(&socket, &[]);
    let out = Command::new(common::BIN)
        .args(["audit", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("mode 0700")
            && text.contains("mode 0600")
            && text.contains("a server is listening"),
        "{text}"
    );
}
