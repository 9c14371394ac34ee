//! What the screen shows, as data: the display protocol's pushes decoded and checked into
//! [`Update`]s on the client's tasks, applied to a [`Scene`] on the render thread.
//!
//! Nothing here panics on what a server sends: a payload that does not decode, a template that
//! is unknown or malformed, a text over its limit or an unknown assistant state becomes a
//! [`Content::Placeholder`] (or the error indicator) with the reason, and a warning in the log.

use peerwire_client::EventMessage;
use peerwire_examples::display::{
    AlexaState, AuthorizationCode, ClearTemplate, RenderTemplate, State, system_names,
    template_runtime_names,
};

/// Topic of the assistant's attention state.
pub const TOPIC_STATE: &str = system_names::SET_ALEXA_STATE;
/// Topic of the sign-in code.
pub const TOPIC_AUTHORIZATION: &str = system_names::COMPLETE_AUTHORIZATION;
/// Topic of template rendering.
pub const TOPIC_RENDER: &str = template_runtime_names::RENDER_TEMPLATE;
/// Topic of template clearing.
pub const TOPIC_CLEAR: &str = template_runtime_names::CLEAR_TEMPLATE;

/// Longest title or list item, in characters.
pub const MAX_TITLE_CHARS: usize = 120;
/// Longest subtitle, in characters.
pub const MAX_SUBTITLE_CHARS: usize = 200;
/// Longest body text, in characters.
pub const MAX_BODY_CHARS: usize = 1200;
/// Most items of a list card.
pub const MAX_LIST_ITEMS: usize = 12;
/// Longest sign-in URL or code, in characters.
pub const MAX_CODE_CHARS: usize = 64;

/// The assistant's attention state, drawn as an animated indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Waiting for the user.
    Idle,
    /// Capturing speech.
    Listening,
    /// Working on a request.
    Thinking,
    /// Answering.
    Speaking,
    /// Something is wrong: the server sent a state this renderer does not know (the value).
    Error(i32),
}

impl Attention {
    /// The state of a `SetAlexaState` value; unknown values (and `STATE_UNKNOWN`) are errors.
    pub fn from_wire(value: i32) -> Self {
        match State::try_from(value) {
            Ok(State::Idle) => Self::Idle,
            Ok(State::Listening) => Self::Listening,
            Ok(State::Thinking) => Self::Thinking,
            Ok(State::Speaking) => Self::Speaking,
            Ok(State::Unknown) | Err(_) => Self::Error(value),
        }
    }

    /// A short name, for labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Listening => "listening",
            Self::Thinking => "thinking",
            Self::Speaking => "speaking",
            Self::Error(_) => "error",
        }
    }
}

/// A template the renderer knows how to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// `TitleTemplate`: a title and an optional subtitle (`fields.subtitle`).
    Title {
        /// The title.
        title: String,
        /// The subtitle (may be empty).
        subtitle: String,
    },
    /// `BodyTemplate` (and `WeatherTemplate`): title, subtitle and wrapped body text.
    Body {
        /// The title.
        title: String,
        /// The subtitle (may be empty).
        subtitle: String,
        /// The body text.
        body: String,
    },
    /// `ListTemplate`: a title and items `fields["item.0"]`, `fields["item.1"]`, ...
    List {
        /// The title.
        title: String,
        /// The items, in index order.
        items: Vec<String>,
    },
}

/// The main area of the screen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Content {
    /// The home screen.
    #[default]
    Home,
    /// The sign-in code screen.
    SignIn {
        /// Where to enter the code.
        url: String,
        /// The code.
        code: String,
    },
    /// A rendered template and its token.
    Template {
        /// The server's token (for `ClearTemplate`).
        token: String,
        /// What to draw.
        template: Template,
    },
    /// Something could not be shown: the reason, drawn in a clearly marked box.
    Placeholder {
        /// Why.
        reason: String,
    },
}

/// The connection as the screen shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Link {
    /// Before the first session.
    #[default]
    Connecting,
    /// A session is up.
    Connected {
        /// The assistant's name from `Initialize`.
        assistant: String,
    },
    /// The connection was lost; the client is reconnecting.
    Reconnecting,
}

/// A change for the render thread, made on the client's tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new attention state.
    Attention(Attention),
    /// New content for the main area.
    Content(Content),
    /// Clear the template with this token (empty: whatever is shown).
    Clear(String),
    /// The connection changed.
    Link(Link),
}

/// What the screen shows. `version` counts changes; `changed_at` is the render clock's time of
/// the last one (animations restart there, so a state's first frame is the same on every run).
#[derive(Debug, Clone, Default)]
pub struct Scene {
    /// The attention state (`None` until the server sends one).
    pub attention: Option<Attention>,
    /// The main area.
    pub content: Content,
    /// The connection.
    pub link: Link,
    /// The assistant's name from the last session setup (kept while reconnecting).
    pub assistant: String,
    /// Number of updates applied.
    pub version: u64,
    /// Render-clock seconds of the last change.
    pub changed_at: f64,
}

