//! Shutdown, restart and server death, with `peerwire serve` as a real process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::{RawClient, ServeProcess, init_logs};
use nix::sys::signal::Signal;
use peerwire_client::{Backoff, CallError, Client};
use peerwire_proto::v1::{Code, Frame, Request, frame::Kind};
use prost::Message;

fn sleep_request(id: u64, ms: u64) -> Frame {
    Frame::new(Kind::Request(Request {
        id,
        method: "echo.Sleep".into(),
        payload: ms.encode_to_vec().into(),
        deadline_ms: 60_000,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_calls_in_flight() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let log = dir.path().join("serve.log");
    let mut server = ServeProcess::start_logged(&path, &["--grace-ms", "2000"], &log);

    // Library clients with calls in flight that finish within the grace period.
    let mut calls = vec![];
    for i in 0..4u64 {
        let client = Client::builder(&path)
            .namespace("echo", &[1])
            .connect()
            .await
            .unwrap();
        calls.push(tokio::spawn(async move {
            let ms: u64 = client.call("echo.Sleep", &(300 + i * 50)).await?;
            // After Goodbye, new calls are refused at once with the server's reason.
            let after = client.call::<Vec<u8>, Vec<u8>>("echo.Echo", &vec![1]).await;
            Ok::<_, CallError>((ms, after))
        }));
    }
    // A raw client to watch the frames: one call that finishes in time, one that cannot.
    let mut raw = RawClient::connect(&path).await;
    assert!(matches!(
        raw.hello(&[("echo", 1)]).await.kind,
        Some(Kind::Welcome(_))
    ));
    raw.send(sleep_request(1, 400)).await;
    raw.send(sleep_request(2, 30_000)).await;
    // All six calls (four library clients, two raw) are in flight once their handlers started.
    ServeProcess::wait_started(&log, 6).await;

    let start = Instant::now();
    server.signal(Signal::SIGTERM);
    // New connections are not accepted once shutdown began (the socket is gone).
    assert!(
        common::eventually(Duration::from_secs(2), || !path.exists()).await,
        "socket still there"
    );

    let frames = raw.read_to_end().await;
    let kinds: Vec<_> = frames.iter().map(Frame::kind_name).collect();
    assert_eq!(kinds.first(), Some(&"Goodbye"), "{kinds:?}");
    let Some(Kind::Goodbye(g)) = &frames[0].kind else {
        unreachable!()
    };
    assert_eq!(g.code, Code::ShuttingDown as i32);
    let responses: Vec<_> = frames
        .iter()
        .filter_map(|f| match &f.kind {
            Some(Kind::Response(r)) => Some((r.id, r.code)),
            _ => None,
        })
        .collect();
    assert!(responses.contains(&(1, Code::Ok as i32)), "{responses:?}");
    // The call that would outlive the grace period is abandoned with a clear status.
    assert!(
        responses.contains(&(2, Code::ShuttingDown as i32)),
        "{responses:?}"
    );

    for c in calls {
        let (ms, after) = c.await.unwrap().unwrap();
        assert!(ms >= 300);
        let err = after.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.to_string().contains("SHUTTING_DOWN"), "{err}");
    }
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with a 2 s grace period"
    );
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_client_survives_a_server_restart() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = ServeProcess::start(&path, &["--tick-ms", "20"]);
    let mut backoff = Backoff::default();
    backoff.initial = Duration::from_millis(20);
    backoff.max = Duration::from_millis(200);
    let client = Client::builder(&path)
        .namespace("echo", &[1])
        .reconnect(backoff)
        .connect()
        .await
        .unwrap();
    let mut ticks = client.subscribe("echo.Tick").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), ticks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.topic, "echo.Tick");

    // The server dies hard: no Goodbye, and its socket file is left behind.
    drop(server);
    assert!(path.exists(), "SIGKILL leaves a stale socket");
    assert!(common::eventually(Duration::from_secs(5), || !client.is_connected()).await);
    // Everything the old server sent has been delivered by now; drain it.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), ticks.next()).await {}
    let err = client
        .call::<Vec<u8>, Vec<u8>>("echo.Echo", &vec![1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // A new server replaces the stale socket; the client reconnects and re-subscribes.
    let _server = ServeProcess::start(&path, &["--tick-ms", "20"]);
    assert!(
        client.wait_connected(Duration::from_secs(10)).await,
        "no reconnection"
    );
    // The same stream delivers ticks of the new server: per-connection seq starts again at 1.
    let ev = tokio::time::timeout(Duration::from_secs(5), ticks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ev.topic.as_str(), ev.seq), ("echo.Tick", 1));
    let back: Vec<u8> = client.call("echo.Echo", &b"again".to_vec()).await.unwrap();
    assert_eq!(back, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_calls_fail_promptly_when_the_server_dies() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let log = dir.path().join("serve.log");
    let server = ServeProcess::start_logged(&path, &[], &log);
    let client = Client::builder(&path)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap();
    let mut pending = vec![];
    for _ in 0..8 {
        let client = client.clone();
        pending.push(tokio::spawn(async move {
            client
                .call_with_deadline::<u64, u64>("echo.Sleep", &30_000, Duration::from_secs(60))
                .await
        }));
    }
    ServeProcess::wait_started(&log, 8).await;
    let start = Instant::now();
    server.signal(Signal::SIGKILL);
    for p in pending {
        let err = tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .expect("a pending call hung after the server died")
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, CallError::Disconnected(_)), "{err}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(!client.is_connected());
    // Without reconnection, later calls fail at once too.
    let err = client.call::<u64, u64>("echo.Sleep", &1).await.unwrap_err();
    assert!(matches!(err, CallError::Disconnected(_)));
}

#[test]
fn demo_runs_end_to_end() {
    let out = std::process::Command::new(common::BIN)
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "peerwire demo: transport: TLS 1.3, mutual",
        "[client] connected over TLS mutual: protocol v1",
        "[server] Initialize from display-client",
        "draw: sign-in screen",
        "draw: attention bar LISTENING",
        "draw: WeatherTemplate \"Seattle\"",
        "[server] touch at (1200, 40) on \"dismiss\"",
        "draw: clear template weather-1",
        "GetState: assistant IDLE, authorized true, 2 input event(s) received",
        "socket removed: true",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // A clean run warns about nothing: the client leaving right after its last answer is not
    // a peer that stopped reading (it was logged as one when the server's last write met the
    // closed socket).
    let log = String::from_utf8_lossy(&out.stderr);
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(warned.is_empty(), "the demo warned:\n{}", warned.join("\n"));
}

#[test]
fn service_manager_sees_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = dir.path().join("run/s.sock");
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["serve", "--allow-root", "--socket"])
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000");
    let mut server = ServeProcess::spawn(cmd, &socket);
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    // READY once listening, then a WATCHDOG ping at least every 100 ms.
    let start = Instant::now();
    while seen
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = listener
            .recv(&mut buf)
            .expect("no notification within 10 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "watchdog pings too slow: {seen:?}"
    );
    server.signal(Signal::SIGTERM);
    loop {
        let n = listener.recv(&mut buf).expect("no STOPPING=1");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}
