//! Least privilege and anti-inspection with a real service user: `peerwire serve --user` as
//! root, then what /proc shows for every thread, ptrace by the same uid, and core dumps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServeProcess, TESTKIT, as_user, ensure_group, ensure_user, open_tempdir, shared_bin};
use nix::sys::signal::Signal;

const SERVICE: &str = "pwt-svc";

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Every thread's /proc status of `pid`.
fn thread_statuses(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("status")).unwrap())
        .collect()
}

/// Every thread of `pid` (the runtime's too) runs as `uid`/`gid` with exactly `groups`, the
/// capability sets `caps` (permitted, effective, bounding), none inheritable or ambient, and
/// no_new_privs.
fn assert_every_thread(pid: u32, uid: u32, gid: u32, groups: &str, caps: &str) {
    let statuses = thread_statuses(pid);
    assert!(statuses.len() >= 2, "the runtime's threads are there too");
    for s in &statuses {
        let u = uid.to_string();
        let g = gid.to_string();
        assert_eq!(status_field(s, "Uid"), [u.as_str(); 4].join(" "));
        assert_eq!(status_field(s, "Gid"), [g.as_str(); 4].join(" "));
        assert_eq!(status_field(s, "Groups"), groups);
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(status_field(s, set), caps, "{set}");
        }
        assert_eq!(status_field(s, "CapInh"), "0000000000000000");
        assert_eq!(status_field(s, "CapAmb"), "0000000000000000");
        assert_eq!(status_field(s, "NoNewPrivs"), "1");
    }
}

fn serve_as_service(socket: &Path, extra: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--user", SERVICE, "--socket"])
        .arg(socket)
        .args(extra);
    ServeProcess::spawn(cmd, socket)
}

/// `peerwire-testkit embedded-server`: an SDK process that embeds the server crate and goes
/// through `peerwire_server::daemon`, with the same flags as `serve`.
fn embedded_as_service(socket: &Path, extra: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(TESTKIT);
    cmd.args(["embedded-server", "--user", SERVICE, "--socket"])
        .arg(socket)
        .args(extra);
    ServeProcess::spawn(cmd, socket)
}

#[test]
fn serve_user_drops_to_the_service_user_in_every_thread() {
    drops_to_the_service_user_in_every_thread(serve_as_service);
}

#[test]
fn an_embedding_process_drops_through_the_daemon_api_in_every_thread() {
    drops_to_the_service_user_in_every_thread(embedded_as_service);
}

/// Starts a server as root with `start` (no extra flags, then a supplementary group and a kept
/// capability), pings it as the service user and checks every thread's /proc status.
fn drops_to_the_service_user_in_every_thread(start: fn(&Path, &[&str]) -> ServeProcess) {
    let svc_gid = ensure_group(SERVICE);
    let uid = ensure_user(SERVICE, SERVICE);
    let display = ensure_group("pwt-display");
    let dir = open_tempdir();
    for (extra, groups, caps) in [
        (vec![], String::new(), "0000000000000000"),
        (
            vec![
                "--group",
                "pwt-display",
                "--keep-cap",
                "CAP_NET_BIND_SERVICE",
            ],
            display.to_string(),
            "0000000000000400",
        ),
    ] {
        let socket = dir.path().join(format!("run-{}/s.sock", groups.len()));
        let mut server = start(&socket, &extra);
        let pid = server.child.id();
        // The server answers a client of its own uid (its default policy).
        let out = as_user(uid, svc_gid, &[])
            .arg(shared_bin())
            .args([
                "ping",
                "--count",
                "2",
                "--expect-server-uid",
                SERVICE,
                "--socket",
            ])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_every_thread(pid, uid, svc_gid, &groups, caps);
        // The socket and its directory belong to the service user.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::symlink_metadata(&socket).unwrap().uid(), uid);
        assert_eq!(
            std::fs::metadata(socket.parent().unwrap()).unwrap().uid(),
            uid
        );
        server.signal(Signal::SIGTERM);
        assert!(server.wait_exit(Duration::from_secs(10)).success());
        assert!(!socket.exists(), "the service user removed its socket");
    }
}

#[test]
fn same_uid_cannot_trace_the_server_and_it_leaves_no_core_dump() {
    let svc_gid = ensure_group(SERVICE);
    let uid = ensure_user(SERVICE, SERVICE);
    let dir = open_tempdir();
    let socket = dir.path().join("run/s.sock");
    let server = serve_as_service(&socket, &[]);
    let pid = server.child.id();
    // strace as the service user itself: refused.
    let out = as_user(uid, svc_gid, &[])
        .args(["strace", "-e", "trace=none", "-p", &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not permitted"),
        "{err}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(
            |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
        ),
        "{limits}"
    );

    // Point core dumps at files, show that an ordinary process does dump there, then kill the
    // server with SIGABRT: no core appears.
    let cores = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        cores.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let pattern_file = "/proc/sys/kernel/core_pattern";
    let saved = std::fs::read_to_string(pattern_file).unwrap();
    std::fs::write(pattern_file, format!("{}/core.%p", cores.path().display())).unwrap();
    let restore = scopeguard(move || {
        let _ = std::fs::write(pattern_file, saved.trim());
    });
    let mut control = Command::new("sh")
        .args(["-c", "ulimit -c unlimited; exec sleep 30"])
        .spawn()
        .unwrap();
    // Signalled once it runs `sleep` (the shell has raised its core limit and exec'd), not
    // after a fixed pause a loaded machine may not honour.
    let start = Instant::now();
    while std::fs::read_to_string(format!("/proc/{}/comm", control.id()))
        .is_ok_and(|c| c.trim() != "sleep")
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(control.id() as i32),
        Signal::SIGABRT,
    )
    .unwrap();
    let _ = control.wait();
    let control_core = cores.path().join(format!("core.{}", control.id()));
    let start = Instant::now();
    while !control_core.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        control_core.exists(),
        "the control process left no core: the test would prove nothing"
    );
    let mut server = server;
    server.signal(Signal::SIGABRT);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !cores.path().join(format!("core.{pid}")).exists(),
        "the server dumped core"
    );
    drop(restore);
}

/// Runs `f` when dropped (restores global state even if an assertion fails).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[test]
fn root_without_user_is_refused_and_allow_root_warns() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/s.sock");
    let out = Command::new(shared_bin())
        .args(["serve", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to run as root") && err.contains("--user"),
        "{err}"
    );
    assert!(!socket.exists(), "nothing was bound");
    let log = dir.path().join("log");
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root", "--socket"])
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap());
    let mut server = ServeProcess::spawn(cmd, &socket);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("WARNING: running as root"), "{text}");
}
