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
use peerwire_client::{Client, ClientTls, EventMessage, Pushed, TlsMode};
use peerwire_server::{ConnectionContext, RequestContext, Server, ServerBuilder, Status};

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

/// Generated from `proto/display/v1/display.proto` by peerwire-build: the messages, and per
/// service (one per namespace) a server trait, its `add_*` registration, a publisher for its
/// topics and a typed client.
#[allow(missing_docs, clippy::all)]
pub mod display {
    include!(concat!(env!("OUT_DIR"), "/display.v1.rs"));
}

/// Generated from `proto/echo/v1/echo.proto`: the reference service of `peerwire serve`
/// (namespace `echo`, version 1), called by `peerwire ping`.
#[allow(missing_docs, clippy::all)]
pub mod echo {
    include!(concat!(env!("OUT_DIR"), "/echo.v1.rs"));
}

use display::{
    AlexaState, AuthorizationCode, ClearTemplate, ClientInitialized, GetStateRequest,
    InitializeRequest, InitializeResponse, InteractionManager, InteractionManagerClient, KeyCode,
    KeyEvent, RenderTemplate, SessionSetup, SessionSetupClient, State, System, SystemClient,
    SystemEvent, SystemPublisher, SystemState, TemplateRuntime, TemplateRuntimeClient,
    TemplateRuntimeEvent, TemplateRuntimePublisher, TouchEvent, Window, WindowAck, WindowManager,
    WindowManagerClient, WindowReport,
};

/// The namespaces of the display protocol, all at version 1 (from the .proto).
pub const NAMESPACES: &[&str] = &[
    display::SESSION_SETUP_NAMESPACE,
    display::SYSTEM_NAMESPACE,
    display::TEMPLATE_RUNTIME_NAMESPACE,
    display::WINDOW_MANAGER_NAMESPACE,
    display::INTERACTION_MANAGER_NAMESPACE,
];

/// Topics the server pushes on.
pub fn topics() -> Vec<&'static str> {
    [SystemEvent::TOPICS, TemplateRuntimeEvent::TOPICS].concat()
}

#[derive(Default)]
struct DisplayState {
    state: i32,
    authorized: bool,
    template: String,
}

type Log = Box<dyn Fn(String) + Send + Sync>;

fn state_name(state: i32) -> &'static str {
    State::try_from(state).map_or("UNKNOWN", |s| {
        s.as_str_name().strip_prefix("STATE_").unwrap_or("UNKNOWN")
    })
}

/// The SDK side's state: one value implementing every service of the display protocol.
struct Display {
    log: Log,
    state: Mutex<DisplayState>,
    inputs: AtomicU32,
}

impl Display {
    fn set_state(&self, publisher: &SystemPublisher, state: State) {
        if let Ok(mut st) = self.state.lock() {
            st.state = state as i32;
        }
        let _ = publisher.set_alexa_state(&AlexaState {
            state: state as i32,
        });
    }
}

impl SessionSetup for Display {
    async fn initialize(
        &self,
        ctx: RequestContext,
        req: InitializeRequest,
    ) -> Result<InitializeResponse, Status> {
        (self.log)(format!(
            "Initialize from {} ({}): {}x{} renderer {:?}",
            ctx.connection().client_name(),
            ctx.connection().peer(),
            req.width,
            req.height,
            req.renderer
        ));
        Ok(InitializeResponse {
            assistant_name: "Alexa".into(),
            locale: "en-US".into(),
            topics: topics().into_iter().map(str::to_owned).collect(),
        })
    }

    async fn client_initialized(&self, ctx: ConnectionContext, ev: ClientInitialized) {
        (self.log)(format!(
            "client initialized (renderer {}); asking the user to sign in",
            ev.renderer_version
        ));
        let publisher = SystemPublisher::new(ctx.server().clone());
        let code = AuthorizationCode {
            url: "https://amazon.com/us/code".into(),
            code: "PW7Q2X".into(),
        };
        if let Err(e) = publisher.complete_authorization_to(ctx.id(), &code) {
            tracing::warn!("push of the sign-in code failed: {e}");
        }
        // The user completes the sign-in on their phone; the assistant becomes idle.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(mut st) = self.state.lock() {
            st.authorized = true;
        }
        self.set_state(&publisher, State::Idle);
    }
}

impl System for Display {
    async fn get_state(
        &self,
        _ctx: RequestContext,
        _req: GetStateRequest,
    ) -> Result<SystemState, Status> {
        let st = self
            .state
            .lock()
            .map_err(|_| Status::internal("state unavailable"))?;
        Ok(SystemState {
            state: st.state,
            authorized: st.authorized,
            locale: "en-US".into(),
            input_events: self.inputs.load(Ordering::Relaxed),
            current_template: st.template.clone(),
        })
    }
}

impl TemplateRuntime for Display {}

impl WindowManager for Display {
    async fn set_visible_windows(
        &self,
        _ctx: RequestContext,
        req: WindowReport,
    ) -> Result<WindowAck, Status> {
        (self.log)(format!("renderer reports {} window(s)", req.windows.len()));
        Ok(WindowAck {
            accepted: req.windows.len() as u32,
        })
    }
}

