//! The renderer as a process, headless (EGL surfaceless; Mesa's llvmpipe in CI), against a real
//! display server over mutual TLS: a script of pushes and inputs, a PNG per state compared with
//! the committed reference images, the input notifications the server receives, a server
//! restart, bad input, and the frame rate under an event flood.
//!
//! Reference images: `tests/ref/*.png`. A frame matches when at most [`MAX_DIFFERING`] of its
//! pixels have a channel more than [`CHANNEL_THRESHOLD`] away from the reference (llvmpipe is
//! deterministic on one machine; the slack covers another Mesa or CPU rounding an edge).
//! `PEERWIRE_RENDERER_BLESS=1` rewrites the references instead of comparing; a mismatching frame
//! is kept under `target/renderer-test-failures/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use peerwire_examples::display::{AlexaState, AuthorizationCode, ClearTemplate, RenderTemplate};
use peerwire_renderer::harness::Running;
use peerwire_renderer::image::{compare, read_png};
use peerwire_renderer::scene::{
    Content, Scene, TOPIC_AUTHORIZATION, TOPIC_CLEAR, TOPIC_RENDER, TOPIC_STATE, Template, Update,
};
use peerwire_renderer::ui;

/// A channel differing by more than this marks the pixel as differing.
const CHANNEL_THRESHOLD: u8 = 32;
/// At most this fraction of the pixels may differ.
const MAX_DIFFERING: f64 = 0.002;
const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
const STEP: Duration = Duration::from_secs(30);

fn ref_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ref")
}

fn check_reference(name: &str, frame: &Path) {
    let reference = ref_dir().join(format!("{name}.png"));
    if std::env::var_os("PEERWIRE_RENDERER_BLESS").is_some() {
        std::fs::copy(frame, &reference).unwrap();
        eprintln!("blessed {}", reference.display());
        return;
    }
    let got = read_png(frame).unwrap();
    let want = read_png(&reference)
        .unwrap_or_else(|e| panic!("{e:#} (run with PEERWIRE_RENDERER_BLESS=1 to create it)"));
    let d = compare(&got, &want, CHANNEL_THRESHOLD).unwrap();
    if d.fraction() > MAX_DIFFERING {
        let keep =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/renderer-test-failures");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(frame, keep.join(format!("{name}.png"))).unwrap();
        panic!(
            "{name}: {} of {} pixels differ (max channel difference {}), more than {:.2}%; the frame is in {}",
            d.differing,
            d.total,
            d.max_channel,
            MAX_DIFFERING * 100.0,
            keep.display()
        );
    }
}

/// The renderer process and its stdout, line by line.
struct Renderer {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Renderer {
    /// Headless, writing frames under `s.out`.
    fn start(s: &Setup, script: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peerwire-renderer"));
        cmd.arg("run")
            .arg("--headless")
            .arg("--out")
            .arg(&s.out)
            .args(["--seconds", "120"])
            .args(extra);
        if !extra.contains(&"--server-uid") {
            // The server runs in this test process: trust exactly our uid.
            cmd.arg("--server-uid")
                .arg(nix::unistd::getuid().as_raw().to_string());
        }
        Self::spawn(cmd, s, script)
    }

    /// In a window, on a virtual X display (Xvfb).
    fn start_window(s: &Setup, script: &str) -> Self {
        let mut cmd = Command::new("xvfb-run");
        cmd.args(["-a", "-s", "-screen 0 1024x768x24"])
            .arg(env!("CARGO_BIN_EXE_peerwire-renderer"))
            .arg("run")
            .arg("--server-uid")
            .arg(nix::unistd::getuid().as_raw().to_string());
        Self::spawn(cmd, s, script)
    }

    fn spawn(mut cmd: Command, s: &Setup, script: &str) -> Self {
        let script_path = s.out.with_extension("script");
        std::fs::write(&script_path, script).unwrap();
        let mut child = cmd
            .arg("--socket")
            .arg(&s.socket)
            .arg("--identity")
            .arg(&s.identity)
            .arg("--size")
            .arg(format!("{WIDTH}x{HEIGHT}"))
            .arg("--input")
            .arg(&script_path)
            .env("RUST_LOG", "peerwire_renderer=info,warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[renderer] {line}");
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line starting with `prefix` and containing `needle`.
    fn expect(&self, prefix: &str, needle: &str) -> (Instant, String) {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.starts_with(prefix) && line.contains(needle) => {
                    return (at, line);
                }
                Ok(_) => {}
                Err(e) => panic!("no {prefix:?} line with {needle:?}: {e}"),
            }
        }
    }

