//! Calls, pushes, deadlines, cancellation, keepalive: real sockets, real processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{RawClient, Read, ServeProcess, eventually, init_logs};
use peerwire_client::Client;
use peerwire_proto::v1::{Code, frame::Kind};
use peerwire_server::{Limits, PeerCredentials, Server, ServerHandle, Status};

/// Starts an in-process server built by `setup`; returns its handle and the join handle.
fn start(
    path: &std::path::Path,
    setup: impl FnOnce(peerwire_server::ServerBuilder) -> peerwire_server::ServerBuilder,
) -> (
    ServerHandle,
    tokio::task::JoinHandle<Result<(), peerwire_server::ServerError>>,
) {
    let server = setup(Server::builder(path)).bind().unwrap();
    let handle = server.handle();
    (handle, tokio::spawn(server.run()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_get_correct_responses() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // The server is a separate process: `peerwire serve`.
    let _server = ServeProcess::start(&path, &["--tick-ms", "100000"]);
    // The default limits admit at most 32 unauthenticated connections per uid at once (a defence
    // against handshake floods, tested in limits.rs); on a loaded machine 64 simultaneous
    // handshakes can exceed that, so the handshakes go 16 at a time. The 64 sessions then all run
    // their calls concurrently.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = vec![];
    for c in 0..64u32 {
        let path = path.clone();
        let handshakes = handshakes.clone();
        tasks.push(tokio::spawn(async move {
            let permit = handshakes.acquire_owned().await.unwrap();
            let client = Client::builder(&path)
                .name(format!("load-{c}"))
                .namespace("echo", &[1])
                .connect()
                .await
                .unwrap();
            drop(permit);
            for i in 0..1000u32 {
                let req = format!("client {c} call {i}").into_bytes();
                let resp: Vec<u8> = client.call("echo.Echo", &req).await.unwrap();
                assert_eq!(resp, req, "client {c} call {i}");
            }
            client.close().await;
            1000
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 64_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_exactly_the_subscribers_in_order() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (handle, _run) = start(&path, |mut b| {
        b = b.namespace("news", &[1]).namespace("other", &[1]);
        b
    });
    // Clients 0-2 subscribe to news.A, 2-3 to news.B, 4 to nothing.
    let topics: [&[&str]; 5] = [
        &["news.A"],
        &["news.A"],
        &["news.A", "news.B"],
        &["news.B"],
        &[],
    ];
    let mut clients = vec![];
    for t in topics {
        let client = Client::builder(&path)
            .namespace("news", &[1])
            .connect()
            .await
            .unwrap();
        let stream = if t.is_empty() {
            None
        } else {
            Some(client.subscribe_many(t).await.unwrap())
        };
        clients.push((client, stream, t));
    }
    assert_eq!(handle.connections().len(), 5);
    let push = |i: u64| {
        let topic = if i % 3 == 0 { "news.B" } else { "news.A" };
        let n = handle.broadcast(topic, &i).unwrap();
        assert_eq!(n, if topic == "news.A" { 3 } else { 2 });
    };
    (0..100u64).for_each(push);
    // The rest as one burst: gathered per connection and written when the batch ends, in the
    // same order and with the same sequence numbers.
    handle.batch(|| (100..200u64).for_each(push));
    // A push to a topic nobody subscribed to reaches nobody.
    assert_eq!(handle.broadcast("other.X", &7u64).unwrap(), 0);
    // Unicast to one connection, which must be subscribed.
    let ids: Vec<_> = handle.connections().into_iter().map(|(id, _)| id).collect();
    handle.send_event(ids[3], "news.B", &1000u64).unwrap();
    assert!(matches!(
        handle.send_event(ids[4], "news.B", &1u64),
        Err(peerwire_server::PushError::NotSubscribed { .. })
    ));
    for (idx, (_client, stream, t)) in clients.iter_mut().enumerate() {
        let Some(stream) = stream else { continue };
        let mut expected: Vec<(String, u64)> = (0..200u64)
            .filter_map(|i| {
                let topic = if i % 3 == 0 { "news.B" } else { "news.A" };
                t.contains(&topic).then(|| (topic.to_owned(), i))
            })
            .collect();
        if idx == 3 {
            expected.push(("news.B".into(), 1000));
        }
        let mut seq = std::collections::HashMap::<String, u64>::new();
        for (topic, value) in &expected {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&ev.topic, topic, "client {idx}");
            assert_eq!(ev.decode::<u64>().unwrap(), *value, "client {idx}: order");
            let s = seq.entry(topic.clone()).or_insert(0);
            *s += 1;
            assert_eq!(ev.seq, *s, "client {idx}: seq has no gap");
        }
        // Nothing more: no event of a topic it did not subscribe to.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), stream.next())
                .await
                .is_err(),
            "client {idx} got an extra event"
        );
    }
}

/// Sets a flag when dropped: shows that a handler future was cancelled, not completed.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_cancels_the_handler() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let dropped = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU32::new(0));
    let (d, c) = (dropped.clone(), completed.clone());
    let (handle, _run) = start(&path, move |mut b| {
        b = b.method("slow.Sleep", move |_ctx, ms: u64| {
            let (d, c) = (d.clone(), c.clone());
            async move {
                let _flag = DropFlag(d);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Status>(ms)
            }
        });
        b
    });
    let client = Client::builder(&path)
        .namespace("slow", &[1])
        .connect()
        .await
        .unwrap();
    let start = Instant::now();
    let err = client
        .call_with_deadline::<u64, u64>("slow.Sleep", &10_000, Duration::from_millis(200))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(took < Duration::from_secs(2), "deadline took {took:?}");
    assert!(
        eventually(Duration::from_secs(2), || dropped.load(Ordering::SeqCst)).await,
        "handler was not cancelled"
    );
    assert_eq!(completed.load(Ordering::SeqCst), 0);
    assert_eq!(handle.stats().deadline_exceeded, 1);

    // A call the client gives up on (future dropped) is cancelled on the server too.
    dropped.store(false, Ordering::SeqCst);
    let call =
        client.call_with_deadline::<u64, u64>("slow.Sleep", &10_000, Duration::from_secs(60));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(2), || dropped.load(Ordering::SeqCst)).await,
        "dropped call was not cancelled"
    );
    assert_eq!(completed.load(Ordering::SeqCst), 0);

    // A call within its deadline completes, on the same connection.
    let v: u64 = client
        .call_with_deadline("slow.Sleep", &10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(v, 10);
    assert_eq!(completed.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_only_fails_its_request() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (handle, _run) = start(&path, |mut b| {
        b = b.method("t.Boom", |_ctx, n: u32| async move {
            if n > 0 {
                panic!("handler bug");
            }
            Ok::<_, Status>(n)
        });
        b = b.method("t.Fail", |_ctx, _n: u32| async move {
            Err::<u32, _>(Status::failed_precondition("not now"))
        });
        b
    });
    let client = Client::builder(&path)
        .namespace("t", &[1])
        .connect()
        .await
        .unwrap();
    let err = client.call::<u32, u32>("t.Boom", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(client.call::<u32, u32>("t.Boom", &0).await.unwrap(), 0);
    let err = client.call::<u32, u32>("t.Fail", &0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.to_string().contains("not now"));
    let err = client.call::<u32, u32>("t.Missing", &0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.to_string().contains("t.Missing"));
    // A payload that is not the handler's request type.
    let err = client
        .raw_call("t.Boom", vec![0xff, 0xff], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(handle.stats().handler_panics, 1);
    assert_eq!(handle.connections().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_mismatch_is_reported_not_dropped() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (_handle, _run) = start(&path, |mut b| {
        b = b.namespace("display", &[2, 3]);
        b = b.method(
            "display.Get",
            |_ctx, n: u32| async move { Ok::<_, Status>(n) },
        );
        b
    });
    // Optional namespace at a version the server does not speak: session works, call says why.
    let client = Client::builder(&path)
        .namespace("display", &[1])
        .connect()
        .await
        .unwrap();
    let agreement = &client.session().unwrap().namespaces[0];
    assert_eq!(agreement.code, Code::NamespaceVersionMismatch as i32);
    assert_eq!(agreement.server_versions, vec![2, 3]);
    let err = client
        .call::<u32, u32>("display.Get", &1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NamespaceVersionMismatch);
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    // The same check on the server: a raw client that sends the call anyway gets the status.
    let mut raw = RawClient::connect(&path).await;
    assert!(matches!(
        raw.hello(&[("display", 1)]).await.kind,
        Some(Kind::Welcome(_))
    ));
    raw.send(peerwire_proto::v1::Frame::new(Kind::Request(
        peerwire_proto::v1::Request {
            id: 1,
            method: "display.Get".into(),
            payload: vec![].into(),
            deadline_ms: 0,
        },
    )))
    .await;
    match raw.read().await {
        Read::Frame(f) => match f.kind {
            Some(Kind::Response(r)) => {
                assert_eq!(r.code, Code::NamespaceVersionMismatch as i32);
                assert!(r.message.contains("display.Get"));
            }
            other => panic!("{other:?}"),
        },
        _ => panic!("no response"),
    }
    // Required namespace: the session is refused with the reason.
    let err = Client::builder(&path)
        .require_namespace("display", &[1])
        .connect()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NAMESPACE_VERSION_MISMATCH"),
        "{err}"
    );
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    // Agreed version: works.
    let client = Client::builder(&path)
        .namespace("display", &[1, 3])
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.session().unwrap().namespace_version("display"),
        Some(3)
    );
    assert_eq!(client.call::<u32, u32>("display.Get", &5).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_sees_peer_credentials() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (_handle, _run) = start(&path, |mut b| {
        b = b.method("who.Am", |ctx, _n: u32| async move {
            let p = ctx.connection().peer();
            Ok::<_, Status>(format!("{} {} {}", p.uid, p.gid, p.pid.unwrap_or(0)))
        });
        b
    });
    // The handler sees what the kernel says about the connecting process (this one).
    let client = Client::builder(&path)
        .namespace("who", &[1])
        .connect()
        .await
        .unwrap();
    let v: String = client.call("who.Am", &0).await.unwrap();
    let me = PeerCredentials {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: Some(std::process::id() as i32),
    };
    assert_eq!(v, format!("{} {} {}", me.uid, me.gid, std::process::id()));
    // And the client sees the server's credentials (the server runs in this process too).
    assert_eq!(client.server_credentials().unwrap(), me);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_and_removed_on_exit() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/peerwire/s.sock");
    let (handle, run) = start(&path, |b| b);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    let sock_mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(sock_mode & 0o777, 0o600);
    // A second server on the same path is refused while the first is alive.
    let err = Server::builder(&path).bind().unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    // Something that is not a socket at the path is refused, not deleted.
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep").unwrap();
    let err = Server::builder(&file).bind().unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // Abstract names are refused.
    assert!(Server::builder("@peerwire").bind().is_err());
    handle.shutdown();
    run.await.unwrap().unwrap();
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_and_idle_timeout() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(200);
    limits.keepalive_interval = Duration::from_millis(100);
    limits.idle_timeout = Duration::from_millis(500);
    let (handle, _run) = start(&path, move |mut b| {
        b = b.limits(limits);
        b = b.method("t.Echo", |_ctx, n: u32| async move { Ok::<_, Status>(n) });
        b
    });
    // Silent after connect: Reject(HANDSHAKE_TIMEOUT), then EOF.
    let mut silent = RawClient::connect(&path).await;
    let frames = silent.read_to_end().await;
    match frames.first().and_then(|f| f.kind.as_ref()) {
        Some(Kind::Reject(r)) => assert_eq!(r.code, Code::HandshakeTimeout as i32),
        other => panic!("{other:?}"),
    }
    // Silent after the handshake: Pings, then Goodbye(IDLE_TIMEOUT), then EOF.
    let mut idle = RawClient::connect(&path).await;
    assert!(matches!(idle.hello(&[]).await.kind, Some(Kind::Welcome(_))));
    let frames = idle.read_to_end().await;
    assert!(frames.iter().any(|f| matches!(f.kind, Some(Kind::Ping(_)))));
    match frames.last().and_then(|f| f.kind.as_ref()) {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, Code::IdleTimeout as i32),
        other => panic!("{other:?}"),
    }
    // A real client answers the pings and stays connected well past the idle timeout.
    let client = Client::builder(&path)
        .namespace("t", &[1])
        .connect()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(client.is_connected());
    assert_eq!(client.call::<u32, u32>("t.Echo", &3).await.unwrap(), 3);
    assert!(handle.stats().handshake_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_command_measures_round_trips() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _server = ServeProcess::start(&path, &[]);
    let out = std::process::Command::new(common::BIN)
        .args(["ping", "--count", "50", "--socket"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("50 round trips of 64 B"), "{text}");
    assert!(text.contains("p99"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_refuses_invalid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let echo = |_ctx, n: u32| async move { Ok::<_, Status>(n) };
    let refused =
        |setup: &dyn Fn(peerwire_server::ServerBuilder) -> peerwire_server::ServerBuilder,
         what: &str| {
            let err = setup(Server::builder(&path))
                .bind()
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{err} should mention {what}");
            assert!(
                !path.exists(),
                "nothing may be bound for an invalid configuration"
            );
        };
    refused(&|b| b.method("NoNamespace", echo), "no namespace");
    refused(&|b| b.method("peerwire.Subscribe", echo), "reserved");
    refused(&|b| b.method("a.B", echo).method("a.B", echo), "twice");
    refused(&|b| b.namespace("Bad", &[1]), "invalid namespace");
    refused(&|b| b.namespace("ok", &[]), "versions");
    let mut l = Limits::default();
    l.idle_timeout = l.keepalive_interval;
    refused(&|b| b.limits(l), "idle timeout");
    let mut l = Limits::default();
    l.max_deadline = Duration::from_secs(7 * 24 * 3600);
    refused(&|b| b.limits(l), "24 h");
    let mut l = Limits::default();
    l.max_frame_size = 10;
    refused(&|b| b.limits(l), "frame size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_limits_answer_with_the_limit_and_its_value() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut limits = Limits::default();
    limits.max_in_flight = 2;
    limits.max_subscriptions = 1;
    // Each handler says when it has started: then its call is in flight.
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (handle, _run) = start(&path, move |mut b| {
        b = b.limits(limits);
        b = b.method("slow.Sleep", move |_ctx, ms: u64| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Status>(ms)
            }
        });
        b
    });
    let client = Client::builder(&path)
        .namespace("slow", &[1])
        .connect()
        .await
        .unwrap();
    let a = tokio::spawn({
        let c = client.clone();
        async move { c.call::<u64, u64>("slow.Sleep", &500).await }
    });
    let b = tokio::spawn({
        let c = client.clone();
        async move { c.call::<u64, u64>("slow.Sleep", &500).await }
    });
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("the two calls' handlers did not start within 10 s");
    }
    let err = client.call::<u64, u64>("slow.Sleep", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.to_string().contains("max_in_flight limit of 2"),
        "{err}"
    );
    assert_eq!(a.await.unwrap().unwrap(), 500);
    assert_eq!(b.await.unwrap().unwrap(), 500);
    // Once they are done, calls go through again on the same connection.
    assert_eq!(client.call::<u64, u64>("slow.Sleep", &1).await.unwrap(), 1);
    let _first = client.subscribe("slow.A").await.unwrap();
    let err = client.subscribe("slow.B").await.unwrap_err();
    assert!(
        err.to_string().contains("max_subscriptions limit of 1"),
        "{err}"
    );
    assert_eq!(handle.stats().limit_hits, 2);
}

/// Bulk data through the bytes API: `raw_method` on the server, `raw_call` with `Bytes` on the
/// client. Large and small payloads, interleaved with typed calls, come back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_methods_carry_large_payloads_intact() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (_handle, _run) = start(&path, |mut b| {
        b = b
            .namespace("blob", &[1])
            .raw_method("blob.Reverse", |_ctx, data: bytes::Bytes| async move {
                let mut v = data.to_vec();
                v.reverse();
                Ok::<_, Status>(bytes::Bytes::from(v))
            })
            .raw_method(
                "blob.Echo",
                |_ctx, data| async move { Ok::<_, Status>(data) },
            )
            .method("blob.Len", |_ctx, v: Vec<u8>| async move {
                Ok::<_, Status>(v.len() as u64)
            });
        b
    });
    let client = Client::builder(&path)
        .namespace("blob", &[1])
        .connect()
        .await
        .unwrap();
    for size in [0usize, 1, 100, 16 * 1024, 1 << 20, 3 << 20] {
        let data: bytes::Bytes = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let echoed = client
            .raw_call("blob.Echo", data.clone(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(echoed, data, "echo of {size} bytes");
        let reversed = client
            .raw_call("blob.Reverse", data.clone(), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            reversed.iter().eq(data.iter().rev()),
            "reverse of {size} bytes"
        );
        let len: u64 = client.call("blob.Len", &data.to_vec()).await.unwrap();
        assert_eq!(len, size as u64);
    }
}

/// A server that takes calls and never answers: each call fails at its own deadline (plus the
/// client's 50 ms of slack), earliest first even when it was made last, and the server is told
/// to cancel each one. The client keeps one timer for all its calls, re-armed when a call is
/// due earlier than it is armed for: this is what shows that it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_silent_server_fail_at_their_deadlines_and_are_cancelled() {
    use peerwire_proto::codec::FrameCodec;
    use peerwire_proto::handshake::{ServerHandshake, ServerOffer, ServerOutcome};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (cancels_tx, mut cancels) = tokio::sync::mpsc::unbounded_channel();
    let (requests_tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = bytes::BytesMut::new();
        let mut next = async move |stream: &mut tokio::net::UnixStream| loop {
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                return Some(frame);
            }
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return None;
            }
        };
        let hello = next(&mut stream).await.unwrap();
        let offer = ServerOffer {
            server_name: "silent".into(),
            namespaces: [("echo".to_string(), vec![1])].into_iter().collect(),
            limits: peerwire_proto::v1::Limits {
                max_frame_size: 1 << 20,
                max_in_flight: 64,
                default_deadline_ms: 60_000,
                max_deadline_ms: 60_000,
                keepalive_interval_ms: 60_000,
                idle_timeout_ms: 120_000,
            },
        };
        let ServerOutcome::Accept { welcome, .. } = ServerHandshake::new(offer, 1).receive(hello)
        else {
            panic!("handshake refused");
        };
        let mut out = bytes::BytesMut::new();
        FrameCodec::new(1 << 20).encode(&welcome, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        // Requests are read and never answered; requests and cancels are reported.
        while let Some(frame) = next(&mut stream).await {
            match frame.kind {
                Some(Kind::Cancel(c)) => {
                    let _ = cancels_tx.send(c.id);
                }
                Some(Kind::Request(r)) => {
                    let _ = requests_tx.send(r.id);
                }
                _ => {}
            }
        }
    });
    let client = Client::builder(&path)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap();
    let call = |ms: u64| {
        let client = client.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let err = client
                .call_with_deadline::<u64, u64>("echo.Echo", &ms, Duration::from_millis(ms))
                .await
                .unwrap_err();
            (ms, err, start.elapsed())
        })
    };
    // The long call first: the short ones, due earlier, must re-arm the timer.
    let long = call(1500);
    tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .expect("the long call's request did not reach the server within 10 s");
    let short = call(100);
    let middle = call(400);
    let mut done = vec![];
    for t in [short, middle, long] {
        let (ms, err, took) = t.await.unwrap();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{ms} ms: {err}");
        assert!(
            err.to_string().contains("no response to echo.Echo"),
            "{err}"
        );
        assert!(
            took >= Duration::from_millis(ms) && took < Duration::from_millis(ms + 1000),
            "the {ms} ms call failed after {took:?}"
        );
        done.push(ms);
    }
    assert_eq!(done, [100, 400, 1500]);
    // One Cancel per call.
    let mut cancelled = vec![];
    for _ in 0..3 {
        cancelled.push(
            tokio::time::timeout(Duration::from_secs(5), cancels.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    cancelled.sort_unstable();
    cancelled.dedup();
    assert_eq!(cancelled.len(), 3, "{cancelled:?}");
    // The connection is still usable for later calls' deadlines (the timer re-armed after
    // firing with nothing left).
    let (_, err, took) = call(200).await.unwrap();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

/// The server registers a connection before its Welcome leaves: once `connect` returns, the
/// server's handle lists the connection (pushes and connection limits see it), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_registered_before_the_client_sees_its_welcome() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (handle, _run) = start(&path, |mut b| {
        b = b.namespace("news", &[1]);
        b
    });
    for i in 0..200 {
        let client = Client::builder(&path)
            .namespace("news", &[1])
            .connect()
            .await
            .unwrap();
        let listed = handle.connections().len();
        assert_eq!(
            listed, 1,
            "connection {i}: the server lists {listed} connections"
        );
        client.close().await;
        assert!(
            common::eventually(Duration::from_secs(5), || handle.connections().is_empty()).await,
            "connection {i} is still listed after it closed"
        );
    }
}
