//! Starting Chromium on the web display client (`examples/web`) and handing it session tokens.
//!
//! - Chromium runs as the display user (`setpriv`: that uid, its gid and supplementary groups,
//!   no capabilities, `no_new_privs`), with an empty environment but for `HOME`/`XDG_*` pointing
//!   into a fresh private profile directory (0700, owned by that user, removed afterwards).
//! - It trusts exactly the device's server certificate: `--ignore-certificate-errors-spki-list`
//!   with the SHA-256 of the certificate's public key (Chromium honours it only with its own
//!   `--user-data-dir`, which it always has here).
//! - Tokens never appear in argv, the environment, a file or a URL: the launcher speaks the
//!   DevTools protocol over `--remote-debugging-pipe` (descriptors 3 and 4 of Chromium, whose
//!   other ends only the launcher holds), installs the binding `peerwireRequestToken` in the
//!   page, and answers each call, from a main-world context of the expected origin only, with a
//!   freshly minted token passed to `peerwireDeliverToken` in that same context.
//!
//! This module depends on nothing else of the `peerwire` command, so the browser tests include
//! it as it is and drive the same browser the command starts.

pub(crate) mod cdp;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use command_fds::{CommandFdExt, FdMapping};
use serde_json::{Value, json};

use cdp::{Cdp, Event, at};

/// The binding the page calls to ask for a token (`window.peerwireRequestToken("")`).
pub(crate) const REQUEST_BINDING: &str = "peerwireRequestToken";
/// The page's function the launcher calls with a token.
pub(crate) const DELIVER_FUNCTION: &str = "peerwireDeliverToken";
/// Debian's Chromium.
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
/// A page may ask for a token at most this often; faster requests wait.
const MIN_TOKEN_INTERVAL: Duration = Duration::from_millis(200);

/// Flags that keep Chromium off the network and quiet: a display needs none of Google's
/// services, and on a closed network each attempt is a refused connection.
const QUIET: &[&str] = &[
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-default-apps",
    "--password-store=basic",
];

/// The user Chromium runs as.
#[derive(Debug, Clone)]
pub(crate) struct DisplayUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

impl DisplayUser {
    /// `user` (a name or a uid with a passwd entry): its uid, primary gid and the groups
    /// `/etc/group` gives it.
    pub(crate) fn lookup(user: &str) -> anyhow::Result<Self> {
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?,
            Err(_) => nix::unistd::User::from_name(user)?,
        };
        let u = found.with_context(|| format!("no user {user:?} in the passwd database"))?;
        let name = std::ffi::CString::new(u.name.as_bytes())?;
        let groups = nix::unistd::getgrouplist(&name, u.gid)?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(Self {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
        })
    }
}

/// How to start the browser.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The Chromium binary.
    pub(crate) chromium: PathBuf,
    /// The page (`https://127.0.0.1:PORT/`).
    pub(crate) url: String,
    /// Who runs it.
    pub(crate) user: DisplayUser,
    /// Base64 SHA-256 of the server certificate's SubjectPublicKeyInfo; `None` trusts nothing
    /// extra (the page then cannot load: only for the test that shows it).
    pub(crate) spki_pin: Option<String>,
    /// `--headless` (tests), else an app window (`--app`), full screen with `kiosk`.
    pub(crate) headless: bool,
    pub(crate) kiosk: bool,
    /// Chromium's own sandbox (needs unprivileged user namespaces for the display user).
    pub(crate) sandbox: bool,
    /// Window (or headless viewport) size; not for a kiosk.
    pub(crate) window: (u32, u32),
    /// Chromium's own log (its stderr) discarded rather than passed on.
    pub(crate) quiet: bool,
}

/// The origin (`scheme://host:port`) of `url`.
pub(crate) fn origin_of(url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not an absolute URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        bail!("{url:?} has no host");
    }
    Ok(format!("{scheme}://{host}"))
}

