//! Shared test support: a real `peerwire serve` process, an in-process server, and a raw
//! frame-level client for speaking (or breaking) the protocol by hand.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use peerwire_proto::codec::FrameCodec;
use peerwire_proto::v1::{Frame, Hello, NamespaceVersions, frame::Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_peerwire");
/// The test-support binary (never shipped): helper processes such as an embedding SDK process.
pub const TESTKIT: &str = env!("CARGO_BIN_EXE_peerwire-testkit");

/// Logs of the test process go to the test output (shown on failure), filtered by RUST_LOG.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A `peerwire serve` child process; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub path: PathBuf,
}

impl ServeProcess {
    pub fn start(path: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--allow-root"])
            .arg("--socket")
            .arg(path)
            .args(extra);
        Self::spawn(cmd, path)
    }

    /// Takes charge of an already started server process and waits until `path` answers.
    pub fn adopt(child: Child, path: &Path) -> Self {
        let mut server = Self {
            child,
            path: path.to_owned(),
        };
        server.wait_listening();
        server
    }

    /// Runs `cmd` (some form of `peerwire serve`) and waits until `path` answers.
    pub fn spawn(mut cmd: Command, path: &Path) -> Self {
        // The command's own RUST_LOG, else the test's, else warn.
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
            cmd.env("RUST_LOG", log);
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn peerwire serve");
        let mut server = Self {
            child,
            path: path.to_owned(),
        };
        server.wait_listening();
        server
    }

    fn wait_listening(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if std::os::unix::net::UnixStream::connect(&self.path).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "peerwire serve for {} exited before listening: {status}",
                    self.path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("State:") || l.starts_with("Name:"))
            .collect::<Vec<_>>()
            .join(", ");
        panic!(
            "peerwire serve did not start listening on {} within 30 s (process: {state})",
            self.path.display()
        );
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "peerwire serve did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that speaks raw frames (or raw bytes) over a real socket.
pub struct RawClient {
    pub stream: UnixStream,
    codec: FrameCodec,
    buf: BytesMut,
}

#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    Eof,
    Error(String),
}

impl RawClient {
    pub async fn connect(path: &Path) -> Self {
        Self {
            stream: UnixStream::connect(path).await.unwrap(),
            codec: FrameCodec::new(16 << 20),
            buf: BytesMut::new(),
        }
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            codec: FrameCodec::new(16 << 20),
            buf: BytesMut::new(),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        self.codec.encode(&frame, &mut buf).unwrap();
        self.send_bytes(&buf).await;
    }

    pub async fn hello(&mut self, namespaces: &[(&str, u32)]) -> Frame {
        self.send(hello_frame(&[1], namespaces)).await;
        match self.read().await {
            Read::Frame(f) => f,
            _ => panic!("no answer to Hello"),
        }
    }

    /// The next frame, EOF, or a read error; panics after 10 s of silence.
    pub async fn read(&mut self) -> Read {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => return Read::Frame(f),
                Ok(None) => {}
                Err(e) => return Read::Error(e.to_string()),
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server said nothing for 10 s");
            match n {
                Ok(0) => return Read::Eof,
                Ok(_) => {}
                Err(e) => return Read::Error(e.to_string()),
            }
        }
    }

    /// Reads frames until EOF; returns them.
    pub async fn read_to_end(&mut self) -> Vec<Frame> {
        let mut out = vec![];
        loop {
            match self.read().await {
                Read::Frame(f) => out.push(f),
                Read::Eof | Read::Error(_) => return out,
            }
        }
    }
}

pub fn hello_frame(versions: &[u32], namespaces: &[(&str, u32)]) -> Frame {
    Frame::new(Kind::Hello(Hello {
        protocol_versions: versions.to_vec(),
        client_name: "raw-test".into(),
        namespaces: namespaces
            .iter()
            .map(|(n, v)| NamespaceVersions {
                namespace: (*n).into(),
                versions: vec![*v],
                required: false,
            })
            .collect(),
        max_frame_size: 0,
        session_token: vec![],
    }))
}

/// Polls `cond` every 10 ms for up to `timeout`.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A system group for tests, created if missing (tests run as root, in CI too); its gid.
pub fn ensure_group(name: &str) -> u32 {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = nix::unistd::Group::from_name(name).unwrap() {
        return g.gid.as_raw();
    }
    let status = Command::new("groupadd")
        .args(["--system", name])
        .status()
        .expect("groupadd");
    assert!(
        status.success() || status.code() == Some(9),
        "groupadd {name}: {status}"
    );
    nix::unistd::Group::from_name(name)
        .unwrap()
        .expect("group created")
        .gid
        .as_raw()
}

/// A system user for tests (no home, no shell) with `group` as primary group; its uid.
pub fn ensure_user(name: &str, group: &str) -> u32 {
    ensure_group(group);
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(u) = nix::unistd::User::from_name(name).unwrap() {
        return u.uid.as_raw();
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            group,
            name,
        ])
        .status()
        .expect("useradd");
    assert!(
        status.success() || status.code() == Some(9),
        "useradd {name}: {status}"
    );
    nix::unistd::User::from_name(name)
        .unwrap()
        .expect("user created")
        .uid
        .as_raw()
}

/// The peerwire binary at a path every user can execute (the build tree may not be).
pub fn shared_bin() -> PathBuf {
    static BIN_COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN_COPY
        .get_or_init(|| {
            use std::os::unix::fs::PermissionsExt;
            let dir =
                std::env::temp_dir().join(format!("peerwire-test-bin-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let path = dir.join("peerwire");
            std::fs::copy(BIN, &path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        })
        .clone()
}

/// `setpriv` prefix that runs a command as `uid`/`gid` with exactly `groups` as supplementary
/// groups.
pub fn as_user(uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--");
    cmd
}

/// A temporary directory every user can traverse (0755), so that the socket directory inside
/// decides access.
pub fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Runs `cmd` to completion and returns its output; fails the test, with its stderr, if it
/// did not succeed.
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `peerwire init --device DEVICE --dir DIR`: a fresh device identity.
pub fn init_identity(dir: &Path, device: &str) {
    succeed(
        Command::new(BIN)
            .args(["init", "--device", device, "--dir"])
            .arg(dir),
    );
}

/// Spawns `cmd`, retrying while its program is "busy" (ETXTBSY): a program this test process
/// has just copied can be held open for writing for a moment by a child another test forked
/// meanwhile (the descriptor is close-on-exec, but open between that child's fork and exec).
pub fn spawn_copied(cmd: &mut Command) -> Child {
    let start = Instant::now();
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}
