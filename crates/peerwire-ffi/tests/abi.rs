//! The C ABI driven from Rust as a C program would: real sockets, a server and a client in this
//! process, callbacks answering on other threads, and the boundary's refusals (NULL, bounds,
//! freed handles, blocking calls from a callback).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// This test is a C program written in Rust: every call crosses the boundary.
#![allow(unsafe_code, clippy::missing_safety_doc)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use peerwire::peerwire_status::{self, *};
use peerwire::*;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(peerwire_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[track_caller]
fn ok(s: peerwire_status) {
    assert_eq!(s, PEERWIRE_OK, "{}", last_error());
}

/// Responders handed to another thread, which answers them: "answer later, from any thread".
static LATER: Mutex<Vec<(usize, Vec<u8>)>> = Mutex::new(Vec::new());
static SEEN_UID: AtomicU64 = AtomicU64::new(u64::MAX);
static WRONG_THREAD: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn echo_later(
    _ud: *mut c_void,
    peer: *const peerwire_peer_info,
    req: *const u8,
    len: usize,
    responder: *mut peerwire_responder,
) {
    let peer = unsafe { &*peer };
    SEEN_UID.store(u64::from(peer.uid), Ordering::SeqCst);
    assert_eq!(
        unsafe { CStr::from_ptr(peer.name) }.to_str().unwrap(),
        "t.Echo"
    );
    assert!(peer.deadline_ms > 0);
    // A blocking function from a callback is refused, not deadlocked.
    if unsafe { peerwire_server_wait(peer.server, 1) } == PEERWIRE_WRONG_THREAD {
        WRONG_THREAD.fetch_add(1, Ordering::SeqCst);
    }
    let bytes = unsafe { std::slice::from_raw_parts(req, len) }.to_vec();
    LATER.lock().unwrap().push((responder as usize, bytes));
}

unsafe extern "C" fn refuse(
    _ud: *mut c_void,
    _peer: *const peerwire_peer_info,
    _req: *const u8,
    _len: usize,
    responder: *mut peerwire_responder,
) {
    let s = unsafe {
        peerwire_responder_error(
            responder,
            peerwire_code::PEERWIRE_CODE_PERMISSION_DENIED,
            c"not you".as_ptr(),
        )
    };
    assert_eq!(s, PEERWIRE_OK);
}

static NOTES: AtomicUsize = AtomicUsize::new(0);
unsafe extern "C" fn on_note(
    ud: *mut c_void,
    peer: *const peerwire_peer_info,
    ev: *const u8,
    len: usize,
) {
    assert_eq!(ud as usize, 42);
    let peer = unsafe { &*peer };
    assert_eq!(unsafe { CStr::from_ptr(peer.name) }, c"t.Note");
    assert_eq!(unsafe { std::slice::from_raw_parts(ev, len) }, b"note");
    // Pushing from a callback is allowed: back to the same connection.
    let s =
        unsafe { peerwire_server_push(peer.server, peer.connection, c"t.Tick".as_ptr(), ev, len) };
    assert_eq!(s, PEERWIRE_OK, "{}", last_error());
    NOTES.fetch_add(1, Ordering::SeqCst);
}

static TICKS: Mutex<Vec<(String, u64, Vec<u8>)>> = Mutex::new(Vec::new());
unsafe extern "C" fn on_tick(
    _ud: *mut c_void,
    topic: *const c_char,
    seq: u64,
    ev: *const u8,
    len: usize,
) {
    let topic = unsafe { CStr::from_ptr(topic) }
        .to_string_lossy()
        .into_owned();
    let bytes = unsafe { std::slice::from_raw_parts(ev, len) }.to_vec();
    TICKS.lock().unwrap().push((topic, seq, bytes));
}

/// An async answer: status, remote code, response, error message.
type Answer = (peerwire_status, i32, Vec<u8>, String);
static ASYNC: Mutex<Vec<Answer>> = Mutex::new(Vec::new());
unsafe extern "C" fn on_answer(
    _ud: *mut c_void,
    status: peerwire_status,
    code: i32,
    resp: *const u8,
    len: usize,
    error: *const c_char,
) {
    let bytes = if resp.is_null() {
        vec![]
    } else {
        unsafe { std::slice::from_raw_parts(resp, len) }.to_vec()
    };
    let error = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    ASYNC.lock().unwrap().push((status, code, bytes, error));
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_conversation_through_the_c_abi() {
    let dir = tempfile::tempdir().unwrap();
    let path = c(dir.path().join("run/t.sock").to_str().unwrap());
    // The answering thread: answers whatever the callback handed over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answerer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let items: Vec<_> = LATER.lock().unwrap().drain(..).collect();
                for (r, mut bytes) in items {
                    bytes.reverse();
                    let s = unsafe {
                        peerwire_responder_send(
                            r as *mut peerwire_responder,
                            bytes.as_ptr(),
                            bytes.len(),
                        )
                    };
                    assert_eq!(s, PEERWIRE_OK);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let mut so = null_mut();
    unsafe {
        ok(peerwire_server_options_new(path.as_ptr(), &mut so));
        ok(peerwire_server_options_set_name(so, c"abi-test".as_ptr()));
        ok(peerwire_server_options_limit(
            so,
            c"shutdown_grace_ms".as_ptr(),
            2000,
        ));
        assert_eq!(
            peerwire_server_options_limit(so, c"no_such".as_ptr(), 1),
            PEERWIRE_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("unknown limit \"no_such\""),
            "{}",
            last_error()
        );
        ok(peerwire_server_options_method(
            so,
            c"t.Echo".as_ptr(),
            Some(echo_later),
            null_mut(),
        ));
        ok(peerwire_server_options_method(
            so,
            c"t.Refuse".as_ptr(),
            Some(refuse),
            null_mut(),
        ));
        ok(peerwire_server_options_on_event(
            so,
            c"t.Note".as_ptr(),
            Some(on_note),
            42 as *mut c_void,
        ));
        assert_eq!(
            peerwire_server_options_method(so, c"t.Null".as_ptr(), None, null_mut()),
            PEERWIRE_INVALID_ARGUMENT
        );
    }
    let mut server = null_mut();
    unsafe { ok(peerwire_server_start(so, &mut server)) };

    let mut co = null_mut();
    let mut client = null_mut();
    unsafe {
        ok(peerwire_client_options_new(path.as_ptr(), &mut co));
        ok(peerwire_client_options_namespace(
            co,
            c"t".as_ptr(),
            &1,
            1,
            true,
        ));
        ok(peerwire_client_options_expect_server_uid(
            co,
            nix::unistd::getuid().as_raw(),
        ));
        ok(peerwire_client_connect(co, &mut client));
    }

    // A blocking call answered later from the other thread.
    let mut resp = null_mut();
    unsafe {
        ok(peerwire_client_call(
            client,
            c"t.Echo".as_ptr(),
            b"abc".as_ptr(),
            3,
            5000,
            &mut resp,
        ))
    };
    let answer = unsafe {
        std::slice::from_raw_parts(peerwire_buffer_data(resp), peerwire_buffer_len(resp))
    };
    assert_eq!(answer, b"cba");
    assert_eq!(
        SEEN_UID.load(Ordering::SeqCst),
        u64::from(nix::unistd::getuid().as_raw())
    );
    assert_eq!(
        WRONG_THREAD.load(Ordering::SeqCst),
        1,
        "a blocking call in a callback was refused"
    );
    unsafe {
        ok(peerwire_buffer_free(resp));
        // Freed twice: the debug build knows.
        assert_eq!(peerwire_buffer_free(resp), PEERWIRE_INVALID_HANDLE);
        assert!(
            last_error().contains("not a live peerwire_buffer"),
            "{}",
            last_error()
        );
        assert!(peerwire_buffer_data(resp).is_null());
    }

    // A remote error: status, code and message.
    let mut resp = null_mut();
    let s = unsafe { peerwire_client_call(client, c"t.Refuse".as_ptr(), null(), 0, 0, &mut resp) };
    assert_eq!(s, PEERWIRE_REMOTE_STATUS);
    assert_eq!(
        peerwire_last_remote_code(),
        peerwire_code::PEERWIRE_CODE_PERMISSION_DENIED as i32
    );
    assert!(last_error().contains("not you"), "{}", last_error());
    assert!(resp.is_null(), "no buffer on failure");

    // A call answered later, and an unknown method, asynchronously.
    unsafe {
        ok(peerwire_client_call_async(
            client,
            c"t.Echo".as_ptr(),
            b"xy".as_ptr(),
            2,
            5000,
            Some(on_answer),
            null_mut(),
        ));
        ok(peerwire_client_call_async(
            client,
            c"t.Missing".as_ptr(),
            null(),
            0,
            5000,
            Some(on_answer),
            null_mut(),
        ));
    }
    wait_until("two async answers", || ASYNC.lock().unwrap().len() == 2);
    {
        let answers = ASYNC.lock().unwrap();
        assert!(
            answers
                .iter()
                .any(|(s, _, b, _)| *s == PEERWIRE_OK && b == b"yx")
        );
        assert!(
            answers
                .iter()
                .any(|(s, code, _, e)| *s == PEERWIRE_REMOTE_STATUS
                    && *code == peerwire_code::PEERWIRE_CODE_NOT_FOUND as i32
                    && e.contains("t.Missing"))
        );
    }

    // Subscribe; a notification makes the server push back from its callback; broadcast too.
    let topics = [c"t.Tick".as_ptr()];
    let mut sub = null_mut();
    unsafe {
        ok(peerwire_client_subscribe(
            client,
            topics.as_ptr(),
            1,
            Some(on_tick),
            null_mut(),
            &mut sub,
        ));
        ok(peerwire_client_notify(
            client,
            c"t.Note".as_ptr(),
            b"note".as_ptr(),
            4,
        ));
    }
    wait_until("the pushed note", || TICKS.lock().unwrap().len() == 1);
    let mut delivered = 0usize;
    unsafe {
        ok(peerwire_server_broadcast(
            server,
            c"t.Tick".as_ptr(),
            b"b".as_ptr(),
            1,
            &mut delivered,
        ))
    };
    assert_eq!(delivered, 1);
    wait_until("the broadcast", || TICKS.lock().unwrap().len() == 2);
    assert_eq!(
        *TICKS.lock().unwrap(),
        vec![
            ("t.Tick".to_owned(), 1, b"note".to_vec()),
            ("t.Tick".to_owned(), 2, b"b".to_vec())
        ]
    );
    assert_eq!(NOTES.load(Ordering::SeqCst), 1);

    // Bounds and NULLs are refused, with the argument named.
    unsafe {
        let mut resp = null_mut();
        assert_eq!(
            peerwire_client_call(client, c"t.Echo".as_ptr(), null(), 3, 0, &mut resp),
            PEERWIRE_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("request is NULL with length 3"),
            "{}",
            last_error()
        );
        assert_eq!(
            peerwire_client_call(
                client,
                c"t.Echo".as_ptr(),
                b"a".as_ptr(),
                usize::MAX,
                0,
                &mut resp
            ),
            PEERWIRE_INVALID_ARGUMENT
        );
        assert_eq!(
            peerwire_client_call(null(), c"t.Echo".as_ptr(), null(), 0, 0, &mut resp),
            PEERWIRE_INVALID_ARGUMENT
        );
        assert_eq!(
            peerwire_server_push(server, 1, c"bad topic".as_ptr(), null(), 0),
            PEERWIRE_INVALID_ARGUMENT
        );
        // A handle of another kind.
        assert_eq!(
            peerwire_server_stats(client.cast(), &mut peerwire_stats::default()),
            PEERWIRE_INVALID_HANDLE
        );
    }

    let mut stats = peerwire_stats::default();
    unsafe { ok(peerwire_server_stats(server, &mut stats)) };
    assert_eq!(stats.sessions, 1);
    assert!(stats.requests >= 5, "{stats:?}");

    unsafe {
        ok(peerwire_subscription_free(sub));
        ok(peerwire_client_close(client));
        let mut connected = true;
        ok(peerwire_client_is_connected(client, &mut connected));
        assert!(!connected);
        ok(peerwire_client_free(client));
        assert_eq!(peerwire_client_free(client), PEERWIRE_INVALID_HANDLE);
        ok(peerwire_server_shutdown(server));
        ok(peerwire_server_wait(server, 5000));
        ok(peerwire_server_free(server));
        assert_eq!(peerwire_server_shutdown(server), PEERWIRE_INVALID_HANDLE);
    }
    assert!(!dir.path().join("run/t.sock").exists(), "socket removed");
    stop.store(true, Ordering::SeqCst);
    answerer.join().unwrap();
}

/// A call pending when the client is freed gets its callback once, before the free returns;
/// the late answer of a responder whose client is gone is dropped quietly.
#[test]
fn pending_async_calls_complete_when_the_client_is_freed() {
    unsafe extern "C" fn never(
        _ud: *mut c_void,
        _peer: *const peerwire_peer_info,
        _req: *const u8,
        _len: usize,
        responder: *mut peerwire_responder,
    ) {
        // Kept until the test frees it.
        HELD.store(responder as usize, Ordering::SeqCst);
    }
    static HELD: AtomicUsize = AtomicUsize::new(0);
    static DONE: Mutex<Vec<peerwire_status>> = Mutex::new(Vec::new());
    unsafe extern "C" fn done(
        _ud: *mut c_void,
        s: peerwire_status,
        _c: i32,
        _r: *const u8,
        _l: usize,
        _e: *const c_char,
    ) {
        DONE.lock().unwrap().push(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = c(dir.path().join("p.sock").to_str().unwrap());
    let (mut so, mut server, mut co, mut client) = (null_mut(), null_mut(), null_mut(), null_mut());
    unsafe {
        ok(peerwire_server_options_new(path.as_ptr(), &mut so));
        ok(peerwire_server_options_method(
            so,
            c"p.Never".as_ptr(),
            Some(never),
            null_mut(),
        ));
        ok(peerwire_server_start(so, &mut server));
        ok(peerwire_client_options_new(path.as_ptr(), &mut co));
        ok(peerwire_client_options_namespace(
            co,
            c"p".as_ptr(),
            &1,
            1,
            false,
        ));
        ok(peerwire_client_connect(co, &mut client));
        ok(peerwire_client_call_async(
            client,
            c"p.Never".as_ptr(),
            null(),
            0,
            60_000,
            Some(done),
            null_mut(),
        ));
    }
    wait_until("the handler holds the responder", || {
        HELD.load(Ordering::SeqCst) != 0
    });
    assert!(DONE.lock().unwrap().is_empty());
    unsafe { ok(peerwire_client_free(client)) };
    // The close fails the call in flight (PEERWIRE_DISCONNECTED); had its task not run yet, it
    // would be dropped with the runtime and answered PEERWIRE_CLOSED. Either way: once.
    let done = DONE.lock().unwrap().clone();
    assert!(
        done == vec![PEERWIRE_DISCONNECTED] || done == vec![PEERWIRE_CLOSED],
        "{done:?}"
    );
    // The answer to a request whose client is gone is dropped quietly.
    let r = HELD.load(Ordering::SeqCst) as *mut peerwire_responder;
    unsafe {
        ok(peerwire_responder_send(r, b"late".as_ptr(), 4));
        ok(peerwire_server_free(server));
    }
}

#[test]
fn status_names_and_errors_for_bad_options() {
    let name = unsafe { CStr::from_ptr(peerwire_status_name(PEERWIRE_WRONG_THREAD)) };
    assert_eq!(name, c"PEERWIRE_WRONG_THREAD");
    assert_eq!(
        unsafe { CStr::from_ptr(peerwire_version()) }
            .to_str()
            .unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    let mut so = null_mut();
    unsafe {
        assert_eq!(
            peerwire_server_options_new(null(), &mut so),
            PEERWIRE_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("socket_path is NULL"),
            "{}",
            last_error()
        );
        // A relative socket path is refused at start, as a configuration error; the options are
        // consumed all the same.
        ok(peerwire_server_options_new(
            c"relative.sock".as_ptr(),
            &mut so,
        ));
        let mut server = null_mut();
        assert_eq!(peerwire_server_start(so, &mut server), PEERWIRE_CONFIG);
        assert!(server.is_null());
        assert_eq!(peerwire_server_options_free(so), PEERWIRE_INVALID_HANDLE);
        // TLS with an identity directory that holds none.
        let dir = tempfile::tempdir().unwrap();
        let d = c(dir.path().to_str().unwrap());
        let mut co = null_mut();
        ok(peerwire_client_options_new(
            c"/nonexistent/x.sock".as_ptr(),
            &mut co,
        ));
        assert_eq!(
            peerwire_client_options_tls(co, peerwire_tls_mode::PEERWIRE_TLS_MUTUAL, d.as_ptr()),
            PEERWIRE_CONFIG
        );
        let mut client = null_mut();
        assert_eq!(peerwire_client_connect(co, &mut client), PEERWIRE_IO);
        assert!(
            last_error().contains("/nonexistent/x.sock"),
            "{}",
            last_error()
        );
    }
}

/// Generated header and code agree on the layout of the structs C reads.
#[test]
fn struct_layouts_are_plain() {
    assert_eq!(std::mem::size_of::<peerwire_stats>(), 17 * 8);
    assert_eq!(
        std::mem::size_of::<peerwire_status>(),
        std::mem::size_of::<std::ffi::c_int>()
    );
}

/// A C client with reconnection on comes back after its server restarts: calls fail with
/// `PEERWIRE_DISCONNECTED` while it is down, the subscription is renewed on the new connection,
/// and blocking calls work again.
#[test]
fn a_client_with_reconnection_comes_back_after_the_server_restarts() {
    unsafe extern "C" fn echo_now(
        _ud: *mut c_void,
        _peer: *const peerwire_peer_info,
        req: *const u8,
        len: usize,
        responder: *mut peerwire_responder,
    ) {
        assert_eq!(
            unsafe { peerwire_responder_send(responder, req, len) },
            PEERWIRE_OK
        );
    }
    static GOT: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    unsafe extern "C" fn on_push(
        _ud: *mut c_void,
        _topic: *const c_char,
        seq: u64,
        _ev: *const u8,
        _len: usize,
    ) {
        GOT.lock().unwrap().push(seq);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = c(dir.path().join("r.sock").to_str().unwrap());
    let start = || {
        let (mut so, mut server) = (null_mut(), null_mut());
        unsafe {
            ok(peerwire_server_options_new(path.as_ptr(), &mut so));
            ok(peerwire_server_options_method(
                so,
                c"r.Echo".as_ptr(),
                Some(echo_now),
                null_mut(),
            ));
            ok(peerwire_server_start(so, &mut server));
        }
        server
    };
    let call = |client: *const peerwire_client| {
        let mut resp = null_mut();
        let s = unsafe {
            peerwire_client_call(
                client,
                c"r.Echo".as_ptr(),
                b"hi".as_ptr(),
                2,
                2000,
                &mut resp,
            )
        };
        if s == PEERWIRE_OK {
            assert_eq!(unsafe { peerwire_buffer_len(resp) }, 2);
            unsafe { ok(peerwire_buffer_free(resp)) };
        }
        s
    };
    let broadcast = |server: *const peerwire_server| {
        let mut delivered = 0usize;
        unsafe {
            ok(peerwire_server_broadcast(
                server,
                c"r.Tick".as_ptr(),
                b"t".as_ptr(),
                1,
                &mut delivered,
            ))
        };
        delivered
    };
    let server = start();
    let (mut co, mut client, mut sub) = (null_mut(), null_mut(), null_mut());
    unsafe {
        ok(peerwire_client_options_new(path.as_ptr(), &mut co));
        ok(peerwire_client_options_namespace(
            co,
            c"r".as_ptr(),
            &1,
            1,
            false,
        ));
        ok(peerwire_client_options_reconnect(co, 10, 100));
        ok(peerwire_client_connect(co, &mut client));
        let topics = [c"r.Tick".as_ptr()];
        ok(peerwire_client_subscribe(
            client,
            topics.as_ptr(),
            1,
            Some(on_push),
            null_mut(),
            &mut sub,
        ));
    }
    assert_eq!(call(client), PEERWIRE_OK);
    assert_eq!(broadcast(server), 1);
    wait_until("the first push", || GOT.lock().unwrap().len() == 1);
    unsafe {
        ok(peerwire_server_shutdown(server));
        ok(peerwire_server_wait(server, 5000));
        ok(peerwire_server_free(server));
    }
    let connected = || {
        let mut up = true;
        unsafe { ok(peerwire_client_is_connected(client, &mut up)) };
        up
    };
    wait_until("the client sees the server gone", || !connected());
    assert_eq!(call(client), PEERWIRE_DISCONNECTED);
    let server = start();
    unsafe { ok(peerwire_client_wait_connected(client, 10_000)) };
    assert_eq!(call(client), PEERWIRE_OK);
    // Renewed on the new connection: a push reaches the subscription, seq from 1 again.
    wait_until("the subscription is renewed", || broadcast(server) == 1);
    wait_until("the push after the reconnection", || {
        GOT.lock().unwrap().len() >= 2
    });
    assert_eq!(GOT.lock().unwrap()[1], 1);
    unsafe {
        ok(peerwire_subscription_free(sub));
        ok(peerwire_client_free(client));
        ok(peerwire_server_shutdown(server));
        ok(peerwire_server_wait(server, 5000));
        ok(peerwire_server_free(server));
    }
}