/// Base64 of the SHA-256 of the SubjectPublicKeyInfo of the PEM certificate at `cert`: the
/// form `--ignore-certificate-errors-spki-list` takes.
pub(crate) fn spki_pin(cert: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let cert = openssl::x509::X509::from_pem(&pem)?;
    let spki = cert.public_key()?.public_key_to_der()?;
    let digest = openssl::hash::hash(openssl::hash::MessageDigest::sha256(), &spki)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// A running Chromium and the DevTools session on its page.
pub(crate) struct Browser {
    child: Child,
    cdp: Cdp,
    page: String,
    origin: String,
    /// Main-world execution contexts of the page, by id: their origin.
    contexts: HashMap<i64, String>,
    last_token: Option<Instant>,
    tokens: u32,
    // Dropped (removed) after the child is killed: see Drop.
    profile: Option<tempfile::TempDir>,
}

impl Launch {
    /// The Chromium command line (without the DevTools descriptors).
    fn command(&self, profile: &Path) -> Command {
        let me = nix::unistd::geteuid().as_raw();
        let mut cmd = if self.user.uid == me {
            Command::new(&self.chromium)
        } else {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", self.user.uid))
                .arg(format!("--regid={}", self.user.gid));
            if self.user.groups.is_empty() {
                cmd.arg("--clear-groups");
            } else {
                let list: Vec<String> = self.user.groups.iter().map(u32::to_string).collect();
                cmd.arg(format!("--groups={}", list.join(",")));
            }
            cmd.args([
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ])
            .arg(&self.chromium);
            cmd
        };
        // Nothing of the launcher's environment, but what a window on a display needs.
        cmd.env_clear()
            .env("HOME", profile)
            .env("XDG_CONFIG_HOME", profile.join(".config"))
            .env("XDG_CACHE_HOME", profile.join(".cache"))
            .env("PATH", "/usr/bin:/bin");
        for var in ["DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "LANG"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        cmd.arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-pipe")
            .args(QUIET);
        if let Some(pin) = &self.spki_pin {
            cmd.arg(format!("--ignore-certificate-errors-spki-list={pin}"));
        }
        if !self.sandbox {
            cmd.arg("--no-sandbox");
        }
        // A kiosk takes the whole screen, whatever its size.
        if !self.kiosk {
            cmd.arg(format!("--window-size={},{}", self.window.0, self.window.1));
        }
        if self.headless {
            cmd.args(["--headless", "--disable-gpu", "--hide-scrollbars"])
                .arg(&self.url);
        } else {
            if self.kiosk {
                cmd.arg("--kiosk");
            }
            cmd.arg(format!("--app={}", self.url));
        }
        cmd.stdin(Stdio::null());
        if self.quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd
    }

    /// Starts Chromium on the page and attaches to it.
    pub(crate) fn start(&self) -> anyhow::Result<Browser> {
        let origin = origin_of(&self.url)?;
        let profile = tempfile::Builder::new()
            .prefix("peerwire-browser-")
            .tempdir()
            .context("creating the browser's profile directory")?;
        std::fs::set_permissions(profile.path(), std::fs::Permissions::from_mode(0o700))?;
        nix::unistd::chown(
            profile.path(),
            Some(nix::unistd::Uid::from_raw(self.user.uid)),
            Some(nix::unistd::Gid::from_raw(self.user.gid)),
        )
        .context("giving the profile directory to the display user")?;
        let (commands_read, commands_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (events_read, events_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut cmd = self.command(profile.path());
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: commands_read,
                child_fd: 3,
            },
            FdMapping {
                parent_fd: events_write,
                child_fd: 4,
            },
        ])
        .map_err(|_| anyhow::anyhow!("descriptor mapping collision"))?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.chromium.display()))?;
        // The command holds the browser's ends: close ours now, or the reader never sees EOF.
        drop(cmd);
        let cdp = Cdp::new(File::from(commands_write), File::from(events_read));
        let mut browser = Browser {
            child,
            cdp,
            page: String::new(),
            origin,
            contexts: HashMap::new(),
            last_token: None,
            tokens: 0,
            profile: Some(profile),
        };
        browser.check_user(self.user.uid)?;
        browser.page = browser.attach()?;
        let page = Some(browser.page.as_str());
        browser.cdp.call(page, "Runtime.enable", json!({}))?;
        browser.cdp.call(page, "Page.enable", json!({}))?;
        browser.cdp.call(
            page,
            "Runtime.addBinding",
            json!({ "name": REQUEST_BINDING }),
        )?;
        Ok(browser)
    }
}

impl Browser {
    /// Fails unless the browser process runs as `uid` (real, effective, saved and fs uid).
    fn check_user(&mut self, uid: u32) -> anyhow::Result<()> {
        let pid = self.child.id();
        // setpriv replaces itself with Chromium: wait until the exec has happened.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if !exe.ends_with("setpriv") {
                break;
            }
            if Instant::now() > deadline {
                bail!("setpriv did not start the browser within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if uids.len() != 4 || uids.iter().any(|&u| u != uid) {
            bail!("the browser runs as uids {uids:?}, not {uid}");
        }
        Ok(())
    }

