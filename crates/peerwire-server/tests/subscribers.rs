//! The server's index of subscribers by topic follows subscriptions, unsubscriptions and
//! closed connections: a broadcast reaches exactly the connections subscribed now.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use peerwire_client::Client;
use peerwire_server::{Server, ServerHandle};

/// Broadcasts on `topic` until it reaches `want` connections (unsubscribing and closing are
/// asynchronous); fails after 10 s.
async fn reaches(handle: &ServerHandle, topic: &str, want: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let n = handle.broadcast(topic, &1u64).unwrap();
        if n == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "{topic} reaches {n} connections, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_follow_subscriptions_unsubscriptions_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = Server::builder(&path)
        .namespace("news", &[1])
        .bind()
        .unwrap();
    let handle = server.handle();
    let run = tokio::spawn(server.run());
    let mut clients = vec![];
    for _ in 0..3 {
        let client = Client::builder(&path)
            .namespace("news", &[1])
            .connect()
            .await
            .unwrap();
        let stream = client.subscribe("news.A").await.unwrap();
        clients.push((client, Some(stream)));
    }
    assert_eq!(handle.broadcast("news.A", &1u64).unwrap(), 3);
    assert_eq!(handle.broadcast("news.B", &1u64).unwrap(), 0);
    // A second topic on one connection, and the same topic subscribed twice by one client:
    // one subscription on the server.
    let b = clients[2].0.subscribe("news.B").await.unwrap();
    let again = clients[2].0.subscribe("news.A").await.unwrap();
    assert_eq!(handle.broadcast("news.B", &1u64).unwrap(), 1);
    assert_eq!(handle.broadcast("news.A", &1u64).unwrap(), 3);
    // Unsubscribed: dropping the only stream of the topic.
    clients[0].1 = None;
    reaches(&handle, "news.A", 2).await;
    // Closed: the connection leaves every topic's subscribers.
    let (closed, _) = clients.remove(2);
    closed.close().await;
    drop((b, again));
    reaches(&handle, "news.A", 1).await;
    reaches(&handle, "news.B", 0).await;
    // Subscribed again after unsubscribing.
    let again = clients[0].0.subscribe("news.A").await.unwrap();
    assert_eq!(handle.broadcast("news.A", &1u64).unwrap(), 2);
    drop(again);
    handle.shutdown();
    let _ = run.await;
}
