//! Tokio adapters shared by the server and the client (feature `io`).
//!
//! The only I/O in this crate, kept out of the core API: a writer loop that drains a bounded
//! queue of frames into a stream, batching whatever is queued into one write.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;

use crate::codec::{CodecError, FrameCodec};
use crate::v1::Frame;

/// Bytes gathered from the queue before they are written out.
pub const WRITE_BATCH: usize = 64 * 1024;

/// Clears `buf` after a write and gives its memory back if one large frame grew it: an idle
/// connection keeps no large buffer (it starts empty, too, and grows to what is written).
pub fn recycle(buf: &mut BytesMut) {
    if buf.capacity() > 4 * WRITE_BATCH {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

/// Writes every frame received on `rx` to `io`, batching queued frames, until the queue is
/// closed (all senders dropped), then shuts the write side down. Returns on the first error.
/// `queued`, if given, counts the encoded bytes waiting in the queue: the writer subtracts each
/// frame's length as it takes it (the sender adds it; see the server's outbound byte limit).
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut io: W,
    mut codec: FrameCodec,
    mut rx: mpsc::Receiver<Frame>,
    queued: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
) -> Result<(), CodecError> {
    use prost::Message;
    let taken = |frame: &Frame| {
        if let Some(q) = &queued {
            q.fetch_sub(frame.encoded_len(), std::sync::atomic::Ordering::Relaxed);
        }
    };
    let mut buf = BytesMut::new();
    while let Some(frame) = rx.recv().await {
        taken(&frame);
        codec.encode(&frame, &mut buf)?;
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => {
                    taken(&frame);
                    codec.encode(&frame, &mut buf)?
                }
                Err(_) => break,
            }
        }
        io.write_all_buf(&mut buf).await?;
        recycle(&mut buf);
    }
    io.flush().await?;
    io.shutdown().await?;
    Ok(())
}
