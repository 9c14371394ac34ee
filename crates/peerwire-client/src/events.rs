//! Server pushes as seen by the application: [`EventMessage`], one [`EventStream`] per
//! subscription, and their delivery to every local subscriber.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use futures_util::Stream;
use peerwire_proto::METHOD_UNSUBSCRIBE;
use peerwire_proto::v1::{Event, SubscribeRequest, SubscribeResponse};
use prost::Message;
use tokio::sync::mpsc;

use crate::{Bytes, Client, Inner, lock};

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

/// Events of one topic (or of several, see [`Client::subscribe_many`]), in the order the server
/// sent them. It is a [`Stream`]; dropping it unsubscribes: once no other stream of this client
/// wants a topic, the client sends `peerwire.Unsubscribe` and the server stops pushing it to
/// this connection.
#[derive(Debug)]
pub struct EventStream {
    pub(crate) topic: String,
    pub(crate) topics: Vec<String>,
    pub(crate) rx: mpsc::Receiver<EventMessage>,
    pub(crate) client: Weak<Inner>,
}

impl Stream for EventStream {
    type Item = EventMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EventMessage>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.rx.close();
        let Some(inner) = self.client.upgrade() else {
            return;
        };
        let gone: Vec<String> = {
            let mut subs = lock(&inner.subs);
            self.topics
                .iter()
                .filter(|topic| {
                    let Some(list) = subs.get_mut(*topic) else {
                        return false;
                    };
                    list.retain(|tx| !tx.is_closed());
                    let empty = list.is_empty();
                    if empty {
                        subs.remove(*topic);
                    }
                    empty
                })
                .cloned()
                .collect()
        };
        // Outside a runtime (or after close) there is no connection to tell.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if gone.is_empty() || inner.closed.is_cancelled() {
            return;
        }
        let client = Client { inner };
        runtime.spawn(async move {
            // A topic subscribed again meanwhile keeps its server-side subscription.
            let topics: Vec<String> = {
                let subs = lock(&client.inner.subs);
                gone.into_iter().filter(|t| !subs.contains_key(t)).collect()
            };
            if topics.is_empty() {
                return;
            }
            let request = SubscribeRequest { topics };
            if let Err(e) = client
                .call::<_, SubscribeResponse>(METHOD_UNSUBSCRIBE, &request)
                .await
            {
                tracing::debug!("unsubscribe of {:?} failed: {e}", request.topics);
            }
        });
    }
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

/// Keyed by the topics this client subscribed to (the server's events are only looked up in
/// it, never insert a key): a cheap hash, not SipHash.
pub(crate) type Subscribers =
    HashMap<String, Vec<mpsc::Sender<EventMessage>>, rustc_hash::FxBuildHasher>;

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
        // Each subscriber but the last gets a copy; the last one the event itself (one
        // subscriber, the usual case: no copy of the topic's name per event).
        let last = list.len().saturating_sub(1);
        let mut msg = Some(msg);
        let mut i = 0;
        list.retain(|tx| {
            let this = if i == last { msg.take() } else { msg.clone() };
            i += 1;
            let Some(this) = this else { return true };
            match tx.try_send(this) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    tracing::warn!(topic = %m.topic, seq = m.seq, "subscriber is not keeping up: event dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}
