//! `peerwire-renderer bench`: one process, three phases, real IPC (mutual TLS over a Unix
//! socket) and real GL (headless EGL):
//!
//! 1. **idle**: nothing pushed; the frame time (start of frame to `glFinish` returning) and the
//!    frame rate.
//! 2. **latency**: one `RenderTemplate` at a time, each tagged with its number; the
//!    event-to-pixel latency is from just before the server's `broadcast` to `glFinish`
//!    returning on the first frame that shows that template (same process, same clock).
//! 3. **flood**: state changes and templates pushed in bursts; the frame time and rate again,
//!    and whether the last frame shows the last template pushed.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerwire_examples::display::{AlexaState, RenderTemplate};

use crate::app::{self, FrameReport, HeadlessOptions, Screen, WriteMode, percentile};
use crate::harness::Running;
use crate::ipc::{ConnectOptions, Ipc};
use crate::scene::{Content, TOPIC_RENDER, TOPIC_STATE};

/// Settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Framebuffer size.
    pub width: u32,
    /// Framebuffer size.
    pub height: u32,
    /// Frame pacing (a display's refresh rate).
    pub fps: f64,
    /// Length of the idle and the flood phase.
    pub phase: Duration,
    /// Latency samples.
    pub samples: usize,
    /// Gap between latency samples.
    pub gap: Duration,
    /// Flood: events per burst (half state changes, half templates).
    pub burst: usize,
    /// Flood: time between bursts.
    pub burst_every: Duration,
}

impl BenchOptions {
    /// The full run (about 15 s).
    pub fn full() -> Self {
        Self {
            width: 640,
            height: 400,
            fps: 60.0,
            phase: Duration::from_secs(4),
            samples: 300,
            gap: Duration::from_millis(23),
            burst: 50,
            burst_every: Duration::from_millis(10),
        }
    }

    /// A quick run (about 5 s), for CI.
    pub fn quick() -> Self {
        Self {
            phase: Duration::from_millis(1500),
            samples: 80,
            ..Self::full()
        }
    }
}

/// Frame-time figures of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Frames drawn.
    pub frames: usize,
    /// Frames per second.
    pub fps: f64,
    /// Frame time, median, ms.
    pub p50_ms: f64,
    /// Frame time, 99th percentile, ms.
    pub p99_ms: f64,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Default)]
pub struct BenchResult {
    /// The GL renderer string.
    pub renderer: String,
    /// No events.
    pub idle: Phase,
    /// Under the flood.
    pub flood: Phase,
    /// Events pushed per second during the flood.
    pub flood_events_per_s: f64,
    /// Whether the last frame showed the last template pushed.
    pub newest_shown: bool,
    /// Event-to-pixel latency samples that reached the screen.
    pub latency_samples: usize,
    /// Latency, median, ms.
    pub latency_p50_ms: f64,
    /// Latency, 99th percentile, ms.
    pub latency_p99_ms: f64,
    /// Latency, worst, ms.
    pub latency_max_ms: f64,
}

impl BenchResult {
    /// A Markdown table.
    pub fn table(&self, opts: &BenchOptions) -> String {
        format!(
            "renderer: {} ({}x{}, paced at {} fps)\n\n\
             | measure | value |\n|---|---|\n\
             | event-to-pixel latency p50 | {:.2} ms |\n\
             | event-to-pixel latency p99 | {:.2} ms |\n\
             | event-to-pixel latency max | {:.2} ms ({} samples) |\n\
             | frame time idle p50 / p99 | {:.2} / {:.2} ms ({:.1} fps) |\n\
             | frame time under flood p50 / p99 | {:.2} / {:.2} ms ({:.1} fps, {:.0} events/s) |\n\
             | newest state shown after the flood | {} |\n",
            self.renderer,
            opts.width,
            opts.height,
            opts.fps,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
            self.latency_samples,
            self.idle.p50_ms,
            self.idle.p99_ms,
            self.idle.fps,
            self.flood.p50_ms,
            self.flood.p99_ms,
            self.flood.fps,
            self.flood_events_per_s,
            if self.newest_shown { "yes" } else { "NO" },
        )
    }
}

