//! `--allow-exe` and executable-bound tokens hold for every byte of a connection, not only for
//! the process that connected (issue 14, item 1): real `peerwire serve` processes, attackers
//! written in Python (another program than the allowed ones) that connect, fork and `execve` an
//! allowed program, or that receive a socket an allowed program passes them (`SCM_RIGHTS`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use common::{ServeProcess, hello_frame, init_logs, open_tempdir, shared_bin};
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::{Code, Frame, Ping, frame::Kind};
use peerwire_security::token::{Binding, DeviceSecret, Minter};

/// Tries of each attack.
const TRIES: usize = 20;

/// The allowed program the attacker `execve`s: it keeps the inherited socket and says nothing.
const SLEEP: &str = "/usr/bin/sleep";

/// Python: reads from `s` until the server closes (or 5 s of silence) and prints it in hex.
macro_rules! read_all {
    () => {
        r#"
s.settimeout(5)
got = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError:
    pass
print(got.hex(), flush=True)
"#
    };
}

/// Connects to the server (argv[1]), forks; the side named by argv[3] (`parent` or `child`)
/// `execve`s `sleep` keeping the socket, the other waits a moment and sends the bytes in
/// argv[2] (hex), then prints in hex everything the server answered until it closed.
const FORK_EXEC: &str = concat!(
    r#"
import os, socket, sys, time
path, payload, execs = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
os.set_inheritable(s.fileno(), True)
pid = os.fork()
if (pid != 0) == (execs == "parent"):
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.execv("/usr/bin/sleep", ["sleep", "0.3"])
time.sleep(0.02)
try:
    s.sendall(payload)
except OSError:
    pass  # the server already refused and closed (its Reject may still be readable)
"#,
    read_all!()
);

/// Runs as the allowed program (python3): connects to the server (argv[1]); if argv[3] is
/// `hello`, sends the Hello in argv[4] (hex) and prints the answer (hex), over TLS (without
/// checking the server) if it is `tls-hello`; then passes the socket with `SCM_RIGHTS` to
/// whoever listens at argv[2], and stays alive until that one hangs up.
const PASS_FD: &str = r#"
import socket, ssl, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.connect(sys.argv[1])
if sys.argv[3] == "hello":
    server.sendall(bytes.fromhex(sys.argv[4]))
    print(server.recv(65536).hex(), flush=True)
if sys.argv[3] == "tls-hello":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(server)
    tls.sendall(bytes.fromhex(sys.argv[4]))
    print(tls.recv(65536).hex(), flush=True)
    server = socket.socket(fileno=tls.detach())
peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
peer.connect(sys.argv[2])
socket.send_fds(peer, [b"fd"], [server.fileno()])
peer.recv(1)
"#;

/// Runs as another program (a copy of python3: another file): listens at argv[1], receives a
/// socket, sends the bytes in argv[2] (hex) on it and prints (hex) what comes back until the
/// server closes.
const TAKE_FD: &str = concat!(
    r#"
import os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1] + ".tmp")
listener.listen(1)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
conn, _ = listener.accept()
_, fds, _, _ = socket.recv_fds(conn, 16, 1)
s = socket.socket(fileno=fds[0])
s.sendall(bytes.fromhex(sys.argv[2]))
"#,
    read_all!()
);

fn encode(frame: Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::new(1 << 20).encode(&frame, &mut buf).unwrap();
    buf.to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Every frame in `bytes`.
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut codec = FrameCodec::new(16 << 20);
    let mut buf = BytesMut::from(bytes);
    let mut out = vec![];
    while let Ok(Some(f)) = codec.decode(&mut buf) {
        out.push(f);
    }
    out
}

fn serve(socket: &Path, extra: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(shared_bin());
    cmd.args(["serve", "--allow-root", "--tls", "off", "--socket"])
        .arg(socket)
        .args(extra);
    ServeProcess::spawn(cmd, socket)
}

fn exe_args(exes: &[&Path]) -> Vec<String> {
    exes.iter()
        .flat_map(|e| ["--allow-exe".to_owned(), e.to_str().unwrap().to_owned()])
        .collect()
}

fn python() -> PathBuf {
    std::fs::canonicalize("/usr/bin/python3").unwrap()
}

/// The attacker: what the server answered to `payload` sent by the side that did not exec.
fn fork_exec(socket: &Path, payload: &[u8], execs: &str) -> Vec<Frame> {
    let out = Command::new(python())
        .args(["-c", FORK_EXEC])
        .arg(socket)
        .arg(hex(payload))
        .arg(execs)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    frames(&unhex(String::from_utf8(out.stdout).unwrap().trim()))
}

/// `TRIES` results of `try_once`, four at a time.
fn tries<T: Send>(try_once: impl Fn() -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..TRIES / 4).map(|_| try_once()).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

