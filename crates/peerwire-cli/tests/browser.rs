//! The web display client (`examples/web`) in a real headless Chromium (Debian's
//! `/usr/bin/chromium`), started by the launcher's own code (`src/browser`, included here as it
//! is) as an ordinary user, driven through the DevTools pipe: it connects to `peerwire serve`'s
//! WebSocket endpoint, renders what the display server pushes, and its clicks and keys reach the
//! server; and every way in that should be refused is refused, with the reason in the server's
//! log.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    unreachable_pub
)]

mod common;

#[path = "../src/browser/mod.rs"]
mod browser;
#[path = "browser/pages.rs"]
mod pages;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use browser::{Browser, DisplayUser, Launch};
use peerwire_security::token::{Binding, DeviceSecret, Minter, Verifier};
use peerwire_server::{AccessPolicy, ServerHandle, ServerTls, TlsMode, WsEndpoint, token_endpoint};

/// Chromium instances are heavy on a 2-core machine: one test at a time.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Everything this test process logs (the in-process server's refusals, the launcher's
/// deliveries, the page's console), for the assertions on the server's reasons.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        // Shown on failure (the harness captures the test's output).
        print!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .try_init();
}

/// The log since `from` (a length of it taken before).
fn log_since(from: usize) -> String {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned()
}

