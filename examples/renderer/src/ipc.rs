//! The client side, on its own threads: connects (mutual TLS, expected server uid), runs the
//! display protocol's session setup, decodes pushes into [`Update`]s and sends the user's input
//! as notifications. It talks to the render thread through two bounded channels only:
//!
//! ```text
//!  client tasks (tokio)                         render thread
//!  events.next() -> scene::decode --Update--> [bounded 1024] --try_recv, every frame-->
//!  client.notify <------------------Outbound-- [bounded 64]  <--try_send, on input------
//! ```
//!
//! The render thread never waits: it drains what is queued at the start of each frame (so a
//! frame shows the newest state) and drops an input with a warning if its queue is full. If the
//! render thread stalls, the pressure goes back to the client's event buffer and the server's
//! per-topic policy (`KeepLatest` for the state topic).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use peerwire_client::{Backoff, Client, ClientTls, EventStream, TlsMode};
use peerwire_examples::display::{
    ClientInitialized, InitializeRequest, InteractionManagerClient, KeyCode, KeyEvent,
    SessionSetupClient, TouchEvent, Window, WindowManagerClient, WindowReport,
};
use peerwire_proto::METHOD_SUBSCRIBE;
use peerwire_proto::v1::{SubscribeRequest, SubscribeResponse};
use tokio::sync::{mpsc, watch};

use crate::scene::{self, Link, Update};

/// Capacity of the update queue to the render thread.
pub const UPDATE_QUEUE: usize = 1024;
/// Capacity of the input queue from the render thread.
pub const INPUT_QUEUE: usize = 64;

/// Templates this renderer lays out (sent in `Initialize`).
pub const SUPPORTED_TEMPLATES: &[&str] = &[
    "TitleTemplate",
    "BodyTemplate",
    "ListTemplate",
    "WeatherTemplate",
];

/// Input from the render thread, sent to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A key went down or up (`interaction_manager.Key`).
    Key {
        /// The key.
        key: KeyCode,
        /// Down (true) or up.
        pressed: bool,
    },
    /// A tap (`interaction_manager.Touch`).
    Touch {
        /// Window pixels.
        x: u32,
        /// Window pixels.
        y: u32,
        /// The element tapped, or empty.
        element: String,
    },
    /// The window has a new size (`window_manager.SetVisibleWindows`).
    Window {
        /// Pixels.
        width: u32,
        /// Pixels.
        height: u32,
    },
}

/// How to reach the display server.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The server's socket.
    pub socket: PathBuf,
    /// Identity directory made by `peerwire init` (mutual TLS); `None`: a plain socket.
    pub identity: Option<PathBuf>,
    /// Server uids to trust (empty: the client crate's default, our uid and root).
    pub server_uids: Vec<u32>,
    /// The initial window size, reported at session setup.
    pub width: u32,
    /// See `width`.
    pub height: u32,
}

