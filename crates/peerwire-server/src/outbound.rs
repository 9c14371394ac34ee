//! A connection's outbound side: its [`Outbox`], the `FrameSink` that takes responses, pongs
//! and events of `Disconnect` topics; the event queue of topics with a drop policy, and the writer task
//! that finishes the sink's writes and moves those events into it. It depends on no other
//! module of the server (`registry` uses it, not the other way round).
//!
//! Nothing here ever waits for the peer: a full queue is the peer's problem, handled by the
//! topic's [`SlowConsumerPolicy`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peerwire_proto::v1::Frame;
use tokio::sync::Notify;

/// What happens to a topic's events when a subscriber does not read fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// The subscriber is disconnected (the default: nothing is lost silently). The server logs
    /// and counts it; a `Goodbye(SLOW_CONSUMER)` reaches the peer only if it still fits in the
    /// queue the peer was not reading.
    #[default]
    Disconnect,
    /// The oldest queued event of the topic is dropped to make room; the subscriber sees a gap
    /// in `seq`.
    DropOldest,
    /// Only the latest event of the topic is kept (state-like topics: the newest value replaces
    /// any queued one).
    KeepLatest,
}

/// Events of topics with a drop policy, bounded by `max` frames and `max_bytes` encoded bytes
/// (one event is always accepted into an empty queue, whatever its size).
pub(crate) struct EventQueue {
    state: Mutex<Queued>,
    notify: Notify,
    max: usize,
    max_bytes: usize,
    pub(crate) dropped: AtomicU64,
}

#[derive(Default)]
struct Queued {
    frames: VecDeque<(Arc<str>, usize, Frame)>,
    bytes: usize,
}

impl Queued {
    fn remove(&mut self, index: usize) -> bool {
        match self.frames.remove(index) {
            Some((_, len, _)) => {
                self.bytes = self.bytes.saturating_sub(len);
                true
            }
            None => false,
        }
    }
}

