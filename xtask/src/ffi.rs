//! `cargo xtask ffi [--bless]`: the C ABI end to end (docs/c-api.md).
//!
//! 1. Builds `libpeerwire.so`/`.a` (release), the Rust display server and client and
//!    `peerwire` (for `init`); checks the committed header (`--bless` rewrites it first).
//! 2. Installs the library into `target/ffi/prefix` (lib, include, pkg-config, CMake package),
//!    as a distribution would.
//! 3. Builds a C program through `pkg-config`, and configures and builds `examples/cpp` with
//!    CMake against the installed package, once plainly and once with
//!    `-fsanitize=address,undefined`.
//! 4. Runs, with mutual TLS: the C++ display server against the Rust display client, and the
//!    Rust display server against the C display client; each transcript is checked.
//! 5. The sanitizer run: `stress` (10,000 calls and 10,000 events each way) under ASan and
//!    UBSan; the leak run: `lifecycle` (a server and a client created and destroyed 1,000
//!    times) under LeakSanitizer, and under valgrind (installed by CI) with the memory in use at
//!    exit compared with a 10-round run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The files of an installed prefix: (source, destination relative to the prefix).
const LIBDIR: &str = "lib";
/// The shared library's SONAME (set in crates/peerwire-ffi/build.rs).
pub(crate) const SONAME: &str = "libpeerwire.so.0";