    /// The next written frame whose label contains `needle`: its path.
    fn frame(&self, needle: &str) -> PathBuf {
        let (_, line) = self.expect("frame ", needle);
        PathBuf::from(line.split_whitespace().nth(2).unwrap())
    }

    fn wait(mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "renderer exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "renderer did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn template(kind: &str, token: &str, title: &str, fields: &[(&str, &str)]) -> RenderTemplate {
    RenderTemplate {
        template_type: kind.into(),
        token: token.into(),
        title: title.into(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn state(s: i32) -> AlexaState {
    AlexaState { state: s }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    identity: PathBuf,
    out: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// The tests run one at a time: the frame-rate test measures, and must not share the CPU
/// with the other renderer.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup() -> (Setup, std::sync::MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("identity");
    peerwire_security::identity::provision(&identity, "renderer-test", false).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = Setup {
        socket: dir.path().join("display.sock"),
        out: dir.path().join("frames"),
        identity,
        rt,
        _dir: dir,
    };
    (s, guard)
}

fn start_server(s: &Setup) -> Running {
    let _guard = s.rt.enter();
    Running::start(&s.socket, Some(&s.identity)).unwrap()
}

fn session_up(server: &Running, count: usize) {
    wait_for("the renderer's session setup", || {
        server
            .received
            .all()
            .iter()
            .filter(|l| *l == "initialized")
            .count()
            >= count
    });
}

/// One push of the scripted server.
enum Push {
    State(i32),
    SignIn(&'static str, &'static str),
    Render(RenderTemplate),
    Clear,
    /// Not a `RenderTemplate` on the template topic: field 1 is a varint, not a string.
    Malformed,
}

impl Push {
    fn send(&self, h: &peerwire_server::ServerHandle) {
        match self {
            Push::State(s) => h.broadcast(TOPIC_STATE, &state(*s)),
            Push::SignIn(url, code) => h.broadcast(
                TOPIC_AUTHORIZATION,
                &AuthorizationCode {
                    url: (*url).into(),
                    code: (*code).into(),
                },
            ),
            Push::Render(t) => h.broadcast(TOPIC_RENDER, t),
            Push::Clear => h.broadcast(TOPIC_CLEAR, &ClearTemplate::default()),
            Push::Malformed => h.broadcast(TOPIC_RENDER, &state(3)),
        }
        .unwrap();
    }
}

#[test]
fn states_templates_inputs_bad_input_and_a_server_restart() {
    let (s, _one) = setup();
    // Where list item 1 and the dismiss button are at this size.
    let (dx, dy) = ui::dismiss_center(WIDTH, HEIGHT).unwrap().unwrap();
    let item = list_item_center(1);
    let script = format!(
        "wait content=list:Groceries\n\
         tap {} {}\n\
         key back down\n\
         key back up\n\
         wait content=title:Resumed\n\
         tap {dx} {dy}\n\
         key talk down\n\
         quit\n",
        item.0, item.1
    );
    let r = Renderer::start(&s, &script, &[]);
    // The server is not there yet: the connecting overlay, until it starts.
    check_reference("connecting", &r.frame("link=connecting"));
    let server = start_server(&s);
    session_up(&server, 1);
    check_reference(
        "home",
        &r.frame("link=connected attention=none content=home"),
    );

    // (reference image, what the server pushes, the label of the frame that shows it)
    let body = "Every connection is checked before a byte is parsed: the peer's uid, the \
                executable, and a pinned certificate in mutual TLS. Templates like this one \
                arrive as pushes on a subscribed topic and are drawn by the render thread, \
                which never waits on the socket.";
    let long = "very long text ".repeat(200);
    let steps: Vec<(&str, Vec<Push>, &str)> = vec![
        ("idle", vec![Push::State(1)], "attention=idle content=home"),
        ("listening", vec![Push::State(2)], "attention=listening"),
        ("thinking", vec![Push::State(3)], "attention=thinking"),
        ("speaking", vec![Push::State(4)], "attention=speaking"),
        (
            "sign-in",
            vec![Push::SignIn("https://example.com/device", "K7Q2XW")],
            "content=signin:K7Q2XW",
        ),
        (
            "title",
            vec![Push::Render(template(
                "TitleTemplate",
                "t1",
                "Good morning",
                &[("subtitle", "Friday, 4 December")],
            ))],
            "content=title:Good morning",
        ),
        (
            "body",
            vec![Push::Render(template(
                "BodyTemplate",
                "t2",
                "Peerwire",
                &[("subtitle", "Secure local IPC"), ("body", body)],
            ))],
            "content=body:Peerwire",
        ),
        (
            "list",
            vec![Push::Render(template(
                "ListTemplate",
                "t3",
                "Groceries",
                &[
                    ("item.0", "Oat milk"),
                    ("item.1", "Sourdough bread"),
                    ("item.2", "Tomatoes"),
                    ("item.3", "Coffee beans"),
                ],
            ))],
            "content=list:Groceries",
        ),
        (
            "placeholder-unknown-template",
            vec![Push::Render(template(
                "CarouselTemplate",
                "t4",
                "Photos",
                &[],
            ))],
            "content=placeholder",
        ),
        (
            "placeholder-too-long",
            vec![Push::Render(template(
                "BodyTemplate",
                "t5",
                "Long",
                &[("body", &long)],
            ))],
            "content=placeholder",
        ),
        (
            "placeholder-malformed",
            vec![Push::Malformed],
            "content=placeholder",
        ),
        ("error-state", vec![Push::State(42)], "attention=error(42)"),
        (
            "drawing-goes-on",
            vec![Push::State(1), Push::Clear],
            "attention=idle content=home",
        ),
    ];
    for (name, pushes, label) in &steps {
        for p in pushes {
            p.send(&server.handle);
        }
        check_reference(name, &r.frame(label));
        // Between the list and the next step the script taps a row and presses Back.
        if *name == "list" {
            wait_for("the list's inputs", || server.received.inputs().len() == 3);
        }
    }
    let first_inputs = server.received.inputs();

    // The server restarts: "reconnecting", then the session is set up again and drawing resumes.
    s.rt.block_on(server.stop()).unwrap();
    check_reference("reconnecting", &r.frame("link=reconnecting"));
    let server = start_server(&s);
    session_up(&server, 1);
    r.frame("link=connected");
    server
        .handle
        .broadcast(
            TOPIC_RENDER,
            &template(
                "TitleTemplate",
                "t6",
                "Resumed",
                &[("subtitle", "after a server restart")],
            ),
        )
        .unwrap();
    check_reference("resumed", &r.frame("content=title:Resumed"));
    r.wait();
    wait_for("the last inputs", || server.received.inputs().len() >= 2);

    assert_eq!(
        first_inputs,
        vec![
            format!("touch {},{} item-1", item.0, item.1),
            "key BACK down".to_owned(),
            "key BACK up".to_owned(),
        ]
    );
    assert_eq!(
        server.received.inputs(),
        vec![
            format!("touch {dx},{dy} dismiss"),
            "key TALK down".to_owned()
        ]
    );
    let all = server.received.all();
    assert!(
        all.contains(&format!("initialize {WIDTH}x{HEIGHT}")),
        "{all:?}"
    );
    s.rt.block_on(server.stop()).unwrap();
}

/// The centre of list row `i` for the test's list, from the layout itself.
fn list_item_center(i: usize) -> (u32, u32) {
    let mut scene = Scene::default();
    scene.apply(
        Update::Content(Content::Template {
            token: "t3".into(),
            template: Template::List {
                title: "Groceries".into(),
                items: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            },
        }),
        0.0,
    );
    ui::element_center(&scene, WIDTH, HEIGHT, &format!("item-{i}"))
        .unwrap()
        .unwrap()
}

fn fps_of(line: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("fps="))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn frame_rate_holds_under_an_event_flood_and_the_newest_state_is_shown() {
    let (s, _one) = setup();
    let server = start_server(&s);
    let script = "wait attention=speaking content=title:Final\nsnapshot final\nquit\n";
    let r = Renderer::start(
        &s,
        script,
        &["--write", "snapshots", "--stats-every", "0.5"],
    );
    session_up(&server, 1);

    // Idle and flood alternate (idle, flood, idle, flood, idle; 3 s each), so a change in
    // what else runs on the machine weighs on both. Flood: bursts of 20 events every 10 ms
    // (2000 events/s, about 33 per frame: hundreds of times what an SDK sends), state changes
    // and templates.
    let t0 = Instant::now();
    let handle = server.handle.clone();
    let flood = s.rt.spawn(async move {
        let phase = Duration::from_secs(3);
        let (mut n, mut windows) = (0u64, vec![]);
        for _ in 0..2 {
            tokio::time::sleep(phase).await;
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while start.elapsed() < phase {
                tick.tick().await;
                for _ in 0..10 {
                    n += 1;
                    let _ = handle.broadcast(TOPIC_STATE, &state(1 + (n % 4) as i32));
                    let _ = handle.broadcast(
                        TOPIC_RENDER,
                        &template("TitleTemplate", "f", &format!("Flood {n}"), &[]),
                    );
                }
            }
            windows.push((start, Instant::now()));
        }
        tokio::time::sleep(phase).await;
        (n, windows)
    });
    let (n, windows) = s.rt.block_on(flood).unwrap();
    assert!(n >= 2_000, "only {} events pushed", n * 2);

    // Each `stats` line covers the half second before it arrived: idle when that is clear of
    // every flood window (and its drain), flooded when it lies inside one.
    let second = Duration::from_millis(500);
    let (mut idle, mut flooded) = (vec![], vec![]);
    for (end, line) in r.lines.try_iter() {
        if !line.starts_with("stats ") || end < t0 + second {
            continue;
        }
        let start = end - second;
        if windows.iter().any(|(a, b)| start >= *a && end <= *b) {
            flooded.push(fps_of(&line));
        } else if !windows
            .iter()
            .any(|(a, b)| start < *b + Duration::from_millis(200) && end > *a)
        {
            idle.push(fps_of(&line));
        }
    }
    assert!(
        idle.len() >= 3 && flooded.len() >= 2,
        "idle {idle:?}, flooded {flooded:?}"
    );

    // After the flood, the newest state is what the screen shows.
    server.handle.broadcast(TOPIC_STATE, &state(4)).unwrap();
    server
        .handle
        .broadcast(
            TOPIC_RENDER,
            &template(
                "TitleTemplate",
                "final",
                "Final",
                &[("subtitle", "the newest state")],
            ),
        )
        .unwrap();
    let (_, line) = r.expect("snapshot final", "attention=speaking content=title:Final");
    check_reference(
        "flood-final",
        Path::new(line.split_whitespace().nth(2).unwrap()),
    );
    r.wait();

    // Medians: an interval disturbed by another process on a shared machine does not decide.
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (idle_fps, flood_fps) = (median(&mut idle), median(&mut flooded));
    eprintln!("idle {idle_fps:.2} fps {idle:?}, under the flood {flood_fps:.2} fps {flooded:?}");
    assert!(idle_fps > 20.0, "idle frame rate {idle_fps:.2} fps");
    // The loop is paced, so it cannot draw faster under the flood; it must not draw slower by
    // more than 10 %.
    assert!(
        flood_fps >= idle_fps * 0.90,
        "under the flood {flood_fps:.2} fps, idle {idle_fps:.2} fps: more than 10% slower"
    );
    s.rt.block_on(server.stop()).unwrap();
}

#[test]
fn window_mode_draws_and_sends_input() {
    let (s, _one) = setup();
    let server = start_server(&s);
    let (dx, dy) = ui::dismiss_center(WIDTH, HEIGHT).unwrap().unwrap();
    let script = format!(
        "wait content=title:Window\nframes 10\ntap {dx} {dy}\nkey exit down\nkey exit up\nquit\n"
    );
    let r = Renderer::start_window(&s, &script);
    session_up(&server, 1);
    server
        .handle
        .broadcast(TOPIC_RENDER, &template("TitleTemplate", "w", "Window", &[]))
        .unwrap();
    r.wait();
    wait_for("the window's inputs", || {
        server.received.inputs().len() >= 3
    });
    assert_eq!(
        server.received.inputs(),
        vec![
            format!("touch {dx},{dy} dismiss"),
            "key EXIT down".to_owned(),
            "key EXIT up".to_owned()
        ]
    );
    assert!(
        server
            .received
            .all()
            .contains(&format!("window {WIDTH}x{HEIGHT}"))
    );
    s.rt.block_on(server.stop()).unwrap();
}

#[test]
fn a_server_of_another_uid_is_refused() {
    let (s, _one) = setup();
    let server = start_server(&s);
    // The renderer trusts only `nobody`; the server runs as root (this test's uid).
    let r = Renderer::start(
        &s,
        "frames 120\nsnapshot refused\nquit\n",
        &["--server-uid", "65534", "--write", "snapshots"],
    );
    let (_, line) = r.expect("snapshot refused", "link=connecting");
    check_reference(
        "connecting",
        Path::new(line.split_whitespace().nth(2).unwrap()),
    );
    r.wait();
    // Refused before a byte of the protocol: the server never saw a session.
    assert_eq!(server.received.all(), Vec::<String>::new());
    s.rt.block_on(server.stop()).unwrap();
}
