//! The server side: options (or a configuration file), method and event callbacks, start on
//! the library's runtime threads, push and broadcast, stats, graceful shutdown.

use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::peerwire_server::settings::{LimitsSection, ServerConfig};
use ::peerwire_server::{PushError, Status};
use bytes::Bytes;
use peerwire_security::seal::{KeyProvider, KeyRing};
use tokio::sync::oneshot;

use crate::handle::{self, Handle};
use crate::peerwire_status::{self, *};
use crate::{Error, Result, boundary, in_callback, peerwire_code, raw};

/// A pointer the C program gave us to hand back to its callbacks; the library never reads it.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);
// SAFETY: the library only passes the pointer back to the program's callbacks, whose threads
// the header documents; whatever it points to is the program's to synchronise.
unsafe impl Send for UserData {}
// SAFETY: as above: never dereferenced by the library.
unsafe impl Sync for UserData {}

impl UserData {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn ptr(self) -> *mut c_void {
        self.0
    }
}

/// TLS on the connections (see docs/c-api.md and `peerwire init`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum peerwire_tls_mode {
    /// A plain Unix socket (peer credentials are checked all the same).
    PEERWIRE_TLS_OFF = 0,
    /// TLS 1.3; only the server presents a (pinned) certificate.
    PEERWIRE_TLS_SERVER_AUTH = 1,
    /// TLS 1.3; both ends present pinned certificates.
    PEERWIRE_TLS_MUTUAL = 2,
}

impl peerwire_tls_mode {
    pub(crate) fn to_rust(self) -> peerwire_security::tls::TlsMode {
        use peerwire_security::tls::TlsMode;
        match self {
            Self::PEERWIRE_TLS_OFF => TlsMode::Off,
            Self::PEERWIRE_TLS_SERVER_AUTH => TlsMode::ServerAuth,
            Self::PEERWIRE_TLS_MUTUAL => TlsMode::Mutual,
        }
    }
}

/// Who sent a request or an event, passed to the callbacks. Valid during the callback only:
/// copy what you keep. Its strings belong to the library.
#[repr(C)]
pub struct peerwire_peer_info {
    /// The server the message came to (the handle `peerwire_server_start` gave).
    pub server: *mut peerwire_server,
    /// The connection's id, for `peerwire_server_push`; unique for the life of the process.
    pub connection: u64,
    /// The peer's effective uid (`SO_PEERCRED`, read when the connection was accepted).
    pub uid: u32,
    /// The peer's effective gid.
    pub gid: u32,
    /// The peer's pid, or 0 when it is not visible from this pid namespace.
    pub pid: i32,
    /// The name the client gave in its `Hello` (informational: anyone can claim any name).
    pub client_name: *const c_char,
    /// The method called or the event's topic (`namespace.Name`).
    pub name: *const c_char,
    /// Milliseconds left before the request's deadline when the callback starts (0 for events).
    pub deadline_ms: u64,
}

/// A method's answer, to be given exactly once, from any thread, now or later:
/// `peerwire_responder_send` or `peerwire_responder_error` (each frees it), or
/// `peerwire_responder_free` (answers `INTERNAL`).
pub struct peerwire_responder {
    magic: u64,
    tx: Option<oneshot::Sender<std::result::Result<Bytes, Status>>>,
}

impl Handle for peerwire_responder {
    const MAGIC: u64 = 0x7077_7265_7370_6f6e;
    const KIND: &'static str = "peerwire_responder";
    fn magic(&self) -> u64 {
        self.magic
    }
    fn set_magic(&mut self, magic: u64) {
        self.magic = magic;
    }
}

/// A method handler: called on a library runtime thread for each request to the method it was
/// registered for. `peer` and `request` (`len` bytes; NULL when `len` is 0) are valid during the
/// call only. The callback owns `responder` and must answer through it exactly once, from this
/// or any other thread, now or later; it must not block for long (it holds a runtime thread),
/// must not unwind (a C++ exception leaving it aborts), and must not call the blocking
/// functions (`peerwire_server_wait`, `peerwire_server_free`, `peerwire_client_call`...),
/// which return `PEERWIRE_WRONG_THREAD` there. Pushing (`peerwire_server_push`,
/// `peerwire_server_broadcast`) is allowed.
pub type peerwire_method_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        peer: *const peerwire_peer_info,
        request: *const u8,
        len: usize,
        responder: *mut peerwire_responder,
    ),
>;

/// An event (client notification) handler: called on a library runtime thread, one event of
/// a connection at a time, in the order the client sent them. `peer` and `event` (`len` bytes)
/// are valid during the call only. The same rules as `peerwire_method_fn`.
pub type peerwire_event_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        peer: *const peerwire_peer_info,
        event: *const u8,
        len: usize,
    ),