fn log_len() -> usize {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Waits until the log since `from` contains `needle`; fails after `secs` seconds.
fn wait_log(from: usize, needle: &str, secs: u64) -> String {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = log_since(from);
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < end,
            "no {needle:?} in the log within {secs} s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The example display server (`peerwire_examples::display_server`) with the WebSocket
/// endpoint serving `examples/web/www`, in this process on a runtime of its own.
struct WebServer {
    addr: SocketAddr,
    origin: String,
    secret: DeviceSecret,
    /// What the display service did (its log lines: input received, ...).
    said: Arc<Mutex<Vec<String>>>,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl WebServer {
    /// Admits `uids` only, on 127.0.0.1:`port` (0: any).
    fn start(id: &Path, uids: &[u32], port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = DeviceSecret::read(&id.join("server/token.key")).unwrap();
        let said: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = said.clone();
        let mut policy = AccessPolicy::nobody();
        for uid in uids {
            policy.allow_uid(*uid);
        }
        // The origin names the port: pick it now.
        let port = if port == 0 { pages::free_port() } else { port };
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tls = ServerTls::from_dir(id, TlsMode::ServerAuth)
            .unwrap()
            .unwrap();
        let verifier = Verifier::new(&secret, &dir.path().join("ws-tokens"), 64).unwrap();
        let origin = format!("https://{listen}");
        let endpoint = WsEndpoint::new(listen, tls, verifier)
            .unwrap()
            .allow_origin(&origin)
            .unwrap()
            .web_root(www());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(async {
                peerwire_examples::display_server(&dir.path().join("display.sock"), move |line| {
                    tracing::info!(target: "display", "{line}");
                    lines.lock().unwrap().push(line);
                })
                .access_policy(policy)
                .websocket(endpoint)
                .bind()
            })
            .unwrap();
        let addr = server.ws_addr().unwrap();
        let handle = server.handle();
        let thread = std::thread::spawn(move || {
            rt.block_on(server.run()).unwrap();
        });
        Self {
            addr,
            origin: format!("https://{addr}"),
            secret,
            said,
            handle,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("{}/", self.origin)
    }

    /// A fresh token for `uid` at this endpoint, issued `age` ago, valid `ttl`.
    fn mint(&self, uid: u32, age: Duration, ttl: Duration) -> String {
        let binding = Binding {
            uid,
            exe: None,
            socket: token_endpoint(self.addr),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        Minter::new(&self.secret)
            .unwrap()
            .mint_at(&binding, (now - age).as_secs(), ttl)
            .unwrap()
    }

    /// A closure minting fresh tokens for `uid`, as the launcher does.
    fn minter(&self, uid: u32) -> Tokens {
        let minter = Minter::new(&self.secret).unwrap();
        let binding = Binding {
            uid,
            exe: None,
            socket: token_endpoint(self.addr),
        };
        Tokens::new(move || minter.mint(&binding, Duration::from_secs(30)).unwrap())
    }

    fn said(&self, what: &str) -> usize {
        self.said
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn www() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/web/www")
}

/// The display user the browser runs as (created if missing), and another one.
fn display_user(name: &str) -> DisplayUser {
    common::ensure_user(name, name);
    DisplayUser::lookup(name).unwrap()
}

/// Whether Chromium's sandbox can work for `user`: it needs unprivileged user namespaces, which
/// this Debian kernel (and CI's) allows; a container that forbids them gets `--no-sandbox`, and
/// says so.
fn sandbox_works(user: &DisplayUser) -> bool {
    let ok = common::as_user(user.uid, user.gid, &[])
        .args(["unshare", "--user", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"NOTE: no unprivileged user namespaces here: Chromium runs with --no-sandbox\n",
        );
    }
    ok
}

/// Mints what the page asks for: `next` decides each token; every token handed out is kept.
struct Tokens {
    handed: Rc<RefCell<Vec<String>>>,
    next: Box<dyn FnMut() -> String>,
}

impl Tokens {
    fn new(next: impl FnMut() -> String + 'static) -> Self {
        Self {
            handed: Rc::default(),
            next: Box::new(next),
        }
    }
}

/// The browser on a page, and the tokens it was given.
struct Page {
    browser: Browser,
    tokens: Tokens,
}

impl Page {
    fn open(url: &str, user: DisplayUser, pin: Option<String>, tokens: Tokens) -> Self {
        let sandbox = sandbox_works(&user);
        let launch = Launch {
            chromium: browser::CHROMIUM.into(),
            url: url.to_owned(),
            user,
            spki_pin: pin,
            headless: true,
            kiosk: false,
            sandbox,
            window: (1024, 640),
            quiet: true,
        };
        Self {
            browser: launch.start().unwrap(),
            tokens,
        }
    }

    /// Handles the browser's events (token requests among them) for `dur`.
    fn pump(&mut self, dur: Duration) {
        let end = Instant::now() + dur;
        let handed = self.tokens.handed.clone();
        let next = &mut self.tokens.next;
        let mut mint = || {
            let token = next();
            handed.borrow_mut().push(token.clone());
            Ok(token)
        };
        while Instant::now() < end {
            self.browser
                .pump(Duration::from_millis(20), &mut mint)
                .unwrap();
        }
    }

    /// The value of `expr` in the page, or `{"exception": ...}` if it threw or could not run
    /// (the page between two documents while it navigates).
    fn eval(&self, expr: &str) -> Value {
        let (cdp, page) = self.browser.page();
        let r = match cdp.call(
            Some(page),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        ) {
            Ok(r) => r,
            Err(e) => return json!({ "exception": e.to_string() }),
        };
        if let Some(e) = r.get("exceptionDetails") {
            return json!({ "exception": e });
        }
        r["result"]["value"].clone()
    }

    /// Pumps events until `expr` is truthy in the page; fails after `secs` seconds.
    fn wait(&mut self, expr: &str, secs: u64) -> Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == "" || v == 0 || v.get("exception").is_some()) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "the page never showed `{expr}` in {secs} s; status: {}; log: {}",
                self.eval("document.getElementById('status')?.textContent"),
                self.eval("document.getElementById('log')?.innerText")
            );
            self.pump(Duration::from_millis(100));
        }
    }

    /// A real mouse click (pressed, released) in the middle of `selector`.
    fn click(&mut self, selector: &str) {
        let rect = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
        let (cdp, page) = self.browser.page();
        for kind in ["mousePressed", "mouseReleased"] {
            cdp.call(
                Some(page),
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .unwrap();
        }
    }

    /// A real key press (down, up) of the space bar.
    fn press_space(&mut self) {
        let (cdp, page) = self.browser.page();
        for kind in ["keyDown", "keyUp"] {
            cdp.call(
                Some(page),
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": " ", "code": "Space", "windowsVirtualKeyCode": 32 }),
            )
            .unwrap();
        }
    }

    /// A PNG of the page.
    fn screenshot(&self) -> Vec<u8> {
        let (cdp, page) = self.browser.page();
        let shot = cdp
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

/// What every browser test starts with: root (else a skip), the one-browser lock, the log, a
/// fresh device identity, and the display user `pw-web`.
struct Setup {
    _one: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    id: PathBuf,
    user: DisplayUser,
}

impl Setup {
    fn new(test: &str) -> Option<Self> {
        if !common::root_or_skip(test) {
            return None;
        }
        let one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        logs();
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        common::init_identity(&id, "web-test");
        Some(Self {
            _one: one,
            dir,
            id,
            user: display_user("pw-web"),
        })
    }

    /// The launcher's certificate pin for this identity.
    fn pin(&self) -> Option<String> {
        Some(browser::spki_pin(&self.id.join("server/cert.pem")).unwrap())
    }
}

/// Every process of `uid`: no token in its command line or environment.
fn assert_no_token_in_proc(uid: u32, tokens: &[String]) {
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if owner != Some(uid) {
            continue;
        }
        seen += 1;
        for file in ["cmdline", "environ"] {
            let bytes = std::fs::read(entry.path().join(file)).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            for t in tokens {
                assert!(
                    !text.contains(t.as_str()),
                    "a token is in {}/{file}",
                    entry.path().display()
                );
            }
        }
    }
    assert!(seen > 0, "no process of uid {uid} found");
}

/// The launcher's hand-over, before any server: the page asks, the launcher mints for its own
/// origin only, the browser runs as the display user, sandboxed, and the token is in no
/// argv or environment of its processes.
#[test]
fn launcher_hands_tokens_to_the_page_only() {
    let Some(t) = Setup::new("launcher_hands_tokens_to_the_page_only") else {
        return;
    };
    let id = t.id.as_path();
    // Nothing answers on the endpoint (port 1): the page stays connecting.
    let site = pages::Pages::start(&www(), "wss://127.0.0.1:1/peerwire", Some(id));
    let user = t.user.clone();
    let pin = t.pin().unwrap();
    let mut n = 0;
    let tokens = Tokens::new(move || {
        n += 1;
        format!("pw1.not-a-real-token-{n}")
    });
    let mut page = Page::open(
        &format!("{}/", site.origin),
        user.clone(),
        Some(pin),
        tokens,
    );
    // The page's context, and so its origin, is the only one served.
    let end = Instant::now() + Duration::from_secs(30);
    while page.tokens.handed.borrow().is_empty() && Instant::now() < end {
        page.pump(Duration::from_millis(100));
    }
    assert_eq!(
        page.tokens.handed.borrow().len(),
        1,
        "the page asked for no token"
    );
    // A reloaded page asks again, and gets a new token.
    let (cdp, session) = page.browser.page();
    cdp.call(Some(session), "Page.reload", json!({})).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while page.tokens.handed.borrow().len() < 2 && Instant::now() < end {
        page.pump(Duration::from_millis(100));
    }
    let handed = page.tokens.handed.borrow().clone();
    assert!(
        handed.len() >= 2,
        "one token per attempt: {handed:?}; status {}, log {}",
        page.eval("document.getElementById('status').textContent"),
        page.eval("document.getElementById('log').innerText")
    );
    assert_eq!(page.browser.tokens_delivered() as usize, handed.len());
    assert_no_token_in_proc(user.uid, &handed);
    // The profile: the display user's own, private, and removed with the browser.
    let profile = page.browser.profile().unwrap().to_owned();
    let meta = std::fs::metadata(&profile).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o700, user.uid, user.gid)
    );
    // The same page from another origin, in the same browser: the launcher gives it nothing.
    let other = pages::Pages::start(&www(), "wss://127.0.0.1:1/peerwire", None);
    let (cdp, session) = page.browser.page();
    cdp.call(
        Some(session),
        "Page.navigate",
        json!({ "url": format!("{}/", other.origin) }),
    )
    .unwrap();
    page.wait(
        &format!(
            "location.origin === {:?} && document.body.dataset.state === 'token'",
            other.origin
        ),
        30,
    );
    page.pump(Duration::from_secs(2));
    assert_eq!(page.eval("document.body.dataset.state"), "token");
    assert_eq!(
        page.tokens.handed.borrow().len(),
        handed.len(),
        "a token went to {}",
        other.origin
    );
    drop(page);
    assert!(!profile.exists(), "the profile outlived the browser");
}

/// Waits until `cond` holds, polling every 50 ms; fails with `what` after `secs` seconds.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < end,
            "{what} did not happen within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole path: the page gets a token from the launcher's code, connects over wss with it,
/// draws the server's pushes (sign-in code, attention state, a template), its clicks and keys
/// reach the server, and when its session ends it comes back with a fresh token.
#[test]
fn page_renders_pushes_and_its_input_reaches_the_server() {
    let Some(t) = Setup::new("page_renders_pushes_and_its_input_reaches_the_server") else {
        return;
    };
    let id = t.id.as_path();
    let user = t.user.clone();
    let mut server = WebServer::start(id, &[user.uid], 0);
    let pin = t.pin().unwrap();
    let mut page = Page::open(
        &server.url(),
        user.clone(),
        Some(pin),
        server.minter(user.uid),
    );

    // Connected, initialised: the server pushed the sign-in code, then the idle state.
    page.wait("document.body.dataset.state === 'connected'", 30);
    page.wait(
        "document.getElementById('signin').textContent.includes('PW7Q2X')",
        10,
    );
    page.wait(
        "document.getElementById('attention').textContent === 'IDLE'",
        10,
    );
    assert_eq!(server.said("Initialize from web-display"), 1);

    // A click on the talk button is the talk key: the server runs an interaction and pushes a
    // template, which the page draws.
    page.click("#talk");
    page.wait(
        "!document.getElementById('template').hidden && \
         document.getElementById('template-title').textContent === 'Seattle' && \
         document.getElementById('template-fields').textContent.includes('12°C')",
        10,
    );
    assert_eq!(server.said("talk button pressed"), 1);
    page.wait(
        "document.getElementById('attention').textContent === 'IDLE'",
        10,
    );
    let png = page.screenshot();
    assert_eq!(&png[1..4], b"PNG");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/web-client.png");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, &png).unwrap();
    if std::env::var_os("PEERWIRE_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/web-client.png"),
            &png,
        )
        .unwrap();
    }

    // The space bar is the talk key too.
    page.press_space();
    let mut n = 0;
    while server.said("talk button pressed") < 2 && n < 100 {
        page.pump(Duration::from_millis(100));
        n += 1;
    }
    assert_eq!(server.said("talk button pressed"), 2);

    // A tap on "dismiss" is a touch on that element: the server clears the template.
    page.click("#dismiss");
    page.wait("document.getElementById('template').hidden", 10);
    assert_eq!(
        server.said("on \"dismiss\""),
        1,
        "{:?}",
        server.said.lock().unwrap()
    );

    // The session ends (the server restarts on the same port): the page asks for a fresh
    // token and connects again.
    let first = page.tokens.handed.borrow().clone();
    assert_eq!(first.len(), 1);
    let port = server.addr.port();
    server.stop();
    page.wait("document.body.dataset.state === 'closed'", 20);
    let server = WebServer::start(id, &[user.uid], port);
    page.wait("document.body.dataset.state === 'connected'", 60);
    let handed = page.tokens.handed.borrow().clone();
    assert!(handed.len() >= 2 && handed[1] != handed[0], "{handed:?}");
    wait_until("the second session's Initialize", 10, || {
        server.said("Initialize from web-display") == 1
    });
    assert_no_token_in_proc(user.uid, &handed);
}

