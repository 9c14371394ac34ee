//! The Rust text generated for each service, appended by prost-build after the messages.

use std::collections::HashMap;
use std::fmt::Write;

use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};
use prost_build::{Comments, Method, Service, ServiceGenerator};

use crate::{Kind, ServiceInfo};

pub(crate) struct Generator {
    pub(crate) services: HashMap<String, ServiceInfo>,
    pub(crate) server: bool,
    pub(crate) client: bool,
}

/// `///` lines from the .proto's leading comments, or `fallback` when there are none.
fn docs(comments: &Comments, fallback: &str, indent: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = comments
        .leading
        .iter()
        .map(|l| l.trim_end())
        .skip_while(|l| l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        let _ = writeln!(out, "{indent}/// {fallback}");
    } else {
        for line in lines {
            let line = line.strip_prefix(' ').unwrap_or(line);
            let _ = writeln!(out, "{indent}/// {line}");
        }
    }
    out
}

struct Rpc<'a> {
    method: &'a Method,
    kind: Kind,
    wire: String,
    konst: String,
}

impl ServiceGenerator for Generator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let full = format!("{}.{}", service.package, service.proto_name);
        let Some(info) = self.services.get(&full) else {
            let _ = writeln!(
                buf,
                "compile_error!(\"peerwire-build: service {full} was not read\");"
            );
            return;
        };
        let name = &service.name;
        let snake = name.to_snake_case();
        let names = format!("{snake}_names");
        let rpcs: Vec<Rpc<'_>> = service
            .methods
            .iter()
            .map(|m| Rpc {
                method: m,
                kind: info
                    .kinds
                    .get(&m.proto_name)
                    .copied()
                    .unwrap_or(Kind::Request),
                wire: format!("{}.{}", info.namespace, m.proto_name),
                konst: format!("{names}::{}", m.proto_name.to_shouty_snake_case()),
            })
            .collect();
        let (ns, version) = (&info.namespace, info.version);
        let shouty = snake.to_shouty_snake_case();
        let _ = write!(
            buf,
            "/// The namespace of [`{name}`] on the wire (from the .proto's package and options).\n\
             pub const {shouty}_NAMESPACE: &str = {ns:?};\n\
             /// The version of [`{shouty}_NAMESPACE`] this code speaks (from the .proto's package).\n\
             pub const {shouty}_VERSION: u32 = {version};\n\
             /// The wire names (`namespace.Name`) of [`{name}`]'s methods and topics, for the \
             string API.\n\
             pub mod {names} {{\n"
        );
        for rpc in &rpcs {
            let _ = writeln!(
                buf,
                "    /// `{}`.\n    pub const {}: &str = {:?};",
                rpc.wire,
                rpc.method.proto_name.to_shouty_snake_case(),
                rpc.wire
            );
        }
        buf.push_str("}\n");
        if self.server {
            server(buf, &service, &rpcs, &shouty);
        }
        if self.client {
            client(buf, &service, &rpcs, &shouty);
        }
    }
}