impl BenchResult {
    /// The figures as a JSON object.
    pub fn json(&self) -> String {
        format!(
            "{{\"renderer\": {:?}, \"latency_p50_ms\": {:.3}, \"latency_p99_ms\": {:.3}, \"latency_max_ms\": {:.3}, \"latency_samples\": {}, \"idle_fps\": {:.2}, \"idle_frame_p50_ms\": {:.3}, \"idle_frame_p99_ms\": {:.3}, \"flood_fps\": {:.2}, \"flood_frame_p50_ms\": {:.3}, \"flood_frame_p99_ms\": {:.3}, \"flood_events_per_s\": {:.0}, \"newest_shown\": {}}}\n",
            self.renderer,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
            self.latency_samples,
            self.idle.fps,
            self.idle.p50_ms,
            self.idle.p99_ms,
            self.flood.fps,
            self.flood.p50_ms,
            self.flood.p99_ms,
            self.flood_events_per_s,
            self.newest_shown,
        )
    }
}

const STARTING: u8 = 0;
const IDLE: u8 = 1;
const LATENCY: u8 = 2;
const FLOOD: u8 = 3;
const SETTLE: u8 = 4;
const DONE: u8 = 5;

fn template(token: String, title: String) -> RenderTemplate {
    RenderTemplate {
        template_type: "TitleTemplate".into(),
        token,
        title,
        fields: [("subtitle".to_owned(), "benchmark".to_owned())]
            .into_iter()
            .collect(),
    }
}

fn phase_figures(frames: &[(Instant, f64)]) -> Phase {
    let mut work: Vec<f64> = frames.iter().map(|f| f.1).collect();
    let span = match (frames.first(), frames.last()) {
        (Some(a), Some(b)) => b.0.duration_since(a.0).as_secs_f64(),
        _ => 0.0,
    };
    Phase {
        frames: frames.len(),
        fps: if span > 0.0 {
            (frames.len().saturating_sub(1)) as f64 / span
        } else {
            0.0
        },
        p50_ms: percentile(&mut work, 50.0),
        p99_ms: percentile(&mut work, 99.0),
    }
}