>;

#[derive(Clone, Copy)]
struct MethodCb {
    f: unsafe extern "C" fn(
        *mut c_void,
        *const peerwire_peer_info,
        *const u8,
        usize,
        *mut peerwire_responder,
    ),
    user_data: UserData,
}

#[derive(Clone, Copy)]
struct EventCb {
    f: unsafe extern "C" fn(*mut c_void, *const peerwire_peer_info, *const u8, usize),
    user_data: UserData,
}

/// What a server is built from; made by `peerwire_server_options_new` or
/// `peerwire_server_options_from_config`, consumed by `peerwire_server_start`, or freed with
/// `peerwire_server_options_free`.
pub struct peerwire_server_options {
    magic: u64,
    config: ServerConfig,
    name: Option<String>,
    namespaces: Vec<(String, Vec<u32>)>,
    methods: Vec<(String, MethodCb)>,
    events: Vec<(String, EventCb)>,
    threads: usize,
}

impl Handle for peerwire_server_options {
    const MAGIC: u64 = 0x7077_736f_7074_696f;
    const KIND: &'static str = "peerwire_server_options";
    fn magic(&self) -> u64 {
        self.magic
    }
    fn set_magic(&mut self, magic: u64) {
        self.magic = magic;
    }
}

fn new_options(config: ServerConfig) -> peerwire_server_options {
    peerwire_server_options {
        magic: peerwire_server_options::MAGIC,
        config,
        name: None,
        namespaces: vec![],
        methods: vec![],
        events: vec![],
        threads: 2,
    }
}

/// New server options for a server listening on `socket_path`: only this uid may connect,
/// no TLS, the default limits, two runtime threads. Free with `peerwire_server_options_free`
/// unless given to `peerwire_server_start`.
///
/// # Safety
/// `socket_path` is a NUL-terminated string; `out` points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_new(
    socket_path: *const c_char,
    out: *mut *mut peerwire_server_options,
) -> peerwire_status {
    boundary("peerwire_server_options_new", || {
        raw::out_ok(out, "out")?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let path = unsafe { raw::str(socket_path, "socket_path") }?;
        let config = ServerConfig {
            socket: PathBuf::from(path),
            socket_group: None,
            access: Default::default(),
            tls: Default::default(),
            limits: Default::default(),
            websocket: None,
        };
        let p = handle::give(new_options(config));
        // SAFETY: `out` is not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(out, p) };
        Ok(())
    })
}

/// Server options read from a configuration file (TOML, as `peerwire serve --config`): a plain
/// file must pass the ownership and permission checks; a sealed one needs `key_path`, a 32-byte
/// key file (NULL: none). Socket, access policy, socket group, TLS, tokens and limits come from
/// the file; handlers, name and namespaces are added with the setters.
///
/// # Safety
/// `config_path` is a NUL-terminated string; `key_path` is NULL or one; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_from_config(
    config_path: *const c_char,
    key_path: *const c_char,
    out: *mut *mut peerwire_server_options,
) -> peerwire_status {
    boundary("peerwire_server_options_from_config", || {
        raw::out_ok(out, "out")?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let path = unsafe { raw::str(config_path, "config_path") }?;
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let key = unsafe { raw::opt_str(key_path, "key_path") }?;
        let ring = key
            .map(|k| KeyProvider::File(k.into()).load().map(KeyRing::new))
            .transpose()
            .map_err(|e| Error::new(PEERWIRE_CONFIG, e.to_string()))?;
        let config = ServerConfig::load(path.as_ref(), ring.as_ref())
            .map_err(|e| Error::new(PEERWIRE_CONFIG, e.to_string()))?;
        let p = handle::give(new_options(config));
        // SAFETY: `out` is not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(out, p) };
        Ok(())
    })
}

/// Frees options that were not given to `peerwire_server_start`. NULL does nothing.
///
/// # Safety
/// `options` is NULL or live options, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_free(
    options: *mut peerwire_server_options,
) -> peerwire_status {
    boundary("peerwire_server_options_free", || {
        if options.is_null() {
            return Ok(());
        }
        // SAFETY: live options the caller will not use again (this function's contract).
        unsafe { handle::take(options) }.map(drop)
    })
}

/// Runs `f` on the options behind `options`, the pointer an exported function was given
/// under its contract (NULL or live options that no other thread uses meanwhile).
fn with_options(
    name: &str,
    options: *mut peerwire_server_options,
    f: impl FnOnce(&mut peerwire_server_options) -> Result<()>,
) -> peerwire_status {
    boundary(name, || {
        // SAFETY: the exported function's contract: NULL or live options, exclusively the
        // caller's for the call (options are documented as not thread-safe).
        let o = unsafe { handle::borrow_mut(options) }?;
        f(o)
    })
}

