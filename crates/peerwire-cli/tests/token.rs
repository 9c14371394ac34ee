//! Session tokens end to end: `peerwire serve --require-token` as a real process, tokens minted
//! by the CLI and the library, clients as real processes (also as another user), the launch
//! path through an inherited pipe, and a flood of bad tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{
    BIN, RawClient, Read, ServeProcess, as_user, ensure_group, ensure_user, open_tempdir, rss_kib,
    shared_bin,
};
use nix::sys::signal::Signal;
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::{Code, Frame, Hello, frame::Kind};
use peerwire_security::token::{Binding, DeviceSecret, Minter};

struct Setup {
    _tmp: tempfile::TempDir,
    id: PathBuf,
    socket: PathBuf,
}

fn setup(open: bool) -> Setup {
    let tmp = if open {
        open_tempdir()
    } else {
        tempfile::tempdir().unwrap()
    };
    let id = tmp.path().join("id");
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&id)
        .output()
        .unwrap();
    assert!(out.status.success());
    let socket = tmp.path().join("run/s.sock");
    Setup {
        _tmp: tmp,
        id,
        socket,
    }
}

fn serve(s: &Setup, extra: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root"])
        .arg("--socket")
        .arg(&s.socket)
        .arg("--identity")
        .arg(&s.id)
        .arg("--require-token")
        .args(extra);
    ServeProcess::spawn(cmd, &s.socket)
}