fn server(buf: &mut String, service: &Service, rpcs: &[Rpc<'_>], shouty: &str) {
    let name = &service.name;
    let snake = name.to_snake_case();
    buf.push_str(&docs(
        &service.comments,
        &format!("The server side of the `{}` service.", service.proto_name),
        "",
    ));
    let publisher = if rpcs.iter().any(|r| r.kind == Kind::Topic) {
        format!(" Its topics are pushed with [`{name}Publisher`].")
    } else {
        String::new()
    };
    let _ = write!(
        buf,
        "///\n/// Implement it on a struct holding the service's state and register it with \
         [`add_{snake}`].{publisher}\n\
         pub trait {name}: Send + Sync + 'static {{\n"
    );
    let fut = "impl ::core::future::Future<Output =";
    for rpc in rpcs {
        let m = rpc.method;
        let d = docs(&m.comments, &format!("Handles `{}`.", rpc.wire), "    ");
        let sig = match rpc.kind {
            Kind::Request => format!(
                "fn {}(&self, ctx: ::peerwire_server::RequestContext, request: {}) -> {fut} \
                 ::core::result::Result<{}, ::peerwire_server::Status>> + Send;",
                m.name, m.input_type, m.output_type
            ),
            Kind::Notification => format!(
                "fn {}(&self, ctx: ::peerwire_server::ConnectionContext, event: {}) -> {fut} ()> \
                 + Send;",
                m.name, m.input_type
            ),
            Kind::Raw => format!(
                "fn {}(&self, ctx: ::peerwire_server::RequestContext, payload: \
                 ::peerwire_server::Bytes) -> {fut} ::core::result::Result<\
                 ::peerwire_server::Bytes, ::peerwire_server::Status>> + Send;",
                m.name
            ),
            Kind::Topic => continue,
        };
        let _ = writeln!(buf, "{d}    {sig}");
    }
    buf.push_str("}\n");
    let handlers = rpcs.iter().any(|r| r.kind != Kind::Topic);
    let arg = if handlers { "service" } else { "_service" };
    let _ = write!(
        buf,
        "/// Registers `service`'s handlers on `builder` and declares namespace \
         [`{shouty}_NAMESPACE`] at version [`{shouty}_VERSION`].\n\
         pub fn add_{snake}<T: {name}>(builder: ::peerwire_server::ServerBuilder, {arg}: \
         ::std::sync::Arc<T>) -> ::peerwire_server::ServerBuilder {{\n"
    );
    if handlers {
        register(buf, rpcs, shouty);
    } else {
        let _ = writeln!(
            buf,
            "    builder.namespace({shouty}_NAMESPACE, &[{shouty}_VERSION])\n}}"
        );
    }
    let topics: Vec<&Rpc<'_>> = rpcs.iter().filter(|r| r.kind == Kind::Topic).collect();
    if topics.is_empty() {
        return;
    }
    let _ = write!(
        buf,
        "/// Typed pushes on the topics of [`{name}`].\n\
         #[derive(Debug, Clone)]\n\
         pub struct {name}Publisher {{\n    handle: ::peerwire_server::ServerHandle,\n}}\n\
         impl {name}Publisher {{\n    \
         /// Pushes through `handle` (for example `ctx.server().clone()` in a handler).\n    \
         pub fn new(handle: ::peerwire_server::ServerHandle) -> Self {{\n        \
         Self {{ handle }}\n    }}\n"
    );
    for rpc in topics {
        let m = rpc.method;
        let d = docs(&m.comments, &format!("Pushes on `{}`.", rpc.wire), "    ");
        let _ = write!(
            buf,
            "{d}    ///\n    /// Queued on every subscribed connection; returns how many.\n    \
             pub fn {n}(&self, event: &{t}) -> ::core::result::Result<usize, \
             ::peerwire_server::PushError> {{\n        \
             self.handle.broadcast({k}, event)\n    }}\n    \
             /// Pushes on `{w}` to one connection, which must be subscribed.\n    \
             pub fn {n}_to(&self, conn: ::peerwire_server::ConnectionId, event: &{t}) -> \
             ::core::result::Result<(), ::peerwire_server::PushError> {{\n        \
             self.handle.send_event(conn, {k}, event)\n    }}\n",
            n = m.name,
            t = m.output_type,
            k = rpc.konst,
            w = rpc.wire,
        );
    }
    buf.push_str("}\n");
}

fn client(buf: &mut String, service: &Service, rpcs: &[Rpc<'_>], shouty: &str) {
    let name = &service.name;
    let topics: Vec<&Rpc<'_>> = rpcs.iter().filter(|r| r.kind == Kind::Topic).collect();
    if !topics.is_empty() {
        let _ = write!(
            buf,
            "/// An event pushed on one of [`{name}`]'s topics.\n\
             #[derive(Debug, Clone, PartialEq)]\n\
             #[allow(clippy::large_enum_variant)]\n\
             pub enum {name}Event {{\n"
        );
        for rpc in &topics {
            let d = docs(
                &rpc.method.comments,
                &format!("Pushed on `{}`.", rpc.wire),
                "    ",
            );
            let _ = writeln!(
                buf,
                "{d}    {}({}),",
                rpc.method.proto_name.to_upper_camel_case(),
                rpc.method.output_type
            );
        }
        let _ = write!(
            buf,
            "}}\nimpl {name}Event {{\n    /// The topics, as subscribed to by \
             [`{name}Client::subscribe_all`].\n    \
             pub const TOPICS: &'static [&'static str] = &["
        );
        for rpc in &topics {
            let _ = write!(buf, "{}, ", rpc.konst);
        }
        buf.push_str(
            "];\n    /// Decodes `event` by its topic; `None` for a topic of another service.\n    \
             pub fn decode(event: &::peerwire_client::EventMessage) -> \
             ::core::option::Option<::core::result::Result<Self, ::prost::DecodeError>> {\n        \
             match event.topic.as_str() {\n",
        );
        for rpc in &topics {
            let _ = writeln!(
                buf,
                "            {} => Some(event.decode().map(Self::{})),",
                rpc.konst,
                rpc.method.proto_name.to_upper_camel_case()
            );
        }
        buf.push_str("            _ => None,\n        }\n    }\n}\n");
    }
    buf.push_str(&docs(
        &service.comments,
        &format!("The client side of the `{}` service.", service.proto_name),
        "",
    ));
    let _ = write!(
        buf,
        "///\n/// Announce it with [`{name}Client::announce`] on the `ClientBuilder`, then wrap the \
         connected client with [`{name}Client::new`].\n\
         #[derive(Debug, Clone)]\n\
         pub struct {name}Client {{\n    client: ::peerwire_client::Client,\n}}\n\
         impl {name}Client {{\n    \
         /// Lists namespace [`{shouty}_NAMESPACE`] at version [`{shouty}_VERSION`] in the `Hello`.\n    \
         pub fn announce(builder: ::peerwire_client::ClientBuilder) -> \
         ::peerwire_client::ClientBuilder {{\n        \
         builder.namespace({shouty}_NAMESPACE, &[{shouty}_VERSION])\n    }}\n    \
         /// Wraps a connected client (clones share the connection). Fails with \
         `ServiceError` naming the namespace and both versions when the session did not agree \
         on [`{shouty}_NAMESPACE`] version [`{shouty}_VERSION`].\n    \
         pub fn new(client: ::peerwire_client::Client) -> ::core::result::Result<Self, \
         ::peerwire_client::ServiceError> {{\n        \
         ::peerwire_client::ServiceError::check(&client, {shouty}_NAMESPACE, {shouty}_VERSION)?;\n        \
         Ok(Self {{ client }})\n    }}\n    \
         /// The underlying client, for the string API.\n    \
         pub fn client(&self) -> &::peerwire_client::Client {{\n        &self.client\n    }}\n"
    );
    let err = "::core::result::Result<";
    let call_err = "::peerwire_client::CallError>";
    for rpc in rpcs {
        let m = rpc.method;
        let (n, i, o, k) = (&m.name, &m.input_type, &m.output_type, &rpc.konst);
        match rpc.kind {
            Kind::Request => {
                let d = docs(&m.comments, &format!("Calls `{}`.", rpc.wire), "    ");
                let _ = write!(
                    buf,
                    "{d}    ///\n    /// With the client's default deadline.\n    \
                     pub async fn {n}(&self, request: &{i}) -> {err}{o}, {call_err} {{\n        \
                     self.client.call({k}, request).await\n    }}\n    \
                     /// Calls `{w}` with `deadline`.\n    \
                     pub async fn {n}_with_deadline(&self, request: &{i}, deadline: \
                     ::std::time::Duration) -> {err}{o}, {call_err} {{\n        \
                     self.client.call_with_deadline({k}, request, deadline).await\n    }}\n",
                    w = rpc.wire
                );
            }
            Kind::Notification => {
                let d = docs(&m.comments, &format!("Sends `{}`.", rpc.wire), "    ");
                let _ = write!(
                    buf,
                    "{d}    ///\n    /// A one-way notification: nothing is answered.\n    \
                     pub async fn {n}(&self, event: &{i}) -> {err}(), {call_err} {{\n        \
                     self.client.notify({k}, event).await\n    }}\n"
                );
            }
            Kind::Raw => {
                let d = docs(&m.comments, &format!("Calls `{}`.", rpc.wire), "    ");
                let _ = write!(
                    buf,
                    "{d}    ///\n    /// Bulk bytes: the payload is sent as is, not protobuf-encoded.\n    \
                     pub async fn {n}(&self, payload: impl ::core::convert::Into<\
                     ::peerwire_client::Bytes>, deadline: ::std::time::Duration) -> \
                     {err}::peerwire_client::Bytes, {call_err} {{\n        \
                     self.client.raw_call({k}, payload, deadline).await\n    }}\n"
                );
            }
            Kind::Topic => {
                let d = docs(
                    &m.comments,
                    &format!("Subscribes to `{}`.", rpc.wire),
                    "    ",
                );
                let _ = write!(
                    buf,
                    "{d}    ///\n    /// Subscribes to this topic; dropping the stream unsubscribes.\n    \
                     pub async fn subscribe_{n}(&self) -> {err}::peerwire_client::Subscription<{o}>, \
                     {call_err} {{\n        \
                     self.client.subscribe_typed(&[{k}], |event: &::peerwire_client::EventMessage| \
                     Some(event.decode())).await\n    }}\n"
                );
            }
        }
    }
    if !topics.is_empty() {
        let _ = write!(
            buf,
            "    /// Subscribes one stream to all of [`{name}`]'s topics, in the order the server \
             sent them; dropping the stream unsubscribes.\n    \
             pub async fn subscribe_all(&self) -> {err}::peerwire_client::Subscription<{name}Event>, \
             {call_err} {{\n        \
             self.client.subscribe_typed({name}Event::TOPICS, {name}Event::decode).await\n    }}\n"
        );
    }
    buf.push_str("}\n");
}

/// The body of `add_<service>` when it has handlers: namespace, one registration per rpc.
fn register(buf: &mut String, rpcs: &[Rpc<'_>], shouty: &str) {
    let _ = writeln!(
        buf,
        "    let mut builder = builder.namespace({shouty}_NAMESPACE, &[{shouty}_VERSION]);"
    );
    for rpc in rpcs {
        let m = rpc.method;
        let (register, args, ty) = match rpc.kind {
            Kind::Request => ("method", "ctx, request", format!(": {}", m.input_type)),
            Kind::Notification => ("on_event", "ctx, event", format!(": {}", m.input_type)),
            Kind::Raw => ("raw_method", "ctx, payload", String::new()),
            Kind::Topic => continue,
        };
        let (a, b) = args.split_once(", ").unwrap_or((args, ""));
        let _ = write!(
            buf,
            "    let s = ::std::sync::Arc::clone(&service);\n    \
             builder = builder.{register}({}, move |{a}, {b}{ty}| {{\n        \
             let s = ::std::sync::Arc::clone(&s);\n        \
             async move {{ s.{}({args}).await }}\n    }});\n",
            rpc.konst, m.name
        );
    }
    buf.push_str("    builder\n}\n");
}