/// Sets the name announced in `Welcome` (default "peerwire").
///
/// # Safety
/// `options` is live options; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_set_name(
    options: *mut peerwire_server_options,
    name: *const c_char,
) -> peerwire_status {
    with_options("peerwire_server_options_set_name", options, |o| {
        // SAFETY: a NUL-terminated string (this function's contract).
        o.name = Some(unsafe { raw::str(name, "name") }?.to_owned());
        Ok(())
    })
}

/// Admits clients running as `uid` (besides those already allowed). With no uid and no group
/// allowed, only the server's own uid is admitted.
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_allow_uid(
    options: *mut peerwire_server_options,
    uid: u32,
) -> peerwire_status {
    with_options("peerwire_server_options_allow_uid", options, |o| {
        o.config.access.allow_uids.push(uid.to_string());
        Ok(())
    })
}

/// Admits clients whose primary or supplementary groups include `gid`.
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_allow_group(
    options: *mut peerwire_server_options,
    gid: u32,
) -> peerwire_status {
    with_options("peerwire_server_options_allow_group", options, |o| {
        o.config.access.allow_groups.push(gid.to_string());
        Ok(())
    })
}

/// Admits only clients running this executable (absolute path; checked through a pidfd, on
/// every chunk they send), on top of the uid and group rules.
///
/// # Safety
/// `options` is live options; `exe_path` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_allow_exe(
    options: *mut peerwire_server_options,
    exe_path: *const c_char,
) -> peerwire_status {
    with_options("peerwire_server_options_allow_exe", options, |o| {
        // SAFETY: a NUL-terminated string (this function's contract).
        let exe = unsafe { raw::str(exe_path, "exe_path") }?;
        o.config.access.allow_exes.push(exe.into());
        Ok(())
    })
}

/// Opens the socket to group `gid` (directory 0750, socket 0660) instead of 0700/0600.
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_socket_group(
    options: *mut peerwire_server_options,
    gid: u32,
) -> peerwire_status {
    with_options("peerwire_server_options_socket_group", options, |o| {
        o.config.socket_group = Some(gid.to_string());
        Ok(())
    })
}

/// TLS with the identity directory made by `peerwire init --dir` (its `server/` part); with
/// `require_token`, every `Hello` must carry a valid one-time session token minted with the
/// directory's `server/token.key` (use with `PEERWIRE_TLS_SERVER_AUTH` or `_MUTUAL`). The
/// files are read by `peerwire_server_start`.
///
/// # Safety
/// `options` is live options; `identity_dir` NULL (only with `PEERWIRE_TLS_OFF`) or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_tls(
    options: *mut peerwire_server_options,
    mode: peerwire_tls_mode,
    identity_dir: *const c_char,
    require_token: bool,
) -> peerwire_status {
    with_options("peerwire_server_options_tls", options, |o| {
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let dir = unsafe { raw::opt_str(identity_dir, "identity_dir") }?;
        if dir.is_none() && (mode != peerwire_tls_mode::PEERWIRE_TLS_OFF || require_token) {
            return Err(Error::invalid(
                "identity_dir is NULL but TLS or tokens are on",
            ));
        }
        o.config.tls.mode = mode.to_rust().to_string();
        o.config.tls.identity = dir.map(PathBuf::from);
        o.config.tls.require_token = require_token;
        Ok(())
    })
}

fn limit_slot<'a>(l: &'a mut LimitsSection, key: &str) -> Option<&'a mut Option<u64>> {
    Some(match key {
        "max_frame_size" => &mut l.max_frame_size,
        "handshake_timeout_ms" => &mut l.handshake_timeout_ms,
        "max_in_flight" => &mut l.max_in_flight,
        "default_deadline_ms" => &mut l.default_deadline_ms,
        "max_deadline_ms" => &mut l.max_deadline_ms,
        "keepalive_interval_ms" => &mut l.keepalive_interval_ms,
        "idle_timeout_ms" => &mut l.idle_timeout_ms,
        "outbound_queue" => &mut l.outbound_queue,
        "outbound_queue_bytes" => &mut l.outbound_queue_bytes,
        "max_connections" => &mut l.max_connections,
        "max_connections_per_uid" => &mut l.max_connections_per_uid,
        "max_unauthenticated" => &mut l.max_unauthenticated,
        "max_unauthenticated_per_uid" => &mut l.max_unauthenticated_per_uid,
        "max_subscriptions" => &mut l.max_subscriptions,
        "shutdown_grace_ms" => &mut l.shutdown_grace_ms,
        _ => return None,
    })
}