impl InteractionManager for Display {
    async fn key(&self, ctx: ConnectionContext, ev: KeyEvent) {
        self.inputs.fetch_add(1, Ordering::Relaxed);
        if ev.key != KeyCode::Talk as i32 || !ev.pressed {
            return;
        }
        (self.log)("talk button pressed: running an interaction".into());
        let system = SystemPublisher::new(ctx.server().clone());
        self.set_state(&system, State::Listening);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.set_state(&system, State::Thinking);
        let template = RenderTemplate {
            template_type: "WeatherTemplate".into(),
            token: "weather-1".into(),
            title: "Seattle".into(),
            fields: [("temperature", "12°C"), ("condition", "Cloudy")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        if let Ok(mut st) = self.state.lock() {
            st.template = template.token.clone();
        }
        let _ = TemplateRuntimePublisher::new(ctx.server().clone()).render_template(&template);
        self.set_state(&system, State::Speaking);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.set_state(&system, State::Idle);
    }

    async fn touch(&self, ctx: ConnectionContext, ev: TouchEvent) {
        self.inputs.fetch_add(1, Ordering::Relaxed);
        (self.log)(format!("touch at ({}, {}) on {:?}", ev.x, ev.y, ev.element));
        if ev.element == "dismiss" {
            let token = self
                .state
                .lock()
                .map(|mut st| std::mem::take(&mut st.template))
                .unwrap_or_default();
            let _ = TemplateRuntimePublisher::new(ctx.server().clone())
                .clear_template(&ClearTemplate { token });
        }
    }
}

/// The SDK side: a server builder with the display protocol's services registered. `log`
/// receives one line per thing the server does.
pub fn display_server(path: &Path, log: impl Fn(String) + Send + Sync + 'static) -> ServerBuilder {
    let service = Arc::new(Display {
        log: Box::new(log),
        state: Mutex::new(DisplayState::default()),
        inputs: AtomicU32::new(0),
    });
    let mut builder = Server::builder(path);
    builder = builder.name("display-server");
    builder = display::add_session_setup(builder, service.clone());
    builder = display::add_system(builder, service.clone());
    builder = display::add_template_runtime(builder, service.clone());
    builder = display::add_window_manager(builder, service.clone());
    builder = display::add_interaction_manager(builder, service);
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
    builder = SessionSetupClient::announce(builder);
    builder = SystemClient::announce(builder);
    builder = TemplateRuntimeClient::announce(builder);
    builder = WindowManagerClient::announce(builder);
    builder = InteractionManagerClient::announce(builder);
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
    let setup = SessionSetupClient::new(client.clone())?;
    let system = SystemClient::new(client.clone())?;
    let windows = WindowManagerClient::new(client.clone())?;
    let input = InteractionManagerClient::new(client.clone())?;
    TemplateRuntimeClient::new(client.clone())?;
    let init = setup
        .initialize(&InitializeRequest {
            renderer: "opengl-es".into(),
            width: 1280,
            height: 800,
            supported_templates: vec!["WeatherTemplate".into()],
        })
        .await?;
    say(format!(
        "initialized: assistant {} ({})",
        init.assistant_name, init.locale
    ));
    // One stream for both services' topics keeps their events in the order the server sent
    // them (a state change, then the template it goes with).
    let topics = topics();
    let mut events = client.subscribe_typed(&topics, directive).await?;
    say(format!("subscribed to {}", topics.join(", ")));
    let ack = windows
        .set_visible_windows(&WindowReport {
            windows: vec![Window {
                id: "main".into(),
                width: 1280,
                height: 800,
            }],
        })
        .await?;
    say(format!(
        "window manager accepted {} window(s)",
        ack.accepted
    ));
    setup
        .client_initialized(&ClientInitialized {
            renderer_version: "1.0".into(),
        })
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
        match draw(ev?) {
            Drawn::Line(line) => say(line),
            Drawn::State(line, state) => {
                say(line);
                if state == State::Idle && !talked {
                    talked = true;
                    say("user presses the talk button".into());
                    input
                        .key(&KeyEvent {
                            key: KeyCode::Talk as i32,
                            pressed: true,
                        })
                        .await?;
                } else if state == State::Idle && rendered {
                    say("user taps \"dismiss\"".into());
                    input
                        .touch(&TouchEvent {
                            x: 1200,
                            y: 40,
                            element: "dismiss".into(),
                        })
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
    let state = system.get_state(&GetStateRequest {}).await?;
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

/// A directive from either service the renderer subscribes to.
enum Directive {
    System(SystemEvent),
    Template(TemplateRuntimeEvent),
}

fn directive(ev: &EventMessage) -> Option<Result<Directive, prost::DecodeError>> {
    SystemEvent::decode(ev)
        .map(|r| r.map(Directive::System))
        .or_else(|| TemplateRuntimeEvent::decode(ev).map(|r| r.map(Directive::Template)))
}

enum Drawn {
    Line(String),
    State(String, State),
    Template(String),
    Cleared(String),
}

fn draw(ev: Pushed<Directive>) -> Drawn {
    match ev.event {
        Directive::System(SystemEvent::SetAlexaState(s)) => {
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
        Directive::System(SystemEvent::CompleteAuthorization(c)) => Drawn::Line(format!(
            "draw: sign-in screen: visit {} and enter {}",
            c.url, c.code
        )),
        Directive::Template(TemplateRuntimeEvent::RenderTemplate(t)) => {
            let mut fields: Vec<_> = t.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            fields.sort();
            Drawn::Template(format!(
                "draw: {} \"{}\" [{}]",
                t.template_type,
                t.title,
                fields.join(", ")
            ))
        }
        Directive::Template(TemplateRuntimeEvent::ClearTemplate(c)) => {
            Drawn::Cleared(format!("draw: clear template {}", c.token))
        }
    }
}