    /// Finds the page target and attaches to it (flat sessions).
    fn attach(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + cdp::CALL_TIMEOUT;
        loop {
            let targets = self.cdp.call(None, "Target.getTargets", json!({}))?;
            let page = at(&targets, "/targetInfos").as_array().and_then(|infos| {
                infos
                    .iter()
                    .find(|t| at(t, "/type") == "page")
                    .and_then(|t| at(t, "/targetId").as_str())
                    .map(str::to_owned)
            });
            if let Some(target) = page {
                let attached = self.cdp.call(
                    None,
                    "Target.attachToTarget",
                    json!({ "targetId": target, "flatten": true }),
                )?;
                return at(&attached, "/sessionId")
                    .as_str()
                    .map(str::to_owned)
                    .context("Target.attachToTarget gave no session");
            }
            if Instant::now() > deadline {
                bail!("the browser opened no page");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The DevTools connection and the page's session id, for commands of the caller's own.
    #[allow(dead_code, reason = "the browser tests drive the page through it")]
    pub(crate) fn page(&self) -> (&Cdp, &str) {
        (&self.cdp, &self.page)
    }

    /// The browser's profile directory.
    #[allow(dead_code, reason = "the browser tests check it")]
    pub(crate) fn profile(&self) -> Option<&Path> {
        self.profile.as_ref().map(tempfile::TempDir::path)
    }

    /// Tokens delivered so far.
    pub(crate) fn tokens_delivered(&self) -> u32 {
        self.tokens
    }

    /// Whether Chromium has exited (and how).
    pub(crate) fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Handles the browser's next event, waiting at most `timeout`: records the page's
    /// execution contexts, answers token requests with `mint`, and passes the page's console
    /// lines to the log. Returns the event, or `None` when none came in time.
    pub(crate) fn pump(
        &mut self,
        timeout: Duration,
        mint: &mut dyn FnMut() -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<Event>> {
        let Some(ev) = self.cdp.next_event(timeout)? else {
            return Ok(None);
        };
        if ev.session.as_deref() != Some(self.page.as_str()) {
            return Ok(Some(ev));
        }
        let p = &ev.params;
        match ev.method.as_str() {
            "Runtime.executionContextCreated" => {
                let ctx = at(p, "/context");
                // Only the page's own main world: not an extension's or an isolated world.
                if at(ctx, "/auxData/isDefault") == true {
                    if let (Some(id), Some(origin)) =
                        (at(ctx, "/id").as_i64(), at(ctx, "/origin").as_str())
                    {
                        self.contexts.insert(id, origin.to_owned());
                    }
                }
            }
            "Runtime.executionContextDestroyed" => {
                if let Some(id) = at(p, "/executionContextId").as_i64() {
                    self.contexts.remove(&id);
                }
            }
            "Runtime.executionContextsCleared" => self.contexts.clear(),
            "Runtime.bindingCalled" if at(p, "/name") == REQUEST_BINDING => {
                let context = at(p, "/executionContextId").as_i64().unwrap_or_default();
                self.deliver(context, mint)?;
            }
            "Runtime.consoleAPICalled" => {
                let text: Vec<String> = at(p, "/args")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match at(a, "/value") {
                        Value::String(s) => s.clone(),
                        Value::Null => at(a, "/description")
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        other => other.to_string(),
                    })
                    .collect();
                tracing::info!(target: "page", "console.{}: {}", at(p, "/type").as_str().unwrap_or("log"), text.join(" "));
            }
            _ => {}
        }
        Ok(Some(ev))
    }

    /// A fresh token into execution context `context`, if it is the page's main world at the
    /// expected origin.
    fn deliver(
        &mut self,
        context: i64,
        mint: &mut dyn FnMut() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let origin = self.contexts.get(&context).map(String::as_str);
        if origin != Some(self.origin.as_str()) {
            tracing::warn!(
                "token request from a context of origin {origin:?}, not {}: refused",
                self.origin
            );
            return Ok(());
        }
        if let Some(last) = self.last_token {
            let since = last.elapsed();
            if since < MIN_TOKEN_INTERVAL {
                std::thread::sleep(MIN_TOKEN_INTERVAL - since);
            }
        }
        self.last_token = Some(Instant::now());
        let token = zeroize::Zeroizing::new(mint()?);
        let call = zeroize::Zeroizing::new(format!(
            "window.{DELIVER_FUNCTION}({})",
            serde_json::to_string(token.as_str())?
        ));
        self.cdp.call(
            Some(&self.page),
            "Runtime.evaluate",
            json!({ "expression": call.as_str(), "contextId": context }),
        )?;
        self.tokens += 1;
        tracing::info!(
            "token {} delivered to the page ({})",
            self.tokens,
            self.origin
        );
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGTERM lets Chromium stop its helper processes; SIGKILL if it has not within 5 s.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's helper processes may still be writing into the profile for a moment.
        if let Some(profile) = self.profile.take() {
            let path = profile.path().to_owned();
            if profile.close().is_err() {
                std::thread::sleep(Duration::from_millis(200));
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}
