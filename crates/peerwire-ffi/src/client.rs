//! The client side: options, connect, blocking and callback calls, notifications,
//! subscriptions with a callback, close.

use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::peerwire_client::{Backoff, CallError, Client, ClientBuilder, ClientTls, ConnectError};
use bytes::Bytes;

use crate::handle::{self, Handle};
use crate::peerwire_status::{self, *};
use crate::server::{UserData, lock, peerwire_tls_mode};
use crate::{Error, Result, boundary, in_callback, peerwire_buffer, raw};

/// What a client is built from; made by `peerwire_client_options_new`, consumed by
/// `peerwire_client_connect`, or freed with `peerwire_client_options_free`.
pub struct peerwire_client_options {
    magic: u64,
    builder: Option<ClientBuilder>,
    default_deadline: Duration,
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
    with_builder("peerwire_client_options_reconnect", options, |b| {
        let mut backoff = Backoff::default();
        backoff.initial = ms("initial_ms", initial_ms)?;
        backoff.max = ms("max_ms", max_ms)?;
        if backoff.max < backoff.initial {
            return Err(Error::invalid("max_ms is less than initial_ms"));
        }
        Ok(b.reconnect(backoff))
    })
}

/// A connected client; made by `peerwire_client_connect`, freed by `peerwire_client_free`.
/// Its functions may be called from any thread at once.
pub struct peerwire_client {
    magic: u64,
    client: Client,
    default_deadline: Duration,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
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

impl peerwire_client {
    fn handle(&self) -> Result<tokio::runtime::Handle> {
        lock(&self.runtime)
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| Error::new(PEERWIRE_CLOSED, "the client is being freed"))
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

/// Connects and runs the handshake, blocking at most the connect timeout, on a runtime thread
/// the library starts for this client. `options` is consumed whatever the result (do not free
/// it); `*out` is set on success only. Not from a callback (`PEERWIRE_WRONG_THREAD`).
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("peerwire-client")
            .enable_all()
            .build()
            .map_err(|e| Error::new(PEERWIRE_IO, format!("starting the runtime: {e}")))?;
        let client = runtime.block_on(builder.connect()).map_err(connect_error)?;
        let p = handle::give(peerwire_client {
            magic: peerwire_client::MAGIC,
            client,
            default_deadline: o.default_deadline,
            runtime: Mutex::new(Some(runtime)),
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
/// answer, the deadline (`timeout_ms`; 0: the default deadline) or a lost connection. On
/// success `*response` is a new buffer the caller frees with `peerwire_buffer_free`; on failure
/// it is left untouched. A non-OK answer is `PEERWIRE_REMOTE_STATUS` (the code:
/// `peerwire_last_remote_code()`). Any number of threads may call at once. Not from a callback
/// (`PEERWIRE_WRONG_THREAD`): use `peerwire_client_call_async` there.
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
            .handle()?
            .block_on(c.client.raw_call(method, payload, deadline))
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
/// Called exactly once per accepted call, on a library thread; calls still pending when the
/// client is closed or freed are answered `PEERWIRE_DISCONNECTED` (or `PEERWIRE_CLOSED`, on the
/// thread calling `peerwire_client_free`, if their task had not started), always before
/// `peerwire_client_free` returns. The rules of `peerwire_method_fn` apply (no blocking functions, no
/// unwinding).
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

/// Calls the program back once, whatever happens to the task: if it is dropped unanswered (the
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
/// `request` is copied before this returns. On a failure returned here (bad arguments, a freed
/// client) the callback is not called. Callable from any thread, callbacks included.
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
        let method = unsafe { raw::str(method, "method") }?.to_owned();
        // SAFETY: `len` readable bytes (this function's contract).
        let request = unsafe { raw::bytes(request, len, "request") }?;
        let f = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        let deadline = deadline(c, timeout_ms)?;
        let payload = Bytes::copy_from_slice(request);
        let client = c.client.clone();
        let mut completion = Completion {
            f,
            user_data: UserData(user_data),
            done: false,
        };
        c.handle()?.spawn(async move {
            let result = client.raw_call(&method, payload, deadline).await;
            completion.complete(result.map_err(call_error));
        });
        Ok(())
    })
}

/// Sends a one-way event (`len` bytes, copied) on `topic`. From an application thread it blocks
/// until the event is queued on the connection (room in the outbound queue); from a callback it
/// is queued by a library task and returns at once (a failure then is logged).
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
        let topic = unsafe { raw::str(topic, "topic") }?.to_owned();
        // SAFETY: `len` readable bytes (this function's contract).
        let event = unsafe { raw::bytes(event, len, "event") }?;
        let msg = crate::raw_message::RawMessage(Bytes::copy_from_slice(event));
        let rt = c.handle()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            let client = c.client.clone();
            rt.spawn(async move {
                if let Err(e) = client.notify(&topic, &msg).await {
                    tracing::warn!(topic, "notification from a callback failed: {e}");
                }
            });
            return Ok(());
        }
        rt.block_on(c.client.notify(&topic, &msg))
            .map_err(call_error)
    })
}

