//! `peerwire launch-browser`: Chromium on the web display client, as the display user, trusting
//! only the device's server certificate, with fresh session tokens handed to the page over the
//! DevTools pipe (see [`crate::browser`]).

use std::time::Duration;

use anyhow::{Context, bail};

use crate::args::{LaunchBrowserArgs, MintArgs};
use crate::browser::{DisplayUser, Launch, spki_pin};

pub(crate) fn run(args: &LaunchBrowserArgs) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    // SIGTERM, SIGINT and SIGHUP end the loop below, so the browser is stopped and its profile
    // removed. Blocked before any thread starts (each inherits the mask; the browser does not:
    // a spawned child starts with an empty mask).
    let mut stop = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(sig);
    }
    stop.thread_block()?;
    let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let user = DisplayUser::lookup(&args.user)?;
    if user.uid == 0 {
        bail!("refusing to run the browser as root: give --user the display user");
    }
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("https://{}/", args.ws));
    let mint = MintArgs {
        identity: args.identity.clone(),
        for_uid: user.uid.to_string(),
        socket: peerwire_server::token_endpoint(args.ws),
        exe: None,
        ttl: args.ttl,
        server_user: args.server_user.clone(),
    };
    let pin = spki_pin(&args.identity.join("server").join("cert.pem"))?;
    let launch = Launch {
        chromium: args.chromium.clone(),
        url: url.clone(),
        user,
        spki_pin: Some(pin),
        headless: args.headless,
        kiosk: args.kiosk,
        sandbox: !args.no_sandbox,
        window: (args.width, args.height),
        quiet: args.quiet,
    };
    let mut browser = launch.start().context("starting the browser")?;
    eprintln!(
        "peerwire launch-browser: Chromium on {url} as uid {}, trusting only the server key {}",
        launch.user.uid,
        launch.spki_pin.as_deref().unwrap_or_default()
    );
    let mut minter = || mint.mint();
    loop {
        if let Some(sig) = signals.read_signal()? {
            eprintln!(
                "peerwire launch-browser: signal {}: stopping the browser",
                sig.ssi_signo
            );
            return Ok(());
        }
        if let Some(status) = browser.exited()? {
            eprintln!(
                "peerwire launch-browser: the browser exited ({status}) after {} token(s)",
                browser.tokens_delivered()
            );
            return Ok(());
        }
        if let Err(e) = browser.pump(Duration::from_millis(500), &mut minter) {
            // The pipe closes when Chromium exits; report its status if it has.
            if browser.exited()?.is_none() {
                return Err(e);
            }
        }
    }
}
