//! The render loop's state, shared by window and headless mode: the scene, the fonts, the last
//! laid-out frame (for hit-testing taps), the IPC channel ends and the input script.
//!
//! One frame: [`Screen::begin`] drains the update queue without waiting and applies every update
//! in order (the frame shows the newest state), [`Screen::layout`] builds the triangles, the
//! script's due steps run against that frame, the painter draws it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peerwire_examples::display::KeyCode;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use crate::gpu::headless::Headless;
use crate::image::{Rgba, write_png};
use crate::input::{Action, Script};
use crate::ipc::{Ipc, Outbound};
use crate::scene::{Link, Scene, Update};
use crate::text::Fonts;
use crate::ui::{self, BACKGROUND, Frame};

/// The render thread's state.
#[derive(Debug)]
pub struct Screen {
    /// What is shown.
    pub scene: Scene,
    fonts: Fonts,
    frame: Frame,
    ipc: Option<Ipc>,
    width: u32,
    height: u32,
    script: Option<Script>,
    /// Set by the script's `quit` (or by the window closing).
    pub quit: bool,
}

impl Screen {
    /// A screen of `width` x `height` fed by `ipc` (none: the scene changes only by hand).
    pub fn new(
        width: u32,
        height: u32,
        ipc: Option<Ipc>,
        script: Option<Script>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            scene: Scene::default(),
            fonts: Fonts::new()?,
            frame: Frame::default(),
            ipc,
            width: width.max(1),
            height: height.max(1),
            script,
            quit: false,
        })
    }

    /// Applies the queued updates in order (never waits); returns whether the scene changed.
    pub fn begin(&mut self, now: f64) -> bool {
        let mut changed = false;
        let Some(ipc) = self.ipc.as_mut() else {
            return false;
        };
        // At most one queue's worth per frame, so a producer as fast as the drain cannot hold
        // the frame: what is left is applied at the start of the next one.
        for _ in 0..crate::ipc::UPDATE_QUEUE {
            match ipc.updates.try_recv() {
                Ok(u) => changed |= self.scene.apply(u, now),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The client thread ended (it logged why): say so on screen.
                    changed |= self.scene.apply(Update::Link(Link::Reconnecting), now);
                    break;
                }
            }
        }
        changed
    }

    /// Applies one update by hand (tests, the bench).
    pub fn apply(&mut self, update: Update, now: f64) -> bool {
        self.scene.apply(update, now)
    }

    /// Lays out the current scene.
    pub fn layout(&mut self, now: f64) -> &Frame {
        self.frame = ui::build(&self.scene, &mut self.fonts, self.width, self.height, now);
        &self.frame
    }

    /// Runs the script's steps due on this frame; returns the snapshots it asks for.
    pub fn run_script(&mut self) -> Vec<String> {
        let Some(script) = self.script.as_mut() else {
            return vec![];
        };
        let mut snapshots = vec![];
        for action in script.advance(&self.scene.label()) {
            match action {
                Action::Key(k, pressed) => self.key(k, pressed),
                Action::Tap(x, y) => self.tap(x as f32, y as f32),
                Action::Snapshot(name) => snapshots.push(name),
                Action::Quit => self.quit = true,
            }
        }
        snapshots
    }

    /// A tap (mouse click, touch, or scripted) at window pixels: hit-tested on the frame shown.
    pub fn tap(&mut self, x: f32, y: f32) {
        let element = self.frame.hit_test(x, y).to_owned();
        tracing::info!("tap at ({x:.0}, {y:.0}) on {element:?}");
        self.send(Outbound::Touch {
            x: x.max(0.0) as u32,
            y: y.max(0.0) as u32,
            element,
        });
    }

    /// A key (keyboard or scripted).
    pub fn key(&mut self, key: KeyCode, pressed: bool) {
        tracing::info!(
            "key {} {}",
            key.as_str_name(),
            if pressed { "down" } else { "up" }
        );
        self.send(Outbound::Key { key, pressed });
    }

    /// The window's new size: laid out from the next frame on, and reported to the server.
    pub fn resize(&mut self, width: u32, height: u32) {
        let (width, height) = (width.max(1), height.max(1));
        if (width, height) != (self.width, self.height) {
            (self.width, self.height) = (width, height);
            self.send(Outbound::Window { width, height });
        }
    }

    /// The size frames are laid out for.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn send(&self, out: Outbound) {
        let Some(ipc) = &self.ipc else { return };
        match ipc.outbound.try_send(out) {
            Ok(()) => {}
            Err(TrySendError::Full(out)) => tracing::warn!("input queue full: {out:?} dropped"),
            Err(TrySendError::Closed(out)) => tracing::warn!("client gone: {out:?} dropped"),
        }
    }

    /// Stops the client (goodbye to the server).
    pub fn close(&mut self) {
        if let Some(ipc) = self.ipc.take() {
            ipc.stop();
        }
    }

    /// The glyph atlas, for the painter.
    pub fn fonts_mut(&mut self) -> &mut Fonts {
        &mut self.fonts
    }

    /// The frame laid out last.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }
}

/// Which frames headless mode writes as PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteMode {
    /// The first frame and every frame whose scene changed.
    Changes,
    /// Every frame.
    Every,
    /// Only the script's snapshots.
    Snapshots,
}

