//! A call alone in flight reads its own answer from the socket (no hop through the reader
//! task): whatever else arrives meanwhile (events, pings, other calls' answers) is handled by
//! it, in order, and the reader task takes the socket back when the call ends, however it ends.
//! Real sockets, an in-process server; the test bodies run under `block_on` (current thread),
//! as a display client's calls do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use peerwire_client::{CallError, Client};
use peerwire_server::{Code, Limits, Server, ServerHandle, Status};

/// A server with `t.Echo`, `t.Slow` (answers `ms` after sleeping `ms` milliseconds) and `t.Burst`
/// (pushes `n` events on `t.Tick`, numbered from `n * 1000`, then answers `n`).
fn start(path: &std::path::Path, limits: Limits) -> ServerHandle {
    let handle: Arc<OnceLock<ServerHandle>> = Arc::default();
    let for_burst = handle.clone();
    let server = Server::builder(path)
        .limits(limits)
        .namespace("t", &[1])
        .method("t.Slow", |_ctx, ms: u32| async move {
            tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            Ok::<_, Status>(ms)
        })
        .method("t.Echo", |_ctx, n: u32| async move { Ok::<_, Status>(n) })
        .method("t.Burst", move |_ctx, n: u32| {
            let handle = for_burst.clone();
            async move {
                let handle = handle.get().expect("set before the first call");
                for i in 0..n {
                    handle
                        .broadcast("t.Tick", &(u64::from(n) * 1000 + u64::from(i)))
                        .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
                }
                Ok::<_, Status>(n)
            }
        })
        .bind()
        .unwrap();
    let _ = handle.set(server.handle());
    tokio::spawn(server.run());
    handle.get().unwrap().clone()
}

/// A server (see [`start`]) in a fresh directory, and a client connected to it.
async fn setup(limits: Limits) -> (tempfile::TempDir, ServerHandle, Client) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let handle = start(&path, limits);
    let client = Client::builder(&path)
        .namespace("t", &[1])
        .connect()
        .await
        .unwrap();
    (dir, handle, client)
}

async fn within_5s<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("answered within 5 s")
}

async fn next_tick(ticks: &mut peerwire_client::EventStream) -> u64 {
    let ev = tokio::time::timeout(Duration::from_secs(5), ticks.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open");
    ev.decode::<u64>().unwrap()
}

#[tokio::test]
async fn events_pushed_while_a_call_reads_its_answer_arrive_in_order() {
    let (_dir, handle, client) = setup(Limits::default()).await;
    let mut ticks = client.subscribe("t.Tick").await.unwrap();
    // Each call's events come before its answer, on the socket the call itself reads.
    for n in 1..=50u32 {
        assert_eq!(client.call::<u32, u32>("t.Burst", &n).await.unwrap(), n);
        for i in 0..n {
            assert_eq!(next_tick(&mut ticks).await, u64::from(n * 1000 + i));
        }
    }
    // No call waits: the reader task has the socket back and delivers what comes.
    for i in 0..10u64 {
        handle.broadcast("t.Tick", &i).unwrap();
    }
    for i in 0..10u64 {
        assert_eq!(next_tick(&mut ticks).await, i);
    }
    // And calls still work after it.
    assert_eq!(client.call::<u32, u32>("t.Burst", &2).await.unwrap(), 2);
    assert_eq!(next_tick(&mut ticks).await, 2000);
    assert_eq!(next_tick(&mut ticks).await, 2001);
}

#[tokio::test]
async fn calls_racing_a_call_that_reads_its_answer_are_all_answered() {
    let (_dir, _handle, client) = setup(Limits::default()).await;
    for _ in 0..20 {
        // The slow call starts alone (it reads); the quick ones' answers come first, read by it.
        let (slow, quick1, quick2) = within_5s(async {
            tokio::join!(
                client.call::<u32, u32>("t.Slow", &30),
                client.call::<u32, u32>("t.Slow", &0),
                client.call::<u32, u32>("t.Slow", &1),
            )
        })
        .await;
        assert_eq!(
            (slow.unwrap(), quick1.unwrap(), quick2.unwrap()),
            (30, 0, 1)
        );
        // The quick call starts alone and ends first: the slow one's answer is the reader
        // task's to read.
        let (quick, slow) = within_5s(async {
            tokio::join!(
                client.call::<u32, u32>("t.Slow", &0),
                client.call::<u32, u32>("t.Slow", &30),
            )
        })
        .await;
        assert_eq!((quick.unwrap(), slow.unwrap()), (0, 30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_on_several_threads_are_all_answered() {
    let (_dir, handle, client) = setup(Limits::default()).await;
    let mut ticks = client.subscribe("t.Tick").await.unwrap();
    let mut tasks = vec![];
    for t in 0..4u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300u32 {
                let n = t * 10_000 + i;
                assert_eq!(client.call::<u32, u32>("t.Echo", &n).await.unwrap(), n);
                if i % 50 == 0 {
                    assert_eq!(client.call::<u32, u32>("t.Slow", &1).await.unwrap(), 1);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    handle.broadcast("t.Tick", &7u64).unwrap();
    assert_eq!(next_tick(&mut ticks).await, 7);
}

#[tokio::test]
async fn a_call_that_reads_past_its_deadline_or_is_dropped_hands_the_socket_back() {
    let (_dir, handle, client) = setup(Limits::default()).await;
    let mut ticks = client.subscribe("t.Tick").await.unwrap();
    // The deadline passes while the call reads: the reader task's timer fails it.
    let late = client
        .call_with_deadline::<u32, u32>("t.Slow", &2000, Duration::from_millis(100))
        .await;
    match late {
        Err(CallError::Status(s)) => assert_eq!(s.code, Code::DeadlineExceeded),
        other => panic!("{other:?}"),
    }
    handle.broadcast("t.Tick", &1u64).unwrap();
    assert_eq!(next_tick(&mut ticks).await, 1);
    // The caller drops the call while it reads.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        client.call::<u32, u32>("t.Slow", &500),
    )
    .await;
    assert!(dropped.is_err());
    handle.broadcast("t.Tick", &2u64).unwrap();
    assert_eq!(next_tick(&mut ticks).await, 2);
    assert_eq!(client.call::<u32, u32>("t.Slow", &1).await.unwrap(), 1);
}

#[tokio::test]
async fn a_call_reading_its_answer_answers_the_servers_pings() {
    let mut limits = Limits::default();
    limits.keepalive_interval = Duration::from_millis(100);
    limits.idle_timeout = Duration::from_millis(500);
    let (_dir, _handle, client) = setup(limits).await;
    // Longer than the server's idle timeout and the client's (at least a second): only the
    // pings and their pongs, read and written by the call, keep the connection.
    assert_eq!(
        client.call::<u32, u32>("t.Slow", &1500).await.unwrap(),
        1500
    );
    assert!(client.is_connected());
    assert_eq!(client.call::<u32, u32>("t.Slow", &1).await.unwrap(), 1);
}

#[tokio::test]
async fn the_server_going_away_fails_a_call_that_reads_its_answer() {
    let mut limits = Limits::default();
    limits.shutdown_grace = Duration::from_millis(200);
    let (_dir, handle, client) = setup(limits).await;
    // Longer than the shutdown's grace: the server ends the call, then the connection.
    let call = client.call::<u32, u32>("t.Slow", &20_000);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle.shutdown();
    };
    let (result, ()) = tokio::join!(call, stop);
    match result {
        Err(CallError::Disconnected(_)) | Err(CallError::Status(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(8), async {
            while client.is_connected() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok(),
        "the client sees the connection's end"
    );
}