/// The render thread's ends of the channels, and the client's threads.
#[derive(Debug)]
pub struct Ipc {
    /// Updates for the scene; drain with `try_recv`.
    pub updates: mpsc::Receiver<Update>,
    /// Input for the server; send with `try_send`.
    pub outbound: mpsc::Sender<Outbound>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ipc {
    /// Starts the client on a thread of its own.
    pub fn spawn(opts: ConnectOptions) -> anyhow::Result<Self> {
        let (update_tx, updates) = mpsc::channel(UPDATE_QUEUE);
        let (outbound, outbound_rx) = mpsc::channel(INPUT_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        // One thread for all of the client's work: whatever the server sends, IPC takes at
        // most one core from the render thread and the rasteriser.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        let thread = std::thread::Builder::new()
            .name("renderer-ipc".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(session(opts, update_tx, outbound_rx, stop_rx)) {
                    tracing::error!("display client stopped: {e:#}");
                }
            })
            .context("starting the client thread")?;
        Ok(Self {
            updates,
            outbound,
            stop,
            thread: Some(thread),
        })
    }

    /// Says goodbye to the server and waits for the client's threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ipc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn connect(opts: &ConnectOptions) -> anyhow::Result<Client> {
    let mut b = Client::builder(&opts.socket)
        .name("peerwire-renderer")
        .reconnect({
            // Retry fast: a restarted server is back within a second.
            let mut backoff = Backoff::default();
            backoff.max = Duration::from_secs(1);
            backoff
        });
    for ns in peerwire_examples::NAMESPACES {
        b = b.require_namespace(ns, &[1]);
    }
    for uid in &opts.server_uids {
        b = b.expect_server_uid(*uid);
    }
    if let Some(dir) = &opts.identity {
        let tls = ClientTls::from_dir(dir, TlsMode::Mutual)
            .with_context(|| format!("loading the client identity from {}", dir.display()))?
            .context("no TLS context")?;
        b = b.tls(tls);
    }
    Ok(b.connect().await?)
}

/// Session setup on a (re)connected client: `Initialize`, subscribe (once: the subscription
/// survives reconnections), report the window, `ClientInitialized`. Returns the assistant's name.
async fn initialize(
    client: &Client,
    opts: &ConnectOptions,
    events: &mut Option<EventStream>,
) -> anyhow::Result<String> {
    let setup = SessionSetupClient::new(client.clone())?;
    let init = setup
        .initialize(&InitializeRequest {
            renderer: "peerwire-renderer (OpenGL)".into(),
            width: opts.width,
            height: opts.height,
            supported_templates: SUPPORTED_TEMPLATES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        })
        .await?;
    // Only the topics this renderer draws, whatever else the server offers.
    let topics: Vec<&str> = init
        .topics
        .iter()
        .map(String::as_str)
        .filter(|t| {
            [
                scene::TOPIC_STATE,
                scene::TOPIC_AUTHORIZATION,
                scene::TOPIC_RENDER,
                scene::TOPIC_CLEAR,
            ]
            .contains(t)
        })
        .collect();
    if topics.is_empty() {
        anyhow::bail!(
            "the server offers none of the display topics: {:?}",
            init.topics
        );
    }
    match events {
        None => *events = Some(client.subscribe_many(&topics).await?),
        Some(_) => {
            // After a reconnection the client crate renews the subscription from its own task,
            // possibly after this point: subscribe again (idempotent on the server) and wait for
            // the answer, so no push after `ClientInitialized` is missed.
            let _: SubscribeResponse = client
                .call(
                    METHOD_SUBSCRIBE,
                    &SubscribeRequest {
                        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                    },
                )
                .await?;
        }
    }
    send(
        client,
        Outbound::Window {
            width: opts.width,
            height: opts.height,
        },
    )
    .await?;
    setup
        .client_initialized(&ClientInitialized {
            renderer_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await?;
    Ok(init.assistant_name)
}

async fn send(client: &Client, out: Outbound) -> anyhow::Result<()> {
    match out {
        Outbound::Key { key, pressed } => {
            InteractionManagerClient::new(client.clone())?
                .key(&KeyEvent {
                    key: key as i32,
                    pressed,
                })
                .await?
        }
        Outbound::Touch { x, y, element } => {
            InteractionManagerClient::new(client.clone())?
                .touch(&TouchEvent { x, y, element })
                .await?
        }
        Outbound::Window { width, height } => {
            WindowManagerClient::new(client.clone())?
                .set_visible_windows(&WindowReport {
                    windows: vec![Window {
                        id: "main".into(),
                        width,
                        height,
                    }],
                })
                .await?;
        }
    }
    Ok(())
}

/// Sends the input still queued (a script's last key before `quit`), then says goodbye.
async fn finish(client: &Client, outbound: &mut mpsc::Receiver<Outbound>) -> anyhow::Result<()> {
    while let Ok(out) = outbound.try_recv() {
        if client.is_connected() {
            if let Err(e) = send(client, out.clone()).await {
                tracing::warn!("sending {out:?}: {e:#}");
            }
        }
    }
    client.close().await;
    Ok(())
}

async fn session(
    mut opts: ConnectOptions,
    updates: mpsc::Sender<Update>,
    mut outbound: mpsc::Receiver<Outbound>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The first connection: retry until the server is there (the screen says "Connecting").
    let backoff = Backoff::default();
    let mut attempt = 0;
    let client = loop {
        match connect(&opts).await {
            Ok(c) => break c,
            Err(e) => {
                // Loud at first and then every tenth attempt: the server may simply start later.
                if attempt % 10 == 0 {
                    tracing::warn!(attempt, "connecting to {}: {e}", opts.socket.display());
                } else {
                    tracing::debug!(attempt, "connecting to {}: {e}", opts.socket.display());
                }
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    _ = tokio::time::sleep(backoff.delay(attempt).min(Duration::from_secs(1))) => {}
                }
                attempt = attempt.saturating_add(1);
            }
        }
    };
    tracing::info!(
        "connected to {} (server {})",
        opts.socket.display(),
        client
            .server_credentials()
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    let mut events = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let assistant = tokio::select! {
            _ = stop.changed() => return finish(&client, &mut outbound).await,
            r = initialize(&client, &opts, &mut events) => r,
        };
        match assistant {
            Ok(assistant) => {
                updates
                    .send(Update::Link(Link::Connected { assistant }))
                    .await?;
                // Serve until the connection is lost.
                while let Some(stream) = events.as_mut() {
                    tokio::select! {
                        _ = stop.changed() => return finish(&client, &mut outbound).await,
                        ev = stream.next() => match ev {
                            Some(ev) => updates.send(scene::decode(&ev)).await?,
                            None => return Ok(()),
                        },
                        out = outbound.recv() => match out {
                            Some(out) => {
                                if let Outbound::Window { width, height } = out {
                                    (opts.width, opts.height) = (width, height);
                                }
                                if let Err(e) = send(&client, out.clone()).await {
                                    tracing::warn!("sending {out:?}: {e:#}");
                                }
                            }
                            None => return finish(&client, &mut outbound).await,
                        },
                        _ = tick.tick() => if !client.is_connected() { break },
                    }
                }
            }
            Err(e) if client.is_connected() => {
                // The session setup failed on a live connection: say so, retry shortly.
                tracing::warn!("session setup: {e:#}");
                updates
                    .send(Update::Content(scene::Content::Placeholder {
                        reason: format!("session setup failed: {e:#}"),
                    }))
                    .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => tracing::info!("session setup interrupted: {e:#}"),
        }
        tracing::warn!("connection to the display server lost: reconnecting");
        updates.send(Update::Link(Link::Reconnecting)).await?;
        loop {
            tokio::select! {
                _ = stop.changed() => return finish(&client, &mut outbound).await,
                up = client.wait_connected(Duration::from_millis(250)) => if up { break },
                out = outbound.recv() => match out {
                    Some(out) => tracing::warn!("not connected: input {out:?} dropped"),
                    None => return finish(&client, &mut outbound).await,
                },
            }
        }
        tracing::info!("reconnected: setting the session up again");
    }
}
