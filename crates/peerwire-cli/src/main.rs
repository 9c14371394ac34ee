//! # peerwire: the command-line tool
//!
//! - `peerwire demo`: a self-contained end-to-end demo. It creates a private (0700) temporary
//!   socket directory, starts the example display server and the example display client in this
//!   process, each on its own runtime, prints their transcript and exits 0 when the scripted
//!   session completed.
//! - `peerwire serve --socket PATH`: a reference server with the method `echo.Echo` (bytes in,
//!   same bytes out) and the push topic `echo.Tick` (a counter, every `--tick-ms`).
//! - `peerwire ping --socket PATH [--count N] [--size B]`: round trips to `echo.Echo`, with
//!   latency percentiles.
//! - `peerwire audit --socket PATH`: the socket's and its directory's owner and mode, and any
//!   problem in plain words; exits 1 when something is unsafe.
//!
//! - `peerwire init --dir DIR [--device NAME] [--force]`: provisions the device identity (a key
//!   pair and a self-signed certificate for the server and for the client, each pinning the
//!   other) for TLS.
//!
//! TLS: `serve` and `ping` take `--tls off|server-auth|mutual --identity DIR`; `demo` uses mutual
//! TLS unless `--tls off`.
//!
//! Access control: `serve` admits only its own uid unless `--allow-uid`/`--allow-group` say
//! otherwise (then exactly those), optionally only clients running `--allow-exe`; `--socket-group`
//! opens the socket file to a group (0660 in a 0750 directory). `ping` refuses a server that is
//! not running as `--expect-server-uid` (default: its own uid or root).
//!
//! Logging goes to stderr and is controlled by `RUST_LOG` (for example `RUST_LOG=debug`).

//!
//! One module per command ([`demo`], [`serve`], [`ping`], [`audit`], [`init`], [`token`],
//! [`launch`], [`config`], [`stats`]); [`args`] holds the command line. Helper processes for the
//! tests live in the separate, never shipped `peerwire-testkit` binary.

/// Prints a line on stdout; a closed stdout (`peerwire demo | head`) is not an error worth a
/// panic, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod args;
mod audit;
mod browser;
mod config;
mod demo;
mod init;
mod launch;
mod launch_browser;
mod ping;
mod serve;
mod stats;
mod token;

use anyhow::{Context, bail};
use clap::Parser;

use args::{Cli, Command, TokenCommand};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, without a backtrace, and without repeating a
            // cause that its parent's message already quotes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg = format!("{msg}: {cause}");
                }
            }
            eprintln!("peerwire: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    peerwire_examples::init_logging("warn");
    let cli = Cli::parse();
    // The server drops its privileges before any thread exists: no runtime yet.
    let cli = match cli.command {
        Command::Serve(args) => return serve::main(*args),
        // Blocking DevTools I/O on threads of its own: no runtime either.
        Command::LaunchBrowser(args) => return launch_browser::run(&args),
        command => Cli { command },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Demo { tls } => demo::run(tls).await,
            Command::Init { dir, device, force } => init::run(&dir, device, force),
            Command::Serve(_) => bail!("serve runs outside the shared runtime"),
            Command::Ping(args) => ping::run(args).await,
            Command::Audit {
                socket,
                socket_group,
                user,
            } => audit::run(&socket, socket_group.as_deref(), user.as_deref()),
            Command::Token(TokenCommand::Mint(args)) => token::mint(&args),
            Command::Launch { mint, command } => launch::run(&mint, &command).await,
            Command::LaunchBrowser(_) => bail!("launch-browser runs outside the shared runtime"),
            Command::Config(cmd) => config::run(cmd),
            Command::Stats { socket, tls } => stats::run(&socket, &tls).await,
        }
    })
}
