//! The client side: options, connect, blocking and callback calls, notifications,
//! subscriptions with a callback, close.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use ::peerwire_client::blocking::{self, Delivery};
use ::peerwire_client::{Backoff, CallError, Client, ClientBuilder, ClientTls, ConnectError};
use bytes::Bytes;

use crate::handle::{self, Handle};
use crate::peerwire_status::{self, *};
use crate::server::{UserData, lock, peerwire_tls_mode};
use crate::{Error, Result, boundary, in_callback, on_library_thread, peerwire_buffer, raw};

/// What a client is built from; made by `peerwire_client_options_new`, consumed by
/// `peerwire_client_connect`, or freed with `peerwire_client_options_free`.
pub struct peerwire_client_options {
    magic: u64,
    builder: Option<ClientBuilder>,
    default_deadline: Duration,
    reconnect: Option<Backoff>,
}

impl Handle for peerwire_client_options {
    const MAGIC: u64 = 0x7077_636f_7074_696f;
    const KIND: &'static str = "peerwire_client_options";
    fn magic(&self) -> u64 {
        self.magic
    }
    fn set_magic(&mut self, magic: u64) {
        self.magic = magic;
    }
}

/// New client options for the server at `socket_path`: no TLS, no token, no reconnection,
/// connect timeout 5 s, default deadline 30 s. Free with `peerwire_client_options_free` unless
/// given to `peerwire_client_connect`.
///
/// # Safety
/// `socket_path` is a NUL-terminated string; `out` points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_new(
    socket_path: *const c_char,
    out: *mut *mut peerwire_client_options,
) -> peerwire_status {
    boundary("peerwire_client_options_new", || {
        raw::out_ok(out, "out")?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let path = unsafe { raw::str(socket_path, "socket_path") }?;
        let p = handle::give(peerwire_client_options {
            magic: peerwire_client_options::MAGIC,
            builder: Some(Client::builder(PathBuf::from(path))),
            default_deadline: Duration::from_secs(30),
            reconnect: None,
        });
        // SAFETY: `out` is not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(out, p) };
        Ok(())
    })
}

/// Frees options that were not given to `peerwire_client_connect`. NULL does nothing.
///
/// # Safety
/// `options` is NULL or live options, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_free(
    options: *mut peerwire_client_options,
) -> peerwire_status {
    boundary("peerwire_client_options_free", || {
        if options.is_null() {
            return Ok(());
        }
        // SAFETY: live options the caller will not use again (this function's contract).
        unsafe { handle::take(options) }.map(drop)
    })
}

/// Applies `f` to the builder behind `options`, the pointer an exported function was given
/// under its contract (NULL or live options that no other thread uses meanwhile).
fn with_builder(
    name: &str,
    options: *mut peerwire_client_options,
    f: impl FnOnce(ClientBuilder) -> Result<ClientBuilder>,
) -> peerwire_status {
    boundary(name, || {
        // SAFETY: the exported function's contract: NULL or live options, exclusively the
        // caller's for the call.
        let o = unsafe { handle::borrow_mut(options) }?;
        let builder = o
            .builder
            .take()
            .ok_or_else(|| Error::new(PEERWIRE_INTERNAL, "options without a builder"))?;
        // On an error the options keep their previous settings.
        let kept = builder.clone();
        match f(builder) {
            Ok(b) => {
                o.builder = Some(b);
                Ok(())
            }
            Err(e) => {
                o.builder = Some(kept);
                Err(e)
            }
        }
    })
}

/// Sets the name sent in `Hello` (default "peerwire-client").
///
/// # Safety
/// `options` is live options; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_set_name(
    options: *mut peerwire_client_options,
    name: *const c_char,
) -> peerwire_status {
    with_builder("peerwire_client_options_set_name", options, |b| {
        // SAFETY: a NUL-terminated string (this function's contract).
        Ok(b.name(unsafe { raw::str(name, "name") }?))
    })
}

