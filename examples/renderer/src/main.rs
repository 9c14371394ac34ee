//! `peerwire-renderer`: the OpenGL display client.
//!
//! - `peerwire-renderer run --socket S --identity DIR` opens a window (feature `window`);
//!   `--headless --out DIR` renders with EGL surfaceless and writes frames as PNG.
//! - `peerwire-renderer demo` starts the example display server and the renderer headless,
//!   runs a scripted interaction and prints where the frames are.
//! - `peerwire-renderer bench [--quick]` measures event-to-pixel latency and frame times.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use peerwire_renderer::app::{HeadlessOptions, Screen, WriteMode, run_headless};
use peerwire_renderer::bench::{self, BenchOptions};
use peerwire_renderer::input::Script;
use peerwire_renderer::ipc::{ConnectOptions, Ipc};

#[derive(Parser)]
#[command(
    version,
    about = "OpenGL display client for peerwire's example display protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connects to a display server and draws what it pushes.
    Run(RunArgs),
    /// Starts the example display server and the renderer headless; writes the frames.
    Demo {
        /// Where the frames go (default: a new directory under the system's temp dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Frame size, WIDTHxHEIGHT.
        #[arg(long, default_value = "640x400", value_parser = parse_size)]
        size: (u32, u32),
    },
    /// Event-to-pixel latency and frame times, headless.
    Bench {
        /// About 5 s instead of 15 s.
        #[arg(long)]
        quick: bool,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Frame pacing (a display's refresh rate); 0: unpaced, as fast as the loop goes.
        #[arg(long, default_value_t = 60.0)]
        fps: f64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The display server's socket.
    #[arg(long)]
    socket: PathBuf,
    /// Identity directory made by `peerwire init`: mutual TLS with its client half.
    #[arg(long, required_unless_present = "plain")]
    identity: Option<PathBuf>,
    /// No TLS (a server started without an identity).
    #[arg(long, conflicts_with = "identity")]
    plain: bool,
    /// Trust a server running as this uid (repeatable; default: our uid and root).
    #[arg(long = "server-uid")]
    server_uids: Vec<u32>,
    /// No window: EGL surfaceless, frames as PNG under --out.
    #[arg(long)]
    headless: bool,
    /// Window or framebuffer size, WIDTHxHEIGHT.
    #[arg(long, default_value = "800x480", value_parser = parse_size)]
    size: (u32, u32),
    /// Headless: frames per second (0: unpaced).
    #[arg(long, default_value_t = 60.0)]
    fps: f64,
    /// Headless: where PNGs go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Headless: which frames are written.
    #[arg(long, value_enum, default_value_t = WriteMode::Changes)]
    write: WriteMode,
    /// Input script to replay (see the `input` module for its format).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Headless: stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Headless: seconds between `stats` lines.
    #[arg(long, default_value_t = 1.0)]
    stats_every: f64,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT")?;
    let w: u32 = w.parse().map_err(|_| "bad width")?;
    let h: u32 = h.parse().map_err(|_| "bad height")?;
    if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
        return Err("each side must be 16..=8192".into());
    }
    Ok((w, h))
}

fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("bad duration {s}: {e}"))
}

fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let script = match &args.input {
        Some(p) => Some(Script::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let (width, height) = args.size;
    let ipc = Ipc::spawn(ConnectOptions {
        socket: args.socket.clone(),
        identity: args.identity.clone(),
        server_uids: args.server_uids.clone(),
        width,
        height,
    })?;
    let mut screen = Screen::new(width, height, Some(ipc), script)?;
    if args.headless {
        let opts = HeadlessOptions {
            width,
            height,
            fps: args.fps,
            out: args.out.clone(),
            write: args.write,
            max_duration: args.seconds.map(seconds).transpose()?,
            stats_every: seconds(args.stats_every)?,
        };
        return run_headless(&opts, &mut screen, &mut print_line, &mut |_| true);
    }
    window(screen, width, height)
}

#[cfg(feature = "window")]
fn window(screen: Screen, width: u32, height: u32) -> anyhow::Result<()> {
    peerwire_renderer::gpu::window::run(screen, "peerwire renderer", width, height)?;
    Ok(())
}

#[cfg(not(feature = "window"))]
fn window(_screen: Screen, _width: u32, _height: u32) -> anyhow::Result<()> {
    bail!("built without the `window` feature: use --headless")
}

/// The demo's input: wait for the sign-in screen, press Talk, wait for the weather card, tap
/// its dismiss button (top right at 640x400), wait for the home screen.
const DEMO_SCRIPT: &str = "\
wait content=signin
frames 20
snapshot 1-sign-in
key talk down
key talk up
wait content=body:Seattle
frames 20
snapshot 2-weather
tap {dismiss_x} {dismiss_y}
wait content=home
frames 5
snapshot 3-home
quit
";

fn demo(out: Option<PathBuf>, (width, height): (u32, u32)) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("peerwire-renderer-demo")
        .tempdir()?;
    let out = match out {
        Some(o) => o,
        None => dir.path().join("frames"),
    };
    let identity = dir.path().join("identity");
    peerwire_security::identity::provision(&identity, "renderer-demo", false)?;
    let socket = dir.path().join("display.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (handle, serving) = runtime.block_on(async {
        let mut b = peerwire_examples::display_server(&socket, |line| {
            print_line(&format!("[server] {line}"))
        });
        if let Some(tls) =
            peerwire_server::ServerTls::from_dir(&identity, peerwire_server::TlsMode::Mutual)?
        {
            b = b.tls(tls);
        }
        let server = b.bind()?;
        let handle = server.handle();
        anyhow::Ok((handle, tokio::spawn(server.run())))
    })?;
    // Where the dismiss button is at this size: lay the weather card out once.
    let (dx, dy) = peerwire_renderer::ui::dismiss_center(width, height)?
        .context("the layout has no dismiss button")?;
    let script = DEMO_SCRIPT
        .replace("{dismiss_x}", &dx.to_string())
        .replace("{dismiss_y}", &dy.to_string());
    let ipc = Ipc::spawn(ConnectOptions {
        socket: socket.clone(),
        identity: Some(identity.clone()),
        server_uids: vec![nix::unistd::getuid().as_raw()],
        width,
        height,
    })?;
    let mut screen = Screen::new(width, height, Some(ipc), Some(Script::parse(&script)?))?;
    let opts = HeadlessOptions {
        width,
        height,
        fps: 60.0,
        out: Some(out.clone()),
        write: WriteMode::Changes,
        max_duration: Some(Duration::from_secs(30)),
        stats_every: Duration::from_secs(3600),
    };
    run_headless(
        &opts,
        &mut screen,
        &mut |l| print_line(&format!("[renderer] {l}")),
        &mut |_| true,
    )?;
    handle.shutdown();
    runtime.block_on(serving)??;
    let done = screen.scene.label();
    if !done.contains("content=home") {
        bail!("the demo did not finish its interaction (last scene: {done})");
    }
    if out.starts_with(dir.path()) {
        // Keep the frames: the directory is the demo's output.
        let kept = dir.keep();
        print_line(&format!(
            "frames written to {}",
            kept.join("frames").display()
        ));
    } else {
        print_line(&format!("frames written to {}", out.display()));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // First thing: no core dumps, not dumpable, memory locked where allowed.
    peerwire_client::harden_process()?;
    peerwire_examples::init_logging("warn");
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Demo { out, size } => demo(out, size),
        Command::Bench { quick, json, fps } => {
            let mut opts = if quick {
                BenchOptions::quick()
            } else {
                BenchOptions::full()
            };
            opts.fps = fps;
            let r = bench::run(&opts, &mut |l| tracing::info!("{l}"))?;
            print_line(&r.table(&opts));
            if let Some(path) = json {
                std::fs::write(&path, r.json())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !r.newest_shown {
                bail!("after the flood the renderer did not show the newest template");
            }
            Ok(())
        }
    }
}