fn kind_of(frame: &Frame) -> (&'static str, Option<i32>) {
    match &frame.kind {
        Some(Kind::Welcome(_)) => ("Welcome", None),
        Some(Kind::Reject(r)) => ("Reject", Some(r.code)),
        Some(Kind::Goodbye(g)) => ("Goodbye", Some(g.code)),
        _ => ("other", None),
    }
}

/// Runs the fork-then-exec attack `TRIES` times with `execs` naming the side that runs the
/// allowed program; no try may get a Welcome. Returns the answers seen ("nothing" where the
/// server closed before the attacker read: a refusal whose `Reject` the reset swallowed).
fn attack(socket: &Path, payload: &[u8], execs: &str) -> Vec<(&'static str, Option<i32>)> {
    let answers = tries(|| {
        fork_exec(socket, payload, execs)
            .first()
            .map_or(("nothing", None), kind_of)
    });
    let welcomed = answers.iter().filter(|(k, _)| *k == "Welcome").count();
    assert_eq!(
        welcomed, 0,
        "{execs} execs the allowed program: {welcomed} of {TRIES} tries got a Welcome: {answers:?}"
    );
    answers
}

/// `--allow-exe`: a process of another program connects and forks; one side `execve`s the
/// allowed program (keeping the socket), the other sends Hello. Never admitted, whichever side
/// execs; the genuine client still is.
#[test]
fn fork_then_exec_cannot_borrow_an_allowed_executable() {
    init_logs();
    let dir = open_tempdir();
    let socket = dir.path().join("run/s.sock");
    let bin = shared_bin();
    let args = exe_args(&[&bin, Path::new(SLEEP)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = serve(&socket, &args);
    let hello = encode(hello_frame(&[1], &[]));
    for execs in ["parent", "child"] {
        let answers = attack(&socket, &hello, execs);
        // Refused with PERMISSION_DENIED (at accept, or when the Hello's sender is checked).
        assert!(
            answers.iter().all(|a| *a == ("nothing", None)
                || *a == ("Reject", Some(Code::PermissionDenied as i32))),
            "{execs}: {answers:?}"
        );
    }
    // The genuine client, the allowed executable itself, is served.
    common::succeed(
        Command::new(&bin)
            .args(["ping", "--count", "3", "--tls", "off", "--socket"])
            .arg(&socket),
    );
}

/// A copy of python3 at another path: another executable file (another inode) for the server.
fn other_python(dir: &Path) -> PathBuf {
    let copy = dir.join("not-allowed-python3");
    if !copy.exists() {
        std::fs::copy(python(), &copy).unwrap();
    }
    copy
}

/// The allowed program (python3) passes its connection to a process of another program (a copy
/// of python3), after saying Hello itself (`mode`: `hello`, `tls-hello`) or before (`none`); what the other program got
/// back after sending `payload`, and what the allowed program got for its Hello.
fn pass_fd(dir: &Path, socket: &Path, payload: &[u8], mode: &str) -> (Vec<Frame>, Vec<Frame>) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let at = dir.join(format!("take-{n}"));
    let taker = common::spawn_copied(
        Command::new(other_python(dir))
            .env("PYTHONHOME", "/usr")
            .args(["-c", TAKE_FD])
            .arg(&at)
            .arg(hex(payload))
            .stdout(Stdio::piped()),
    );
    assert!(
        common_eventually(|| at.exists()),
        "the taker did not listen"
    );
    let hello = encode(hello_frame(&[1], &[]));
    let giver = Command::new(python())
        .args(["-c", PASS_FD])
        .arg(socket)
        .arg(&at)
        .arg(mode)
        .arg(hex(&hello))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let taken = taker.wait_with_output().unwrap();
    assert!(taken.status.success());
    let given = giver.wait_with_output().unwrap();
    assert!(given.status.success());
    (
        frames(&unhex(String::from_utf8(taken.stdout).unwrap().trim())),
        frames(&unhex(String::from_utf8(given.stdout).unwrap().trim())),
    )
}

fn common_eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `--allow-exe`: the allowed program passes its connection (`SCM_RIGHTS`) to a process of
/// another program, which then speaks: before the Hello, the Hello is refused; after a Welcome,
/// the connection is closed with `PERMISSION_DENIED` at the first frame of the other program.
#[test]
fn a_socket_passed_to_another_program_is_refused_when_that_program_speaks() {
    init_logs();
    let dir = open_tempdir();
    let socket = dir.path().join("run/s.sock");
    let args = exe_args(&[&python()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = serve(&socket, &args);
    // Passed before the Hello: the other program's Hello is refused.
    let hello = encode(hello_frame(&[1], &[]));
    let (taken, _) = pass_fd(dir.path(), &socket, &hello, "none");
    let answers: Vec<_> = taken.iter().map(kind_of).collect();
    assert_eq!(
        answers,
        vec![("Reject", Some(Code::PermissionDenied as i32))],
        "{taken:?}"
    );
    // Passed after the allowed program's own Hello was welcomed: the other program's Ping is
    // never answered; the connection is closed with PERMISSION_DENIED.
    let ping = encode(Frame::new(Kind::Ping(Ping { nonce: 77 })));
    let (taken, given) = pass_fd(dir.path(), &socket, &ping, "hello");
    assert_eq!(
        given.first().map(kind_of),
        Some(("Welcome", None)),
        "{given:?}"
    );
    assert!(
        !taken
            .iter()
            .any(|f| matches!(&f.kind, Some(Kind::Pong(p)) if p.nonce == 77)),
        "{taken:?}"
    );
    assert_eq!(
        taken.last().map(kind_of),
        Some(("Goodbye", Some(Code::PermissionDenied as i32))),
        "{taken:?}"
    );
}

/// `peerwire init` into `dir/id`.
fn init_identity(dir: &Path) -> PathBuf {
    let id = dir.join("id");
    let out = Command::new(common::BIN)
        .args(["init", "--dir"])
        .arg(&id)
        .output()
        .unwrap();
    assert!(out.status.success());
    id
}

/// A token bound to an executable (`sleep`), presented by a process of another program whose
/// parent connected and then `execve`d that executable: refused, whichever side execs.
#[test]
fn an_executable_bound_token_cannot_be_presented_by_another_program() {
    init_logs();
    let dir = open_tempdir();
    let id = init_identity(dir.path());
    let socket = dir.path().join("run/s.sock");
    let id_arg = id.to_str().unwrap().to_owned();
    let _server = serve(&socket, &["--require-token", "--identity", &id_arg]);
    let secret = DeviceSecret::read(&id.join("server/token.key")).unwrap();
    let minter = Minter::new(&secret).unwrap();
    for execs in ["parent", "child"] {
        let answers = tries(|| {
            let binding = Binding {
                uid: 0,
                exe: Some(std::fs::canonicalize(SLEEP).unwrap()),
                socket: std::fs::canonicalize(&socket).unwrap(),
            };
            let token = minter.mint(&binding, Duration::from_secs(30)).unwrap();
            let mut hello = hello_frame(&[1], &[]);
            if let Some(Kind::Hello(h)) = &mut hello.kind {
                h.session_token = token.into_bytes();
            }
            let got = fork_exec(&socket, &encode(hello), execs);
            got.first().map_or(("nothing", None), kind_of)
        });
        assert!(
            answers
                .iter()
                .all(|a| *a == ("Reject", Some(Code::Unauthenticated as i32))),
            "{execs} execs sleep: {answers:?}"
        );
    }
}

/// The same over TLS (the check sits under TLS, on the socket's read side): the allowed program
/// completes TLS and its Hello is welcomed, then passes the socket; the other program's bytes
/// (a TLS record it cannot make valid, having no keys) are refused as its, not as bad TLS: the
/// server counts a denial, and the genuine client is still served. Passed before TLS, the other
/// program's ClientHello is refused the same way.
#[test]
fn over_tls_a_passed_socket_is_refused_by_sender_not_by_record() {
    init_logs();
    let dir = open_tempdir();
    let id = init_identity(dir.path());
    let socket = dir.path().join("run/s.sock");
    let bin = shared_bin();
    let mut args = exe_args(&[&python(), &bin]);
    let id_arg = id.to_str().unwrap().to_owned();
    args.extend(["--identity".to_owned(), id_arg.clone()]);
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--allow-root", "--tls", "server-auth", "--socket"])
        .arg(&socket)
        .args(&args);
    let _server = ServeProcess::spawn(cmd, &socket);
    let stats = |what: &str| -> u64 {
        let out = common::succeed(
            Command::new(&bin)
                .args([
                    "stats",
                    "--tls",
                    "server-auth",
                    "--identity",
                    &id_arg,
                    "--socket",
                ])
                .arg(&socket),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(what).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no {what} in {text}"))
    };
    // (The start-up probe of this test binary, not an allowed program, was denied.)
    let denied = stats("denied");
    let record = [0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5];
    let (_, given) = pass_fd(dir.path(), &socket, &record, "tls-hello");
    // What came back over TLS (decrypted by the allowed program) is the Welcome.
    assert_eq!(
        given.first().map(kind_of),
        Some(("Welcome", None)),
        "{given:?}"
    );
    assert_eq!(stats("denied"), denied + 1);
    assert_eq!(stats("protocol_errors"), 0);
    // Passed before TLS: the other program's first bytes (a ClientHello's record header) are
    // refused as its own during the TLS handshake, a denial and not a TLS failure.
    let tls_failures = stats("tls_failures");
    let client_hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0];
    let (taken, _) = pass_fd(dir.path(), &socket, &client_hello, "none");
    assert!(taken.is_empty(), "{taken:?}");
    assert_eq!(stats("denied"), denied + 2);
    assert_eq!(stats("tls_failures"), tls_failures);
}