/// Offers `count` versions of `namespace`; with `required`, connecting fails unless the server
/// speaks one of them.
///
/// # Safety
/// `options` is live options; `namespace` a NUL-terminated string; `versions` points to `count`
/// values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_namespace(
    options: *mut peerwire_client_options,
    namespace: *const c_char,
    versions: *const u32,
    count: usize,
    required: bool,
) -> peerwire_status {
    with_builder("peerwire_client_options_namespace", options, |b| {
        // SAFETY: a NUL-terminated string (this function's contract).
        let ns = unsafe { raw::str(namespace, "namespace") }?;
        // SAFETY: `count` values (this function's contract).
        let v = unsafe { raw::u32s(versions, count, "versions") }?;
        Ok(if required {
            b.require_namespace(ns, v)
        } else {
            b.namespace(ns, v)
        })
    })
}

/// Refuses a server not running as `uid` (`SO_PEERCRED` of the listening socket, checked before
/// a byte is sent). May be given several times: any of them.
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_expect_server_uid(
    options: *mut peerwire_client_options,
    uid: u32,
) -> peerwire_status {
    with_builder("peerwire_client_options_expect_server_uid", options, |b| {
        Ok(b.expect_server_uid(uid))
    })
}

/// Refuses a server not running this executable (absolute path, checked through a pidfd).
///
/// # Safety
/// `options` is live options; `exe_path` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_expect_server_exe(
    options: *mut peerwire_client_options,
    exe_path: *const c_char,
) -> peerwire_status {
    with_builder("peerwire_client_options_expect_server_exe", options, |b| {
        // SAFETY: a NUL-terminated string (this function's contract).
        Ok(b.expect_server_exe(unsafe { raw::str(exe_path, "exe_path") }?))
    })
}

/// TLS with the identity directory made by `peerwire init --dir` (its `client/` part): mutual
/// (the client's certificate and the pinned server certificate) or server-auth (the pinned
/// server certificate only). `PEERWIRE_TLS_OFF` turns TLS off. The files are read now
/// (`PEERWIRE_CONFIG` when they do not load).
///
/// # Safety
/// `options` is live options; `identity_dir` NULL (with `PEERWIRE_TLS_OFF`) or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_tls(
    options: *mut peerwire_client_options,
    mode: peerwire_tls_mode,
    identity_dir: *const c_char,
) -> peerwire_status {
    with_builder("peerwire_client_options_tls", options, |b| {
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let dir = unsafe { raw::opt_str(identity_dir, "identity_dir") }?;
        let tls = match (mode, dir) {
            (peerwire_tls_mode::PEERWIRE_TLS_OFF, _) => None,
            (_, None) => return Err(Error::invalid("identity_dir is NULL but TLS is on")),
            (mode, Some(dir)) => ClientTls::from_dir(dir.as_ref(), mode.to_rust())
                .map_err(|e| Error::new(PEERWIRE_CONFIG, format!("{dir}: {e}")))?,
        };
        Ok(match tls {
            Some(tls) => b.tls(tls),
            None => b,
        })
    })
}

/// Presents this session token in `Hello` (copied, and zeroized when the client goes).
///
/// # Safety
/// `options` is live options; `token` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_token(
    options: *mut peerwire_client_options,
    token: *const c_char,
) -> peerwire_status {
    with_builder("peerwire_client_options_token", options, |b| {
        // SAFETY: a NUL-terminated string (this function's contract).
        Ok(b.token(unsafe { raw::str(token, "token") }?))
    })
}

/// Takes the session token the launcher passed (`peerwire_spawn_with_token`, or the Rust
/// `spawn_with_token`): read from the inherited descriptor and closed. `PEERWIRE_CONFIG` when
/// there is none.
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_token_from_launcher(
    options: *mut peerwire_client_options,
) -> peerwire_status {
    with_builder(
        "peerwire_client_options_token_from_launcher",
        options,
        |b| {
            b.token_from_launcher()
                .map_err(|e| Error::new(PEERWIRE_CONFIG, e.to_string()))
        },
    )
}

/// The longest connect plus handshake (default 5000 ms; 1 ms to 24 h).
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_connect_timeout(
    options: *mut peerwire_client_options,
    timeout_ms: u64,
) -> peerwire_status {
    with_builder("peerwire_client_options_connect_timeout", options, |b| {
        Ok(b.connect_timeout(ms("timeout_ms", timeout_ms)?))
    })
}

fn ms(what: &str, v: u64) -> Result<Duration> {
    if !(1..=86_400_000).contains(&v) {
        return Err(Error::invalid(format!("{what} {v} is not 1 ms to 24 h")));
    }
    Ok(Duration::from_millis(v))
}

