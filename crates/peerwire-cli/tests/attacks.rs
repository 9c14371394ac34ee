//! Issue 14's adversarial review, reproduced: each test is an attack that succeeded on the code
//! before the fix (said in each test's comment), run against a real `peerwire serve` process or
//! an in-process server over real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{BIN, RawClient, ServeProcess, hello_frame, init_identity, init_logs, rss_kib};
use peerwire_client::{Client, ClientTls, TlsMode};
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::{Code, Event, Frame, Goodbye, Pong, frame::Kind};
use peerwire_server::{Limits, Server};

fn frame_hex(frame: Frame) -> String {
    let mut buf = BytesMut::new();
    FrameCodec::new(1 << 20).encode(&frame, &mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles one of `tests/attackers/*.c` against the system OpenSSL.
fn attacker(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/attackers/{name}.c"));
    let bin = dir.join(name);
    // cc and libssl-dev are installed by .ci/run.
    common::succeed(
        Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .args(["-lssl", "-lcrypto"]),
    );
    bin
}

async fn stats(client: &Client) -> peerwire_proto::v1::ServerStats {
    client
        .call(peerwire_proto::METHOD_STATS, &())
        .await
        .unwrap()
}

/// Item 3. A mutual-TLS peer that never reads and loops KeyUpdate(update_requested) plus a
/// Pong makes the server produce a KeyUpdate for each, which it cannot send. Before the fix
/// those records sat outside the outbound bound (RSS 11 -> 65 MiB in 45 s, the idle timeout
/// never fired). Now they count against `outbound_queue_bytes`: the connection is closed as a
/// slow consumer, RSS stays within 16 MiB of where it started, and another client's calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_key_update_flood_is_a_slow_consumer_and_memory_stays_bounded() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let id = tmp.path().join("id");
    init_identity(&id, "d");
    let socket = tmp.path().join("run/s.sock");
    // A 1 MiB outbound bound (the default is 8 MiB), so that the flood reaches it in seconds.
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\n[tls]\nmode = \"mutual\"\nidentity = {id:?}\n\
             [limits]\noutbound_queue_bytes = 1048576\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--allow-root", "--config"]).arg(&config);
    let server = ServeProcess::spawn(cmd, &socket);
    let tls = || ClientTls::from_dir(&id, TlsMode::Mutual).unwrap().unwrap();
    let client = Client::builder(&socket)
        .tls(tls())
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap();
    // Warm up the server (allocator arenas, TLS contexts), then take the baseline.
    for _ in 0..200 {
        let _: Vec<u8> = client.call("echo.Echo", &vec![7u8; 64]).await.unwrap();
    }
    let before = rss_kib(server.child.id());
    let bin = attacker("keyupdate", tmp.path());
    let flood = Command::new(&bin)
        .arg(&socket)
        .arg(id.join("client/cert.pem"))
        .arg(id.join("client/key.pem"))
        .arg(frame_hex(hello_frame(&[1], &[])))
        .arg(frame_hex(Frame::new(Kind::Pong(Pong { nonce: 1 }))))
        .arg("30")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = flood.id();
    // Meanwhile another client's calls keep being answered.
    let mut calls = 0u32;
    let mut worst = Duration::ZERO;
    let mut peak = before;
    let flood = tokio::task::spawn_blocking(move || flood.wait_with_output().unwrap());
    while !flood.is_finished() {
        let t = Instant::now();
        let _: Vec<u8> = client.call("echo.Echo", &vec![7u8; 64]).await.unwrap();
        worst = worst.max(t.elapsed());
        calls += 1;
        peak = peak.max(rss_kib(server.child.id()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = flood.await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "attacker {pid}: {said}; server RSS {before} KiB -> peak {peak} KiB; {calls} calls by another client meanwhile, slowest {worst:?}"
    );
    assert!(
        said.contains("welcome") && said.contains("closed by the server"),
        "the flooding connection was not closed within 30 s: {said}"
    );
    assert!(
        peak < before + 16 * 1024,
        "server RSS grew from {before} KiB to {peak} KiB"
    );
    assert!(calls > 0);
    assert!(stats(&client).await.slow_consumers >= 1);
}

/// Item 5. 50 silent connections of one uid held all 32 `max_unauthenticated_per_uid` places,
/// and a genuine client of the same uid was refused `RESOURCE_EXHAUSTED` until the handshake
/// timeout (before the fix: every one of the 500 pings below failed). Now the newcomer evicts
/// that uid's oldest connection still in its handshake, which is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_of_a_uid_cannot_lock_out_its_genuine_client() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/s.sock");
    let mut builder = Server::builder(&socket);
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_secs(60);
    builder = builder.limits(limits);
    builder = builder.namespace("echo", &[1]);
    builder = builder.method("echo.Echo", |_ctx, req: Vec<u8>| async move { Ok(req) });
    let server = builder.bind().unwrap();
    let handle = server.handle();
    tokio::spawn(server.run());
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(RawClient::connect(&socket).await);
    }
    for i in 0..500 {
        let client = Client::builder(&socket)
            .namespace("echo", &[1])
            .connect()
            .await
            .unwrap_or_else(|e| panic!("ping {i}: {e}"));
        let back: Vec<u8> = client.call("echo.Echo", &vec![i as u8; 8]).await.unwrap();
        assert_eq!(back, vec![i as u8; 8]);
        client.close().await;
    }
    // The oldest silent connections were told why they were closed.
    let first = silent.first_mut().unwrap().read().await;
    match first {
        common::Read::Frame(Frame {
            kind: Some(Kind::Reject(r)),
        }) => {
            assert_eq!(r.code, Code::ResourceExhausted as i32);
            assert!(r.reason.contains("oldest still in its handshake"), "{r:?}");
        }
        other => panic!("the oldest silent connection got {other:?}"),
    }
    // 18 silent connections were evicted by the later silent ones and one by the first ping,
    // which made the room every later ping used (each finishes its handshake at once).
    assert_eq!(handle.stats().limit_refusals, 50 - 32 + 1);
}

