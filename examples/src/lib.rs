//! # peerwire-examples: an example display protocol over peerwire
//!
//! `proto/display/v1/display.proto` models the namespaces of a smart-screen SDK's IPC: session
//! setup, system (assistant) state, template rendering, window management and interaction.
//! [`display_server`] is the SDK side: it answers requests and pushes directives (assistant
//! state, a sign-in code, templates). [`run_display_client`] is the renderer side: it
//! initialises, subscribes, sends input events and prints what it would draw.
//!
//! The binaries `display-server` and `display-client` run them as two processes; `peerwire demo`
//! runs both end to end:
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("display.sock");
//! let server = peerwire_examples::display_server(&path, |line| println!("[server] {line}")).bind()?;
//! let handle = server.handle();
//! let serving = tokio::spawn(server.run());
//! let transcript =
//!     peerwire_examples::run_display_client(&path, None, |line| println!("[client] {line}")).await?;
//! assert!(transcript.iter().any(|l| l.contains("sign-in")));
//! handle.shutdown();
//! serving.await??;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use peerwire_client::{Client, ClientTls, EventMessage, TlsMode};
use peerwire_server::{Server, ServerBuilder, Status};

/// Logs to stderr (never mixed with a program's output), filtered by `RUST_LOG`, else `default`
/// (for example `"warn"`). Shared by the example binaries and the `peerwire` command.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Generated types of `proto/display/v1/display.proto`.
#[allow(missing_docs, clippy::all)]
pub mod display {
    include!(concat!(env!("OUT_DIR"), "/display.v1.rs"));
}

use display::{
    AlexaState, AuthorizationCode, ClearTemplate, ClientInitialized, GetStateRequest,
    InitializeRequest, InitializeResponse, KeyCode, KeyEvent, RenderTemplate, State, SystemState,
    TouchEvent, Window, WindowAck, WindowReport,
};

/// The namespaces of the display protocol, all at version 1.
pub const NAMESPACES: &[&str] = &[
    "session_setup",
    "system",
    "template_runtime",
    "window_manager",
    "interaction_manager",
];

/// Topics the server pushes on.
pub const TOPICS: &[&str] = &[
    TOPIC_ALEXA_STATE,
    TOPIC_AUTHORIZATION,
    TOPIC_RENDER,
    TOPIC_CLEAR,
];
const TOPIC_ALEXA_STATE: &str = "system.SetAlexaState";
const TOPIC_AUTHORIZATION: &str = "system.CompleteAuthorization";
const TOPIC_RENDER: &str = "template_runtime.RenderTemplate";
const TOPIC_CLEAR: &str = "template_runtime.ClearTemplate";

#[derive(Default)]
struct DisplayState {
    state: i32,
    authorized: bool,
    template: String,
}

type Log = Arc<dyn Fn(String) + Send + Sync>;

fn state_name(state: i32) -> &'static str {
    State::try_from(state).map_or("UNKNOWN", |s| {
        s.as_str_name().strip_prefix("STATE_").unwrap_or("UNKNOWN")
    })
}