/// The deadline of calls made with `timeout_ms` 0 (default 30000 ms; 1 ms to 24 h).
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_default_deadline(
    options: *mut peerwire_client_options,
    deadline_ms: u64,
) -> peerwire_status {
    boundary("peerwire_client_options_default_deadline", || {
        let d = ms("deadline_ms", deadline_ms)?;
        // SAFETY: live options, exclusively the caller's (this function's contract).
        let o = unsafe { handle::borrow_mut(options) }?;
        o.default_deadline = d;
        o.builder = o.builder.take().map(|b| b.default_deadline(d));
        Ok(())
    })
}

/// Reconnects after a lost connection, as the Rust client does: exponential backoff from
/// `initial_ms` to `max_ms` with jitter; subscriptions are renewed on the new connection, and
/// calls fail with `PEERWIRE_DISCONNECTED` while it is down.
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_options_reconnect(
    options: *mut peerwire_client_options,
    initial_ms: u64,
    max_ms: u64,
) -> peerwire_status {
    boundary("peerwire_client_options_reconnect", || {
        let mut backoff = Backoff::default();
        backoff.initial = ms("initial_ms", initial_ms)?;
        backoff.max = ms("max_ms", max_ms)?;
        if backoff.max < backoff.initial {
            return Err(Error::invalid("max_ms is less than initial_ms"));
        }
        // SAFETY: live options, exclusively the caller's (this function's contract).
        let o = unsafe { handle::borrow_mut(options) }?;
        o.reconnect = Some(backoff);
        Ok(())
    })
}

/// A connected client; made by `peerwire_client_connect`, freed by `peerwire_client_free`.
/// Its functions may be called from any thread at once.
pub struct peerwire_client {
    magic: u64,
    shared: Arc<Shared>,
    default_deadline: Duration,
}

impl Handle for peerwire_client {
    const MAGIC: u64 = 0x7077_636c_6965_6e74;
    const KIND: &'static str = "peerwire_client";
    fn magic(&self) -> u64 {
        self.magic
    }
    fn set_magic(&mut self, magic: u64) {
        self.magic = magic;
    }
}

/// A C client is a [blocking](::peerwire_client::blocking) client: a blocking call writes its
/// request and reads its answer on the calling thread. One library thread, started by the
/// first subscription or asynchronous call (or at connect, with reconnection on), delivers
/// events and asynchronous answers, and reconnects; while it runs it also reads for the
/// blocking calls (one thread reads for all), and answers the server's keepalive pings.
struct Shared {
    /// How to connect again.
    builder: ClientBuilder,
    reconnect: Option<Backoff>,
    /// The connection and its number: a new connection numbers its calls from 1 again.
    conn: Mutex<(u64, blocking::Client)>,
    /// Signalled on a new connection and on close.
    changed: Condvar,
    /// Set by `peerwire_client_close`: no reconnection; the library thread ends.
    closed: AtomicBool,
    subs: Mutex<Vec<Sub>>,
    next_sub: AtomicU64,
    /// `peerwire_client_call_async` calls waiting for their answer, by connection and id.
    pending: Mutex<HashMap<(u64, u64), Completion>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A subscription's callback, as the library thread sees it.
struct Sub {
    id: u64,
    topics: Vec<String>,
    f: EventFn,
    user_data: UserData,
    stopped: Arc<AtomicBool>,
    /// Held while the callback runs, so that freeing waits for a callback in progress.
    running: Arc<Mutex<()>>,
}

type EventFn = unsafe extern "C" fn(*mut c_void, *const c_char, u64, *const u8, usize);

impl Shared {
    fn current(&self) -> (u64, blocking::Client) {
        let conn = lock(&self.conn);
        (conn.0, conn.1.clone())
    }

    /// Starts the library thread unless it runs.
    fn ensure_thread(self: &Arc<Self>) -> Result<()> {
        let mut thread = lock(&self.thread);
        if thread.is_none() {
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name("peerwire-client".into())
                .spawn(move || shared.run())
                .map_err(|e| Error::new(PEERWIRE_IO, format!("starting a thread: {e}")))?;
            *thread = Some(spawned);
        }
        Ok(())
    }