/// Opens the page as `user` with `tokens` (and the pin unless `pin` is false), waits for what
/// the server logs about it (`needle`), and returns the log since the start.
fn refused(
    url: &str,
    user: &DisplayUser,
    pin: Option<String>,
    tokens: Tokens,
    needle: &str,
) -> String {
    let from = log_len();
    let mut page = Page::open(url, user.clone(), pin.clone(), tokens);
    let end = Instant::now() + Duration::from_secs(30);
    while !log_since(from).contains(needle) {
        assert!(
            Instant::now() < end,
            "no {needle:?} in the server's log within 30 s:\n{}",
            log_since(from)
        );
        page.pump(Duration::from_millis(100));
    }
    // Never connected.
    assert_ne!(
        page.eval("document.body?.dataset.state ?? null"),
        "connected"
    );
    if pin.is_none() {
        // Chromium's certificate error page instead of the page.
        page.wait("location.href.startsWith('chrome-error:')", 10);
    }
    log_since(from)
}

/// Every way in that must fail, seen from a real browser, each with its reason in the server's
/// log: a token used twice, a forged one, an expired one, one for another uid or another
/// endpoint, a page of another origin, a browser
/// that does not trust the server's certificate, a plain ws:// connection, and a user the
/// policy does not admit.
#[test]
fn the_server_refuses_what_it_must() {
    let Some(t) = Setup::new("the_server_refuses_what_it_must") else {
        return;
    };
    let id = t.id.as_path();
    let user = t.user.clone();
    let denied = display_user("pw-web-denied");
    let server = WebServer::start(id, &[user.uid], 0);
    let pin = || t.pin();
    // A fresh server for each case: a server logs at most 10 refusals per uid per 10 s.
    let fresh = || WebServer::start(id, &[user.uid], 0);

    // The same token twice: the first load connects, the reload is refused.
    let token = server.mint(user.uid, Duration::ZERO, Duration::from_secs(60));
    let from = log_len();
    let mut page = Page::open(
        &server.url(),
        user.clone(),
        pin(),
        Tokens::new(move || token.clone()),
    );
    page.wait("document.body.dataset.state === 'connected'", 30);
    let (cdp, session) = page.browser.page();
    cdp.call(Some(session), "Page.reload", json!({})).unwrap();
    page.wait(
        "document.getElementById('log').textContent.includes('refused at upgrade')",
        30,
    );
    wait_log(from, "session token refused: token was already used", 10);
    assert_eq!(
        server.said("Initialize from web-display"),
        1,
        "only the first load"
    );
    drop(page);

    let server = fresh();
    // A forged token (another device's secret).
    let forger = Minter::new(&DeviceSecret::generate().unwrap()).unwrap();
    let binding = Binding {
        uid: user.uid,
        exe: None,
        socket: token_endpoint(server.addr),
    };
    refused(
        &server.url(),
        &user,
        pin(),
        Tokens::new(move || forger.mint(&binding, Duration::from_secs(30)).unwrap()),
        "session token refused: token signature is invalid",
    );

    let server = fresh();
    // An expired token.
    let old = server.mint(user.uid, Duration::from_secs(600), Duration::from_secs(60));
    refused(
        &server.url(),
        &user,
        pin(),
        Tokens::new(move || old.clone()),
        "session token refused: token expired",
    );

    let server = fresh();
    // A good token for another uid, and one for another endpoint (another port).
    refused(
        &server.url(),
        &user,
        pin(),
        server.minter(denied.uid),
        &format!(
            "session token refused: token is not for this peer: minted for uid {}",
            denied.uid
        ),
    );
    let elsewhere = Binding {
        uid: user.uid,
        exe: None,
        socket: token_endpoint(SocketAddr::new(server.addr.ip(), server.addr.port() ^ 1)),
    };
    let minter = Minter::new(&server.secret).unwrap();
    refused(
        &server.url(),
        &user,
        pin(),
        Tokens::new(move || minter.mint(&elsewhere, Duration::from_secs(30)).unwrap()),
        "session token refused: token is not for this peer: minted for another server socket",
    );

    let server = fresh();
    // A page of another origin (a copy served elsewhere, pointed at the real endpoint), with
    // good tokens.
    let endpoint = format!("wss://{}/peerwire", server.addr);
    let other = pages::Pages::start(&www(), &endpoint, Some(id));
    refused(
        &format!("{}/", other.origin),
        &user,
        pin(),
        server.minter(user.uid),
        &format!("Origin {} is not allowed", other.origin),
    );

    let server = fresh();
    // A browser that does not trust the certificate: it drops the connection in the TLS
    // handshake, and shows its certificate error page instead of the page.
    let log = refused(
        &server.url(),
        &user,
        None,
        server.minter(user.uid),
        "TLS: TLS handshake failed",
    );
    assert!(!log.contains("WebSocket upgrade"), "{log}");

    let server = fresh();
    // Plain ws:// (from a plain http page, the only kind a browser lets open one).
    let plain = pages::Pages::start(&www(), &format!("ws://{}/peerwire", server.addr), None);
    let log = refused(
        &format!("{}/", plain.origin),
        &user,
        pin(),
        server.minter(user.uid),
        "http request",
    );
    assert!(!log.contains("WebSocket upgrade"), "{log}");

    let server = fresh();
    // A user the policy does not admit: closed before TLS, so not even the page loads.
    refused(
        &server.url(),
        &denied,
        pin(),
        server.minter(denied.uid),
        &format!(
            "peer uid {} is not allowed by the server's access policy",
            denied.uid
        ),
    );
}

