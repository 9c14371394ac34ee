//! `peerwire demo`: the example display server and display client over a private socket, in
//! this process, printing their transcript.

use std::time::Duration;

use anyhow::Context;
use peerwire_security::{identity, privilege};
use peerwire_server::TlsMode;

use crate::args::TlsArgs;

pub(crate) async fn run(mode: TlsMode) -> anyhow::Result<()> {
    // Both ends live in this process: no core dumps, no ptrace by the same uid.
    privilege::harden_process()?;
    // tempfile creates the directory 0700: only this user can reach the socket inside.
    let dir = tempfile::Builder::new()
        .prefix("peerwire-demo-")
        .tempdir()
        .context("creating the demo's socket directory")?;
    let path = dir.path().join("display.sock");
    let identity = dir.path().join("identity");
    say!(
        "peerwire demo: socket {} (directory 0700, socket 0600); both ends check each other's uid (SO_PEERCRED)",
        path.display()
    );
    if nix::unistd::geteuid().is_root() {
        say!(
            "peerwire demo: running as root, for a self-contained demo; in production the server drops to a \
             service user (peerwire serve --user NAME) and refuses to run as root without it"
        );
    }
    if mode != TlsMode::Off {
        let p = identity::provision(&identity, "demo-device", false)?;
        say!(
            "peerwire demo: transport: TLS 1.3, {mode}, with certificates made for this run (pinned):"
        );
        for (role, fp) in &p.fingerprints {
            say!("peerwire demo:   {role} certificate SHA-256 {fp}");
        }
    } else {
        say!("peerwire demo: transport: plain Unix socket (--tls off)");
    }
    let tls = TlsArgs {
        tls: mode,
        identity: Some(identity.clone()),
    };
    let mut builder = peerwire_examples::display_server(&path, |l| say!("[server] {l}"));
    if let Some(server_tls) = tls.server()? {
        builder = builder.tls(server_tls);
    }
    let server = builder.bind()?;
    let handle = server.handle();
    let serving = tokio::spawn(server.run());

    // The display client runs in this process, on a thread and a runtime of its own: the two
    // ends share no executor, only the socket (and its kernel-checked credentials) between
    // them. The shipped binary has no hidden entry point for it.
    let client_tls = tls.client()?;
    let socket = path.clone();
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("display-client".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the display client's runtime")
                .and_then(|runtime| {
                    runtime.block_on(peerwire_examples::run_display_client(
                        &socket,
                        client_tls,
                        |l| say!("[client] {l}"),
                    ))
                });
            let _ = done.send(result);
        })
        .context("starting the display client's thread")?;
    say!("peerwire demo: display client started on its own thread and runtime");
    // A panic in the client drops `done` unsent.
    let outcome = tokio::time::timeout(Duration::from_secs(60), finished)
        .await
        .context("the display client did not finish within 60 s")?
        .context("the display client panicked");
    let stats = handle.stats();
    handle.shutdown();
    serving.await??;
    outcome?.context("the display client failed")?;
    say!(
        "peerwire demo: done ({} session, {} requests, {} events pushed); socket removed: {}",
        stats.sessions,
        stats.requests,
        stats.events_sent,
        !path.exists()
    );
    Ok(())
}