    /// The library thread: events to their callbacks, answers to their completions,
    /// reconnection.
    fn run(&self) {
        crate::mark_library_thread();
        while !self.closed.load(Ordering::Acquire) {
            let (generation, client) = self.current();
            match client.recv(None) {
                Ok(Some(Delivery::Answer(id, result))) => {
                    let completion = lock(&self.pending).remove(&(generation, id));
                    if let Some(mut c) = completion {
                        c.complete(result.map_err(call_error));
                    }
                }
                Ok(Some(Delivery::Event(ev))) => self.deliver(&ev),
                Ok(_) => {}
                Err(e) => {
                    // Every call of the lost connection was answered before this error.
                    self.fail_pending(Some(generation), &e.to_string());
                    match self.reconnect {
                        Some(backoff) if self.reconnect_with(backoff) => {}
                        _ => break,
                    }
                }
            }
        }
        self.fail_pending(None, "the client is closed");
    }

    fn fail_pending(&self, generation: Option<u64>, why: &str) {
        let failed: Vec<Completion> = {
            let mut pending = lock(&self.pending);
            let keys: Vec<_> = pending
                .keys()
                .filter(|k| generation.is_none_or(|g| k.0 == g))
                .copied()
                .collect();
            keys.iter().filter_map(|k| pending.remove(k)).collect()
        };
        for mut c in failed {
            c.complete(Err(Error::new(PEERWIRE_DISCONNECTED, why)));
        }
    }

    /// Connects again with `backoff` until it works (true) or the client is closed (false);
    /// renews the subscriptions on the new connection.
    fn reconnect_with(&self, backoff: Backoff) -> bool {
        let mut attempt = 0;
        loop {
            {
                let conn = lock(&self.conn);
                let waited = self
                    .changed
                    .wait_timeout_while(conn, backoff.delay(attempt), |_| {
                        !self.closed.load(Ordering::Acquire)
                    });
                drop(waited);
            }
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            attempt += 1;
            match self.builder.clone().connect_blocking() {
                Ok(client) => {
                    let mut topics: Vec<String> = lock(&self.subs)
                        .iter()
                        .flat_map(|s| s.topics.iter().cloned())
                        .collect();
                    topics.sort();
                    topics.dedup();
                    if !topics.is_empty() {
                        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                        if let Err(e) = client.subscribe(&topics) {
                            tracing::warn!("re-subscribing after reconnect failed: {e}");
                        }
                    }
                    let mut conn = lock(&self.conn);
                    conn.0 += 1;
                    conn.1 = client;
                    drop(conn);
                    self.changed.notify_all();
                    tracing::info!(attempt, "reconnected");
                    return true;
                }
                Err(
                    e @ (ConnectError::UntrustedServer { .. }
                    | ConnectError::Handshake(_)
                    | ConnectError::Tls(_)),
                ) => tracing::warn!(attempt, "reconnect refused: {e}"),
                Err(e) => tracing::debug!(attempt, "reconnect failed: {e}"),
            }
        }
    }

    /// Calls every subscription of `ev`'s topic, in turn.
    fn deliver(&self, ev: &::peerwire_client::EventMessage) {
        let subs: Vec<_> = lock(&self.subs)
            .iter()
            .filter(|s| s.topics.contains(&ev.topic))
            .map(|s| (s.f, s.user_data, s.stopped.clone(), s.running.clone()))
            .collect();
        if subs.is_empty() {
            tracing::debug!(topic = %ev.topic, "event for a topic with no subscriber");
            return;
        }
        let topic = CString::new(ev.topic.replace('\0', "")).unwrap_or_default();
        for (f, user_data, stopped, running) in subs {
            let _running = lock(&running);
            if stopped.load(Ordering::Acquire) {
                continue;
            }
            in_callback("event callback", || {
                // SAFETY: the program's callback with its user_data; the topic and payload
                // outlive the call.
                unsafe {
                    f(
                        user_data.ptr(),
                        topic.as_ptr(),
                        ev.seq,
                        ev.payload.as_ptr(),
                        ev.payload.len(),
                    )
                }
            });
        }
    }