/// The SDK side: a server builder with the display protocol's handlers registered. `log`
/// receives one line per thing the server does.
pub fn display_server(path: &Path, log: impl Fn(String) + Send + Sync + 'static) -> ServerBuilder {
    let log: Log = Arc::new(log);
    let state = Arc::new(Mutex::new(DisplayState::default()));
    let inputs = Arc::new(AtomicU32::new(0));
    let mut builder = Server::builder(path);
    builder.name("display-server");
    for ns in NAMESPACES {
        builder.namespace(ns, &[1]);
    }

    let l = log.clone();
    builder.method(
        "session_setup.Initialize",
        move |ctx, req: InitializeRequest| {
            l(format!(
                "Initialize from {} ({}): {}x{} renderer {:?}",
                ctx.connection().client_name(),
                ctx.connection().peer(),
                req.width,
                req.height,
                req.renderer
            ));
            async move {
                Ok::<_, Status>(InitializeResponse {
                    assistant_name: "Alexa".into(),
                    locale: "en-US".into(),
                    topics: TOPICS.iter().map(|t| (*t).to_owned()).collect(),
                })
            }
        },
    );

    let (l, s) = (log.clone(), state.clone());
    builder.on_event(
        "session_setup.ClientInitialized",
        move |ctx, ev: ClientInitialized| {
            l(format!(
                "client initialized (renderer {}); asking the user to sign in",
                ev.renderer_version
            ));
            let s = s.clone();
            async move {
                let code = AuthorizationCode {
                    url: "https://amazon.com/us/code".into(),
                    code: "PW7Q2X".into(),
                };
                let push = |topic: &str,
                            msg: &dyn Fn(
                    &peerwire_server::ServerHandle,
                )
                    -> Result<(), peerwire_server::PushError>| {
                    if let Err(e) = msg(ctx.server()) {
                        tracing::warn!(topic, "push failed: {e}");
                    }
                };
                push(TOPIC_AUTHORIZATION, &|h| {
                    h.send_event(ctx.id(), TOPIC_AUTHORIZATION, &code)
                });
                // The user completes the sign-in on their phone; the assistant becomes idle.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(mut st) = s.lock() {
                    st.authorized = true;
                    st.state = State::Idle as i32;
                }
                push(TOPIC_ALEXA_STATE, &|h| {
                    h.broadcast(
                        TOPIC_ALEXA_STATE,
                        &AlexaState {
                            state: State::Idle as i32,
                        },
                    )
                    .map(|_| ())
                });
            }
        },
    );

    let (l, s, n) = (log.clone(), state.clone(), inputs.clone());
    builder.on_event("interaction_manager.Key", move |ctx, ev: KeyEvent| {
        n.fetch_add(1, Ordering::Relaxed);
        let (l, s) = (l.clone(), s.clone());
        async move {
            if ev.key != KeyCode::Talk as i32 || !ev.pressed {
                return;
            }
            l("talk button pressed: running an interaction".into());
            let handle = ctx.server().clone();
            let set = |state: State| {
                if let Ok(mut st) = s.lock() {
                    st.state = state as i32;
                }
                let _ = handle.broadcast(
                    TOPIC_ALEXA_STATE,
                    &AlexaState {
                        state: state as i32,
                    },
                );
            };
            set(State::Listening);
            tokio::time::sleep(Duration::from_millis(10)).await;
            set(State::Thinking);
            let template = RenderTemplate {
                template_type: "WeatherTemplate".into(),
                token: "weather-1".into(),
                title: "Seattle".into(),
                fields: [("temperature", "12°C"), ("condition", "Cloudy")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            };
            if let Ok(mut st) = s.lock() {
                st.template = template.token.clone();
            }
            let _ = handle.broadcast(TOPIC_RENDER, &template);
            set(State::Speaking);
            tokio::time::sleep(Duration::from_millis(10)).await;
            set(State::Idle);
        }
    });

    let (l, s, n) = (log.clone(), state.clone(), inputs.clone());
    builder.on_event("interaction_manager.Touch", move |ctx, ev: TouchEvent| {
        n.fetch_add(1, Ordering::Relaxed);
        l(format!("touch at ({}, {}) on {:?}", ev.x, ev.y, ev.element));
        let s = s.clone();
        async move {
            if ev.element == "dismiss" {
                let token = s
                    .lock()
                    .map(|mut st| std::mem::take(&mut st.template))
                    .unwrap_or_default();
                let _ = ctx
                    .server()
                    .broadcast(TOPIC_CLEAR, &ClearTemplate { token });
            }
        }
    });

    let (s, n) = (state.clone(), inputs.clone());
    builder.method("system.GetState", move |_ctx, _req: GetStateRequest| {
        let reply = s
            .lock()
            .map(|st| SystemState {
                state: st.state,
                authorized: st.authorized,
                locale: "en-US".into(),
                input_events: n.load(Ordering::Relaxed),
                current_template: st.template.clone(),
            })
            .map_err(|_| ());
        async move { reply.map_err(|_| Status::internal("state unavailable")) }
    });

    let l = log;
    builder.method(
        "window_manager.SetVisibleWindows",
        move |_ctx, req: WindowReport| {
            l(format!("renderer reports {} window(s)", req.windows.len()));
            async move {
                Ok::<_, Status>(WindowAck {
                    accepted: req.windows.len() as u32,
                })
            }
        },
    );
    builder
}