impl Scene {
    /// Applies one update at render-clock time `now`; returns whether anything changed.
    pub fn apply(&mut self, update: Update, now: f64) -> bool {
        let changed = match update {
            Update::Attention(a) => replace(&mut self.attention, Some(a)),
            Update::Content(c) => replace(&mut self.content, c),
            Update::Clear(token) => {
                let matches = match &self.content {
                    Content::Template { token: shown, .. } => token.is_empty() || *shown == token,
                    Content::Placeholder { .. } => true,
                    Content::Home | Content::SignIn { .. } => false,
                };
                matches && replace(&mut self.content, Content::Home)
            }
            Update::Link(l) => {
                if let Link::Connected { assistant } = &l {
                    self.assistant.clone_from(assistant);
                }
                replace(&mut self.link, l)
            }
        };
        if changed {
            self.version = self.version.wrapping_add(1);
            self.changed_at = now;
        }
        changed
    }

    /// A one-line description of what is shown, stable across runs: printed with each written
    /// frame and matched by the input script's `wait`.
    pub fn label(&self) -> String {
        let link = match &self.link {
            Link::Connecting => "connecting",
            Link::Connected { .. } => "connected",
            Link::Reconnecting => "reconnecting",
        };
        let attention = match self.attention {
            None => "none".to_owned(),
            Some(Attention::Error(v)) => format!("error({v})"),
            Some(a) => a.name().to_owned(),
        };
        let content = match &self.content {
            Content::Home => "home".to_owned(),
            Content::SignIn { code, .. } => format!("signin:{code}"),
            Content::Template { template, .. } => match template {
                Template::Title { title, .. } => format!("title:{title}"),
                Template::Body { title, .. } => format!("body:{title}"),
                Template::List { title, .. } => format!("list:{title}"),
            },
            Content::Placeholder { .. } => "placeholder".to_owned(),
        };
        format!("link={link} attention={attention} content={content}")
    }
}

fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

/// Decodes and checks one pushed event. Never fails: what cannot be shown becomes a
/// placeholder (or the error indicator) and is logged.
pub fn decode(event: &EventMessage) -> Update {
    let update = match event.topic.as_str() {
        TOPIC_STATE => event
            .decode::<AlexaState>()
            .map(|s| Update::Attention(Attention::from_wire(s.state)))
            .map_err(|e| format!("undecodable assistant state: {e}")),
        TOPIC_AUTHORIZATION => event
            .decode::<AuthorizationCode>()
            .map_err(|e| format!("undecodable sign-in code: {e}"))
            .and_then(sign_in),
        TOPIC_RENDER => event
            .decode::<RenderTemplate>()
            .map_err(|e| format!("undecodable template: {e}"))
            .and_then(|t| {
                let token = t.token.clone();
                template(t).map(|template| Update::Content(Content::Template { token, template }))
            }),
        TOPIC_CLEAR => event
            .decode::<ClearTemplate>()
            .map(|c| Update::Clear(c.token))
            .map_err(|e| format!("undecodable clear: {e}")),
        other => Err(format!("event on unexpected topic {other:?}")),
    };
    match update {
        Ok(Update::Attention(Attention::Error(v))) => {
            tracing::warn!(topic = %event.topic, seq = event.seq, "unknown assistant state {v}: showing the error indicator");
            Update::Attention(Attention::Error(v))
        }
        Ok(u) => u,
        Err(reason) => {
            tracing::warn!(topic = %event.topic, seq = event.seq, "showing a placeholder: {reason}");
            Update::Content(Content::Placeholder { reason })
        }
    }
}

fn sign_in(c: AuthorizationCode) -> Result<Update, String> {
    if c.code.is_empty() {
        return Err("sign-in code is empty".into());
    }
    check_len("sign-in url", &c.url, MAX_CODE_CHARS)?;
    check_len("sign-in code", &c.code, MAX_CODE_CHARS)?;
    Ok(Update::Content(Content::SignIn {
        url: c.url,
        code: c.code,
    }))
}

fn check_len(what: &str, text: &str, max: usize) -> Result<(), String> {
    let n = text.chars().count();
    if n > max {
        return Err(format!("{what} too long: {n} characters, at most {max}"));
    }
    Ok(())
}

fn field(t: &RenderTemplate, key: &str) -> String {
    t.fields.get(key).cloned().unwrap_or_default()
}

