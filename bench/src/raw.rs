//! The limit: a blocking Unix socket with a 4-byte big-endian length prefix, a thread per
//! connection on the server. Two control headers drive the fan-out: `SUBSCRIBE` registers the
//! connection as a subscriber (answered by an empty frame), `FANOUT | count` writes `count`
//! 64-byte events to every subscriber, 64 events per write, then forgets the subscribers.
//!
//! Two servers and clients: the naive ones (`raw`: two `read_exact` and one `write` per message,
//! the pipelined client likewise) and the batched ones (`raw-batched`, issue 21: one read takes
//! everything available, every complete frame in it is answered in one write; the pipelined
//! client writes the requests that answers read in one go made room for in one write), the
//! limit when many calls are in flight on one connection, as peerwire batches.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::measure::{self, Client, Figures, Params, Target, check_echo};

const SUBSCRIBE: u32 = u32::MAX;
const FANOUT: u32 = 1 << 31;
const EVENT: usize = 64;
const BATCH: usize = 64;

type Subscribers = Arc<Mutex<Vec<UnixStream>>>;

pub(crate) fn serve(path: &Path) -> anyhow::Result<()> {
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    crate::ready()?;
    let subs = Subscribers::default();
    for conn in listener.incoming() {
        let stream = conn.context("accept")?;
        let subs = subs.clone();
        std::thread::spawn(move || serve_conn(stream, &subs));
    }
    Ok(())
}

fn serve_conn(mut s: UnixStream, subs: &Subscribers) -> std::io::Result<()> {
    let mut head = [0u8; 4];
    let mut buf = Vec::new();
    loop {
        s.read_exact(&mut head)?;
        let len = u32::from_be_bytes(head);
        if len == SUBSCRIBE {
            subs.lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .push(s.try_clone()?);
            s.write_all(&0u32.to_be_bytes())?;
        } else if len & FANOUT != 0 {
            fan_out(subs, (len & !FANOUT) as usize)?;
        } else {
            // Header and payload in one write, as a careful raw implementation would.
            buf.clear();
            buf.extend_from_slice(&head);
            buf.resize(4 + len as usize, 0);
            s.read_exact(&mut buf[4..])?;
            s.write_all(&buf)?;
        }
    }
}

fn fan_out(subs: &Subscribers, count: usize) -> std::io::Result<()> {
    let mut subs = subs.lock().map_err(|_| std::io::Error::other("poisoned"))?;
    let event: Vec<u8> = (EVENT as u32)
        .to_be_bytes()
        .into_iter()
        .chain([7u8; EVENT])
        .collect();
    let batch = event.repeat(BATCH);
    let mut sent = 0;
    while sent < count {
        let k = BATCH.min(count - sent);
        subs.retain_mut(|s| s.write_all(&batch[..k * event.len()]).is_ok());
        sent += k;
    }
    subs.clear();
    Ok(())
}

/// The batched server (`raw-batched`): a thread per connection; each read takes what the socket
/// has, and the complete frames in it are answered by one write.
pub(crate) fn serve_batched(path: &Path) -> anyhow::Result<()> {
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    crate::ready()?;
    for conn in listener.incoming() {
        let stream = conn.context("accept")?;
        std::thread::spawn(move || serve_batched_conn(stream));
    }
    Ok(())
}

/// The length of the complete frames at the start of `buf`, and how many there are.
fn complete_frames(buf: &[u8]) -> (usize, usize) {
    let (mut at, mut frames) = (0, 0);
    while let Some(head) = buf.get(at..at + 4) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if buf.len() < at + 4 + len {
            break;
        }
        at += 4 + len;
        frames += 1;
    }
    (at, frames)
}

fn serve_batched_conn(mut s: UnixStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = s.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        // An echo answers each frame with itself: the complete frames go back as they are.
        let (done, _) = complete_frames(&buf[..filled]);
        if done > 0 {
            s.write_all(&buf[..done])?;
            buf.copy_within(done..filled, 0);
            filled -= done;
        }
    }
}