    /// Ends subscription `id`; tells the server about topics no other subscription wants.
    fn unsubscribe(&self, id: u64, deadline: Duration) {
        let gone: Vec<String> = {
            let mut subs = lock(&self.subs);
            let Some(at) = subs.iter().position(|s| s.id == id) else {
                return;
            };
            let sub = subs.remove(at);
            sub.topics
                .into_iter()
                .filter(|t| !subs.iter().any(|s| s.topics.contains(t)))
                .collect()
        };
        if gone.is_empty() || self.closed.load(Ordering::Acquire) {
            return;
        }
        // Not waited for: its answer reaches the library thread, which has no use for it.
        let request = ::peerwire_proto::v1::SubscribeRequest { topics: gone };
        let started = self.current().1.start_call(
            ::peerwire_proto::METHOD_UNSUBSCRIBE,
            prost::Message::encode_to_vec(&request),
            deadline,
        );
        if let Err(e) = started {
            tracing::debug!("unsubscribe of {:?} failed: {e}", request.topics);
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let conn = lock(&self.conn);
        conn.1.close();
        drop(conn);
        self.changed.notify_all();
    }
}

fn connect_error(e: ConnectError) -> Error {
    let status = match &e {
        ConnectError::Io { .. } => PEERWIRE_IO,
        ConnectError::UntrustedServer { .. } => PEERWIRE_UNTRUSTED_SERVER,
        ConnectError::Tls(_) => PEERWIRE_TLS,
        ConnectError::Timeout(_) => PEERWIRE_DEADLINE_EXCEEDED,
        _ => PEERWIRE_HANDSHAKE,
    };
    Error::new(status, e.to_string())
}

pub(crate) fn call_error(e: CallError) -> Error {
    let code = e.code() as i32;
    let status = match &e {
        CallError::Status(s) if s.code == ::peerwire_server::Code::DeadlineExceeded => {
            PEERWIRE_DEADLINE_EXCEEDED
        }
        CallError::Status(_) => PEERWIRE_REMOTE_STATUS,
        CallError::Disconnected(_) => PEERWIRE_DISCONNECTED,
        CallError::TooLarge { .. } => PEERWIRE_TOO_LARGE,
        _ => PEERWIRE_INTERNAL,
    };
    Error {
        status,
        message: e.to_string(),
        remote: code,
    }
}

/// Connects and runs the handshake on the calling thread, blocking at most the connect
/// timeout. `options` is consumed whatever the result (do not free it); `*out` is set on
/// success only. Not from a callback (`PEERWIRE_WRONG_THREAD`).
///
/// # Safety
/// `options` is live options; `out` points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_connect(
    options: *mut peerwire_client_options,
    out: *mut *mut peerwire_client,
) -> peerwire_status {
    boundary("peerwire_client_connect", || {
        // SAFETY: live options the caller hands over (this function's contract).
        let mut o = unsafe { handle::take(options) }?;
        raw::out_ok(out, "out")?;
        crate::not_on_library_thread("peerwire_client_connect")?;
        let builder = o
            .builder
            .take()
            .ok_or_else(|| Error::new(PEERWIRE_INTERNAL, "options without a builder"))?;
        let client = builder.clone().connect_blocking().map_err(connect_error)?;
        let shared = Arc::new(Shared {
            builder,
            reconnect: o.reconnect,
            conn: Mutex::new((0, client)),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            subs: Mutex::new(vec![]),
            next_sub: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            thread: Mutex::new(None),
        });
        if shared.reconnect.is_some() {
            shared.ensure_thread()?;
        }
        let p = handle::give(peerwire_client {
            magic: peerwire_client::MAGIC,
            shared,
            default_deadline: o.default_deadline,
        });
        // SAFETY: `out` is not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(out, p) };
        Ok(())
    })
}

fn deadline(c: &peerwire_client, timeout_ms: u64) -> Result<Duration> {
    if timeout_ms == 0 {
        Ok(c.default_deadline)
    } else {
        ms("timeout_ms", timeout_ms)
    }
}

/// Calls `method` with `request` (`len` bytes, copied) and blocks the calling thread until the
/// answer, the deadline (`timeout_ms`; 0: the default deadline) or a lost connection; the
/// calling thread sends the request and reads the answer itself. On success `*response` is a
/// new buffer the caller frees with `peerwire_buffer_free`; on failure it is left untouched. A
/// non-OK answer is `PEERWIRE_REMOTE_STATUS` (the code: `peerwire_last_remote_code()`). Any
/// number of threads may call at once. Not from a callback (`PEERWIRE_WRONG_THREAD`): use
/// `peerwire_client_call_async` there.
///
/// # Safety
/// `client` is a live client; `method` a NUL-terminated string; `request` points to `len`
/// bytes; `response` points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_call(
    client: *const peerwire_client,
    method: *const c_char,
    request: *const u8,
    len: usize,
    timeout_ms: u64,
    response: *mut *mut peerwire_buffer,
) -> peerwire_status {
    boundary("peerwire_client_call", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let method = unsafe { raw::str(method, "method") }?;
        // SAFETY: `len` readable bytes (this function's contract).
        let request = unsafe { raw::bytes(request, len, "request") }?;
        raw::out_ok(response, "response")?;
        crate::not_on_library_thread("peerwire_client_call")?;
        let deadline = deadline(c, timeout_ms)?;
        let payload = Bytes::copy_from_slice(request);
        let answer = c
            .shared
            .current()
            .1
            .raw_call(method, payload, deadline)
            .map_err(call_error)?;
        let p = handle::give(peerwire_buffer::new(answer));
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(response, p) };
        Ok(())
    })
}