fn mint(s: &Setup, for_uid: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "mint", "--for-uid", for_uid, "--identity"])
        .arg(&s.id)
        .arg("--socket")
        .arg(&s.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// `peerwire ping --token-stdin` (through `cmd`, e.g. setpriv) with `token` on stdin.
fn ping_with(mut cmd: Command, s: &Setup, tls: &[&str], token: &str) -> Result<(), String> {
    let mut child = cmd
        .arg(shared_bin())
        .args(["ping", "--count", "2", "--token-stdin", "--socket"])
        .arg(&s.socket)
        .args(tls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// A 30 s token for `binding`, minted with `secret` by the library.
fn mint_with(secret: &DeviceSecret, binding: &Binding) -> String {
    Minter::new(secret)
        .unwrap()
        .mint(binding, Duration::from_secs(30))
        .unwrap()
}

fn ping(s: &Setup, token: &str) -> Result<(), String> {
    let id = s.id.to_str().unwrap().to_owned();
    ping_with(
        Command::new("env"),
        s,
        &["--tls", "server-auth", "--identity", &id],
        token,
    )
}

#[test]
fn token_is_accepted_once_even_across_a_restart() {
    let s = setup(false);
    let mut server = serve(&s, &["--tls", "server-auth"]);
    let token = mint(&s, "0");
    assert!(token.starts_with("pw1."), "{token}");
    ping(&s, &token).unwrap();
    let err = ping(&s, &token).unwrap_err();
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("already used"),
        "{err}"
    );
    // Without a token at all.
    let err = ping(&s, "").unwrap_err();
    assert!(err.contains("requires a session token"), "{err}");
    // The server restarts: the replay is still refused; a fresh token works.
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let _server = serve(&s, &["--tls", "server-auth"]);
    let err = ping(&s, &token).unwrap_err();
    assert!(err.contains("already used"), "{err}");
    ping(&s, &mint(&s, "0")).unwrap();
}

#[test]
fn expired_forged_and_foreign_tokens_are_refused() {
    let s = setup(false);
    let _server = serve(&s, &["--tls", "server-auth"]);
    let secret = DeviceSecret::read(&s.id.join("server/token.key")).unwrap();
    let binding = Binding {
        uid: 0,
        exe: None,
        socket: std::fs::canonicalize(&s.socket).unwrap(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Expired (issued 2 minutes ago for 30 s).
    let old = Minter::new(&secret)
        .unwrap()
        .mint_at(&binding, now - 120, Duration::from_secs(30))
        .unwrap();
    let err = ping(&s, &old).unwrap_err();
    assert!(err.contains("expired"), "{err}");
    // One bit flipped (every bit is covered by the unit test; here, through the socket).
    let good = mint(&s, "0");
    let mut bytes = good.into_bytes();
    let last = bytes.len() - 5;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let err = ping(&s, std::str::from_utf8(&bytes).unwrap()).unwrap_err();
    assert!(err.contains("signature is invalid"), "{err}");
    // Minted with another device's secret.
    let foreign = Minter::new(&DeviceSecret::generate().unwrap())
        .unwrap()
        .mint(&binding, Duration::from_secs(30))
        .unwrap();
    let err = ping(&s, &foreign).unwrap_err();
    assert!(err.contains("another device"), "{err}");
    // For another server socket.
    let elsewhere = Binding {
        socket: "/run/other.sock".into(),
        ..binding.clone()
    };
    let err = ping(&s, &mint_with(&secret, &elsewhere)).unwrap_err();
    assert!(err.contains("another server socket"), "{err}");
    // Bound to another executable.
    let other_exe = Binding {
        exe: Some("/usr/bin/true".into()),
        ..binding.clone()
    };
    let err = ping(&s, &mint_with(&secret, &other_exe)).unwrap_err();
    assert!(err.contains("another executable"), "{err}");
    // Bound to the right executable: accepted.
    let right_exe = Binding {
        exe: Some(shared_bin()),
        ..binding
    };
    ping(&s, &mint_with(&secret, &right_exe)).unwrap();
}

#[test]
fn token_for_another_uid_is_refused() {
    let display = ensure_group("pwt-display");
    let alice = ensure_user("pwt-alice", "pwt-display");
    let bob = ensure_user("pwt-bob", "pwt-display");
    let s = setup(true);
    // Plain transport here so that the other users need no identity files; the token check
    // is the same with TLS.
    let _server = serve(
        &s,
        &[
            "--socket-group",
            "pwt-display",
            "--allow-group",
            "pwt-display",
        ],
    );
    let for_alice = mint(&s, "pwt-alice");
    let err = ping_with(as_user(bob, display, &[]), &s, &[], &for_alice).unwrap_err();
    assert!(
        err.contains(&format!("minted for uid {alice}, presented by uid {bob}")),
        "{err}"
    );
    // Alice herself can still use it (a refused presentation does not consume the token).
    ping_with(as_user(alice, display, &[]), &s, &[], &for_alice).unwrap();
}

fn proc_file(pid: u32, name: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{name}")).unwrap_or_default()
}

#[test]
fn launched_client_gets_its_token_through_an_inherited_pipe() {
    let s = setup(false);
    let _server = serve(&s, &["--tls", "server-auth", "--tick-ms", "1500"]);
    let id = s.id.to_str().unwrap().to_owned();
    let launcher = Command::new(BIN)
        .args(["launch", "--for-uid", "0", "--identity", &id, "--socket"])
        .arg(&s.socket)
        .arg("--")
        .arg(BIN)
        .args([
            "ping",
            "--wait-tick",
            "--tls",
            "server-auth",
            "--identity",
            &id,
            "--socket",
        ])
        .arg(&s.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Find the client while it waits for its tick, and read what others could read of it.
    let start = Instant::now();
    let child = loop {
        let out = Command::new("pgrep")
            .args(["-P", &launcher.id().to_string()])
            .output()
            .unwrap();
        if let Some(pid) = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no launched child"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(200));
    let cmdline = proc_file(child, "cmdline");
    let environ = proc_file(child, "environ");
    assert!(!cmdline.is_empty() && !environ.is_empty());
    let has = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !has(&cmdline, "pw1.") && !has(&environ, "pw1."),
        "a token leaked into argv or the environment"
    );
    assert!(
        has(&environ, "PEERWIRE_TOKEN_FD="),
        "the descriptor number is passed"
    );
    let out = launcher.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("round trips") && stdout.contains("event echo.Tick #1"),
        "{stdout}"
    );
    // The token was one-time: no leftover file holds it.
    for entry in std::fs::read_dir(s.id.join("server")).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        assert!(
            !has(&bytes, "pw1."),
            "{} holds a token",
            entry.path().display()
        );
    }
}

/// A Hello with a well-formed but forged token (right length and version, random MAC): the
/// most expensive kind to refuse. Every tenth is plain garbage.
fn bad_hello(i: u64) -> Vec<u8> {
    use base64::Engine as _;
    let token = if i % 10 == 0 {
        format!("pw1.{}", "A".repeat(100 + (i % 50) as usize))
    } else {
        let mut raw = [0u8; 134];
        openssl::rand::rand_bytes(&mut raw).unwrap();
        raw[0] = 1;
        format!(
            "pw1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        )
    };
    let frame = Frame::new(Kind::Hello(Hello {
        protocol_versions: vec![1],
        client_name: "flood".into(),
        session_token: token.into_bytes(),
        ..Default::default()
    }));
    let mut buf = BytesMut::new();
    FrameCodec::new(u32::MAX).encode(&frame, &mut buf).unwrap();
    buf.to_vec()
}

async fn flood(path: &Path, from: u64, to: u64) -> u64 {
    let mut refused = 0;
    for i in from..to {
        let mut raw = RawClient::connect(path).await;
        raw.send_bytes(&bad_hello(i)).await;
        if let Read::Frame(f) = raw.read().await {
            if let Some(Kind::Reject(r)) = f.kind {
                assert_eq!(r.code, Code::Unauthenticated as i32);
                refused += 1;
            }
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_bad_tokens_neither_grows_memory_nor_blocks_valid_clients() {
    let total: u64 = std::env::var("PEERWIRE_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = setup(false);
    // 100,000 refusals are 100,000 WARN lines: keep them out of the test output.
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root"])
        .arg("--socket")
        .arg(&s.socket)
        .arg("--identity")
        .arg(&s.id)
        .arg("--require-token");
    cmd.stderr(Stdio::null());
    let server = ServeProcess::spawn(cmd, &s.socket);
    let pid = server.child.id();
    // Warm up, then measure from there.
    flood(&s.socket, 0, 2_000).await;
    let before = rss_kib(pid);
    let start = Instant::now();
    let tasks = 8;
    let per = total / tasks;
    let mut handles = vec![];
    for t in 0..tasks {
        let path = s.socket.clone();
        handles.push(tokio::spawn(async move {
            flood(&path, t * per, (t + 1) * per).await
        }));
    }
    // Valid clients get through while the flood runs.
    let mut valid = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        let token = mint(&s, "0");
        let t0 = Instant::now();
        ping_with(Command::new("env"), &s, &[], &token).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a valid client waited {:?}",
            t0.elapsed()
        );
        valid += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut refused = 0;
    for h in handles {
        refused += h.await.unwrap();
    }
    let after = rss_kib(pid);
    eprintln!(
        "{refused} bad tokens in {:?}; {valid} valid clients served meanwhile; server RSS {before} KiB -> {after} KiB",
        start.elapsed()
    );
    assert_eq!(refused, per * tasks);
    assert!(valid >= 1);
    assert!(
        after < before + 16 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
}
