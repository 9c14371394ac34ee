//! A minimal Chrome DevTools protocol client over `--remote-debugging-pipe`: Chromium reads
//! commands from its descriptor 3 and writes answers and events to its descriptor 4, each
//! message one JSON object followed by a NUL byte. Only the process holding the other ends of
//! those two pipes can speak to the browser: there is no port another user could connect to.
//!
//! Written here over `serde_json` rather than taken from a DevTools crate: the launcher needs
//! five commands and two events, and the full clients (chromiumoxide and the like) generate
//! bindings for the whole protocol, minutes of compile time on a 2-core device builder.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

/// Largest message accepted from the browser (a full-page screenshot is a few MiB of base64).
const MAX_MESSAGE: u64 = 64 << 20;
/// Events waiting for the launcher at most; beyond, new ones are dropped (a page's lost token
/// request times out and is asked again).
const MAX_EVENTS: usize = 1024;
/// How long a command may take before the call gives up.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The value at JSON pointer `path` in `v` (`Null` where there is none).
pub(crate) fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    v.pointer(path).unwrap_or(&Value::Null)
}

/// An event the browser sent: `method`, `params` and, for a page's events, its session.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) method: String,
    pub(crate) params: Value,
    pub(crate) session: Option<String>,
}

type Pending = Arc<Mutex<HashMap<u64, SyncSender<Result<Value, String>>>>>;

/// One DevTools connection over the browser's pipes.
pub(crate) struct Cdp {
    to_browser: Mutex<File>,
    next_id: AtomicU64,
    pending: Pending,
    events: Mutex<Receiver<Event>>,
}

impl Cdp {
    /// Speaks over `to_browser` (the browser's descriptor 3) and `from_browser` (its 4); a
    /// thread reads answers and events until the browser closes its end.
    pub(crate) fn new(to_browser: File, from_browser: File) -> Self {
        let pending: Pending = Arc::default();
        let (events_tx, events) = sync_channel(MAX_EVENTS);
        let answers = pending.clone();
        std::thread::spawn(move || read_loop(from_browser, &answers, &events_tx));
        Self {
            to_browser: Mutex::new(to_browser),
            next_id: AtomicU64::new(1),
            pending,
            events: Mutex::new(events),
        }
    }

    /// Sends `method` with `params` (to the page `session`, or to the browser) and waits for
    /// its result.
    pub(crate) fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = match session {
            Some(session) => {
                json!({ "id": id, "method": method, "params": params, "sessionId": session })
            }
            None => json!({ "id": id, "method": method, "params": params }),
        };
        let (tx, rx) = sync_channel(1);
        self.pending
            .lock()
            .map_err(|_| anyhow!("DevTools reader failed"))?
            .insert(id, tx);
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        {
            let mut out = self
                .to_browser
                .lock()
                .map_err(|_| anyhow!("DevTools writer failed"))?;
            out.write_all(&bytes)
                .with_context(|| format!("sending {method} to the browser"))?;
        }
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => bail!("{method}: {error}"),
            Err(RecvTimeoutError::Timeout) => bail!("{method}: no answer within {CALL_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("{method}: the browser closed DevTools"),
        }
    }

    /// The next event, waiting at most `timeout`; `Ok(None)` when none came, an error when the
    /// browser has closed the pipe.
    pub(crate) fn next_event(&self, timeout: Duration) -> anyhow::Result<Option<Event>> {
        let events = self
            .events
            .lock()
            .map_err(|_| anyhow!("DevTools reader failed"))?;
        match events.recv_timeout(timeout) {
            Ok(ev) => Ok(Some(ev)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("the browser closed its DevTools pipe"),
        }
    }
}

fn read_loop(from_browser: File, pending: &Pending, events: &SyncSender<Event>) {
    let mut reader = BufReader::new(from_browser);
    loop {
        let mut buf = Vec::new();
        match reader.by_ref().take(MAX_MESSAGE).read_until(0, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.pop() != Some(0) {
            // Over the limit or cut short: nothing sensible can follow.
            tracing::warn!("DevTools message over {MAX_MESSAGE} bytes or cut short; closing");
            break;
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            tracing::warn!("DevTools sent a message that is not JSON; ignored");
            continue;
        };
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let answer = match msg.get("error") {
                Some(e) => Err(e.to_string()),
                None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
            };
            let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(answer);
            }
        } else if let Some(method) = msg.get("method").and_then(Value::as_str) {
            let ev = Event {
                method: method.to_owned(),
                params: msg.get("params").cloned().unwrap_or(Value::Null),
                session: msg
                    .get("sessionId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
            match events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => {
                    tracing::warn!(
                        "{MAX_EVENTS} DevTools events waiting: {} dropped",
                        ev.method
                    );
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
    }
    // Wake every caller still waiting: their answers will never come.
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}