/// The answer to `peerwire_client_call_async`: `status` is `PEERWIRE_OK` with the response
/// (`len` bytes), or the failure with `error` (a message) and `remote_code` (the protocol code
/// for `PEERWIRE_REMOTE_STATUS`). `response` and `error` are valid during the call only.
/// Called exactly once per accepted call, on the client's library thread; calls still pending
/// when the client is closed or freed are answered `PEERWIRE_DISCONNECTED` (or
/// `PEERWIRE_CLOSED`, on the thread calling `peerwire_client_free`), always before
/// `peerwire_client_free` returns. The rules of `peerwire_method_fn` apply (no blocking
/// functions, no unwinding).
pub type peerwire_call_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: peerwire_status,
        remote_code: i32,
        response: *const u8,
        len: usize,
        error: *const c_char,
    ),
>;

type CallFn =
    unsafe extern "C" fn(*mut c_void, peerwire_status, i32, *const u8, usize, *const c_char);

/// Calls the program back once, whatever happens to the call: if it is dropped unanswered (the
/// client is freed), with `PEERWIRE_CLOSED`.
struct Completion {
    f: CallFn,
    user_data: UserData,
    done: bool,
}

impl Completion {
    fn complete(&mut self, result: Result<Bytes>) {
        self.done = true;
        let (f, ud) = (self.f, self.user_data);
        in_callback("call callback", || match result {
            Ok(bytes) => {
                // SAFETY: the program's callback with its user_data; the bytes outlive the call.
                unsafe {
                    f(
                        ud.ptr(),
                        PEERWIRE_OK,
                        0,
                        bytes.as_ptr(),
                        bytes.len(),
                        c"".as_ptr(),
                    )
                }
            }
            Err(e) => {
                let text = CString::new(e.message.replace('\0', "")).unwrap_or_default();
                // SAFETY: the program's callback with its user_data; the message outlives the call.
                unsafe {
                    f(
                        ud.ptr(),
                        e.status,
                        e.remote,
                        std::ptr::null(),
                        0,
                        text.as_ptr(),
                    )
                }
            }
        });
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            self.complete(Err(Error::new(
                PEERWIRE_CLOSED,
                "the client was freed before the answer came",
            )));
        }
    }
}

/// Calls `method` without blocking: `callback` gets the answer (see `peerwire_call_fn`).
/// `request` is copied and sent before this returns. On a failure returned here (bad
/// arguments, a freed client, no connection) the callback is not called. Callable from any
/// thread, callbacks included.
///
/// # Safety
/// `client` is a live client; `method` a NUL-terminated string; `request` points to `len`
/// bytes; `user_data` stays valid until the callback has run.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_call_async(
    client: *const peerwire_client,
    method: *const c_char,
    request: *const u8,
    len: usize,
    timeout_ms: u64,
    callback: peerwire_call_fn,
    user_data: *mut c_void,
) -> peerwire_status {
    boundary("peerwire_client_call_async", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let method = unsafe { raw::str(method, "method") }?;
        // SAFETY: `len` readable bytes (this function's contract).
        let request = unsafe { raw::bytes(request, len, "request") }?;
        let f = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        let deadline = deadline(c, timeout_ms)?;
        let payload = Bytes::copy_from_slice(request);
        let shared = &c.shared;
        shared.ensure_thread()?;
        let (generation, client) = shared.current();
        // Held until the completion is in place: the answer may come at once.
        let mut pending = lock(&shared.pending);
        let id = client
            .start_call(method, payload, deadline)
            .map_err(call_error)?;
        pending.insert(
            (generation, id),
            Completion {
                f,
                user_data: UserData(user_data),
                done: false,
            },
        );
        Ok(())
    })
}

