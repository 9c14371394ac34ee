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
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use browser::{Browser, DisplayUser, Launch};

/// Chromium instances are heavy on a 2-core machine: one test at a time.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn www() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/web/www")
}

/// The display user the browser runs as (created if missing), and another one.
fn display_user(name: &str) -> DisplayUser {
    common::ensure_user(name, name);
    DisplayUser::lookup(name).unwrap()
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
        let launch = Launch {
            chromium: browser::CHROMIUM.into(),
            url: url.to_owned(),
            user,
            spki_pin: pin,
            headless: true,
            kiosk: false,
            sandbox: true,
            window: (1024, 640),
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

    /// The value of `expr` in the page (an error's text if it threw).
    fn eval(&self, expr: &str) -> Value {
        let (cdp, page) = self.browser.page();
        let r = cdp
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .unwrap();
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
    if !common::root_or_skip("launcher_hands_tokens_to_the_page_only") {
        return;
    }
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id");
    common::init_identity(&id, "web-test");
    // Nothing answers on the endpoint (port 1): the page stays connecting.
    let site = pages::Pages::start(&www(), "wss://127.0.0.1:1/peerwire", Some(&id));
    let user = display_user("pw-web");
    let pin = browser::spki_pin(&id.join("server/cert.pem")).unwrap();
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
    page.wait("document.body.dataset.state === 'connecting'", 30);
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
}