/// Sets one limit by the name it has in the configuration file's `[limits]` section
/// ("max_frame_size", "max_in_flight", "shutdown_grace_ms"...; docs/c-api.md lists them with
/// their ranges). An unknown name is `PEERWIRE_INVALID_ARGUMENT`; a value out of range is
/// refused by `peerwire_server_start` with `PEERWIRE_CONFIG`, naming the key.
///
/// # Safety
/// `options` is live options; `key` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_limit(
    options: *mut peerwire_server_options,
    key: *const c_char,
    value: u64,
) -> peerwire_status {
    with_options("peerwire_server_options_limit", options, |o| {
        // SAFETY: a NUL-terminated string (this function's contract).
        let key = unsafe { raw::str(key, "key") }?;
        let slot = limit_slot(&mut o.config.limits, key)
            .ok_or_else(|| Error::invalid(format!("unknown limit {key:?}")))?;
        *slot = Some(value);
        Ok(())
    })
}

/// The number of runtime threads the server runs on (1 to 64; default 2).
///
/// # Safety
/// `options` is live options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_threads(
    options: *mut peerwire_server_options,
    threads: usize,
) -> peerwire_status {
    with_options("peerwire_server_options_threads", options, |o| {
        if !(1..=64).contains(&threads) {
            return Err(Error::invalid(format!("threads {threads} is not 1 to 64")));
        }
        o.threads = threads;
        Ok(())
    })
}

/// Declares the versions (`count` values >= 1) of `namespace` the server speaks; a namespace
/// used by a handler and never declared is spoken at version 1.
///
/// # Safety
/// `options` is live options; `namespace` a NUL-terminated string; `versions` points to
/// `count` values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_namespace(
    options: *mut peerwire_server_options,
    namespace: *const c_char,
    versions: *const u32,
    count: usize,
) -> peerwire_status {
    with_options("peerwire_server_options_namespace", options, |o| {
        // SAFETY: a NUL-terminated string (this function's contract).
        let ns = unsafe { raw::str(namespace, "namespace") }?;
        // SAFETY: `count` values (this function's contract).
        let v = unsafe { raw::u32s(versions, count, "versions") }?;
        o.namespaces.push((ns.to_owned(), v.to_vec()));
        Ok(())
    })
}

/// Registers `callback` for the method `name` (`namespace.Name`); `user_data` is passed to it
/// untouched and must stay valid until the server is freed.
///
/// # Safety
/// `options` is live options; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_method(
    options: *mut peerwire_server_options,
    name: *const c_char,
    callback: peerwire_method_fn,
    user_data: *mut c_void,
) -> peerwire_status {
    with_options("peerwire_server_options_method", options, |o| {
        // SAFETY: a NUL-terminated string (this function's contract).
        let name = unsafe { raw::str(name, "name") }?;
        let f = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        let user_data = UserData(user_data);
        o.methods.push((name.to_owned(), MethodCb { f, user_data }));
        Ok(())
    })
}

/// Registers `callback` for client notifications on `topic` (`namespace.Name`).
///
/// # Safety
/// `options` is live options; `topic` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_options_on_event(
    options: *mut peerwire_server_options,
    topic: *const c_char,
    callback: peerwire_event_fn,
    user_data: *mut c_void,
) -> peerwire_status {
    with_options("peerwire_server_options_on_event", options, |o| {
        // SAFETY: a NUL-terminated string (this function's contract).
        let topic = unsafe { raw::str(topic, "topic") }?;
        let f = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        let user_data = UserData(user_data);
        o.events.push((topic.to_owned(), EventCb { f, user_data }));
        Ok(())
    })
}

