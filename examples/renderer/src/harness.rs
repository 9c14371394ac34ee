//! A scriptable display server for the tests, the benchmark and the demo's checks: the display
//! protocol's session setup answered by peerwire-server's public API, every input notification
//! recorded in order, and pushes made by the caller through the [`ServerHandle`]. The state
//! and template topics keep only their latest event for a slow subscriber (`KeepLatest`), as a real SDK's would.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use peerwire_examples::display::{
    ClientInitialized, GetStateRequest, InitializeRequest, InitializeResponse, KeyCode, KeyEvent,
    State, SystemState, TouchEvent, WindowAck, WindowReport, interaction_manager_names,
    session_setup_names, system_names, window_manager_names,
};
use peerwire_server::{
    Server, ServerBuilder, ServerHandle, ServerTls, SlowConsumerPolicy, Status, TlsMode,
};

use crate::scene::{TOPIC_AUTHORIZATION, TOPIC_CLEAR, TOPIC_RENDER, TOPIC_STATE};

/// What the server received, one line per notification or setup call, in order:
/// `key TALK down`, `touch 12,40 dismiss`, `initialize 640x400`, `window 640x400`,
/// `initialized`.
#[derive(Debug, Clone, Default)]
pub struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    fn push(&self, line: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(line);
        }
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Only the input notifications (`key ...` and `touch ...`).
    pub fn inputs(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|l| l.starts_with("key ") || l.starts_with("touch "))
            .collect()
    }
}

/// The server's builder, with its recorder. `identity`: mutual TLS with the identity made by
/// `peerwire init` (its `server` half).
pub fn display_server(
    path: &Path,
    identity: Option<&Path>,
) -> anyhow::Result<(ServerBuilder, Received)> {
    let received = Received::default();
    let mut b = Server::builder(path);
    b = b.name("renderer-test-display-server");
    for ns in peerwire_examples::NAMESPACES {
        b = b.namespace(ns, &[1]);
    }
    b = b.topic_policy(TOPIC_STATE, SlowConsumerPolicy::KeepLatest);
    b = b.topic_policy(TOPIC_RENDER, SlowConsumerPolicy::KeepLatest);
    if let Some(dir) = identity {
        if let Some(tls) = ServerTls::from_dir(dir, TlsMode::Mutual)? {
            b = b.tls(tls);
        }
    }
    let r = received.clone();
    b = b.method(
        session_setup_names::INITIALIZE,
        move |_ctx, req: InitializeRequest| {
            r.push(format!("initialize {}x{}", req.width, req.height));
            async move {
                Ok::<_, Status>(InitializeResponse {
                    assistant_name: "Alexa".into(),
                    locale: "en-US".into(),
                    topics: [TOPIC_STATE, TOPIC_AUTHORIZATION, TOPIC_RENDER, TOPIC_CLEAR]
                        .iter()
                        .map(|t| (*t).to_owned())
                        .collect(),
                })
            }
        },
    );
    let r = received.clone();
    b = b.method(
        window_manager_names::SET_VISIBLE_WINDOWS,
        move |_ctx, req: WindowReport| {
            for w in &req.windows {
                r.push(format!("window {}x{}", w.width, w.height));
            }
            async move {
                Ok::<_, Status>(WindowAck {
                    accepted: req.windows.len() as u32,
                })
            }
        },
    );
    b = b.method(
        system_names::GET_STATE,
        |_ctx, _req: GetStateRequest| async move {
            Ok::<_, Status>(SystemState {
                state: State::Idle as i32,
                ..SystemState::default()
            })
        },
    );
    let r = received.clone();
    b = b.on_event(
        session_setup_names::CLIENT_INITIALIZED,
        move |_ctx, _ev: ClientInitialized| {
            r.push("initialized".into());
            async {}
        },
    );
    let r = received.clone();
    b = b.on_event(interaction_manager_names::KEY, move |_ctx, ev: KeyEvent| {
        let key = KeyCode::try_from(ev.key).map_or_else(
            |_| format!("#{}", ev.key),
            |k| k.as_str_name().trim_start_matches("KEY_CODE_").to_owned(),
        );
        r.push(format!(
            "key {key} {}",
            if ev.pressed { "down" } else { "up" }
        ));
        async {}
    });
    let r = received.clone();
    b = b.on_event(
        interaction_manager_names::TOUCH,
        move |_ctx, ev: TouchEvent| {
            r.push(format!("touch {},{} {}", ev.x, ev.y, ev.element));
            async {}
        },
    );
    Ok((b, received))
}

/// A running server: its handle, recorder, and task. Call inside a tokio runtime.
#[derive(Debug)]
pub struct Running {
    /// Pushes and shutdown.
    pub handle: ServerHandle,
    /// What it received.
    pub received: Received,
    /// The socket.
    pub path: PathBuf,
    task: tokio::task::JoinHandle<Result<(), peerwire_server::ServerError>>,
}

impl Running {
    /// Binds and serves.
    pub fn start(path: &Path, identity: Option<&Path>) -> anyhow::Result<Self> {
        let (b, received) = display_server(path, identity)?;
        Self::serve(b, received, path)
    }

    /// Binds `builder` and serves.
    pub fn serve(builder: ServerBuilder, received: Received, path: &Path) -> anyhow::Result<Self> {
        let server = builder.bind()?;
        let handle = server.handle();
        let task = tokio::spawn(server.run());
        Ok(Self {
            handle,
            received,
            path: path.to_owned(),
            task,
        })
    }

    /// Shuts down and waits for the server to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.handle.shutdown();
        self.task.await??;
        Ok(())
    }
}
