//! A connection's outbound side: the bounded queue of frames (responses, pongs, events of
//! `Disconnect` topics), the event queue of topics with a drop policy, and the writer task that
//! drains both into the stream.
//!
//! Nothing here ever waits for the peer: a full queue is the peer's problem, handled by the
//! topic's [`SlowConsumerPolicy`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::v1::Frame;
use prost::Message;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Encoder;

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

/// Events of topics with a drop policy, bounded by `max` frames.
pub(crate) struct EventQueue {
    frames: Mutex<VecDeque<(Arc<str>, Frame)>>,
    notify: Notify,
    max: usize,
    pub(crate) dropped: AtomicU64,
}

impl EventQueue {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            max: max.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues an event by its topic's policy; never blocks, never fails.
    pub(crate) fn push(&self, topic: &Arc<str>, frame: Frame, policy: SlowConsumerPolicy) {
        let mut q = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        let before = q.len();
        match policy {
            SlowConsumerPolicy::KeepLatest => q.retain(|(t, _)| t != topic),
            _ => {
                if q.len() >= self.max {
                    let oldest = q.iter().position(|(t, _)| t == topic).unwrap_or(0);
                    q.remove(oldest);
                }
            }
        }
        let dropped = (before + 1).saturating_sub(q.len() + 1);
        if dropped > 0 {
            self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        q.push_back((topic.clone(), frame));
        drop(q);
        self.notify.notify_one();
    }

    fn take(&self, buf: &mut Vec<Frame>, limit: usize) {
        let mut q = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        while buf.len() < limit {
            match q.pop_front() {
                Some((_, f)) => buf.push(f),
                None => break,
            }
        }
    }
}

/// Bytes gathered before they are written out.
const WRITE_BATCH: usize = 64 * 1024;

/// The writer task: drains the frame queue and the event queue into `io` until the frame queue
/// is closed, then shuts the write side down. `queued` is the frame queue's byte count.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut codec: FrameCodec,
    mut rx: mpsc::Receiver<Frame>,
    events: Arc<EventQueue>,
    queued: Arc<AtomicUsize>,
) -> Result<(), CodecError> {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    let mut pending = Vec::new();
    let mut open = true;
    // Frames taken from the frame queue no longer count against its byte limit.
    let taken = |f: Frame| {
        queued.fetch_sub(f.encoded_len(), Ordering::Relaxed);
        f
    };
    while open {
        tokio::select! {
            biased;
            frame = rx.recv() => match frame {
                Some(f) => pending.push(taken(f)),
                None => open = false,
            },
            _ = events.notify.notified() => {}
        }
        loop {
            while pending.len() < 256 {
                match rx.try_recv() {
                    Ok(f) => pending.push(taken(f)),
                    Err(_) => break,
                }
            }
            events.take(&mut pending, 512);
            if pending.is_empty() {
                break;
            }
            for f in pending.drain(..) {
                codec.encode(&f, &mut buf)?;
                if buf.len() >= WRITE_BATCH {
                    io.write_all_buf(&mut buf).await?;
                    buf.clear();
                }
            }
            io.write_all_buf(&mut buf).await?;
            buf.clear();
        }
    }
    io.flush().await?;
    io.shutdown().await?;
    Ok(())
}