/// Headless settings.
#[derive(Debug, Clone)]
pub struct HeadlessOptions {
    /// Framebuffer width.
    pub width: u32,
    /// Framebuffer height.
    pub height: u32,
    /// Frames per second the loop is paced to (a display's refresh); 0: as fast as possible.
    pub fps: f64,
    /// Where PNGs go (none: nothing is written).
    pub out: Option<PathBuf>,
    /// Which frames are written.
    pub write: WriteMode,
    /// Stop after this long.
    pub max_duration: Option<Duration>,
    /// Print a `stats` line this often.
    pub stats_every: Duration,
}

/// What the loop tells its observer after each frame.
#[derive(Debug)]
pub struct FrameReport<'a> {
    /// Frame number, from 0.
    pub index: u64,
    /// The scene drawn.
    pub scene: &'a Scene,
    /// Whether the scene changed at the start of this frame.
    pub changed: bool,
    /// When `glFinish` returned.
    pub finished: Instant,
    /// From the start of the frame to `glFinish` returning.
    pub work: Duration,
}

/// Counts frames and their work time over an interval.
#[derive(Debug)]
struct Stats {
    since: Instant,
    frames: u64,
    work_ms: Vec<f64>,
}

/// The `p`-th percentile (0..=100) of `values` (sorted in place).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values
        .get(rank.min(values.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

impl Stats {
    fn line(&mut self, now: Instant) -> String {
        let secs = now.duration_since(self.since).as_secs_f64();
        let line = format!(
            "stats frames={} seconds={secs:.3} fps={:.2} work_p50_ms={:.3} work_p99_ms={:.3}",
            self.frames,
            self.frames as f64 / secs.max(1e-9),
            percentile(&mut self.work_ms, 50.0),
            percentile(&mut self.work_ms, 99.0),
        );
        self.since = now;
        self.frames = 0;
        self.work_ms.clear();
        line
    }
}

fn write_frame(
    painter: &crate::gpu::Painter,
    width: u32,
    height: u32,
    path: &Path,
) -> anyhow::Result<()> {
    let data = painter.read_rgba(width, height);
    write_png(
        path,
        &Rgba {
            width,
            height,
            data,
        },
    )
}

/// Runs the headless render loop until the script quits or `max_duration` passes. Prints one
/// line per written frame (`frame <n> <path> <label>`) and a `stats` line per interval on
/// stdout through `print`; calls `observe` after each frame (it returns false to stop).
pub fn run_headless(
    opts: &HeadlessOptions,
    screen: &mut Screen,
    print: &mut dyn FnMut(&str),
    observe: &mut dyn FnMut(&FrameReport<'_>) -> bool,
) -> anyhow::Result<()> {
    let mut gpu = Headless::new(opts.width, opts.height)?;
    let (width, height) = gpu.size();
    screen.resize(width, height);
    if let Some(out) = &opts.out {
        std::fs::create_dir_all(out)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    }
    if let Some(p) = gpu.painter() {
        print(&format!(
            "renderer: headless {width}x{height}, GL {}",
            p.renderer()
        ));
    }
    let start = Instant::now();
    let period = (opts.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.fps));
    let mut next_deadline = start;
    let mut stats = Stats {
        since: start,
        frames: 0,
        work_ms: vec![],
    };
    let mut index = 0u64;
    while !screen.quit {
        let frame_start = Instant::now();
        if opts
            .max_duration
            .is_some_and(|d| frame_start.duration_since(start) >= d)
        {
            break;
        }
        let now = frame_start.duration_since(start).as_secs_f64();
        let changed = screen.begin(now) || index == 0;
        screen.layout(now);
        let snapshots = screen.run_script();
        let Some(painter) = gpu.painter() else { break };
        let vertices = std::mem::take(&mut screen.frame.vertices);
        painter.paint(
            width,
            height,
            BACKGROUND,
            &vertices,
            screen.fonts_mut().atlas_mut(),
        );
        screen.frame.vertices = vertices;
        painter.finish();
        let finished = Instant::now();
        let work = finished.duration_since(frame_start);
        if let Some(out) = &opts.out {
            let label = screen.scene.label();
            let auto = match opts.write {
                WriteMode::Changes => changed,
                WriteMode::Every => true,
                WriteMode::Snapshots => false,
            };
            if auto {
                let path = out.join(format!("frame-{index:06}.png"));
                write_frame(painter, width, height, &path)?;
                print(&format!("frame {index} {} {label}", path.display()));
            }
            for name in snapshots {
                let path = out.join(format!("{name}.png"));
                write_frame(painter, width, height, &path)?;
                print(&format!("snapshot {name} {} {label}", path.display()));
            }
        }
        let go_on = observe(&FrameReport {
            index,
            scene: &screen.scene,
            changed,
            finished,
            work,
        });
        if !go_on {
            screen.quit = true;
        }
        stats.frames += 1;
        stats.work_ms.push(work.as_secs_f64() * 1e3);
        if finished.duration_since(stats.since) >= opts.stats_every {
            print(&stats.line(finished));
        }
        index += 1;
        if let Some(period) = period {
            next_deadline += period;
            let now = Instant::now();
            if next_deadline > now {
                std::thread::sleep(next_deadline - now);
            } else if now.duration_since(next_deadline) > period {
                // More than a frame late: do not try to catch up with a burst.
                next_deadline = now;
            }
        }
    }
    if stats.frames > 0 {
        print(&stats.line(Instant::now()));
    }
    screen.close();
    Ok(())
}