/// Runs the benchmark; `print` gets progress lines.
pub fn run(opts: &BenchOptions, print: &mut dyn FnMut(&str)) -> anyhow::Result<BenchResult> {
    let dir = tempfile::tempdir()?;
    let identity = dir.path().join("identity");
    peerwire_security::identity::provision(&identity, "renderer-bench", false)
        .context("making a device identity")?;
    let socket = dir.path().join("display.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = runtime.block_on(async { Running::start(&socket, Some(&identity)) })?;

    let phase = Arc::new(AtomicU8::new(STARTING));
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; opts.samples]));
    let last_flood = Arc::new(AtomicU64::new(0));
    let flood_rate = Arc::new(Mutex::new(0.0f64));
    let pusher = {
        let (handle, received) = (server.handle.clone(), server.received.clone());
        let (phase, sent, last_flood, flood_rate) = (
            phase.clone(),
            sent.clone(),
            last_flood.clone(),
            flood_rate.clone(),
        );
        let opts = opts.clone();
        runtime.spawn(async move {
            // Wait for the renderer's session: initialised and subscribed (a push reaches one).
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let up = received.all().iter().any(|l| l == "initialized")
                    && handle
                        .broadcast(TOPIC_STATE, &AlexaState { state: 1 })
                        .unwrap_or(0)
                        == 1;
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    phase.store(DONE, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            phase.store(IDLE, Ordering::SeqCst);
            tokio::time::sleep(opts.phase).await;
            phase.store(LATENCY, Ordering::SeqCst);
            for i in 0..opts.samples {
                let t = template(format!("lat-{i}"), format!("Sample {i}"));
                if let Ok(mut s) = sent.lock() {
                    if let Some(slot) = s.get_mut(i) {
                        *slot = Some(Instant::now());
                    }
                }
                let _ = handle.broadcast(TOPIC_RENDER, &t);
                tokio::time::sleep(opts.gap).await;
            }
            phase.store(FLOOD, Ordering::SeqCst);
            let start = Instant::now();
            let mut n = 0u64;
            let mut tick = tokio::time::interval(opts.burst_every);
            while start.elapsed() < opts.phase {
                tick.tick().await;
                for _ in 0..opts.burst / 2 {
                    n += 1;
                    let _ = handle.broadcast(
                        TOPIC_STATE,
                        &AlexaState {
                            state: 1 + (n % 4) as i32,
                        },
                    );
                    let _ = handle.broadcast(
                        TOPIC_RENDER,
                        &template(format!("flood-{n}"), format!("Flood {n}")),
                    );
                }
            }
            if let Ok(mut r) = flood_rate.lock() {
                *r = (n * 2) as f64 / start.elapsed().as_secs_f64();
            }
            last_flood.store(n, Ordering::SeqCst);
            phase.store(SETTLE, Ordering::SeqCst);
        })
    };

    let ipc = Ipc::spawn(ConnectOptions {
        socket: socket.clone(),
        identity: Some(identity.clone()),
        server_uids: vec![nix_uid()],
        width: opts.width,
        height: opts.height,
    })?;
    let mut screen = Screen::new(opts.width, opts.height, Some(ipc), None)?;
    let headless = HeadlessOptions {
        width: opts.width,
        height: opts.height,
        fps: opts.fps,
        out: None,
        write: WriteMode::Snapshots,
        max_duration: Some(
            opts.phase * 2 + opts.gap * opts.samples as u32 + Duration::from_secs(30),
        ),
        stats_every: Duration::from_secs(3600),
    };
    let mut result = BenchResult::default();
    let (mut idle, mut flood) = (vec![], vec![]);
    let mut latencies = vec![];
    let mut last_token = String::new();
    let mut settle_frames = 0;
    let mut observe = |f: &FrameReport<'_>| -> bool {
        let ph = phase.load(Ordering::SeqCst);
        let token = match &f.scene.content {
            Content::Template { token, .. } => token.as_str(),
            _ => "",
        };
        if token != last_token {
            if let Some(i) = token
                .strip_prefix("lat-")
                .and_then(|i| i.parse::<usize>().ok())
            {
                let at = sent.lock().ok().and_then(|s| s.get(i).copied().flatten());
                if let Some(at) = at {
                    latencies.push(f.finished.duration_since(at).as_secs_f64() * 1e3);
                }
            }
            last_token = token.to_owned();
        }
        let sample = (f.finished, f.work.as_secs_f64() * 1e3);
        match ph {
            IDLE => idle.push(sample),
            FLOOD => flood.push(sample),
            SETTLE => {
                // Give the last events a few frames to arrive, then check what is shown.
                settle_frames += 1;
                let last = last_flood.load(Ordering::SeqCst);
                if token == format!("flood-{last}") || settle_frames > 30 {
                    result.newest_shown = token == format!("flood-{last}");
                    return false;
                }
            }
            DONE => return false,
            _ => {}
        }
        true
    };
    let mut lines = vec![];
    app::run_headless(
        &headless,
        &mut screen,
        &mut |l| lines.push(l.to_owned()),
        &mut observe,
    )?;
    for l in &lines {
        print(l);
    }
    if let Some(r) = lines.iter().find_map(|l| l.strip_prefix("renderer: ")) {
        result.renderer = r.to_owned();
    }
    runtime.block_on(async {
        pusher.abort();
        server.stop().await
    })?;
    if idle.is_empty() {
        bail!("the renderer never got a session with the benchmark's server");
    }
    result.idle = phase_figures(&idle);
    result.flood = phase_figures(&flood);
    result.flood_events_per_s = flood_rate.lock().map(|r| *r).unwrap_or(0.0);
    result.latency_samples = latencies.len();
    result.latency_p50_ms = percentile(&mut latencies, 50.0);
    result.latency_p99_ms = percentile(&mut latencies, 99.0);
    result.latency_max_ms = latencies.iter().copied().fold(0.0, f64::max);
    Ok(result)
}

fn nix_uid() -> u32 {
    // Our own uid: the benchmark's server runs in this process.
    nix::unistd::getuid().as_raw()
}