pub(crate) fn run(root: &Path, bless: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let root = &root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut header = Command::new(&cargo);
    header
        .current_dir(root)
        .args(["test", "--locked", "-p", "peerwire-ffi", "--test", "header"]);
    if bless {
        header.env("PEERWIRE_BLESS_HEADER", "1");
    }
    step("the committed header", || succeed(&mut header))?;
    step("release build", || {
        succeed(Command::new(&cargo).current_dir(root).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "peerwire-ffi",
            "-p",
            "peerwire-examples",
            "-p",
            "peerwire-cli",
        ]))
    })?;
    let release = root.join("target/release");
    let work = root.join("target/ffi");
    let prefix = work.join("prefix");
    step("install", || install(root, &release, &prefix))?;
    step("pkg-config build", || {
        pkg_config_build(root, &prefix, &work)
    })?;
    let build = work.join("build");
    let asan = work.join("build-asan");
    step("CMake build of examples/cpp", || {
        cmake(root, &prefix, &build, false)
    })?;
    step("CMake build with ASan and UBSan", || {
        cmake(root, &prefix, &asan, true)
    })?;

    let scratch = scratch_dir()?;
    let identity = scratch.join("identity");
    step("peerwire init", || {
        succeed(
            Command::new(release.join("peerwire"))
                .args(["init", "--device", "ffi", "--dir"])
                .arg(&identity),
        )
    })?;
    step("C++ server, Rust client (mutual TLS)", || {
        let socket = scratch.join("cpp/display.sock");
        let server = display_end(build.join("display-server-cpp"), &socket, &identity);
        let client = display_end(release.join("display-client"), &socket, &identity);
        converse(
            server,
            client,
            &socket,
            &[
                "[server] Initialize from display-client",
                "[server] renderer reports 1 window(s)",
                "[server] talk button pressed",
                "[server] touch at (1200, 40) on \"dismiss\"",
            ],
            &[
                "[client] connected over TLS mutual",
                "initialized: assistant Alexa (en-US)",
                "draw: sign-in screen: visit https://amazon.com/us/code and enter PW7Q2X",
                "draw: attention bar LISTENING",
                "draw: WeatherTemplate \"Seattle\" [condition=Cloudy, temperature=12°C]",
                "draw: clear template weather-1",
                "GetState: assistant IDLE, authorized true, 2 input event(s) received, template \"\"",
            ],
        )
    })?;
    step("Rust server, C client (mutual TLS)", || {
        let socket = scratch.join("rust/display.sock");
        let server = display_end(release.join("display-server"), &socket, &identity);
        let client = display_end(build.join("display-client-c"), &socket, &identity);
        converse(
            server,
            client,
            &socket,
            &[
                "[server] Initialize from display-client-c",
                "[server] touch at (1200, 40) on \"dismiss\"",
            ],
            &[
                "[client] connected over TLS mutual",
                "[client] initialized: assistant Alexa (en-US)",
                "[client] window manager accepted 1 window(s)",
                "[client] draw: sign-in screen: visit https://amazon.com/us/code and enter PW7Q2X",
                "[client] draw: attention bar LISTENING",
                "[client] draw: WeatherTemplate \"Seattle\"",
                "[client] draw: clear template weather-1",
                "[client] GetState: assistant IDLE, authorized true, 2 input event(s) received, template \"\"",
                "[client] closed",
            ],
        )
    })?;
    step("the static library: the C client linked statically", || {
        let socket = scratch.join("static/display.sock");
        let mut server = Command::new(release.join("display-server"));
        server.arg("--socket").arg(&socket);
        let mut client = Command::new(build.join("display-client-c-static"));
        client.arg("--socket").arg(&socket);
        converse(server, client, &socket, &[], &["[client] closed"])
    })?;
    let sanitizers = [
        (
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        ),
        (
            "UBSAN_OPTIONS",
            "halt_on_error=1:print_stacktrace=1:exitcode=24",
        ),
    ];
    step("sanitizer run: 10,000 calls and 10,000 events", || {
        let out = output(
            Command::new(asan.join("stress"))
                .arg(scratch.join("stress/s.sock"))
                .arg("10000")
                .envs(sanitizers),
        )?;
        print!("{out}");
        Ok(())
    })?;
    step(
        "leak run: 1,000 servers and clients (LeakSanitizer)",
        || {
            let out = output(
                Command::new(asan.join("lifecycle"))
                    .arg(scratch.join("life/s.sock"))
                    .arg("1000")
                    .envs(sanitizers),
            )?;
            print!("{out}");
            Ok(())
        },
    )?;
    if Command::new("valgrind").arg("--version").output().is_ok() {
        step("leak run under valgrind: 1,000 servers and clients", || {
            valgrind(&build, &scratch)
        })?;
    } else {
        eprintln!("xtask ffi: valgrind is not installed; LeakSanitizer's leak run stands alone");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!(
        "xtask ffi: all checks passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("==> ffi: {what}");
    f().with_context(|| what.to_owned())?;
    eprintln!("<== ffi: {what} ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn succeed(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` to the end; its stdout, or an error with both streams.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A fresh private directory for sockets and the identity (short paths: a socket path is at
/// most 107 bytes).
fn scratch_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("peerwire-ffi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Fills a template of `crates/peerwire-ffi/pkg/`.
pub(crate) fn fill(template: &str, prefix: &str, libdir: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or("0");
    let minor = parts.next().unwrap_or("0");
    template
        .replace("@PREFIX@", prefix)
        .replace("@LIBDIR@", libdir)
        .replace("@VERSION@", version)
        .replace("@VERSION_MAJOR@", major)
        .replace("@VERSION_MINOR@", minor)
        .replace("@SONAME@", SONAME)
        .replace("@SIZEOF_VOID_P@", &std::mem::size_of::<usize>().to_string())
}

/// Installs the library, header, pkg-config file and CMake package under `prefix`.
pub(crate) fn install(root: &Path, release: &Path, prefix: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(prefix);
    let lib = prefix.join(LIBDIR);
    for dir in [
        lib.join("pkgconfig"),
        lib.join("cmake/peerwire"),
        prefix.join("include"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let copy = |from: PathBuf, to: PathBuf| -> anyhow::Result<()> {
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))
            .map(drop)
    };
    copy(release.join("libpeerwire.so"), lib.join(SONAME))?;
    std::os::unix::fs::symlink(SONAME, lib.join("libpeerwire.so"))?;
    copy(release.join("libpeerwire.a"), lib.join("libpeerwire.a"))?;
    copy(
        root.join("include/peerwire.h"),
        prefix.join("include/peerwire.h"),
    )?;
    let pkg = root.join("crates/peerwire-ffi/pkg");
    let prefix_text = prefix.to_str().context("the prefix is not UTF-8")?;
    for (template, dest) in [
        ("peerwire.pc.in", "pkgconfig/peerwire.pc"),
        (
            "peerwireConfig.cmake.in",
            "cmake/peerwire/peerwireConfig.cmake",
        ),
        (
            "peerwireConfigVersion.cmake.in",
            "cmake/peerwire/peerwireConfigVersion.cmake",
        ),
    ] {
        let text = std::fs::read_to_string(pkg.join(template))
            .with_context(|| format!("reading {template}"))?;
        std::fs::write(lib.join(dest), fill(&text, prefix_text, LIBDIR))?;
    }
    Ok(())
}

/// Compiles and links the C client with the flags `pkg-config` gives (shared, then static).
fn pkg_config_build(root: &Path, prefix: &Path, work: &Path) -> anyhow::Result<()> {
    let pc_path = prefix.join(LIBDIR).join("pkgconfig");
    for (flags, out) in [
        (vec!["--cflags", "--libs"], "pc-client"),
        (vec!["--static", "--cflags", "--libs"], "pc-client-static"),
    ] {
        let text = output(
            Command::new("pkg-config")
                .args(&flags)
                .arg("peerwire")
                .env("PKG_CONFIG_PATH", &pc_path),
        )?;
        let mut cc = Command::new("cc");
        cc.args(["-std=c11", "-Wall", "-Werror", "-o"])
            .arg(work.join(out))
            .arg(root.join("examples/cpp/display_client.c"))
            .arg("-pthread");
        let mut words: Vec<&str> = text.split_whitespace().collect();
        if out.ends_with("static") {
            // Static: the archive itself, so the linker cannot pick the shared library.
            words.retain(|w| *w != "-lpeerwire");
            cc.arg(prefix.join(LIBDIR).join("libpeerwire.a"));
        }
        cc.args(words);
        succeed(&mut cc)?;
    }
    Ok(())
}

fn cmake(root: &Path, prefix: &Path, build: &Path, sanitize: bool) -> anyhow::Result<()> {
    succeed(
        Command::new("cmake")
            .arg("-S")
            .arg(root.join("examples/cpp"))
            .arg("-B")
            .arg(build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg("-DCMAKE_BUILD_TYPE=RelWithDebInfo")
            .arg(format!(
                "-DPEERWIRE_SANITIZE={}",
                if sanitize { "ON" } else { "OFF" }
            ))
            .stdout(Stdio::null()),
    )?;
    succeed(
        Command::new("cmake")
            .arg("--build")
            .arg(build)
            .arg("-j2")
            .stdout(Stdio::null()),
    )
}

/// Kills the server when dropped, so a failed check leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `server`, waits for its socket, runs `client` to the end, stops the server with
/// SIGTERM; both transcripts must contain the expected lines.
fn converse(
    mut server: Command,
    mut client: Command,
    socket: &Path,
    server_lines: &[&str],
    client_lines: &[&str],
) -> anyhow::Result<()> {
    let mut running = Running(
        server
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {server:?}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("the server made no socket at {} in 20 s", socket.display());
        }
        if let Some(status) = running.0.try_wait()? {
            bail!("the server exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client_out = output(&mut client);
    succeed(
        Command::new("kill")
            .arg("-TERM")
            .arg(running.0.id().to_string()),
    )?;
    let status = running.0.wait()?;
    let mut server_out = String::new();
    if let Some(mut out) = running.0.stdout.take() {
        out.read_to_string(&mut server_out)?;
    }
    let mut server_err = String::new();
    if let Some(mut err) = running.0.stderr.take() {
        err.read_to_string(&mut server_err)?;
    }
    let client_out =
        client_out.with_context(|| format!("server said:\n{server_out}{server_err}"))?;
    print!("{server_out}{client_out}");
    if !status.success() {
        bail!("the server ended with {status}:\n{server_err}");
    }
    for line in server_lines {
        if !server_out.contains(line) {
            bail!("the server did not print {line:?}:\n{server_out}\n{server_err}");
        }
    }
    for line in client_lines {
        if !client_out.contains(line) {
            bail!("the client did not print {line:?}:\n{client_out}");
        }
    }
    Ok(())
}

/// valgrind's memcheck on the plain build of `lifecycle`, `n` times round: the summary lines.
/// No byte may be definitely or indirectly lost (an error exit otherwise).
fn memcheck(build: &Path, scratch: &Path, n: u32) -> anyhow::Result<Vec<String>> {
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
            "--error-exitcode=25",
        ])
        .arg(build.join("lifecycle"))
        .arg(scratch.join(format!("valgrind-{n}/s.sock")))
        .arg(n.to_string())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "valgrind found a leak or an error: {}\n{stderr}",
            out.status
        );
    }
    Ok(stderr
        .lines()
        .filter(|l| {
            [
                "in use at exit",
                "definitely lost",
                "indirectly lost",
                "ERROR SUMMARY",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .map(|l| l.split_once("== ").map_or(l, |(_, rest)| rest).to_owned())
        .collect())
}

/// The leak run under valgrind: 1,000 rounds lose nothing, and what is still in use at exit
/// (the library's process-wide state) is the same after 1,000 rounds as after 10, so nothing
/// accumulates per server or client either.
fn valgrind(build: &Path, scratch: &Path) -> anyhow::Result<()> {
    let few = memcheck(build, scratch, 10)?;
    let many = memcheck(build, scratch, 1000)?;
    println!("valgrind, 1,000 rounds:\n  {}", many.join("\n  "));
    let in_use = |lines: &[String]| {
        lines
            .iter()
            .find(|l| l.contains("in use at exit"))
            .cloned()
            .unwrap_or_default()
    };
    if in_use(&few) != in_use(&many) {
        bail!(
            "memory in use at exit grows with the rounds: after 10: {}; after 1,000: {}",
            in_use(&few),
            in_use(&many)
        );
    }
    Ok(())
}

/// One end of the display conversation: `program --socket SOCKET --identity IDENTITY`.
fn display_end(program: PathBuf, socket: &Path, identity: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--socket")
        .arg(socket)
        .arg("--identity")
        .arg(identity);
    cmd
}