/// A running server; made by `peerwire_server_start`, freed by `peerwire_server_free`.
pub struct peerwire_server {
    magic: u64,
    handle: ::peerwire_server::ServerHandle,
    run: Mutex<
        Option<tokio::task::JoinHandle<std::result::Result<(), ::peerwire_server::ServerError>>>,
    >,
    grace: Duration,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Handle for peerwire_server {
    const MAGIC: u64 = 0x7077_7365_7276_6572;
    const KIND: &'static str = "peerwire_server";
    fn magic(&self) -> u64 {
        self.magic
    }
    fn set_magic(&mut self, magic: u64) {
        self.magic = magic;
    }
}

/// The strings and numbers of a peer, kept alive for one callback.
struct Info {
    client_name: CString,
    name: CString,
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn peer_info(
    server: &AtomicPtr<peerwire_server>,
    conn: &::peerwire_server::ConnectionContext,
    strings: &Info,
    deadline_ms: u64,
) -> peerwire_peer_info {
    let peer = conn.peer();
    peerwire_peer_info {
        server: server.load(Ordering::Acquire),
        connection: conn.id(),
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid.unwrap_or(0),
        client_name: strings.client_name.as_ptr(),
        name: strings.name.as_ptr(),
        deadline_ms,
    }
}

/// Builds the server and binds its socket (the access policy, socket group, TLS identity and
/// token secret are read now), then serves on runtime threads the library owns until
/// `peerwire_server_shutdown` or `peerwire_server_free`. `options` is consumed whatever the
/// result (do not free it); `*out` is set on success only.
///
/// # Safety
/// `options` is live options; `out` points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_start(
    options: *mut peerwire_server_options,
    out: *mut *mut peerwire_server,
) -> peerwire_status {
    boundary("peerwire_server_start", || {
        // SAFETY: live options the caller hands over (this function's contract).
        let o = unsafe { handle::take(options) }?;
        raw::out_ok(out, "out")?;
        crate::not_on_library_thread("peerwire_server_start")?;
        let config = |e: &dyn std::fmt::Display| Error::new(PEERWIRE_CONFIG, e.to_string());
        let grace = o.config.limits().map_err(|e| config(&e))?.shutdown_grace;
        let mut builder = o.config.builder().map_err(|e| config(&e))?;
        if let Some(name) = &o.name {
            builder = builder.name(name);
        }
        for (ns, versions) in &o.namespaces {
            builder = builder.namespace(ns, versions);
        }
        let server_ptr = Arc::new(AtomicPtr::new(std::ptr::null_mut()));
        for (name, cb) in o.methods.iter().cloned() {
            let server_ptr = server_ptr.clone();
            let method = c_string(&name);
            builder = builder.raw_method(&name, move |ctx, payload: Bytes| {
                let (tx, rx) = oneshot::channel();
                let responder = handle::give(peerwire_responder {
                    magic: peerwire_responder::MAGIC,
                    tx: Some(tx),
                });
                let strings = Info {
                    client_name: c_string(ctx.connection().client_name()),
                    name: method.clone(),
                };
                let left = ctx
                    .deadline()
                    .saturating_duration_since(std::time::Instant::now());
                let info = peer_info(
                    &server_ptr,
                    ctx.connection(),
                    &strings,
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                );
                in_callback("method callback", || {
                    // SAFETY: a function pointer the program registered for this method, with
                    // its own user_data; `info`, `strings` and `payload` outlive the call, and
                    // the responder is handed over to it.
                    unsafe {
                        (cb.f)(
                            cb.user_data.ptr(),
                            &info,
                            payload.as_ptr(),
                            payload.len(),
                            responder,
                        )
                    }
                });
                async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(Status::internal(
                            "the handler freed its responder without answering",
                        ))
                    })
                }
            });
        }
        for (topic, cb) in o.events.iter().cloned() {
            let server_ptr = server_ptr.clone();
            let name = c_string(&topic);
            builder =
                builder.on_event(&topic, move |ctx, event: crate::raw_message::RawMessage| {
                    let strings = Info {
                        client_name: c_string(ctx.client_name()),
                        name: name.clone(),
                    };
                    let info = peer_info(&server_ptr, &ctx, &strings, 0);
                    let payload = event.0;
                    in_callback("event callback", || {
                        // SAFETY: a function pointer the program registered for this topic, with
                        // its own user_data; `info`, `strings` and `payload` outlive the call.
                        unsafe {
                            (cb.f)(cb.user_data.ptr(), &info, payload.as_ptr(), payload.len())
                        }
                    });
                    async {}
                });
        }
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(o.threads)
            .thread_name("peerwire-server")
            .enable_all();
        // After peerwire_daemon_start, through the verified start-up: every new thread is
        // checked to show the main thread's (dropped) credentials.
        let runtime = match crate::daemon::take_ready() {
            Some(ready) => ready
                .runtime_from(&mut rt)
                .map_err(|e| Error::new(PEERWIRE_PERMISSION, e.to_string()))?,
            None => rt
                .build()
                .map_err(|e| Error::new(PEERWIRE_IO, format!("starting the runtime: {e}")))?,
        };
        let server = {
            let _entered = runtime.enter();
            builder.bind().map_err(|e| {
                let status = match e {
                    ::peerwire_server::ServerError::Config { .. } => PEERWIRE_CONFIG,
                    _ => PEERWIRE_IO,
                };
                Error::new(status, e.to_string())
            })?
        };
        let handle = server.handle();
        let p = handle::give(peerwire_server {
            magic: peerwire_server::MAGIC,
            handle,
            run: Mutex::new(None),
            grace,
            runtime: Mutex::new(Some(runtime)),
        });
        server_ptr.store(p, Ordering::Release);
        // SAFETY: `p` was just made by `give`; only shared references are made to it from now
        // on (callbacks get the pointer once `run` below accepts a connection).
        let s = unsafe { &*p };
        if let Some(rt) = lock(&s.runtime).as_ref() {
            // No connection is accepted before `run` is first polled: the pointer is in place.
            let run = rt.spawn(server.run());
            *lock(&s.run) = Some(run);
        }
        // SAFETY: `out` is not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(out, p) };
        Ok(())
    })
}