/// Sends a one-way event (`len` bytes, copied) on `topic`: written on the calling thread (from
/// any thread, callbacks included), waiting while the socket's buffer is full.
///
/// # Safety
/// `client` is a live client; `topic` a NUL-terminated string; `event` points to `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_notify(
    client: *const peerwire_client,
    topic: *const c_char,
    event: *const u8,
    len: usize,
) -> peerwire_status {
    boundary("peerwire_client_notify", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let topic = unsafe { raw::str(topic, "topic") }?;
        // SAFETY: `len` readable bytes (this function's contract).
        let event = unsafe { raw::bytes(event, len, "event") }?;
        let msg = crate::raw_message::RawMessage(Bytes::copy_from_slice(event));
        c.shared.current().1.notify(topic, &msg).map_err(call_error)
    })
}

/// An event pushed by the server on a subscribed topic: `topic`, its sequence number (per
/// connection and topic from 1; a gap means events were dropped; restarts at 1 after a
/// reconnection) and `len` bytes of payload, valid during the call only. Called on the
/// client's library thread, one event at a time, in the order the server sent them. The rules
/// of `peerwire_method_fn` apply; `peerwire_client_notify`, `peerwire_client_call_async` and
/// `peerwire_subscription_free` of this very subscription are allowed.
pub type peerwire_event_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        topic: *const c_char,
        seq: u64,
        event: *const u8,
        len: usize,
    ),
>;

/// A subscription; made by `peerwire_client_subscribe`, ended by `peerwire_subscription_free`.
pub struct peerwire_subscription {
    magic: u64,
    id: u64,
    client: Weak<Shared>,
    deadline: Duration,
    stopped: Arc<AtomicBool>,
    /// Held while the callback runs, so that freeing waits for a callback in progress.
    running: Arc<Mutex<()>>,
}

impl Handle for peerwire_subscription {
    const MAGIC: u64 = 0x7077_7375_6273_6372;
    const KIND: &'static str = "peerwire_subscription";
    fn magic(&self) -> u64 {
        self.magic
    }
    fn set_magic(&mut self, magic: u64) {
        self.magic = magic;
    }
}

/// Subscribes to `count` topics: their events arrive on `callback`, interleaved in the order
/// the server sent them (see `peerwire_event_callback`). Blocks until the server confirmed the
/// subscription. With reconnection on, the subscription survives reconnections. `*out` is a new
/// subscription the caller ends with `peerwire_subscription_free` (also after the client is
/// freed). Not from a callback (`PEERWIRE_WRONG_THREAD`).
///
/// # Safety
/// `client` is a live client; `topics` points to `count` NUL-terminated strings; `user_data`
/// stays valid until the subscription is freed; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_subscribe(
    client: *const peerwire_client,
    topics: *const *const c_char,
    count: usize,
    callback: peerwire_event_callback,
    user_data: *mut c_void,
    out: *mut *mut peerwire_subscription,
) -> peerwire_status {
    boundary("peerwire_client_subscribe", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        // SAFETY: `count` NUL-terminated strings (this function's contract).
        let topics = unsafe { raw::strs(topics, count, "topics") }?;
        if topics.is_empty() {
            return Err(Error::invalid("no topic"));
        }
        let f = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        raw::out_ok(out, "out")?;
        crate::not_on_library_thread("peerwire_client_subscribe")?;
        let shared = &c.shared;
        let id = shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let stopped = Arc::new(AtomicBool::new(false));
        let running = Arc::new(Mutex::new(()));
        // In place before the server confirms: the first events may come right after.
        lock(&shared.subs).push(Sub {
            id,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            f,
            user_data: UserData(user_data),
            stopped: stopped.clone(),
            running: running.clone(),
        });
        let subscribed = shared
            .ensure_thread()
            .and_then(|()| shared.current().1.subscribe(&topics).map_err(call_error));
        if let Err(e) = subscribed {
            lock(&shared.subs).retain(|s| s.id != id);
            return Err(e);
        }
        let p = handle::give(peerwire_subscription {
            magic: peerwire_subscription::MAGIC,
            id,
            client: Arc::downgrade(shared),
            deadline: c.default_deadline,
            stopped,
            running,
        });
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(out, p) };
        Ok(())
    })
}