impl EventQueue {
    pub(crate) fn new(max: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(Queued::default()),
            notify: Notify::new(),
            max: max.max(1),
            max_bytes,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues an event by its topic's policy; never blocks, never fails. `KeepLatest` replaces
    /// the topic's queued event; `DropOldest` makes room by dropping the topic's own oldest
    /// events (never another topic's), and drops the new event if the topic has none queued.
    /// `len` is the frame's encoded length.
    pub(crate) fn push(
        &self,
        topic: &Arc<str>,
        frame: Frame,
        len: usize,
        policy: SlowConsumerPolicy,
    ) {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0u64;
        if policy == SlowConsumerPolicy::KeepLatest {
            while let Some(i) = q.frames.iter().position(|(t, _, _)| t == topic) {
                q.remove(i);
                dropped += 1;
            }
        }
        let full = |q: &Queued| {
            !q.frames.is_empty()
                && (q.frames.len() >= self.max || q.bytes.saturating_add(len) > self.max_bytes)
        };
        while full(&q) {
            match q.frames.iter().position(|(t, _, _)| t == topic) {
                Some(i) => {
                    q.remove(i);
                    dropped += 1;
                }
                None => break,
            }
        }
        let accepted = !full(&q);
        if accepted {
            q.bytes = q.bytes.saturating_add(len);
            q.frames.push_back((topic.clone(), len, frame));
        } else {
            dropped += 1;
        }
        drop(q);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if accepted {
            self.notify.notify_one();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        let q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        q.frames.is_empty()
    }

    /// Takes at most `limit` queued events, and no more once they reach `bytes` encoded bytes
    /// (but at least one event).
    fn take_within(&self, buf: &mut Vec<Frame>, limit: usize, bytes: usize) {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = 0usize;
        while buf.len() < limit && (taken < bytes || buf.is_empty()) {
            match q.frames.pop_front() {
                Some((_, len, f)) => {
                    q.bytes = q.bytes.saturating_sub(len);
                    taken = taken.saturating_add(len);
                    buf.push(f);
                }
                None => break,
            }
        }
    }
}

use peerwire_transport::{FrameSink, SinkError, SinkIo, WRITE_BATCH};

/// What an [`Outbox`] needs of its connection's sink, whatever the socket under it (a Unix
/// socket, plain or TLS, or a WebSocket): pushes reach every connection the same way.
pub(crate) trait OutSink: Send + Sync {
    /// See [`FrameSink::cork`].
    fn cork(&self);
    /// See [`FrameSink::uncork`].
    fn uncork(&self);
    /// See [`FrameSink::try_send`].
    fn try_send(&self, frame: &Frame) -> Result<(), SinkError>;
}

impl<W: SinkIo> OutSink for FrameSink<W> {
    fn cork(&self) {
        FrameSink::cork(self);
    }
    fn uncork(&self) {
        FrameSink::uncork(self);
    }
    fn try_send(&self, frame: &Frame) -> Result<(), SinkError> {
        FrameSink::try_send(self, frame)
    }
}

/// A connection's outbound side: the sending task writes its frame itself (through TLS, if the
/// connection has it), unless earlier bytes are still waiting for the socket (then the writer
/// task finishes them). Bounded in bytes and frames; never blocks.
#[derive(Clone)]
pub(crate) struct Outbox(pub(crate) Arc<dyn OutSink>);

/// Why a frame could not be queued.
pub(crate) enum Full {
    /// The queue holds its maximum number of frames, or of bytes.
    Queue,
    /// The connection is closing.
    Closed,
}

impl Outbox {
    /// See [`FrameSink::cork`].
    pub(crate) fn cork(&self) {
        self.0.cork();
    }

    /// See [`FrameSink::uncork`].
    pub(crate) fn uncork(&self) {
        self.0.uncork();
    }

    /// Queues `frame` (see [`FrameSink::try_send`]); the sink's error as it is.
    pub(crate) fn send(&self, frame: &Frame) -> Result<(), SinkError> {
        self.0.try_send(frame)
    }

    /// Queues `frame`; a frame is always accepted into an empty queue, whatever its size.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), Full> {
        self.send(&frame).map_err(|e| match e {
            SinkError::Full => Full::Queue,
            // Frames are checked against the session's limit before they get here.
            _ => Full::Closed,
        })
    }
}

/// One handler poll's batch (see [`batched`]): its number, and the sinks it corked.
struct Batch {
    id: u64,
    corked: Vec<Outbox>,
}

/// Numbers the batches, from 1 (a [`PushTarget`](crate::registry::PushTarget) that no batch
/// corked holds 0), unique across the runtime's threads.
static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// The batch of the running handler poll (see [`batched`]); `None` outside a handler poll.
    static CORKED: std::cell::RefCell<Option<Batch>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f`, one poll of a handler, with the events it pushes gathered per connection and written
/// together when it returns (whether it returns or panics): a handler that publishes many
/// events at once makes one write (and over TLS one record) per subscriber, not one per event.
/// A connection's gathered bytes still go out every [`WRITE_BATCH`] (see `FrameSink::cork`).
pub(crate) fn batched<T>(f: impl FnOnce() -> T) -> T {
    struct Uncork;
    impl Drop for Uncork {
        fn drop(&mut self) {
            if let Some(batch) = CORKED.with(|c| c.borrow_mut().take()) {
                for tx in batch.corked {
                    tx.uncork();
                }
            }
        }
    }
    let outer = CORKED.with(|c| {
        let mut c = c.borrow_mut();
        let outer = c.is_some();
        c.get_or_insert_with(|| Batch {
            id: BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            corked: Vec::new(),
        });
        outer
    });
    if outer {
        return f();
    }
    let _uncork = Uncork;
    f()
}

/// The number of the running handler poll's batch, if any: what [`cork_for_batch`] takes (read
/// once per broadcast, not once per subscriber).
pub(crate) fn current_batch() -> Option<u64> {
    CORKED.with(|c| c.borrow().as_ref().map(|b| b.id))
}

/// Within batch `batch` ([`current_batch`]), corks `target`'s sink before an event is pushed
/// to it: once per batch, which `target` remembers (its `corked_in`), so that a batch of many
/// events costs one comparison per subscriber and event, not a set insert. Two threads'
/// batches pushing to one connection may both cork it: uncorking twice is harmless.
pub(crate) fn cork_for_batch(batch: Option<u64>, target: &crate::registry::PushTarget) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(id) = batch else { return };
    if target.corked_in.load(Relaxed) == id {
        return;
    }
    target.corked_in.store(id, Relaxed);
    CORKED.with(|c| {
        if let Some(b) = c.borrow_mut().as_mut() {
            target.tx.cork();
            b.corked.push(target.tx.clone());
        }
    });
}

/// A handler's future, each poll of it [`batched`].
pub(crate) struct Batched<F: ?Sized>(pub(crate) std::pin::Pin<Box<F>>);

impl<F: std::future::Future + ?Sized> std::future::Future for Batched<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        batched(|| self.0.as_mut().poll(cx))
    }
}

/// The writer task of a connection, whose frames the sending tasks write themselves:
/// finishes the writes the socket could not take at once, and moves the events of drop-policy
/// topics into the sink, at most a quarter of its bounds (and 64 KiB) at a time and only once
/// the sink has written everything before them. So these events wait in the event queue, where their topic's policy applies,
/// and never take the room that responses, pings and `Disconnect` events need in the sink.
/// Returns when the sink is closed.
pub(crate) async fn sink_loop<W: SinkIo>(sink: Arc<FrameSink<W>>, events: Arc<EventQueue>) {
    let mut pending = Vec::new();
    let (max_bytes, max_frames) = sink.bounds();
    let (batch_bytes, batch_frames) = ((max_bytes / 4).min(WRITE_BATCH), (max_frames / 4).max(1));
    loop {
        tokio::select! {
            biased;
            () = sink.run() => return,
            _ = events.notify.notified() => {}
        }
        loop {
            // `run` is cancellation-safe: it flushes while this task waits for the sink.
            tokio::select! {
                biased;
                () = sink.idle() => {}
                () = sink.run() => return,
            }
            events.take_within(&mut pending, batch_frames, batch_bytes);
            if pending.is_empty() {
                break;
            }
            // One write (over TLS one record) for the batch.
            sink.cork();
            for f in pending.drain(..) {
                let sent = tokio::select! {
                    biased;
                    sent = sink.send(&f) => sent.is_ok(),
                    () = sink.run() => false,
                };
                if !sent {
                    sink.uncork();
                    return;
                }
            }
            sink.uncork();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerwire_proto::v1::{Event, frame::Kind};
    use prost::Message;

    fn event(topic: &str, n: u64) -> Frame {
        Frame::new(Kind::Event(Event {
            topic: topic.into(),
            seq: n,
            payload: vec![0; 100].into(),
        }))
    }

    fn push(q: &EventQueue, topic: &Arc<str>, n: u64, policy: SlowConsumerPolicy) {
        let frame = event(topic, n);
        let len = frame.encoded_len();
        q.push(topic, frame, len, policy);
    }

    fn topics(q: &EventQueue) -> Vec<(String, u64)> {
        let mut out = vec![];
        q.take_within(&mut out, usize::MAX, usize::MAX);
        out.into_iter()
            .filter_map(|f| match f.kind {
                Some(Kind::Event(e)) => Some((e.topic, e.seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn policies_stay_within_their_bounds_and_their_topic() {
        let (state, log): (Arc<str>, Arc<str>) = ("t.State".into(), "t.Log".into());
        let q = EventQueue::new(3, 1 << 20);
        push(&q, &state, 1, SlowConsumerPolicy::KeepLatest);
        for n in 1..=10 {
            push(&q, &log, n, SlowConsumerPolicy::DropOldest);
        }
        push(&q, &state, 2, SlowConsumerPolicy::KeepLatest);
        // Log kept its newest two beside State's latest; State's event was never evicted by Log.
        assert_eq!(
            topics(&q),
            [
                ("t.Log".to_string(), 9),
                ("t.Log".to_string(), 10),
                ("t.State".to_string(), 2)
            ]
        );
        assert_eq!(q.dropped.load(Ordering::Relaxed), 9);
        // The byte bound: 100-byte events, 350 bytes at most.
        let q = EventQueue::new(1000, 350);
        for n in 1..=10 {
            push(&q, &log, n, SlowConsumerPolicy::DropOldest);
        }
        let kept = topics(&q);
        assert!(
            kept.len() <= 3 && kept.last() == Some(&("t.Log".to_string(), 10)),
            "{kept:?}"
        );
    }
}
