//! Server pushes as seen by the application: [`EventMessage`], one [`EventStream`] per
//! subscription, and their delivery to every local subscriber.

use std::collections::HashMap;

use peerwire_proto::v1::Event;
use prost::Message;
use tokio::sync::mpsc;

use crate::{Bytes, Inner, lock};

/// One event received on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// The topic.
    pub topic: String,
    /// Per connection and topic, starting at 1; a gap means events were dropped. Restarts at 1
    /// after a reconnection.
    pub seq: u64,
    /// The encoded event.
    pub payload: Bytes,
}

impl EventMessage {
    /// Decodes the payload.
    pub fn decode<M: Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.payload.clone())
    }
}

/// Events of one topic, in the order the server sent them.
#[derive(Debug)]
pub struct EventStream {
    pub(crate) topic: String,
    pub(crate) rx: mpsc::Receiver<EventMessage>,
}

impl EventStream {
    /// The topic, or the topics joined with `,`.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next event, or `None` once the client is closed.
    pub async fn next(&mut self) -> Option<EventMessage> {
        self.rx.recv().await
    }
}

pub(crate) type Subscribers = HashMap<String, Vec<mpsc::Sender<EventMessage>>>;

impl Inner {
    /// Delivers a pushed event to every local subscriber of its topic; never blocks.
    pub(crate) fn deliver(&self, event: Event) {
        let mut subs = lock(&self.subs);
        let Some(list) = subs.get_mut(&event.topic) else {
            tracing::debug!(topic = %event.topic, "event for a topic with no subscriber");
            return;
        };
        let msg = EventMessage {
            topic: event.topic,
            seq: event.seq,
            payload: event.payload,
        };
        list.retain(|tx| match tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(topic = %msg.topic, seq = msg.seq, "subscriber is not keeping up: event dropped");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}
