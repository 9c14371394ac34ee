//! The WebSocket transport (R16) end to end: `peerwire serve --ws-listen` as a real process,
//! a Rust WebSocket client over TLS (tokio-tungstenite over tokio-openssl, pinning the device's
//! server certificate), `openssl s_client`, a Python `websockets` client, and clients as another
//! user. Every refusal is checked on the wire and in the server's log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use peerwire_proto::v1::{Code, Frame, Request, SubscribeRequest, frame::Kind};
use peerwire_security::tls::{ClientTls, TlsMode};
use peerwire_security::token::{Binding, DeviceSecret, Minter};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use common::{RawClient, Read, ServeProcess, eventually, hello_frame};

const ORIGIN: &str = "https://display.test:7443";

type Wss = WebSocketStream<SslStream<TcpStream>>;

struct Setup {
    _tmp: tempfile::TempDir,
    id: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    _server: ServeProcess,
    addr: SocketAddr,
}

impl Setup {
    /// `peerwire serve` with a WebSocket endpoint on a free loopback port; its log (info) in
    /// `log`. `extra`: more flags.
    fn start(extra: &[&str]) -> Self {
        let tmp = common::open_tempdir();
        let id = tmp.path().join("id");
        common::init_identity(&id, "ws-test");
        let web = tmp.path().join("web");
        std::fs::create_dir(&web).unwrap();
        std::fs::write(web.join("index.html"), "<!doctype html><p>display</p>").unwrap();
        std::fs::write(web.join("app.js"), "console.log(1)").unwrap();
        let socket = tmp.path().join("run/s.sock");
        let log = tmp.path().join("serve.log");
        let mut cmd = Command::new(common::shared_bin());
        cmd.args(["serve", "--allow-root", "--tick-ms", "50"])
            .arg("--socket")
            .arg(&socket)
            .arg("--identity")
            .arg(&id)
            .args([
                "--ws-listen",
                "127.0.0.1:0",
                "--ws-origin",
                ORIGIN,
                "--web-root",
            ])
            .arg(&web)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap());
        let server = ServeProcess::spawn(cmd, &socket);
        let start = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find_map(|l| l.split("WebSocket endpoint wss://").nth(1))
            {
                break line.trim_end_matches("/peerwire").parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no endpoint line: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            _tmp: tmp,
            id,
            socket,
            log,
            _server: server,
            addr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 10 s) until the server's log has a line containing every one of `parts`.
    async fn logged(&self, parts: &[&str]) -> String {
        let found = || {
            self.log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        };
        assert!(
            eventually(Duration::from_secs(10), || found().is_some()).await,
            "no log line with {parts:?}:\n{}",
            self.log()
        );
        found().unwrap()
    }