/// Runs `peerwire launch-browser` for `t`'s user on `server` with `mode` (`--headless` or
/// `--kiosk`) and `env`, until the page has initialised; then stops it with SIGTERM and checks
/// that no process of the user is left. Returns the display service's Initialize line.
fn launch_browser(t: &Setup, server: &WebServer, mode: &str, env: &[(&str, &str)]) -> String {
    let log = t.dir.path().join("launcher.log");
    let mut launcher = std::process::Command::new(common::BIN)
        .args([
            "launch-browser",
            mode,
            "--quiet",
            "--user",
            "pw-web",
            "--identity",
        ])
        .arg(&t.id)
        .arg("--ws")
        .arg(server.addr.to_string())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while server.said("Initialize from web-display") == 0 {
        assert!(
            Instant::now() < end,
            "the page never initialised; launcher: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("token 1 delivered"), "{said}");
    assert!(said.contains(&format!("as uid {}", t.user.uid)), "{said}");
    // The launcher stops the browser on SIGTERM, and all of its processes end.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(launcher.wait().unwrap().success());
    wait_until("the browser's exit", 20, || {
        std::process::Command::new("pgrep")
            .args(["-u", &t.user.uid.to_string()])
            .output()
            .map(|o| o.stdout.is_empty())
            .unwrap_or(false)
    });
    let said = server.said.lock().unwrap();
    said.iter()
        .find(|l| l.contains("Initialize from web-display"))
        .unwrap()
        .clone()
}

/// `peerwire launch-browser --headless` itself: Chromium as the display user on the server's
/// page, which connects with the tokens the command mints; SIGTERM ends it all.
#[test]
fn launch_browser_command() {
    let Some(t) = Setup::new("launch_browser_command") else {
        return;
    };
    let server = WebServer::start(&t.id, &[t.user.uid], 0);
    let init = launch_browser(&t, &server, "--headless", &[]);
    assert!(init.contains(&format!("uid={}", t.user.uid)), "{init}");
}

/// `peerwire launch-browser --kiosk` on a real (virtual) X display, as a device runs it, not
/// headless: the page connects as the display user.
#[test]
fn launch_browser_kiosk_on_a_display() {
    let Some(t) = Setup::new("launch_browser_kiosk_on_a_display") else {
        return;
    };
    let server = WebServer::start(&t.id, &[t.user.uid], 0);
    let n = (90..200)
        .find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
        .unwrap();
    // -ac: the display user may connect (a device's display session would own the display).
    let mut xvfb = std::process::Command::new("Xvfb")
        .args([
            &format!(":{n}"),
            "-screen",
            "0",
            "1600x900x24",
            "-nolisten",
            "tcp",
            "-ac",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("Xvfb", 20, || {
        Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
    });
    let init = launch_browser(&t, &server, "--kiosk", &[("DISPLAY", &format!(":{n}"))]);
    let _ = xvfb.kill();
    let _ = xvfb.wait();
    assert!(init.contains(&format!("uid={}", t.user.uid)), "{init}");
}