fn push_error(e: PushError) -> Error {
    let status = match e {
        PushError::InvalidTopic(_) => PEERWIRE_INVALID_ARGUMENT,
        PushError::TooLarge { .. } => PEERWIRE_TOO_LARGE,
        _ => PEERWIRE_NOT_DELIVERED,
    };
    Error::new(status, e.to_string())
}

/// Queues `event` (`len` bytes, copied) on `connection`, which must be subscribed to `topic`.
/// Never blocks; callable from any thread, callbacks included. A connection whose queue is
/// full is closed as a slow consumer (`PEERWIRE_NOT_DELIVERED`).
///
/// # Safety
/// `server` is a live server; `topic` a NUL-terminated string; `event` points to `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_push(
    server: *const peerwire_server,
    connection: u64,
    topic: *const c_char,
    event: *const u8,
    len: usize,
) -> peerwire_status {
    boundary("peerwire_server_push", || {
        // SAFETY: a live server (this function's contract).
        let s = unsafe { handle::borrow(server) }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let topic = unsafe { raw::str(topic, "topic") }?;
        // SAFETY: `len` readable bytes (this function's contract).
        let event = unsafe { raw::bytes(event, len, "event") }?;
        let msg = crate::raw_message::RawMessage(Bytes::copy_from_slice(event));
        s.handle
            .send_event(connection, topic, &msg)
            .map_err(push_error)
    })
}

/// Queues `event` on every connection subscribed to `topic`; `*delivered` (may be NULL) gets
/// how many. Never blocks; callable from any thread, callbacks included.
///
/// # Safety
/// `server` is a live server; `topic` a NUL-terminated string; `event` points to `len` bytes;
/// `delivered` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_broadcast(
    server: *const peerwire_server,
    topic: *const c_char,
    event: *const u8,
    len: usize,
    delivered: *mut usize,
) -> peerwire_status {
    boundary("peerwire_server_broadcast", || {
        // SAFETY: a live server (this function's contract).
        let s = unsafe { handle::borrow(server) }?;
        // SAFETY: a NUL-terminated string (this function's contract).
        let topic = unsafe { raw::str(topic, "topic") }?;
        // SAFETY: `len` readable bytes (this function's contract).
        let event = unsafe { raw::bytes(event, len, "event") }?;
        let msg = crate::raw_message::RawMessage(Bytes::copy_from_slice(event));
        let n = s.handle.broadcast(topic, &msg).map_err(push_error)?;
        if !delivered.is_null() {
            // SAFETY: not NULL and writable (this function's contract).
            unsafe { raw::write(delivered, n) };
        }
        Ok(())
    })
}

/// The server's counters (`peerwire_server_stats`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct peerwire_stats {
    /// Connections accepted by the listener, before any check.
    pub connections: u64,
    /// Connections admitted by the access policy.
    pub accepted: u64,
    /// Connections refused by the access policy.
    pub denied: u64,
    /// Hellos refused for a missing or invalid session token.
    pub token_failures: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: u64,
    /// Handshakes that ended in `Welcome`.
    pub sessions: u64,
    /// Connections refused during the handshake.
    pub handshake_failures: u64,
    /// Connections open now.
    pub open: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests that ended past their deadline.
    pub deadline_exceeded: u64,
    /// Handlers that panicked (in the library; a C callback cannot).
    pub handler_panics: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// Events queued for delivery.
    pub events_sent: u64,
    /// Connections closed because their outbound queue was full.
    pub slow_consumers: u64,
    /// Events dropped or replaced by a topic's policy.
    pub events_dropped: u64,
    /// Connections refused for a connection limit.
    pub limit_refusals: u64,
    /// Requests refused for a per-connection limit.
    pub limit_hits: u64,
}