/// Item 6. Peer-controlled text reached the logs raw (an event topic as `topic = %ev.topic`,
/// `client_name` at INFO): a newline and a fake timestamp forged a log line, and ANSI escapes
/// reached the terminal. Now each field is escaped, so each gives exactly one line, with the
/// escapes visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_text_in_every_field_is_logged_escaped_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/s.sock");
    let log_path = tmp.path().join("server.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--allow-root", "--socket"])
        .arg(&socket)
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(&log_path).unwrap());
    let server = ServeProcess::spawn(cmd, &socket);
    let forged =
        |field: &str| format!("{field}\n2026-12-04T00:00:00Z  INFO forged {field}\x1b[31m");
    // client_name, an event topic, a Goodbye reason.
    let mut raw = RawClient::connect(&socket).await;
    let mut hello = hello_frame(&[1], &[("echo", 1)]);
    if let Some(Kind::Hello(h)) = &mut hello.kind {
        h.client_name = forged("CLIENTNAME");
    }
    raw.send(hello).await;
    assert!(matches!(
        raw.read().await,
        common::Read::Frame(Frame {
            kind: Some(Kind::Welcome(_))
        })
    ));
    raw.send(Frame::new(Kind::Event(Event {
        topic: forged("TOPIC"),
        seq: 1,
        payload: Default::default(),
    })))
    .await;
    raw.send(Frame::new(Kind::Goodbye(Goodbye {
        code: 0,
        reason: forged("REASON"),
    })))
    .await;
    let _ = raw.read_to_end().await;
    // A namespace name in a Hello the server refuses (quoted in the refusal's reason).
    let mut raw = RawClient::connect(&socket).await;
    raw.send(hello_frame(&[1], &[(forged("NAMESPACE").as_str(), 1)]))
        .await;
    let _ = raw.read_to_end().await;
    // Give the server a moment to write its last lines, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains('\x1b'), "an escape reached the log:\n{log}");
    assert!(
        !log.contains("\n2026-12-04T00:00:00Z"),
        "a forged line:\n{log}"
    );
    for field in ["CLIENTNAME", "TOPIC", "REASON", "NAMESPACE"] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("forged {field}\\u")))
            .collect();
        assert!(!lines.is_empty(), "{field} was not logged:\n{log}");
        for l in &lines {
            assert!(
                l.contains(&format!("{field}\\n2026-12-04T00:00:00Z")) && l.contains("\\u{1b}[31m"),
                "{field} not escaped: {l}"
            );
        }
    }
}