/// An event pushed by the server on a subscribed topic: `topic`, its sequence number (per
/// connection and topic from 1; a gap means events were dropped; restarts at 1 after a
/// reconnection) and `len` bytes of payload, valid during the call only. Called on a library
/// thread, one event at a time per subscription, in the order the server sent them. The rules
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
    stopped: Arc<AtomicBool>,
    /// Held while the callback runs, so that freeing waits for a callback in progress.
    running: Arc<Mutex<()>>,
    task: tokio::task::AbortHandle,
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
        let rt = c.handle()?;
        let mut stream = rt
            .block_on(c.client.subscribe_many(&topics))
            .map_err(call_error)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let running = Arc::new(Mutex::new(()));
        let (s, r) = (stopped.clone(), running.clone());
        let user_data = UserData(user_data);
        let task = rt.spawn(async move {
            let mut last_topic: Option<(String, CString)> = None;
            while let Some(ev) = stream.next().await {
                let _running = lock(&r);
                if s.load(Ordering::Acquire) {
                    break;
                }
                let topic = match &last_topic {
                    Some((t, c)) if *t == ev.topic => c.clone(),
                    _ => {
                        let c = CString::new(ev.topic.replace('\0', "")).unwrap_or_default();
                        last_topic = Some((ev.topic.clone(), c.clone()));
                        c
                    }
                };
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
        });
        let p = handle::give(peerwire_subscription {
            magic: peerwire_subscription::MAGIC,
            stopped,
            running,
            task: task.abort_handle(),
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
        if tokio::runtime::Handle::try_current().is_err() {
            drop(lock(&s.running));
        }
        s.task.abort();
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
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(connected, c.client.is_connected()) };
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
        if c.handle()?.block_on(c.client.wait_connected(timeout)) {
            Ok(())
        } else {
            Err(Error::new(
                PEERWIRE_DEADLINE_EXCEEDED,
                format!("no connection within {timeout:?}"),
            ))
        }
    })
}

/// Says `Goodbye` and closes the connection (waiting up to 200 ms for queued frames to go);
/// no reconnection follows, calls in flight fail with `PEERWIRE_DISCONNECTED`, subscriptions
/// end. The handle stays valid until `peerwire_client_free`. From a callback, the close is
/// started and this returns at once.
///
/// # Safety
/// `client` is a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_client_close(client: *const peerwire_client) -> peerwire_status {
    boundary("peerwire_client_close", || {
        // SAFETY: a live client (this function's contract).
        let c = unsafe { handle::borrow(client) }?;
        let rt = c.handle()?;
        let client = c.client.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            rt.spawn(async move { client.close().await });
        } else {
            rt.block_on(client.close());
        }
        Ok(())
    })
}

/// Closes the client (as `peerwire_client_close`), stops its runtime thread and frees it.
/// Pending `peerwire_client_call_async` callbacks are called (`PEERWIRE_DISCONNECTED` or
/// `PEERWIRE_CLOSED`) before it returns; no callback runs after. NULL does nothing. Not from a callback
/// (`PEERWIRE_WRONG_THREAD`, and nothing is freed).
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
        let c = unsafe { handle::borrow(client) }?;
        let runtime = lock(&c.runtime).take();
        if let Some(rt) = runtime {
            rt.block_on(c.client.close());
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        // SAFETY: as above; the runtime has stopped, so no library thread uses it any more.
        drop(unsafe { handle::take(client) }?);
        Ok(())
    })
}