impl From<&::peerwire_server::Stats> for peerwire_stats {
    fn from(t: &::peerwire_server::Stats) -> Self {
        Self {
            connections: t.connections,
            accepted: t.accepted,
            denied: t.denied,
            token_failures: t.token_failures,
            tls_failures: t.tls_failures,
            sessions: t.sessions,
            handshake_failures: t.handshake_failures,
            open: t.open,
            requests: t.requests,
            deadline_exceeded: t.deadline_exceeded,
            handler_panics: t.handler_panics,
            protocol_errors: t.protocol_errors,
            events_sent: t.events_sent,
            slow_consumers: t.slow_consumers,
            events_dropped: t.events_dropped,
            limit_refusals: t.limit_refusals,
            limit_hits: t.limit_hits,
        }
    }
}

/// Copies the server's counters into `*stats`.
///
/// # Safety
/// `server` is a live server; `stats` points to writable memory for a `peerwire_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_stats(
    server: *const peerwire_server,
    stats: *mut peerwire_stats,
) -> peerwire_status {
    boundary("peerwire_server_stats", || {
        // SAFETY: a live server (this function's contract).
        let s = unsafe { handle::borrow(server) }?;
        raw::out_ok(stats, "stats")?;
        let t = s.handle.stats();
        let out = peerwire_stats::from(&t);
        // SAFETY: not NULL (checked) and writable (this function's contract).
        unsafe { raw::write(stats, out) };
        Ok(())
    })
}