/// Checks a `RenderTemplate` into a [`Template`], or says why it cannot be shown.
pub fn template(t: RenderTemplate) -> Result<Template, String> {
    if t.title.trim().is_empty() {
        return Err(format!("{} without a title", t.template_type));
    }
    check_len("title", &t.title, MAX_TITLE_CHARS)?;
    let subtitle = field(&t, "subtitle");
    check_len("subtitle", &subtitle, MAX_SUBTITLE_CHARS)?;
    match t.template_type.as_str() {
        "TitleTemplate" => Ok(Template::Title {
            title: t.title,
            subtitle,
        }),
        "BodyTemplate" => {
            let body = field(&t, "body");
            if body.trim().is_empty() {
                return Err("BodyTemplate without a body".into());
            }
            check_len("body", &body, MAX_BODY_CHARS)?;
            Ok(Template::Body {
                title: t.title,
                subtitle,
                body,
            })
        }
        // The example display server's card: the condition as subtitle, the temperature big.
        "WeatherTemplate" => {
            let (temperature, condition) = (field(&t, "temperature"), field(&t, "condition"));
            if temperature.is_empty() {
                return Err("WeatherTemplate without a temperature".into());
            }
            check_len("temperature", &temperature, MAX_TITLE_CHARS)?;
            check_len("condition", &condition, MAX_SUBTITLE_CHARS)?;
            Ok(Template::Body {
                title: t.title,
                subtitle: condition,
                body: temperature,
            })
        }
        "ListTemplate" => {
            let mut items = vec![];
            for (key, n) in t
                .fields
                .keys()
                .filter_map(|k| k.strip_prefix("item.").map(|n| (k, n)))
            {
                let index: usize = n
                    .parse()
                    .map_err(|_| format!("ListTemplate field {key:?} is not item.<index>"))?;
                if index >= MAX_LIST_ITEMS {
                    return Err(format!(
                        "ListTemplate has item {index}: at most {MAX_LIST_ITEMS} items"
                    ));
                }
                items.push(index);
            }
            items.sort_unstable();
            if items.is_empty() {
                return Err("ListTemplate without items".into());
            }
            if items.iter().enumerate().any(|(i, &n)| i != n) {
                return Err("ListTemplate items are not numbered 0, 1, 2, ...".into());
            }
            let mut texts = Vec::with_capacity(items.len());
            for i in items {
                let text = field(&t, &format!("item.{i}"));
                check_len("list item", &text, MAX_TITLE_CHARS)?;
                texts.push(text);
            }
            Ok(Template::List {
                title: t.title,
                items: texts,
            })
        }
        other => Err(format!("unknown template type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    fn event(topic: &str, msg: &impl Message) -> EventMessage {
        EventMessage {
            topic: topic.into(),
            seq: 1,
            payload: msg.encode_to_vec().into(),
        }
    }

    fn render(kind: &str, title: &str, fields: &[(&str, &str)]) -> EventMessage {
        event(
            TOPIC_RENDER,
            &RenderTemplate {
                template_type: kind.into(),
                token: "t".into(),
                title: title.into(),
                fields: fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
        )
    }

    fn placeholder(u: &Update) -> Option<&str> {
        match u {
            Update::Content(Content::Placeholder { reason }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn list_items_come_in_index_order() {
        let u = decode(&render(
            "ListTemplate",
            "Groceries",
            &[("item.1", "b"), ("item.0", "a"), ("item.2", "c")],
        ));
        let Update::Content(Content::Template { template, .. }) = u else {
            panic!("{u:?}")
        };
        assert_eq!(
            template,
            Template::List {
                title: "Groceries".into(),
                items: vec!["a".into(), "b".into(), "c".into()]
            }
        );
    }

    #[test]
    fn bad_input_becomes_a_placeholder_with_the_reason() {
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        for (ev, why) in [
            (render("Carousel", "t", &[]), "unknown template type"),
            (render("BodyTemplate", "t", &[]), "without a body"),
            (
                render("BodyTemplate", "t", &[("body", &long)]),
                "body too long",
            ),
            (
                render("ListTemplate", "t", &[("item.1", "a")]),
                "not numbered",
            ),
            (
                render("ListTemplate", "t", &[("item.x", "a")]),
                "is not item.<index>",
            ),
            (render("ListTemplate", "t", &[("item.99", "a")]), "at most"),
            (render("TitleTemplate", " ", &[]), "without a title"),
            (
                EventMessage {
                    topic: TOPIC_RENDER.into(),
                    seq: 1,
                    payload: vec![0xff, 0xff, 0xff].into(),
                },
                "undecodable template",
            ),
        ] {
            let u = decode(&ev);
            assert!(placeholder(&u).unwrap().contains(why), "{u:?} for {why}");
        }
    }

    #[test]
    fn unknown_states_are_errors() {
        for v in [0, 5, 99, -1] {
            let u = decode(&event(TOPIC_STATE, &AlexaState { state: v }));
            assert_eq!(u, Update::Attention(Attention::Error(v)));
        }
        let u = decode(&event(TOPIC_STATE, &AlexaState { state: 3 }));
        assert_eq!(u, Update::Attention(Attention::Thinking));
    }

    #[test]
    fn clear_removes_only_the_matching_template() {
        let mut s = Scene::default();
        let t = Content::Template {
            token: "a".into(),
            template: Template::Title {
                title: "x".into(),
                subtitle: String::new(),
            },
        };
        assert!(s.apply(Update::Content(t.clone()), 1.0));
        assert!(!s.apply(Update::Clear("b".into()), 2.0));
        assert_eq!(s.content, t);
        assert!(s.apply(Update::Clear("a".into()), 3.0));
        assert_eq!(
            (s.content.clone(), s.version, s.changed_at),
            (Content::Home, 2, 3.0)
        );
    }
}
