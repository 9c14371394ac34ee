//! Hostile peers against the limits, with real sockets and a real `peerwire serve` process:
//! slowloris, a thousand silent connections, a peer that never reads its responses. While they
//! attack, a well-behaved client (another user) is served and the server's memory stays bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{
    RawClient, Read, ServeProcess, as_user, ensure_group, ensure_user, hello_frame, open_tempdir,
    rss_kib, shared_bin,
};
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::{Code, Frame, Request, frame::Kind};
use prost::Message;

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard).unwrap();
}

/// A server that admits root and the display group, with the socket open to that group. The
/// handshake timeout is long (60 s) so that what a test observes does not depend on how fast a
/// loaded machine opens its connections.
fn server(dir: &Path) -> (ServeProcess, std::path::PathBuf) {
    let socket = dir.join("run/s.sock");
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nsocket_group = \"pwt-display\"\n[access]\nallow_uids = [\"0\"]\n\
             allow_groups = [\"pwt-display\"]\n[limits]\nhandshake_timeout_ms = 60000\n",
            socket.to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root", "--config"]).arg(&config);
    (ServeProcess::spawn(cmd, &socket), socket)
}

/// `peerwire ping` as pwt-alice: the well-behaved client. Returns how long it took.
fn good_client(socket: &Path) -> Duration {
    let uid = ensure_user("pwt-alice", "pwt-display");
    let gid = ensure_group("pwt-display");
    let start = Instant::now();
    let out = as_user(uid, gid, &[])
        .arg(shared_bin())
        .args(["ping", "--count", "5", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "good client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_dropped_at_the_handshake_timeout() {
    let tmp = open_tempdir();
    let cfg = tmp.path().join("server.toml");
    let socket = tmp.path().join("run/s.sock");
    std::fs::write(
        &cfg,
        format!(
            "socket = {:?}\n[limits]\nhandshake_timeout_ms = 1000\n",
            socket.to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root", "--config"]).arg(&cfg);
    let _server = ServeProcess::spawn(cmd, &socket);
    let mut hello = BytesMut::new();
    FrameCodec::new(u32::MAX)
        .encode(&hello_frame(&[1], &[("echo", 1)]), &mut hello)
        .unwrap();
    let mut raw = RawClient::connect(&socket).await;
    let start = Instant::now();
    // One byte every 200 ms: the Hello would take seconds; the server stops waiting after 1 s.
    for byte in hello.iter().take(hello.len() - 1) {
        if tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &[*byte])
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    match raw.read().await {
        Read::Frame(f) => match f.kind {
            Some(Kind::Reject(r)) => {
                assert_eq!(r.code, Code::HandshakeTimeout as i32, "{}", r.reason)
            }
            other => panic!("{other:?}"),
        },
        Read::Eof | Read::Error(_) => {}
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "dropped after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_do_not_lock_out_other_users() {
    if !common::root_or_skip("a_thousand_silent_connections_do_not_lock_out_other_users") {
        return;
    }
    raise_fd_limit();
    ensure_user("pwt-alice", "pwt-display");
    let tmp = open_tempdir();
    let (server, socket) = server(tmp.path());
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    // The well-behaved client of another user is served at once.
    let took = good_client(&socket);
    assert!(
        took < Duration::from_secs(3),
        "the good client waited {took:?}"
    );
    // Exactly root's share of unauthenticated connections (32) is held open, waiting for a
    // Hello; every other silent peer got a clear refusal at once. (Which 32 depends on the order
    // in which the server's connection tasks ran, so all 1,000 are read, concurrently.)
    let mut reads = tokio::task::JoinSet::new();
    for stream in silent.drain(..) {
        reads.spawn(async move {
            let mut raw = RawClient::from_stream(stream);
            match tokio::time::timeout(Duration::from_secs(3), raw.read()).await {
                Ok(Read::Frame(f)) => match f.kind {
                    Some(Kind::Reject(r)) => Some((r.code, r.reason)),
                    other => panic!("unexpected {other:?}"),
                },
                Ok(_) => panic!("closed without a reason"),
                Err(_) => None, // admitted, still waiting for its Hello
            }
        });
    }
    let (mut refused, mut waiting, mut reason) = (0, 0, String::new());
    while let Some(r) = reads.join_next().await {
        match r.unwrap() {
            Some((code, why)) => {
                assert_eq!(code, Code::ResourceExhausted as i32, "{why}");
                reason = why;
                refused += 1;
            }
            None => waiting += 1,
        }
    }
    assert_eq!(
        (refused, waiting),
        (968, 32),
        "silent peers beyond the limit must be refused"
    );
    assert!(
        reason.contains("max_unauthenticated_per_uid") && reason.contains("limit of 32"),
        "{reason}"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_responses_is_cut_off() {
    if !common::root_or_skip("a_peer_that_never_reads_its_responses_is_cut_off") {
        return;
    }
    let tmp = open_tempdir();
    ensure_user("pwt-alice", "pwt-display");
    let (server, socket) = server(tmp.path());
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut raw = RawClient::connect(&socket).await;
    assert!(matches!(
        raw.hello(&[("echo", 1)]).await.kind,
        Some(Kind::Welcome(_))
    ));
    // 200 echo requests of 512 KiB (100 MiB of responses), and never a read.
    let payload = vec![0x5au8; 512 * 1024].encode_to_vec();
    let mut sent = 0;
    for id in 1..=200u64 {
        let frame = Frame::new(Kind::Request(Request {
            id,
            method: "echo.Echo".into(),
            payload: payload.clone().into(),
            deadline_ms: 0,
        }));
        let mut buf = BytesMut::new();
        FrameCodec::new(u32::MAX).encode(&frame, &mut buf).unwrap();
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &buf),
        )
        .await
        {
            Ok(Ok(())) => sent += 1,
            // The server stopped reading from us (it closed us as a slow consumer).
            _ => break,
        }
    }
    assert!(sent >= 10, "only {sent} requests went out");
    // Meanwhile another user is served promptly.
    let took = good_client(&socket);
    assert!(
        took < Duration::from_secs(3),
        "the good client waited {took:?}"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
    // The server gave up on the non-reader: its connection is closed (after what was queued).
    let start = Instant::now();
    let mut frames = 0;
    let mut goodbye = None;
    loop {
        match raw.read().await {
            Read::Frame(f) => {
                frames += 1;
                if let Some(Kind::Goodbye(g)) = f.kind {
                    goodbye = Some(g);
                }
            }
            Read::Eof | Read::Error(_) => break,
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server kept the non-reader"
        );
    }
    assert!(
        frames < 200,
        "all {frames} responses were kept for a peer that does not read"
    );
    if let Some(g) = goodbye {
        assert_eq!(g.code, Code::SlowConsumer as i32, "{}", g.reason);
    }
}

#[test]
fn stats_command_reports_denials_and_limit_hits() {
    if !common::root_or_skip("stats_command_reports_denials_and_limit_hits") {
        return;
    }
    let tmp = open_tempdir();
    let bob = ensure_user("pwt-bob", "pwt-display");
    let display = ensure_group("pwt-display");
    // Admits root only, but the socket is reachable by the display group: bob is denied.
    let socket = tmp.path().join("run/s.sock");
    let mut cmd = Command::new(shared_bin());
    cmd.args([
        "serve",
        "--allow-root",
        "--socket-group",
        "pwt-display",
        "--allow-uid",
        "0",
        "--socket",
    ])
    .arg(&socket);
    let _server = ServeProcess::spawn(cmd, &socket);
    let out = as_user(bob, display, &[])
        .arg(shared_bin())
        .args(["ping", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(shared_bin())
        .args(["ping", "--count", "3", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(shared_bin())
        .args(["stats", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let get = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(get("denied"), 1, "{text}");
    assert!(get("requests") >= 3, "{text}");
    assert!(get("sessions") >= 2, "{text}");
    assert_eq!(get("open"), 1, "{text}");
    // Bob, denied, cannot read the statistics either.
    let out = as_user(bob, display, &[])
        .arg(shared_bin())
        .args(["stats", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_are_handled_by_their_topic_policy_and_never_block_a_push() {
    use peerwire_server::{Server, SlowConsumerPolicy};
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/s.sock");
    let mut b = Server::builder(&socket);
    b = b
        .namespace("feed", &[1])
        .topic_policy("feed.State", SlowConsumerPolicy::KeepLatest)
        .topic_policy("feed.Log", SlowConsumerPolicy::DropOldest)
        .topic_policy("feed.Alarm", SlowConsumerPolicy::Disconnect);
    let server = b.bind().unwrap();
    let handle = server.handle();
    tokio::spawn(server.run());
    // Three peers that subscribe and then never read, one per topic.
    let mut stalled = vec![];
    for topic in ["feed.State", "feed.Log", "feed.Alarm"] {
        let mut raw = RawClient::connect(&socket).await;
        assert!(matches!(
            raw.hello(&[("feed", 1)]).await.kind,
            Some(Kind::Welcome(_))
        ));
        let sub = peerwire_proto::v1::SubscribeRequest {
            topics: vec![topic.into()],
        };
        raw.send(Frame::new(Kind::Request(Request {
            id: 1,
            method: peerwire_proto::METHOD_SUBSCRIBE.into(),
            payload: sub.encode_to_vec().into(),
            deadline_ms: 0,
        })))
        .await;
        assert!(matches!(raw.read().await, Read::Frame(_)), "subscribed");
        stalled.push(raw);
    }
    // A well-behaved subscriber of the two dropping topics, reading as it goes.
    let good = peerwire_client::Client::builder(&socket)
        .namespace("feed", &[1])
        .connect()
        .await
        .unwrap();
    let mut stream = good
        .subscribe_many(&["feed.State", "feed.Log"])
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut last = (0u64, 0u64);
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
            let v: u64 = ev.decode().unwrap();
            if ev.topic == "feed.State" {
                last.0 = v
            } else {
                last.1 = v
            }
        }
        last
    });
    // 20,000 pushes per topic: none of them may wait for the stalled peers.
    let start = Instant::now();
    for i in 1..=20_000u64 {
        for topic in ["feed.State", "feed.Log", "feed.Alarm"] {
            let _ = handle.broadcast(topic, &i);
        }
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "60,000 pushes took {took:?}"
    );
    let stats = handle.stats();
    assert!(stats.events_dropped > 0, "{stats:?}");
    assert!(
        stats.slow_consumers >= 1,
        "the Alarm subscriber was not cut off: {stats:?}"
    );
    // The good subscriber ends with the latest value of both topics.
    let last = reader.await.unwrap();
    assert_eq!(last, (20_000, 20_000));
    // The stalled State and Log peers are still connected and, when they finally read, end
    // with the latest events; the stalled Alarm peer was told why it was cut off.
    let alarm = stalled.pop().unwrap();
    for (mut raw, topic) in stalled.into_iter().zip(["feed.State", "feed.Log"]) {
        // Still unread, the peer pings: its dropped events left room for the Pong, so it is
        // not taken for a slow consumer (only its topic's policy applies to it).
        raw.send(Frame::new(Kind::Ping(peerwire_proto::v1::Ping {
            nonce: 77,
        })))
        .await;
        let mut last = None;
        let mut pong = false;
        while let Ok(Read::Frame(f)) =
            tokio::time::timeout(Duration::from_millis(500), raw.read()).await
        {
            match f.kind {
                Some(Kind::Event(e)) => {
                    last = Some((e.seq, u64::decode(e.payload.as_ref()).unwrap()));
                }
                Some(Kind::Pong(p)) => pong = p.nonce == 77,
                Some(Kind::Goodbye(g)) => panic!("{topic}: the stalled peer was closed: {g:?}"),
                _ => {}
            }
        }
        assert!(pong, "{topic}: no Pong");
        let (seq, value) = last.unwrap_or_else(|| panic!("{topic}: nothing delivered"));
        assert_eq!(value, 20_000, "{topic}");
        assert_eq!(
            seq, 20_000,
            "{topic}: seq counts every event, the gaps show the drops"
        );
    }
    let mut alarm = alarm;
    let frames = alarm.read_to_end().await;
    let goodbye = frames.iter().find_map(|f| match &f.kind {
        Some(Kind::Goodbye(g)) => Some(g.code),
        _ => None,
    });
    // The Goodbye is queued behind what the peer never read; it may be dropped with the rest.
    if let Some(code) = goodbye {
        assert_eq!(code, Code::SlowConsumer as i32);
    }
    assert!(frames.len() < 20_000, "the Alarm peer was not cut off");
    assert_eq!(
        handle.stats().slow_consumers,
        1,
        "only the Alarm peer was cut off"
    );
}