/// Ends a subscription: no callback starts after this returns, and, called from an application
/// thread, it waits for a callback in progress. May be called from the subscription's own
/// callback (it then returns at once; no further event is delivered). NULL does nothing.
///
/// # Safety
/// `subscription` is NULL or a live subscription, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_subscription_free(
    subscription: *mut peerwire_subscription,
) -> peerwire_status {
    boundary("peerwire_subscription_free", || {
        if subscription.is_null() {
            return Ok(());
        }
        // SAFETY: a live subscription the caller gives up (this function's contract).
        let s = unsafe { handle::take(subscription) }?;
        s.stopped.store(true, Ordering::Release);
        if !on_library_thread() {
            drop(lock(&s.running));
        }
        if let Some(shared) = s.client.upgrade() {
            shared.unsubscribe(s.id, s.deadline);
        }
        Ok(())
    })
}

/// `*connected` is true while a connection is up (false between a lost connection and a
/// reconnection, and after close).
///
/// # Safety
/// `client` is a live client; `connected` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_is_connected(
    client: *const peerwire_client,
    connected: *mut bool,
) -> peerwire_status {
    boundary("peerwire_client_is_connected", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        raw::out_ok(connected, "connected")?;
        let up = !c.shared.closed.load(Ordering::Acquire) && c.shared.current().1.is_connected();
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(connected, up) };
        Ok(())
    })
}

/// Waits at most `timeout_ms` for a connection to be up (after a reconnection):
/// `PEERWIRE_OK`, or `PEERWIRE_DEADLINE_EXCEEDED`. Not from a callback.
///
/// # Safety
/// `client` is a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_wait_connected(
    client: *const peerwire_client,
    timeout_ms: u64,
) -> peerwire_status {
    boundary("peerwire_client_wait_connected", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        crate::not_on_library_thread("peerwire_client_wait_connected")?;
        let timeout = Duration::from_millis(timeout_ms);
        let shared = &c.shared;
        let conn = lock(&shared.conn);
        let (conn, _) = shared
            .changed
            .wait_timeout_while(conn, timeout, |conn| {
                !conn.1.is_connected() && !shared.closed.load(Ordering::Acquire)
            })
            .unwrap_or_else(|e| e.into_inner());
        if conn.1.is_connected() && !shared.closed.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::new(
                PEERWIRE_DEADLINE_EXCEEDED,
                format!("no connection within {timeout:?}"),
            ))
        }
    })
}

/// Says `Goodbye` and closes the connection; no reconnection follows, calls in flight fail
/// with `PEERWIRE_DISCONNECTED`, subscriptions end. The handle stays valid until
/// `peerwire_client_free`. Callable from a callback too.
///
/// # Safety
/// `client` is a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_close(client: *const peerwire_client) -> peerwire_status {
    boundary("peerwire_client_close", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        c.shared.close();
        Ok(())
    })
}

/// Closes the client (as `peerwire_client_close`), stops its library thread and frees it.
/// Pending `peerwire_client_call_async` callbacks are called (`PEERWIRE_DISCONNECTED` or
/// `PEERWIRE_CLOSED`) before it returns; no callback runs after. NULL does nothing. Not from a
/// callback (`PEERWIRE_WRONG_THREAD`, and nothing is freed).
///
/// # Safety
/// `client` is NULL or a live client, not used afterwards by any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_free(client: *mut peerwire_client) -> peerwire_status {
    boundary("peerwire_client_free", || {
        if client.is_null() {
            return Ok(());
        }
        crate::not_on_library_thread("peerwire_client_free")?;
        // SAFETY: a live client the caller gives up (this function's contract).
        let c = unsafe { handle::take(client) }?;
        c.shared.close();
        let thread = lock(&c.shared.thread).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the client's library thread panicked");
            }
        }
        // Calls accepted after the thread ended are answered PEERWIRE_CLOSED here.
        let left = std::mem::take(&mut *lock(&c.shared.pending));
        drop(left);
        Ok(())
    })
}
