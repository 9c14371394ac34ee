//! Server pushes as seen by the application: [`EventMessage`], one [`EventStream`] per
//! subscription, and their delivery to every local subscriber.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};

use futures_util::Stream;
use peerwire_proto::METHOD_UNSUBSCRIBE;
use peerwire_proto::v1::{Event, SubscribeRequest, SubscribeResponse};
use prost::Message;

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
    pub(crate) rx: EventReceiver,
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
pub(crate) type Subscribers = HashMap<String, Vec<EventSender>, rustc_hash::FxBuildHasher>;

/// The queue between the connection's reader and one [`EventStream`]: at most `capacity`
/// events, a plain `VecDeque` under a lock the two ends take once per event (never held across
/// anything but a push or a pop), and the stream's waker, taken by the first event that finds
/// the stream waiting (the events that follow it in the same read find none: one wake-up per
/// batch). Cheaper per event than `tokio::sync::mpsc`, whose bounded channel adds a semaphore
/// (a permit taken per send and given back, under its own lock, per receive) and a lock-free
/// block list: a fan-out's events are this queue's whole traffic.
#[derive(Debug)]
struct EventQueue {
    state: Mutex<QueueState>,
    capacity: usize,
}

#[derive(Debug)]
struct QueueState {
    events: VecDeque<EventMessage>,
    /// The stream's task, waiting for an event (or for the last sender to go).
    waker: Option<Waker>,
    /// Live [`EventSender`]s: at 0 the stream ends once it has taken what is queued.
    senders: usize,
    /// The stream is gone (or closed): sending fails, its subscription is dropped.
    closed: bool,
}

/// Why [`EventSender::try_send`] did not queue an event.
pub(crate) enum SendError {
    /// The stream holds `capacity` events it has not taken.
    Full(EventMessage),
    /// The stream is gone.
    Closed,
}

/// The reader's end of one stream's queue (one per subscribed topic of the stream).
#[derive(Debug)]
pub(crate) struct EventSender(Arc<EventQueue>);

/// The stream's end of its queue.
#[derive(Debug)]
pub(crate) struct EventReceiver(Arc<EventQueue>);

/// A queue for at most `capacity` events (at least 1).
pub(crate) fn event_queue(capacity: usize) -> (EventSender, EventReceiver) {
    let queue = Arc::new(EventQueue {
        state: Mutex::new(QueueState {
            events: VecDeque::new(),
            waker: None,
            senders: 1,
            closed: false,
        }),
        capacity: capacity.max(1),
    });
    (EventSender(queue.clone()), EventReceiver(queue))
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        lock(&self.0.state).senders += 1;
        Self(self.0.clone())
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.0.state);
            state.senders -= 1;
            if state.senders == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl EventSender {
    /// Queues `event` without waiting; wakes the stream if it waits.
    pub(crate) fn try_send(&self, event: EventMessage) -> Result<(), SendError> {
        let waker = {
            let mut state = lock(&self.0.state);
            if state.closed {
                return Err(SendError::Closed);
            }
            if state.events.len() >= self.0.capacity {
                return Err(SendError::Full(event));
            }
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The stream is gone.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.0.state).closed
    }
}

impl EventReceiver {
    /// The next event; `None` once the queue is empty and no sender is left (or it was closed).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<EventMessage>> {
        // An event always ready must not keep this task from yielding: each one spends a unit
        // of the task's budget, as tokio's own channels do.
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = lock(&self.0.state);
        if let Some(event) = state.events.pop_front() {
            budget.made_progress();
            return Poll::Ready(Some(event));
        }
        if state.senders == 0 || state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for the next event.
    pub(crate) async fn recv(&mut self) -> Option<EventMessage> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// No more events are queued; those already queued can still be taken.
    pub(crate) fn close(&mut self) {
        lock(&self.0.state).closed = true;
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let events = {
            let mut state = lock(&self.0.state);
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.events)
        };
        // Dropped outside the lock.
        drop(events);
    }
}

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
        // subscriber, the usual case: no copy of the topic's name per event, and no loop).
        let Some((last, others)) = list.split_last() else {
            return;
        };
        let mut gone = others
            .iter()
            .map(|tx| offer(tx, msg.clone()))
            .fold(false, |gone, closed| gone | closed);
        gone |= offer(last, msg);
        if gone {
            list.retain(|tx| !tx.is_closed());
        }
    }
}

/// Queues `msg` on one stream; true if that stream is gone (its sender is then dropped).
fn offer(tx: &EventSender, msg: EventMessage) -> bool {
    match tx.try_send(msg) {
        Ok(()) => false,
        Err(SendError::Full(m)) => {
            tracing::warn!(topic = %m.topic, seq = m.seq, "subscriber is not keeping up: event dropped");
            false
        }
        Err(SendError::Closed) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn event(seq: u64) -> EventMessage {
        EventMessage {
            topic: "t.x".into(),
            seq,
            payload: Bytes::from_static(b"p"),
        }
    }

    /// In order, at most `capacity` waiting, `None` once every sender is gone and the queue is
    /// drained, and a closed stream refuses events.
    #[tokio::test]
    async fn queue_bounds_orders_ends_and_closes() {
        let (tx, mut rx) = event_queue(2);
        let tx2 = tx.clone();
        assert!(tx.try_send(event(1)).is_ok());
        assert!(tx2.try_send(event(2)).is_ok());
        match tx.try_send(event(3)) {
            Err(SendError::Full(m)) => assert_eq!(m.seq, 3),
            _ => panic!("a full queue took an event"),
        }
        assert_eq!(rx.recv().await.map(|m| m.seq), Some(1));
        // A waiting stream is woken by the next event.
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.map(|m| m.seq);
            let second = rx.recv().await.map(|m| m.seq);
            let end = rx.recv().await.map(|m| m.seq);
            (first, second, end)
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(event(4)).is_ok());
        drop(tx);
        drop(tx2);
        assert_eq!(waiter.await.unwrap(), (Some(2), Some(4), None));

        let (tx, mut rx) = event_queue(4);
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(event(1)), Err(SendError::Closed)));
        assert_eq!(rx.recv().await, None);
        let (tx, rx) = event_queue(4);
        drop(rx);
        assert!(tx.is_closed());
    }
}