/// Starts a graceful shutdown and returns at once: the socket is removed, every client gets
/// `Goodbye`, requests in flight have the shutdown grace period to be answered. Callable from
/// any thread, callbacks included; `peerwire_server_wait` waits for the end.
///
/// # Safety
/// `server` is a live server.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_shutdown(
    server: *const peerwire_server,
) -> peerwire_status {
    boundary("peerwire_server_shutdown", || {
        // SAFETY: a live server (this function's contract).
        let s = unsafe { handle::borrow(server) }?;
        s.handle.shutdown();
        Ok(())
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait(s: &peerwire_server, timeout: Duration) -> Result<()> {
    crate::not_on_library_thread("peerwire_server_wait")?;
    let rt = lock(&s.runtime).as_ref().map(|rt| rt.handle().clone());
    let run = lock(&s.run).take();
    let (Some(run), Some(rt)) = (run, rt) else {
        return Ok(());
    };
    let result = rt.block_on(async { tokio::time::timeout(timeout, run).await });
    match result {
        Err(_) => Err(Error::new(
            PEERWIRE_DEADLINE_EXCEEDED,
            format!("the server did not stop within {timeout:?}"),
        )),
        Ok(Err(join)) => Err(Error::new(PEERWIRE_INTERNAL, join.to_string())),
        Ok(Ok(Err(e))) => Err(Error::new(PEERWIRE_IO, e.to_string())),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// Waits, at most `timeout_ms`, until a shutdown started by `peerwire_server_shutdown` (or a
/// fatal error) has ended: every connection closed. Not from a callback
/// (`PEERWIRE_WRONG_THREAD`). `PEERWIRE_DEADLINE_EXCEEDED` if it is still running.
///
/// # Safety
/// `server` is a live server.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_wait(
    server: *const peerwire_server,
    timeout_ms: u64,
) -> peerwire_status {
    boundary("peerwire_server_wait", || {
        // SAFETY: a live server (this function's contract).
        let s = unsafe { handle::borrow(server) }?;
        wait(s, Duration::from_millis(timeout_ms))
    })
}

/// Shuts the server down gracefully if it is still running (as `peerwire_server_shutdown`,
/// then waits up to the shutdown grace period and a second), stops the runtime threads and
/// frees the server. No callback runs once it returns; responders still held answer nothing
/// (their functions return `PEERWIRE_OK` and drop the answer). NULL does nothing. Not from a
/// callback (`PEERWIRE_WRONG_THREAD`, and nothing is freed).
///
/// # Safety
/// `server` is NULL or a live server, not used afterwards by any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_server_free(server: *mut peerwire_server) -> peerwire_status {
    boundary("peerwire_server_free", || {
        if server.is_null() {
            return Ok(());
        }
        crate::not_on_library_thread("peerwire_server_free")?;
        // SAFETY: a live server the caller gives up (this function's contract).
        let s = unsafe { handle::borrow(server) }?;
        s.handle.shutdown();
        let waited = wait(s, s.grace + Duration::from_secs(1));
        // Once the runtime has stopped no callback runs, and none can still hold the handle.
        let runtime = lock(&s.runtime).take();
        if let Some(rt) = runtime {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        // SAFETY: as above; no library thread uses it any more.
        drop(unsafe { handle::take(server) }?);
        waited
    })
}

/// Answers the request with `response` (`len` bytes, copied). Callable from any thread, once;
/// the responder is freed whatever the result. If the request was cancelled or its deadline
/// passed meanwhile, the answer is dropped and `PEERWIRE_OK` returned.
///
/// # Safety
/// `responder` is a live responder, not used afterwards; `response` points to `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_responder_send(
    responder: *mut peerwire_responder,
    response: *const u8,
    len: usize,
) -> peerwire_status {
    boundary("peerwire_responder_send", || {
        // SAFETY: a live responder the caller gives up (this function's contract).
        let mut r = unsafe { handle::take(responder) }?;
        // SAFETY: `len` readable bytes (this function's contract).
        let reply = match unsafe { raw::bytes(response, len, "response") } {
            Ok(b) => Ok(Bytes::copy_from_slice(b)),
            Err(e) => {
                answer(&mut r, Err(Status::internal(e.message.clone())));
                return Err(e);
            }
        };
        answer(&mut r, reply);
        Ok(())
    })
}

fn answer(r: &mut peerwire_responder, answer: std::result::Result<Bytes, Status>) {
    if let Some(tx) = r.tx.take() {
        // The request may be gone (cancelled, past its deadline): nothing to do then.
        let _ = tx.send(answer);
    }
}

/// Answers the request with the error `code` and `message` (NULL: none). `PEERWIRE_CODE_OK` is
/// refused (use `peerwire_responder_send`) and answered `INTERNAL`. Callable from any thread,
/// once; the responder is freed whatever the result.
///
/// # Safety
/// `responder` is a live responder, not used afterwards; `message` NULL or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_responder_error(
    responder: *mut peerwire_responder,
    code: peerwire_code,
    message: *const c_char,
) -> peerwire_status {
    boundary("peerwire_responder_error", || {
        // SAFETY: a live responder the caller gives up (this function's contract).
        let mut r = unsafe { handle::take(responder) }?;
        // SAFETY: NULL or a NUL-terminated string (this function's contract).
        let text = unsafe { raw::opt_str(message, "message") };
        let status = match (code, text) {
            (peerwire_code::PEERWIRE_CODE_OK, _) => {
                Err(Error::invalid("PEERWIRE_CODE_OK is not an error code"))
            }
            (_, Err(e)) => Err(e),
            (code, Ok(text)) => Ok(Status::new(code.to_wire(), text.unwrap_or_default())),
        };
        match status {
            Ok(status) => {
                answer(&mut r, Err(status));
                Ok(())
            }
            Err(e) => {
                answer(&mut r, Err(Status::internal(e.message.clone())));
                Err(e)
            }
        }
    })
}

/// Frees a responder without answering: the client gets `INTERNAL` ("the handler freed its
/// responder without answering"). NULL does nothing.
///
/// # Safety
/// `responder` is NULL or a live responder, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn peerwire_responder_free(
    responder: *mut peerwire_responder,
) -> peerwire_status {
    boundary("peerwire_responder_free", || {
        if responder.is_null() {
            return Ok(());
        }
        // SAFETY: a live responder the caller gives up (this function's contract).
        unsafe { handle::take(responder) }.map(drop)
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::peerwire_stats;

    /// The C struct cannot be generated from the server's one list of counters (cbindgen reads
    /// it as written), so this checks that it carries every counter, each in its own field: a
    /// counter added to the server and not here fails.
    #[test]
    fn the_c_stats_carry_every_counter_of_the_server() {
        // Every field of the wire message set to a distinct value, without naming one.
        let named = ::peerwire_server::Stats::default().named().len();
        let mut wire = vec![];
        for tag in 1..=named as u64 {
            prost::encoding::encode_key(tag as u32, prost::encoding::WireType::Varint, &mut wire);
            prost::encoding::encode_varint(tag * 10, &mut wire);
        }
        let stats = ::peerwire_server::Stats::from_wire(
            &peerwire_proto::v1::ServerStats::decode(wire.as_slice()).unwrap(),
        );
        let mut want: Vec<u64> = stats.named().into_iter().map(|(_, v)| v).collect();
        want.sort_unstable();
        assert_eq!(want, (1..=named as u64).map(|t| t * 10).collect::<Vec<_>>());
        let c = peerwire_stats::from(&stats);
        assert_eq!(std::mem::size_of::<peerwire_stats>(), 8 * named);
        // SAFETY: peerwire_stats is #[repr(C)] with only u64 fields (its size checked above),
        // so it is `named` u64s in a row, aligned for u64.
        let fields =
            unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&c).cast::<u64>(), named) };
        let mut got = fields.to_vec();
        got.sort_unstable();
        assert_eq!(got, want);
    }
}