/// A batched raw client connection (`raw-batched`): one at a time like [`Raw`], pipelined with
/// one read for every answer available and one write for the requests they make room for.
pub(crate) struct RawBatched(Raw);

impl Client for RawBatched {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        Raw::connect(target).await.map(Self)
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        self.0.echo(msg).await
    }

    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        let frame: Vec<u8> = (msg.len() as u32)
            .to_be_bytes()
            .into_iter()
            .chain(msg.iter().copied())
            .collect();
        let mut stream = &self.0.stream;
        let t = Instant::now();
        let first = n.min(16);
        stream.write_all(&frame.repeat(first))?;
        let (mut sent, mut received) = (first, 0);
        let mut buf = vec![0u8; 64 * 1024];
        let mut filled = 0;
        let mut out = Vec::new();
        while received < n {
            let k = stream.read(&mut buf[filled..])?;
            anyhow::ensure!(k > 0, "the server closed the connection");
            filled += k;
            let (done, frames) = complete_frames(&buf[..filled]);
            buf.copy_within(done..filled, 0);
            filled -= done;
            received += frames;
            let more = frames.min(n - sent);
            if more > 0 {
                out.clear();
                for _ in 0..more {
                    out.extend_from_slice(&frame);
                }
                stream.write_all(&out)?;
                sent += more;
            }
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }
}

/// A raw client connection; `echo` builds each request in a reused buffer.
pub(crate) struct Raw {
    stream: UnixStream,
    buf: RefCell<Vec<u8>>,
}

impl Raw {
    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        buf.extend_from_slice(msg);
        (&self.stream).write_all(&buf)
    }

    fn receive(&self) -> std::io::Result<usize> {
        let mut head = [0u8; 4];
        (&self.stream).read_exact(&mut head)?;
        let mut buf = self.buf.borrow_mut();
        buf.resize(u32::from_be_bytes(head) as usize, 0);
        (&self.stream).read_exact(&mut buf)?;
        Ok(buf.len())
    }
}

impl Client for Raw {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(&target.socket)
            .with_context(|| format!("connecting to {}", target.socket.display()))?;
        Ok(Self {
            stream,
            buf: RefCell::new(Vec::new()),
        })
    }

    async fn echo(&self, msg: &Bytes) -> anyhow::Result<()> {
        self.send(msg).context("raw send")?;
        check_echo(msg.len(), self.receive().context("raw receive")?)
    }

    /// Pipelined on one thread: 16 requests written, then one more written per answer read.
    async fn inflight16(&self, msg: &Bytes, n: usize) -> anyhow::Result<f64> {
        measure::pipelined(
            n,
            || self.send(msg),
            || check_echo(msg.len(), self.receive()?),
        )
    }
}

/// Fan-out: 8 subscriber connections, each read by its own thread; events/s delivered to all 8
/// from the trigger to the last event. Subscribers and server are blocking sockets, so nothing
/// is dropped: a slow reader slows the writer down.
pub(crate) async fn fanout(target: &Target, p: &Params) -> anyhow::Result<Figures> {
    measure::fanout_runs(p, || async { fanout_once(target, p.fanout) }).await
}

fn fanout_once(target: &Target, count: usize) -> anyhow::Result<(Instant, Vec<(usize, Instant)>)> {
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut s = UnixStream::connect(&target.socket).context("subscriber connect")?;
        s.write_all(&SUBSCRIBE.to_be_bytes())?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        readers.push(s);
    }
    let mut trigger = UnixStream::connect(&target.socket).context("trigger connect")?;
    let start = Instant::now();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let want = count * (4 + EVENT);
                let (mut got, mut last) = (0, Instant::now());
                let mut buf = vec![0u8; 64 * 1024];
                while got < want {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            got += k;
                            last = Instant::now();
                        }
                    }
                }
                (got / (4 + EVENT), last)
            })
        })
        .collect();
    trigger.write_all(&(FANOUT | count as u32).to_be_bytes())?;
    let mut results = Vec::new();
    for t in threads {
        results.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("subscriber thread panicked"))?,
        );
    }
    Ok((start, results))
}