/// Item 6. A flood of 10,000 refusals wrote 10,000 warnings. Now the lines a uid's refusals
/// cause are rate-limited (a summary says how many were left out), while the counters count
/// every refusal exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_gives_bounded_log_lines_and_exact_counters() {
    if !common::root_or_skip("a_refusal_flood_gives_bounded_log_lines_and_exact_counters") {
        return;
    }
    let tmp = common::open_tempdir();
    let socket = tmp.path().join("run/s.sock");
    let log_path = tmp.path().join("server.log");
    let group = "pwt-flood";
    let gid = common::ensure_group(group);
    let uid = common::ensure_user("pwt-flood", group);
    // Only pwt-flood is allowed: every connection of this (root) process is denied.
    let mut cmd = Command::new(common::shared_bin());
    cmd.args(["serve", "--allow-root", "--allow-uid", "pwt-flood"])
        .args(["--socket-group", group, "--socket"])
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap());
    let _server = ServeProcess::spawn(cmd, &socket);
    // Each connection waits for its Reject, so each is counted before the next starts.
    const FLOOD: u64 = 10_000;
    for _ in 0..FLOOD {
        let mut raw = RawClient::connect(&socket).await;
        let _ = raw.read().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let denied_lines = log.lines().filter(|l| l.contains("access denied")).count();
    let summaries = log
        .lines()
        .filter(|l| l.contains("similar lines suppressed"))
        .count();
    eprintln!(
        "{denied_lines} 'access denied' lines and {summaries} summaries for {FLOOD} refusals"
    );
    assert!(
        denied_lines <= 100,
        "{denied_lines} log lines for {FLOOD} refusals"
    );
    assert!(denied_lines >= 1);
    // The counters are exact: read them as the allowed uid.
    let out = common::as_user(uid, gid, &[])
        .arg(common::shared_bin())
        .args(["stats", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // One more than the flood: the test harness's probe that waited for the server to listen.
    let expected = (FLOOD + 1).to_string();
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["denied", &expected]),
        "stats: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connect flood from `uid`: connects (non-blocking) and closes in a loop for `seconds`, and
/// prints how many connects the kernel took and how many it refused.
fn flooder(uid: u32, gid: u32, socket: &Path, seconds: u32) -> std::process::Child {
    const FLOOD: &str = r#"
import socket, sys, time
path, end = sys.argv[1], time.time() + float(sys.argv[2])
done = refused = 0
while time.time() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
        done += 1
    except OSError:
        refused += 1
    s.close()
print(done, refused)
"#;
    common::as_user(uid, gid, &[])
        .args(["/usr/bin/python3", "-c", FLOOD])
        .arg(socket)
        .arg(seconds.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Item 4. At RLIMIT_NOFILE 1024 a uid flooding ~20k connects/s locked out another admitted
/// uid (31 of 35 sessions failed with EAGAIN; the server logged EMFILE), even when the flooding
/// uid was denied: refused connections counted against no limit and each held a descriptor
/// through a 100 ms drain, and on EMFILE the accept loop slept 50 ms. Now every descriptor a
/// peer can make the server hold is bounded and checked against RLIMIT_NOFILE at start, a
/// denied uid is penalised, and EMFILE is met with a spare descriptor: with a denied and an
/// admitted uid flooding for 10 s, a third uid's 200 sessions all succeed, and the server
/// never runs out of descriptors.
#[test]
fn connect_floods_of_a_denied_and_an_admitted_uid_lock_nobody_out() {
    if !common::root_or_skip("connect_floods_of_a_denied_and_an_admitted_uid_lock_nobody_out") {
        return;
    }
    let group = "pwt-fd";
    let gid = common::ensure_group(group);
    let denied = common::ensure_user("pwt-fd-denied", group);
    let flood = common::ensure_user("pwt-fd-flood", group);
    let third = common::ensure_user("pwt-fd-third", group);
    let tmp = common::open_tempdir();
    let socket = tmp.path().join("run/s.sock");
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\nsocket_group = \"{group}\"\n\
             [access]\nallow_uids = [\"pwt-fd-flood\", \"pwt-fd-third\"]\n\
             [limits]\nmax_connections = 256\nmax_connections_per_uid = 64\n"
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("server.log");
    // systemd's default: 1024 descriptors, soft and hard.
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", "--"])
        .arg(common::shared_bin())
        .args(["serve", "--allow-root", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap());
    let server = ServeProcess::spawn(cmd, &socket);
    let floods = [
        flooder(denied, gid, &socket, 10),
        flooder(flood, gid, &socket, 10),
    ];
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..200 {
        let out = common::as_user(third, gid, &[])
            .arg(common::shared_bin())
            .args(["ping", "--count", "1", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!("{i}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let sessions_took = started.elapsed();
    let flooded: Vec<String> = floods
        .into_iter()
        .map(|f| String::from_utf8_lossy(&f.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    eprintln!(
        "200 sessions in {sessions_took:?} during the floods; connects made/refused by the kernel: denied uid {}, admitted uid {}; server descriptors at the end: {open_fds}",
        flooded[0].trim(),
        flooded[1].trim()
    );
    assert!(
        failures.is_empty(),
        "{} sessions failed: {failures:#?}",
        failures.len()
    );
    assert!(
        !log.contains("Too many open files") && !log.contains("EMFILE"),
        "the server ran out of descriptors:\n{}",
        log.lines()
            .filter(|l| l.contains("open files") || l.contains("EMFILE"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Item 4. A configuration whose limits cannot fit in RLIMIT_NOFILE is refused at start,
/// naming both numbers and the fix (before: it started and ran out of descriptors under load).
#[test]
fn a_configuration_that_cannot_fit_in_the_descriptor_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/s.sock");
    let out = Command::new("prlimit")
        .args(["--nofile=1024:1024", "--"])
        .arg(BIN)
        .args(["serve", "--allow-root", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with 1024 descriptors: {err}"
    );
    assert!(
        err.contains("max_connections = 1024")
            && err.contains("hard limit is 1024")
            && err.contains("LimitNOFILE="),
        "{err}"
    );
    assert!(!socket.exists());
}