/// How long the client waits for any one step before giving up (never hangs).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The renderer side: connects, initialises, subscribes, reacts to pushes with input events,
/// prints what it would draw, and returns the transcript once the scripted session is over.
///
/// `tls`: the client's TLS context (for example `ClientTls::from_dir(identity, TlsMode::Mutual)`),
/// or `None` for a plain socket.
pub async fn run_display_client(
    path: &Path,
    tls: Option<ClientTls>,
    out: impl Fn(&str),
) -> anyhow::Result<Vec<String>> {
    let mut transcript = Vec::new();
    let mut say = |line: String| {
        out(&line);
        transcript.push(line);
    };
    let mut builder = Client::builder(path).name("display-client");
    let mode = tls.as_ref().map_or(TlsMode::Off, ClientTls::mode);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    for ns in NAMESPACES {
        builder = builder.require_namespace(ns, &[1]);
    }
    let client = builder
        .connect()
        .await
        .context("connecting to the display server")?;
    let session = client.session().context("no session")?;
    say(format!(
        "connected over TLS {mode}: protocol v{}, session {}, server {}",
        session.protocol_version,
        session.session_id,
        client
            .server_credentials()
            .map(|c| c.to_string())
            .unwrap_or_default()
    ));
    let init: InitializeResponse = client
        .call(
            "session_setup.Initialize",
            &InitializeRequest {
                renderer: "opengl-es".into(),
                width: 1280,
                height: 800,
                supported_templates: vec!["WeatherTemplate".into()],
            },
        )
        .await?;
    say(format!(
        "initialized: assistant {} ({})",
        init.assistant_name, init.locale
    ));
    let topics: Vec<&str> = init.topics.iter().map(String::as_str).collect();
    let mut events = client.subscribe_many(&topics).await?;
    say(format!("subscribed to {}", topics.join(", ")));
    let ack: WindowAck = client
        .call(
            "window_manager.SetVisibleWindows",
            &WindowReport {
                windows: vec![Window {
                    id: "main".into(),
                    width: 1280,
                    height: 800,
                }],
            },
        )
        .await?;
    say(format!(
        "window manager accepted {} window(s)",
        ack.accepted
    ));
    client
        .notify(
            "session_setup.ClientInitialized",
            &ClientInitialized {
                renderer_version: "1.0".into(),
            },
        )
        .await?;

    let mut talked = false;
    let mut rendered = false;
    loop {
        let Some(ev) = tokio::time::timeout(STEP_TIMEOUT, events.next())
            .await
            .context("no event from the server in time")?
        else {
            bail!("the server closed the session");
        };
        match draw(&ev)? {
            Drawn::Line(line) => say(line),
            Drawn::State(line, state) => {
                say(line);
                if state == State::Idle && !talked {
                    talked = true;
                    say("user presses the talk button".into());
                    client
                        .notify(
                            "interaction_manager.Key",
                            &KeyEvent {
                                key: KeyCode::Talk as i32,
                                pressed: true,
                            },
                        )
                        .await?;
                } else if state == State::Idle && rendered {
                    say("user taps \"dismiss\"".into());
                    client
                        .notify(
                            "interaction_manager.Touch",
                            &TouchEvent {
                                x: 1200,
                                y: 40,
                                element: "dismiss".into(),
                            },
                        )
                        .await?;
                }
            }
            Drawn::Template(line) => {
                rendered = true;
                say(line);
            }
            Drawn::Cleared(line) => {
                say(line);
                break;
            }
        }
    }
    let state: SystemState = client.call("system.GetState", &GetStateRequest {}).await?;
    say(format!(
        "GetState: assistant {}, authorized {}, {} input event(s) received, template {:?}",
        state_name(state.state),
        state.authorized,
        state.input_events,
        state.current_template
    ));
    client.close().await;
    say("closed".into());
    Ok(transcript)
}

enum Drawn {
    Line(String),
    State(String, State),
    Template(String),
    Cleared(String),
}

fn draw(ev: &EventMessage) -> anyhow::Result<Drawn> {
    Ok(match ev.topic.as_str() {
        TOPIC_ALEXA_STATE => {
            let s: AlexaState = ev.decode()?;
            let state = State::try_from(s.state).unwrap_or(State::Unknown);
            Drawn::State(
                format!(
                    "draw: attention bar {} (event #{})",
                    state_name(s.state),
                    ev.seq
                ),
                state,
            )
        }
        TOPIC_AUTHORIZATION => {
            let c: AuthorizationCode = ev.decode()?;
            Drawn::Line(format!(
                "draw: sign-in screen: visit {} and enter {}",
                c.url, c.code
            ))
        }
        TOPIC_RENDER => {
            let t: RenderTemplate = ev.decode()?;
            let mut fields: Vec<_> = t.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            fields.sort();
            Drawn::Template(format!(
                "draw: {} \"{}\" [{}]",
                t.template_type,
                t.title,
                fields.join(", ")
            ))
        }
        TOPIC_CLEAR => {
            let c: ClearTemplate = ev.decode()?;
            Drawn::Cleared(format!("draw: clear template {}", c.token))
        }
        other => Drawn::Line(format!("ignored event on {other}")),
    })
}