    fn mint_for(&self, uid: u32, exe: Option<PathBuf>, issued_ago: u64) -> String {
        let secret = DeviceSecret::read(&self.id.join("server/token.key")).unwrap();
        let binding = Binding {
            uid,
            exe,
            socket: peerwire_server::token_endpoint(self.addr),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Minter::new(&secret)
            .unwrap()
            .mint_at(&binding, now - issued_ago, Duration::from_secs(30))
            .unwrap()
    }

    fn mint(&self) -> String {
        self.mint_for(nix::unistd::geteuid().as_raw(), None, 0)
    }

    async fn tls(&self) -> SslStream<TcpStream> {
        let tls = ClientTls::from_dir(&self.id, TlsMode::ServerAuth)
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let mut s = SslStream::new(tls.ssl().unwrap(), tcp).unwrap();
        Pin::new(&mut s).connect().await.unwrap();
        s
    }

    /// The upgrade with `origin` (none: no header) and `protocols` as `Sec-WebSocket-Protocol`.
    async fn upgrade_with(
        &self,
        origin: Option<&str>,
        protocols: &str,
    ) -> Result<Wss, tungstenite::Error> {
        self.upgrade_over(self.tls().await, origin, protocols).await
    }

    /// [`Setup::upgrade_with`] over an established TLS stream.
    async fn upgrade_over(
        &self,
        s: SslStream<TcpStream>,
        origin: Option<&str>,
        protocols: &str,
    ) -> Result<Wss, tungstenite::Error> {
        let mut req = format!("wss://{}/peerwire", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        tokio_tungstenite::client_async(req, s)
            .await
            .map(|(ws, resp)| {
                assert_eq!(
                    resp.headers()["sec-websocket-protocol"],
                    "peerwire.v1",
                    "the server answers with the one subprotocol, never the token"
                );
                ws
            })
    }

    async fn upgrade(&self, token: &str) -> Result<Wss, tungstenite::Error> {
        self.upgrade_with(
            Some(ORIGIN),
            &format!("peerwire.v1, peerwire.token.{token}"),
        )
        .await
    }

    /// A WebSocket session: upgrade with a fresh token, Hello, Welcome.
    async fn session(&self) -> Wss {
        let mut ws = self.upgrade(&self.mint()).await.unwrap();
        send(&mut ws, hello_frame(&[1], &[("echo", 1)])).await;
        let welcome = recv(&mut ws).await;
        assert!(
            matches!(welcome.kind, Some(Kind::Welcome(_))),
            "{welcome:?}"
        );
        ws
    }
}

async fn send(ws: &mut Wss, frame: Frame) {
    ws.send(Message::Binary(frame.encode_to_vec().into()))
        .await
        .unwrap();
}

/// The next frame (pings of the session are answered), at most 10 s.
async fn recv(ws: &mut Wss) -> Frame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .unwrap();
        match msg {
            Message::Binary(b) => {
                let frame = Frame::decode(b).unwrap();
                if let Some(Kind::Ping(p)) = &frame.kind {
                    let pong = Frame::new(Kind::Pong(peerwire_proto::v1::Pong { nonce: p.nonce }));
                    send(ws, pong).await;
                    continue;
                }
                return frame;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

fn request(id: u64, method: &str, payload: Vec<u8>) -> Frame {
    Frame::new(Kind::Request(Request {
        id,
        method: method.into(),
        payload: payload.into(),
        deadline_ms: 0,
    }))
}

/// Calls echo.Echo with `data` and checks the answer.
async fn echo(ws: &mut Wss, id: u64, data: &[u8]) {
    send(ws, request(id, "echo.Echo", data.to_vec().encode_to_vec())).await;
    loop {
        let frame = recv(ws).await;
        match frame.kind {
            Some(Kind::Response(r)) if r.id == id => {
                assert_eq!(r.code, Code::Ok as i32, "{}", r.message);
                assert_eq!(Vec::<u8>::decode(r.payload).unwrap(), data);
                return;
            }
            Some(Kind::Event(_)) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The HTTP status and body of a refused upgrade.
fn refused(r: Result<Wss, tungstenite::Error>) -> (u16, String) {
    match r {
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("refused without an HTTP answer: {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn websocket_client_completes_the_handshake_and_echoes_beside_a_unix_client() {
    let s = Setup::start(&[]);
    let mut ws = s.session().await;
    echo(&mut ws, 1, b"hello over wss").await;
    echo(&mut ws, 2, &vec![7u8; 200_000]).await;
    s.logged(&["session established", "transport=\"wss\""])
        .await;

    // A Unix-socket client and the WebSocket client subscribed to the same topic both receive.
    let mut unix = RawClient::connect(&s.socket).await;
    let welcome = unix.hello(&[("echo", 1)]).await;
    assert!(
        matches!(welcome.kind, Some(Kind::Welcome(_))),
        "{welcome:?}"
    );
    let subscribe = || {
        request(
            9,
            "peerwire.Subscribe",
            SubscribeRequest {
                topics: vec!["echo.Tick".into()],
            }
            .encode_to_vec(),
        )
    };
    unix.send(subscribe()).await;
    send(&mut ws, subscribe()).await;
    let mut unix_tick = false;
    while !unix_tick {
        match unix.read().await {
            Read::Frame(f) => {
                unix_tick = matches!(&f.kind, Some(Kind::Event(e)) if e.topic == "echo.Tick")
            }
            other => panic!("unix client: {other:?}"),
        }
    }
    let mut ws_tick = false;
    while !ws_tick {
        ws_tick =
            matches!(recv(&mut ws).await.kind, Some(Kind::Event(e)) if e.topic == "echo.Tick");
    }
    // Calls keep working on both.
    echo(&mut ws, 3, b"still").await;

    // The web root: files by exact name, with the security headers; nothing else.
    let (head, body) = http_get(&s, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for h in [
        "Content-Type: text/html",
        "Content-Security-Policy: default-src 'self'; connect-src 'self'",
        "X-Content-Type-Options: nosniff",
        "Cache-Control: no-store",
    ] {
        assert!(head.contains(h), "{h} missing: {head}");
    }
    assert!(body.contains("display"));
    let (head, _) = http_get(&s, "/app.js").await;
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    for missing in [
        "/../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/nothing.js",
        "/peerwire",
    ] {
        let (head, _) = http_get(&s, missing).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{missing}: {head}");
    }
    ws.close(None).await.unwrap();
}

/// A plain GET of `path` over TLS: the response head and body.
async fn http_get(s: &Setup, path: &str) -> (String, String) {
    let mut tls = s.tls().await;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn upgrades_without_a_valid_token_are_refused_and_logged() {
    let s = Setup::start(&[]);
    let me = nix::unistd::geteuid().as_raw();

    // The same token twice: the second use is refused.
    let token = s.mint();
    let _first = s.upgrade(&token).await.unwrap();
    let (status, body) = refused(s.upgrade(&token).await);
    assert_eq!(status, 403);
    assert!(body.contains("session token refused"), "{body}");
    s.logged(&[
        "refused with HTTP 403",
        "session token refused",
        &format!("uid={me}"),
        "127.0.0.1:",
    ])
    .await;

    // A forged token: one byte of the signature changed.
    let mut forged = s.mint().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let (status, _) = refused(s.upgrade(std::str::from_utf8(&forged).unwrap()).await);
    assert_eq!(status, 403);
    // An expired token (issued a minute ago, valid 30 s).
    let (status, body) = refused(s.upgrade(&s.mint_for(me, None, 60)).await);
    assert_eq!(status, 403);
    assert!(body.contains("expired"), "{body}");
    s.logged(&["session token refused", "expired"]).await;
    // A token bound to an executable: nothing can present one over TCP.
    let (status, _) = refused(
        s.upgrade(&s.mint_for(me, Some(PathBuf::from(common::BIN)), 0))
            .await,
    );
    assert_eq!(status, 403);
    // A token for another uid.
    let (status, body) = refused(s.upgrade(&s.mint_for(me + 1, None, 0)).await);
    assert_eq!(status, 403);
    assert!(body.contains("uid"), "{body}");
    // A token minted for the Unix socket, not this endpoint.
    let secret = DeviceSecret::read(&s.id.join("server/token.key")).unwrap();
    let unix_token = Minter::new(&secret)
        .unwrap()
        .mint(
            &Binding {
                uid: me,
                exe: None,
                socket: std::fs::canonicalize(&s.socket).unwrap(),
            },
            Duration::from_secs(30),
        )
        .unwrap();
    let (status, body) = refused(s.upgrade(&unix_token).await);
    assert_eq!(status, 403);
    assert!(body.contains("another server socket"), "{body}");
    // No token at all, or only the token without the subprotocol.
    let (status, _) = refused(s.upgrade_with(Some(ORIGIN), "peerwire.v1").await);
    assert_eq!(status, 403);
    let (status, _) = refused(
        s.upgrade_with(Some(ORIGIN), &format!("peerwire.token.{}", s.mint()))
            .await,
    );
    assert_eq!(status, 403);

    let mut ws = s.session().await;
    echo(&mut ws, 1, b"after the refusals").await;
    let stats = stats(&mut ws).await;
    assert!(stats.token_failures >= 8, "{stats:?}");
}

// The server's log lines are rate-limited per uid (10 within 10 s): each test below has a server
// of its own, with fewer refusals than that.

#[tokio::test]
async fn upgrades_from_another_origin_or_none_are_refused_and_logged() {
    let s = Setup::start(&[]);
    // Origins: another one, a prefix or suffix of the allowed one, null, none.
    let token = || format!("peerwire.v1, peerwire.token.{}", s.mint());
    for origin in [
        Some("https://evil.test"),
        Some("https://display.test:744"),
        Some("https://display.test:74433"),
        Some("http://display.test:7443"),
        Some("null"),
        None,
    ] {
        let (status, body) = refused(s.upgrade_with(origin, &token()).await);
        assert_eq!(status, 403, "{origin:?}");
        assert!(body.contains("Origin"), "{origin:?}: {body}");
    }
    s.logged(&[
        "refused with HTTP 403",
        "Origin https://evil.test is not allowed",
    ])
    .await;
    s.logged(&["refused with HTTP 403", "Origin null"]).await;
    s.logged(&["refused with HTTP 403", "no Origin"]).await;
    let mut ws = s.session().await;
    let stats = stats(&mut ws).await;
    assert!(stats.denied >= 6, "{stats:?}");
}

#[tokio::test]
async fn plain_websocket_and_clients_not_trusting_the_certificate_get_nothing() {
    let s = Setup::start(&[]);
    // Plain ws:// on the TLS port: no TLS, no upgrade.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let req = format!("ws://{}/peerwire", s.addr)
        .into_client_request()
        .unwrap();
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap();
    assert!(plain.is_err(), "a plain ws:// upgrade succeeded");
    s.logged(&["TLS:", "127.0.0.1:"]).await;

    // A client that does not trust the device certificate fails its own handshake.
    let connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
        .unwrap()
        .build();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let ssl = connector
        .configure()
        .unwrap()
        .into_ssl("127.0.0.1")
        .unwrap();
    let mut untrusting = SslStream::new(ssl, tcp).unwrap();
    let e = Pin::new(&mut untrusting).connect().await.unwrap_err();
    assert!(format!("{e}").contains("certificate verify failed"), "{e}");

    s.logged(&["TLS:", "alert"]).await;
    // Every refusal was counted; the server still serves.
    let mut ws = s.session().await;
    echo(&mut ws, 1, b"after the refusals").await;
    let stats = stats(&mut ws).await;
    assert!(stats.tls_failures >= 2, "{stats:?}");
}

/// The server's counters, asked over the WebSocket session (the built-in method works the same
/// over both transports).
async fn stats(ws: &mut Wss) -> peerwire_proto::v1::ServerStats {
    send(ws, request(77, peerwire_proto::METHOD_STATS, vec![])).await;
    loop {
        if let Some(Kind::Response(r)) = recv(ws).await.kind {
            assert_eq!(r.code, Code::Ok as i32, "{}", r.message);
            return peerwire_proto::v1::ServerStats::decode(r.payload).unwrap();
        }
    }
}

#[tokio::test]
async fn the_access_policy_applies_to_websocket_peers_by_uid_and_group() {
    if !common::root_or_skip("the_access_policy_applies_to_websocket_peers_by_uid_and_group") {
        return;
    }
    let gid = common::ensure_group("pw-ws-grp");
    let member = common::ensure_user("pw-ws-member", "pw-ws-grp");
    let s = Setup::start(&["--allow-uid", "root", "--allow-group", "pw-ws-grp"]);
    // The device certificate where the other users can read it.
    let cert = s._tmp.path().join("server-cert.pem");
    std::fs::copy(s.id.join("server/cert.pem"), &cert).unwrap();
    let upgrade = |token: &str| upgrade_request(ORIGIN, token);
    // A member of an allowed group, with a token minted for its uid: upgraded.
    let mut as_member = common::as_user(member, gid, &[]);
    let (out, err) = s_client_cmd(
        &mut as_member,
        s.addr,
        Some(&cert),
        &upgrade(&s.mint_for(member, None, 0)),
    );
    assert!(out.starts_with("HTTP/1.1 101"), "{out} {err}");
    // The member's token presented by root: refused (the token is bound to the uid).
    let (status, body) = refused(s.upgrade(&s.mint_for(member, None, 0)).await);
    assert_eq!(status, 403);
    assert!(body.contains("presented by uid 0"), "{body}");

    // nobody: refused before TLS, with a valid token for its uid all the same.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, ngid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let mut as_nobody = common::as_user(uid, ngid, &[]);
    let (out, err) = s_client_cmd(
        &mut as_nobody,
        s.addr,
        Some(&cert),
        &upgrade(&s.mint_for(uid, None, 0)),
    );
    assert!(out.is_empty(), "{out}");
    assert!(
        !err.contains("verify return:1"),
        "TLS went ahead for nobody: {err}"
    );
    s.logged(&[
        "access denied",
        &format!("uid {uid}"),
        "not allowed",
        "before TLS",
        "127.0.0.1:",
    ])
    .await;
    let mut ws = s.session().await;
    echo(&mut ws, 1, b"root is still served").await;
    let stats = stats(&mut ws).await;
    assert!(stats.denied >= 1, "{stats:?}");
}

#[test]
fn a_websocket_endpoint_is_refused_off_loopback_and_under_executable_rules() {
    let tmp = common::open_tempdir();
    let id = tmp.path().join("id");
    common::init_identity(&id, "ws-config");
    let run = |extra: &[&str]| {
        let out = Command::new(common::BIN)
            .args(["serve", "--allow-root", "--socket"])
            .arg(tmp.path().join("run/s.sock"))
            .arg("--identity")
            .arg(&id)
            .args(["--ws-origin", ORIGIN])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for addr in ["0.0.0.0:7443", "192.0.2.1:7443", "[::]:7443"] {
        let err = run(&["--ws-listen", addr]);
        assert!(
            err.contains("must listen on a loopback address"),
            "{addr}: {err}"
        );
    }
    let err = run(&["--ws-listen", "127.0.0.1:0", "--allow-exe", common::BIN]);
    assert!(err.contains("executable rules"), "{err}");
    let err = run(&["--ws-listen", "127.0.0.1:0", "--ws-origin", "null"]);
    assert!(err.contains("invalid allowed origin"), "{err}");
    // Refused before the Unix socket is bound: nothing left behind.
    assert!(!tmp.path().join("run/s.sock").exists());
}

#[tokio::test]
async fn mutual_tls_on_the_websocket_endpoint_needs_the_pinned_client_certificate() {
    let s = Setup::start(&["--ws-mutual-tls"]);
    // With the device's client identity: upgraded.
    let tls = ClientTls::from_dir(&s.id, TlsMode::Mutual)
        .unwrap()
        .unwrap();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut stream = SslStream::new(tls.ssl().unwrap(), tcp).unwrap();
    Pin::new(&mut stream).connect().await.unwrap();
    let protocols = format!("peerwire.v1, peerwire.token.{}", s.mint());
    let mut ws = s
        .upgrade_over(stream, Some(ORIGIN), &protocols)
        .await
        .unwrap();
    send(&mut ws, hello_frame(&[1], &[("echo", 1)])).await;
    assert!(matches!(recv(&mut ws).await.kind, Some(Kind::Welcome(_))));
    echo(&mut ws, 1, b"mutual").await;
    // Without a client certificate: the server refuses the TLS handshake (TLS 1.3 tells the
    // client on its first read).
    let r = s.upgrade(&s.mint()).await;
    assert!(r.is_err(), "upgraded without a client certificate");
    s.logged(&["TLS:", "certificate"]).await;
}

/// Sends `bytes` over a fresh TLS connection and reads until the server closes it (at most
/// `wait`): what it answered, and whether it closed in time.
async fn raw_exchange(s: &Setup, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut tls = s.tls().await;
    let _ = tls.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(wait, tls.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn slow_and_oversized_request_heads_close_only_their_connection() {
    let s = Setup::start(&["--grace-ms", "300"]);
    let mut good = s.session().await;
    // An oversized head: 431, closed.
    let big = format!(
        "GET /peerwire HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let (answer, closed) = raw_exchange(&s, big.as_bytes(), Duration::from_secs(10)).await;
    assert!(closed && answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Too many headers: 431.
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (answer, _) = raw_exchange(
        &s,
        format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    echo(&mut good, 1, b"after oversized heads").await;

    // Slowloris: three connections trickle a head that never ends; each is closed at the
    // handshake timeout (5 s), while the good client's calls are answered meanwhile.
    let started = Instant::now();
    let mut slow = vec![];
    for _ in 0..3 {
        let mut tls = s.tls().await;
        tls.write_all(b"GET /peerwire HTTP/1.1\r\n").await.unwrap();
        slow.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                // One header byte every 200 ms, until the server hangs up.
                if tls.write_all(b"X").await.is_err() {
                    return;
                }
                let read = tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return;
                }
            }
        }));
    }
    for i in 0..10 {
        echo(&mut good, 10 + i, b"while slow heads trickle").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in slow {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("a slow head is closed at the handshake timeout")
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(12),
        "{took:?}"
    );
    s.logged(&["not complete within the handshake timeout", "127.0.0.1:"])
        .await;
    echo(&mut good, 30, b"after the slow heads").await;
}

#[tokio::test]
async fn oversized_fragmented_and_text_messages_and_ping_floods_are_bounded() {
    let s = Setup::start(&["--grace-ms", "300"]);
    let mut good = s.session().await;

    // A fragmented request, reassembled: answered like any other.
    let mut ws = s.session().await;
    let req = request(5, "echo.Echo", vec![3u8; 100_000].encode_to_vec()).encode_to_vec();
    let (a, b) = req.split_at(40_000);
    assert!(fragment(&mut ws, a, true, false).await);
    assert!(fragment(&mut ws, b, false, true).await);
    match recv(&mut ws).await.kind {
        Some(Kind::Response(r)) => {
            assert_eq!(r.id, 5);
            assert_eq!(Vec::<u8>::decode(r.payload).unwrap(), vec![3u8; 100_000]);
        }
        other => panic!("{other:?}"),
    }

    // A ping flood: answered with at most the latest pong, the session goes on.
    for _ in 0..20_000 {
        ws.feed(Message::Ping(vec![1u8; 100].into())).await.unwrap();
    }
    ws.flush().await.unwrap();
    echo(&mut ws, 6, b"after a ping flood").await;
    echo(&mut good, 1, b"beside a ping flood").await;

    // Fragments beyond the frame limit (16 MiB): closed, without the whole being gathered.
    let chunk = vec![0u8; 1 << 20];
    let mut first = true;
    for _ in 0..20 {
        if !fragment(&mut ws, &chunk, first, false).await {
            break;
        }
        first = false;
    }
    expect_closed(&mut ws).await;
    s.logged(&["closing", "Message too long"]).await;
    echo(&mut good, 2, b"after oversized fragments").await;

    // One message beyond the limit: closed.
    let mut ws = s.session().await;
    let _ = ws
        .send(Message::Binary(vec![0u8; (16 << 20) + 1].into()))
        .await;
    expect_closed(&mut ws).await;
    echo(&mut good, 3, b"after an oversized message").await;

    // Before the Welcome the handshake's 64 KiB limit applies, as on the Unix socket.
    let mut ws = s.upgrade(&s.mint()).await.unwrap();
    ws.send(Message::Binary(vec![0u8; 70_000].into()))
        .await
        .unwrap();
    match recv(&mut ws).await.kind {
        Some(Kind::Reject(r)) => assert_eq!(r.code, Code::FrameTooLarge as i32, "{r:?}"),
        other => panic!("{other:?}"),
    }

    // A text message is a protocol error.
    let mut ws = s.session().await;
    ws.send(Message::Text("{\"hello\": 1}".into()))
        .await
        .unwrap();
    match recv(&mut ws).await.kind {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, Code::ProtocolError as i32, "{g:?}"),
        other => panic!("{other:?}"),
    }
    expect_closed(&mut ws).await;
    echo(&mut good, 4, b"after a text message").await;
    let stats = stats(&mut good).await;
    assert!(stats.protocol_errors >= 3, "{stats:?}");
}

/// Sends one fragment of a binary message (`first`: its first, `last`: its last); false if the
/// connection is closed.
async fn fragment(ws: &mut Wss, data: &[u8], first: bool, last: bool) -> bool {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let op = if first { Data::Binary } else { Data::Continue };
    ws.send(Message::Frame(WsFrame::message(
        data.to_vec(),
        OpCode::Data(op),
        last,
    )))
    .await
    .is_ok()
}

/// Reads until the server closes the connection (at most 10 s).
async fn expect_closed(ws: &mut Wss) {
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server did not close the connection");
}

#[tokio::test]
async fn a_page_that_never_reads_is_closed_as_a_slow_consumer() {
    let s = Setup::start(&["--grace-ms", "300"]);
    let mut good = s.session().await;
    let mut ws = s.session().await;
    // 64 echo requests of 1 MiB, never reading an answer: more than the outbound bound (8 MiB)
    // and the socket buffers hold.
    let payload = vec![9u8; 1 << 20].encode_to_vec();
    for id in 1..=64 {
        if ws
            .send(Message::Binary(
                request(id, "echo.Echo", payload.clone())
                    .encode_to_vec()
                    .into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    s.logged(&["closing", "outbound queue full", "transport=\"wss\""])
        .await;
    echo(&mut good, 1, b"beside a page that does not read").await;
    let stats = stats(&mut good).await;
    assert!(stats.slow_consumers >= 1, "{stats:?}");
}

/// The Python of the virtual environment with `websockets` (`.ci/run` makes it:
/// `target/ws-venv`), or `PEERWIRE_WS_PYTHON`. Missing: the test skips, except in CI
/// (`PEERWIRE_TESTS_REQUIRE_ROOT=1`), where it fails.
fn ws_python() -> Option<PathBuf> {
    let path = std::env::var_os("PEERWIRE_WS_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ws-venv/bin/python3"),
        PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var(common::REQUIRE_ROOT_ENV).as_deref() != Ok("1"),
        "{} is missing: python3 -m venv target/ws-venv && target/ws-venv/bin/pip install websockets",
        path.display()
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED: no {} (see .ci/run)\n", path.display()).as_bytes(),
    );
    None
}

#[tokio::test]
async fn an_independent_python_client_sees_the_same_refusals() {
    let Some(python) = ws_python() else { return };
    let s = Setup::start(&[]);
    let me = nix::unistd::geteuid().as_raw();
    let good = s.mint();
    let mut forged = s.mint().into_bytes();
    let at = forged.len() - 3;
    forged[at] = if forged[at] == b'x' { b'y' } else { b'x' };
    let spare: Vec<String> = (0..5).map(|_| s.mint()).collect();
    let input = format!(
        r#"{{"addr":"{}","cafile":"{}","origin":"{ORIGIN}","hello":"{}","tokens":{{"good":"{good}","replayed":"{good}","forged":"{}","expired":"{}","spare1":"{}","spare2":"{}","spare3":"{}","spare4":"{}","spare5":"{}"}}}}"#,
        s.addr,
        s.id.join("server/cert.pem").display(),
        hex(&hello_frame(&[1], &[("echo", 1)]).encode_to_vec()),
        String::from_utf8(forged).unwrap(),
        s.mint_for(me, None, 60),
        spare[0],
        spare[1],
        spare[2],
        spare[3],
        spare[4],
    );
    let mut child = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ws/refusals.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = |case: &str| -> String {
        text.split(&format!("\"{case}\": \""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no {case} in {text}"))
            .to_owned()
    };
    // The upgrade, a Hello, and a Welcome decoded here.
    let good = result("good");
    let welcome = good.strip_prefix("ok ").unwrap_or_else(|| panic!("{text}"));
    let welcome = Frame::decode(unhex(welcome).as_slice()).unwrap();
    assert!(
        matches!(welcome.kind, Some(Kind::Welcome(_))),
        "{welcome:?}"
    );
    for case in [
        "replayed",
        "forged",
        "expired",
        "no_token",
        "wrong_origin",
        "null_origin",
        "no_origin",
    ] {
        assert_eq!(result(case), "status 403", "{case}: {text}");
    }
    assert!(result("plain_ws").starts_with("error:"), "{text}");
    assert!(
        result("untrusting").contains("CERTIFICATE_VERIFY_FAILED"),
        "{text}"
    );
    s.logged(&["session token refused: token was already used"])
        .await;
    s.logged(&["session token refused: token expired"]).await;
    s.logged(&["access denied: Origin null"]).await;
}

#[tokio::test]
async fn openssl_s_client_sees_the_same_refusals() {
    let s = Setup::start(&[]);
    let cert = s.id.join("server/cert.pem");
    let upgrade = upgrade_request;
    let token = s.mint();
    // Trusting exactly the device certificate: the upgrade is answered 101 with the accept key.
    let (out, err) = s_client(s.addr, Some(&cert), &upgrade(ORIGIN, &token));
    assert!(out.starts_with("HTTP/1.1 101"), "{out} {err}");
    assert!(
        out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{out}"
    );
    assert!(
        out.contains("Sec-WebSocket-Protocol: peerwire.v1\r\n"),
        "{out}"
    );
    assert!(
        err.contains("verify return:1") && !err.contains("verify error"),
        "{err}"
    );
    // The same token again, a forged one, another origin: 403 with the reason.
    let (out, _) = s_client(s.addr, Some(&cert), &upgrade(ORIGIN, &token));
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("token was already used"),
        "{out}"
    );
    let (out, _) = s_client(s.addr, Some(&cert), &upgrade(ORIGIN, "pw1.AAAA"));
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("malformed token"),
        "{out}"
    );
    let (out, _) = s_client(
        s.addr,
        Some(&cert),
        &upgrade("https://evil.test", &s.mint()),
    );
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("Origin"),
        "{out}"
    );
    // Not trusting the certificate: s_client refuses the server.
    let (out, err) = s_client(s.addr, None, &upgrade(ORIGIN, &s.mint()));
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("verify error"), "{err}");
    s.logged(&["refused with HTTP 403", "token was already used"])
        .await;
}

/// `openssl s_client` to `addr` (TLS 1.3, verifying with `cafile` or with no trust at all),
/// sends `request`, returns what the server answered (stdout) and s_client's stderr.
fn s_client(addr: SocketAddr, cafile: Option<&Path>, request: &str) -> (String, String) {
    s_client_cmd(&mut Command::new("openssl"), addr, cafile, request)
}

/// [`s_client`] run by `cmd` (`openssl` itself, or a prefix such as `setpriv ... --`).
fn s_client_cmd(
    cmd: &mut Command,
    addr: SocketAddr,
    cafile: Option<&Path>,
    request: &str,
) -> (String, String) {
    if cmd.get_program() != "openssl" {
        cmd.arg("openssl");
    }
    cmd.args([
        "s_client",
        "-tls1_3",
        "-quiet",
        "-verify_return_error",
        "-connect",
    ])
    .arg(addr.to_string());
    match cafile {
        Some(ca) => cmd.arg("-partial_chain").arg("-CAfile").arg(ca),
        None => cmd.args(["-no-CAfile", "-no-CApath", "-no-CAstore"]),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = std::io::Write::write_all(&mut stdin, request.as_bytes());
    // The server closes after a refusal; after a 101 it waits for a Hello: read the head, stop.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
                break;
            }
        }
        out
    });
    let start = Instant::now();
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    drop(stdin);
    let out = reader.join().unwrap();
    let status = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&status.stderr).into_owned(),
    )
}

/// An upgrade request written by hand (RFC 6455's example key), for `openssl s_client`.
fn upgrade_request(origin: &str, token: &str) -> String {
    format!(
        "GET /peerwire HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: {origin}\r\nSec-WebSocket-Protocol: peerwire.v1, peerwire.token.{token}\r\n\r\n"
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
