//! The generated display services over a real socket: typed subscriptions are streams that
//! unsubscribe when dropped (the server's stats show it), and a generated client refuses a
//! server without its service or with another version of it, naming both versions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use peerwire_client::{Client, ServiceError};
use peerwire_examples::display::{
    self, AlexaState, GetStateRequest, System, SystemClient, SystemPublisher, SystemState,
    WindowManagerClient,
};
use peerwire_server::{RequestContext, Server, Status};

struct Fixed;

impl System for Fixed {
    async fn get_state(
        &self,
        _ctx: RequestContext,
        _req: GetStateRequest,
    ) -> Result<SystemState, Status> {
        Ok(SystemState {
            locale: "en-GB".into(),
            ..Default::default()
        })
    }
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut builder = Server::builder(&path);
    builder = display::add_system(builder, Arc::new(Fixed));
    let server = builder.bind().unwrap();
    let handle = server.handle();
    tokio::spawn(server.run());

    let client = SystemClient::announce(Client::builder(&path))
        .connect()
        .await
        .unwrap();
    let system = SystemClient::new(client).unwrap();
    assert_eq!(
        system.get_state(&GetStateRequest {}).await.unwrap().locale,
        "en-GB"
    );
    let publisher = SystemPublisher::new(handle.clone());
    let mut states = system.subscribe_set_alexa_state().await.unwrap();
    for state in 1..=3 {
        assert_eq!(publisher.set_alexa_state(&AlexaState { state }).unwrap(), 1);
    }
    // `Subscription` is a `futures::Stream` of typed events.
    let got: Vec<i32> = (&mut states)
        .take(3)
        .map(|e| e.unwrap().event.state)
        .collect()
        .await;
    assert_eq!(got, [1, 2, 3]);
    let sent = handle.stats().events_sent;
    assert_eq!(sent, 3);

    drop(states);
    // The client's `peerwire.Unsubscribe` reaches the server: pushes then find no subscriber.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while publisher.set_alexa_state(&AlexaState { state: 4 }).unwrap() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = handle.stats().events_sent;
    for _ in 0..10 {
        assert_eq!(
            publisher.set_alexa_state(&AlexaState { state: 5 }).unwrap(),
            0
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        handle.stats().events_sent,
        after,
        "events_sent stopped growing"
    );
    // The connection is still usable, and subscribing again works.
    let mut again = system.subscribe_all().await.unwrap();
    assert_eq!(
        publisher.set_alexa_state(&AlexaState { state: 6 }).unwrap(),
        1
    );
    let ev = again.next().await.unwrap().unwrap();
    assert_eq!(
        ev.event,
        display::SystemEvent::SetAlexaState(AlexaState { state: 6 })
    );
    handle.shutdown();
}

#[tokio::test]
async fn a_missing_service_or_another_version_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut builder = Server::builder(&path);
    // The server speaks `system` at version 2 only, and has no `window_manager` at all.
    builder = builder.namespace(display::SYSTEM_NAMESPACE, &[2]);
    let server = builder.bind().unwrap();
    let handle = server.handle();
    tokio::spawn(server.run());

    let client = WindowManagerClient::announce(SystemClient::announce(Client::builder(&path)))
        .connect()
        .await
        .unwrap();
    let err = SystemClient::new(client.clone()).unwrap_err();
    assert_eq!(
        err,
        ServiceError::Version {
            namespace: "system".into(),
            client: 1,
            server: vec![2],
        }
    );
    assert_eq!(
        err.to_string(),
        "namespace \"system\": the client speaks version 1, the server speaks [2]"
    );
    let err = WindowManagerClient::new(client.clone()).unwrap_err();
    assert_eq!(
        err,
        ServiceError::Missing {
            namespace: "window_manager".into(),
            client: 1,
        }
    );
    assert!(
        err.to_string().contains("the server has no version"),
        "{err}"
    );
    // A namespace never announced is named too.
    let plain = Client::builder(&path).connect().await.unwrap();
    assert!(matches!(
        SystemClient::new(plain).unwrap_err(),
        ServiceError::NotAnnounced { ref namespace, client: 1 } if namespace == "system"
    ));
    handle.shutdown();
}
