//! The blocking client (`peerwire_client::blocking`) against a real `peerwire serve`: calls from
//! several threads on one connection, events (also those arriving during a call, bounded),
//! deadlines, a server going away mid-call, mutual TLS, session tokens, an untrusted server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, ServeProcess, init_logs};
use peerwire_client::{CallError, Client, ClientTls, ConnectError, TlsMode};
use peerwire_proto::v1::Code;

fn builder(path: &Path) -> peerwire_client::ClientBuilder {
    Client::builder(path)
        .name("blocking-test")
        .namespace("echo", &[1])
}

fn identity(dir: &Path) -> PathBuf {
    let id = dir.join("id");
    common::init_identity(&id, "blocking-device");
    id
}

/// A `peerwire serve` with `extra` arguments on a socket in a fresh directory.
fn serve(extra: &[&str]) -> (tempfile::TempDir, PathBuf, ServeProcess) {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = ServeProcess::start(&path, extra);
    (dir, path, server)
}

#[test]
fn calls_from_several_threads_share_one_connection() {
    let (_dir, path, _server) = serve(&["--tick-ms", "100000"]);
    let client = builder(&path).connect_blocking().unwrap();
    assert_eq!(
        client.server_credentials().uid,
        nix::unistd::geteuid().as_raw()
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let req = format!("thread {t} call {i}").into_bytes();
                    let resp: Vec<u8> = client.call("echo.Echo", &req).unwrap();
                    assert_eq!(resp, req);
                }
            })
        })
        .collect();
    // A slow call in flight meanwhile does not hold the others up.
    let slow = {
        let client = client.clone();
        std::thread::spawn(move || client.call::<u64, u64>("echo.Sleep", &300))
    };
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(slow.join().unwrap().unwrap(), 300);
    // Many calls in flight from one thread, answered through `recv`.
    let ids: Vec<u64> = (0..64u64)
        .map(|i| {
            client
                .start_call(
                    "echo.Echo",
                    prost::Message::encode_to_vec(&vec![i as u8]),
                    Duration::from_secs(10),
                )
                .unwrap()
        })
        .collect();
    let mut answered = 0;
    while answered < ids.len() {
        match client.recv(Some(Duration::from_secs(10))).unwrap() {
            Some(peerwire_client::blocking::Delivery::Answer(id, answer)) => {
                let i = ids.iter().position(|x| *x == id).unwrap();
                let echoed: Vec<u8> = prost::Message::decode(answer.unwrap()).unwrap();
                assert_eq!(echoed, vec![i as u8]);
                answered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A name outside the announced namespaces is refused locally, as by the async client.
    let err = client.call::<u64, u64>("other.Thing", &1).unwrap_err();
    assert!(matches!(err, CallError::Status(_)), "{err}");
    client.close();
    assert!(!client.is_connected());
    let err = client
        .call::<Vec<u8>, Vec<u8>>("echo.Echo", &vec![1])
        .unwrap_err();
    assert!(matches!(err, CallError::Disconnected(_)), "{err}");
}

#[test]
fn events_arrive_in_order_also_during_a_call_and_the_queue_is_bounded() {
    let (_dir, path, _server) = serve(&["--tick-ms", "20"]);
    let client = builder(&path).event_buffer(5).connect_blocking().unwrap();
    assert_eq!(client.subscribe(&["echo.Tick"]).unwrap(), vec!["echo.Tick"]);
    let first = client.recv_event(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(first.topic, "echo.Tick");
    // Ticks come every 20 ms while a 400 ms call waits: they are read by the call and kept,
    // five of them; the rest are dropped.
    assert_eq!(client.call::<u64, u64>("echo.Sleep", &400).unwrap(), 400);
    let mut seqs = vec![first.seq];
    while let Some(ev) = client.recv_event(Duration::ZERO).unwrap() {
        seqs.push(ev.seq);
    }
    assert_eq!(seqs.len(), 6, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "{seqs:?}");
    // After the call's answer, the next events show the gap of those dropped.
    let next = client.recv_event(Duration::from_secs(5)).unwrap().unwrap();
    assert!(next.seq > seqs[5] + 1, "{} after {seqs:?}", next.seq);
    // The iterator goes on in order; unsubscribing stops the pushes.
    let more: Vec<u64> = client.events().take(3).map(|e| e.seq).collect();
    assert!(
        more[0] > next.seq && more.windows(2).all(|w| w[0] + 1 == w[1]),
        "{more:?}"
    );
    client.unsubscribe(&["echo.Tick"]).unwrap();
    while client
        .recv_event(Duration::from_millis(100))
        .unwrap()
        .is_some()
    {}
    assert!(
        client
            .recv_event(Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
    // Nothing waits forever: `recv_event` gives up at its timeout.
    let t = Instant::now();
    assert!(
        client
            .recv_event(Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    assert!(t.elapsed() >= Duration::from_millis(190));
}

#[test]
fn a_deadline_fails_the_call_and_the_connection_goes_on() {
    let (_dir, path, _server) = serve(&["--tick-ms", "100000"]);
    let client = builder(&path).connect_blocking().unwrap();
    let t = Instant::now();
    let err = client
        .call_with_deadline::<u64, u64>("echo.Sleep", &10_000, Duration::from_millis(200))
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let resp: Vec<u8> = client.call("echo.Echo", &b"after".to_vec()).unwrap();
    assert_eq!(resp, b"after");
}

#[test]
fn a_server_that_goes_away_mid_call_fails_the_call_at_once() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let log = dir.path().join("serve.log");
    let server = ServeProcess::start_logged(&path, &["--tick-ms", "100000"], &log);
    let client = builder(&path).connect_blocking().unwrap();
    let caller = {
        let client = client.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = client.call_with_deadline::<u64, u64>(
                "echo.Sleep",
                &20_000,
                Duration::from_secs(30),
            );
            (r, t.elapsed())
        })
    };
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("echo.Sleep started")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the call never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.signal(nix::sys::signal::Signal::SIGKILL);
    let (result, took) = caller.join().unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::Disconnected(_)), "{err}");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!client.is_connected());
    assert!(matches!(
        client.recv_event(Duration::from_secs(1)),
        Err(CallError::Disconnected(_))
    ));
}

#[test]
fn mutual_tls_with_the_pinned_identities_and_a_wrong_one_refused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let id = identity(dir.path());
    let other = dir.path().join("other");
    common::init_identity(&other, "other-device");
    let path = dir.path().join("s.sock");
    let id_arg = id.to_str().unwrap();
    let _server = ServeProcess::start(
        &path,
        &["--tick-ms", "20", "--tls", "mutual", "--identity", id_arg],
    );
    let tls = ClientTls::from_dir(&id, TlsMode::Mutual).unwrap().unwrap();
    let client = builder(&path).tls(tls).connect_blocking().unwrap();
    for i in 0..200u32 {
        let req = vec![(i % 251) as u8; (i as usize) * 97];
        let resp: Vec<u8> = client.call("echo.Echo", &req).unwrap();
        assert_eq!(resp, req);
    }
    // A 1 MiB message spans many TLS records.
    let big = vec![7u8; 1 << 20];
    let resp: Vec<u8> = client.call("echo.Echo", &big).unwrap();
    assert_eq!(resp, big);
    client.subscribe(&["echo.Tick"]).unwrap();
    let a = client.recv_event(Duration::from_secs(5)).unwrap().unwrap();
    let b = client.recv_event(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(a.seq + 1, b.seq);
    client.close();
    // Another device's client identity is refused by the server.
    let wrong = ClientTls::from_dir(&other, TlsMode::Mutual)
        .unwrap()
        .unwrap();
    let err = builder(&path).tls(wrong).connect_blocking().unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    // A plain client is refused too (with the server's reason, or a failed handshake).
    assert!(builder(&path).connect_blocking().is_err());
}

#[test]
fn a_session_token_is_good_for_one_session() {
    if !common::root_or_skip("a_session_token_is_good_for_one_session") {
        return;
    }
    init_logs();
    let dir = common::open_tempdir();
    let id = identity(dir.path());
    let path = dir.path().join("run/s.sock");
    let mut cmd = Command::new(common::shared_bin());
    cmd.args(["serve", "--allow-root", "--socket"])
        .arg(&path)
        .arg("--identity")
        .arg(&id)
        .args([
            "--require-token",
            "--tls",
            "server-auth",
            "--tick-ms",
            "100000",
        ]);
    let _server = ServeProcess::spawn(cmd, &path);
    let out = common::succeed(
        Command::new(BIN)
            .args(["token", "mint", "--for-uid", "0", "--identity"])
            .arg(&id)
            .arg("--socket")
            .arg(&path),
    );
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let tls = || {
        ClientTls::from_dir(&id, TlsMode::ServerAuth)
            .unwrap()
            .unwrap()
    };
    let err = builder(&path).tls(tls()).connect_blocking().unwrap_err();
    assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
    let client = builder(&path)
        .tls(tls())
        .token(&token)
        .connect_blocking()
        .unwrap();
    let resp: Vec<u8> = client.call("echo.Echo", &b"t".to_vec()).unwrap();
    assert_eq!(resp, b"t");
    client.close();
    let err = builder(&path)
        .tls(tls())
        .token(&token)
        .connect_blocking()
        .unwrap_err();
    assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
}

#[test]
fn a_server_of_another_uid_is_refused_before_anything_is_sent() {
    let (dir, path, _server) = serve(&["--tick-ms", "100000"]);
    let err = builder(&path)
        .expect_server_uid(54_321)
        .connect_blocking()
        .unwrap_err();
    assert!(matches!(err, ConnectError::UntrustedServer { .. }), "{err}");
    // No server at all: an I/O error naming the path, not a hang.
    let err = builder(&dir.path().join("none.sock"))
        .connect_blocking()
        .unwrap_err();
    assert!(matches!(err, ConnectError::Io { .. }), "{err}");
}
