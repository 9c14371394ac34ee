//! # peerwire-build: typed services from `.proto` files
//!
//! Used from `build.rs` like `tonic-build`: it compiles `.proto` files with protox (pure Rust,
//! no system `protoc`), generates the messages with prost-build and, for each `service`, a
//! server trait, a function registering an implementation on a `ServerBuilder`, typed push
//! helpers per topic and a typed client. The generated code calls peerwire's string API
//! (`ServerBuilder::method`, `Client::call`, ...), so the crate that includes it depends on
//! `peerwire-server` (server side), `peerwire-client` (client side) and `prost`.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     peerwire_build::compile_protos(&["greeter/v1/greeter.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! How a `.proto` maps onto peerwire (see `docs/protocol.md`, "Services in .proto files"):
//!
//! - the package names the version: `display.v1` is version 1; a service's namespace is the
//!   package's first component (`display`) unless the service sets
//!   `option (peerwire.v1.namespace) = "system";`
//! - `import "peerwire/v1/options.proto";` needs no copy of the file: it is built in;
//! - each rpc is a method or topic `namespace.RpcName`; its kind is set with
//!   `option (peerwire.v1.kind) = METHOD_KIND_...;` from `peerwire/v1/options.proto`:
//!   `REQUEST` (default), `NOTIFICATION` (client -> server, returns `google.protobuf.Empty`),
//!   `TOPIC` (server push, takes `google.protobuf.Empty`) or `RAW` (bulk bytes,
//!   `google.protobuf.BytesValue` both ways, not protobuf-encoded on the wire).
#![forbid(unsafe_code)]

mod generate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};
use protox::prost_reflect::{DescriptorPool, ServiceDescriptor, Value};

/// The path `.proto` files import peerwire's options from; peerwire-build provides it, so a
/// crate needs no copy of it.
pub const OPTIONS_PROTO: &str = "peerwire/v1/options.proto";

/// Serves [`OPTIONS_PROTO`] from the copy built into this crate.
struct Options;

impl FileResolver for Options {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PROTO {
            File::from_source(
                name,
                include_str!("../../../proto/peerwire/v1/options.proto"),
            )
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `.proto` file did not compile.
    #[error(transparent)]
    Protox(#[from] protox::Error),
    /// prost-build could not write the generated code.
    #[error("generating code: {0}")]
    Io(#[from] std::io::Error),
    /// A service does not follow peerwire's rules (see the crate documentation).
    #[error("service {service}: {reason}")]
    Service {
        /// The service's full name.
        service: String,
        /// What is wrong.
        reason: String,
    },
}

/// Compiles `protos` (paths relative to one of `includes`) into `OUT_DIR`, with servers and
/// clients: one `<package>.rs` per package, to `include!` in a module.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    Builder::new().compile(protos, includes)
}

/// Configures generation; [`compile_protos`] is `Builder::new().compile(..)`.
#[derive(Debug, Clone)]
pub struct Builder {
    server: bool,
    client: bool,
    out_dir: Option<PathBuf>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// Servers and clients, written to `OUT_DIR`.
    pub fn new() -> Self {
        Self {
            server: true,
            client: true,
            out_dir: None,
        }
    }

    /// Whether to generate the server side (trait, registration, push helpers). Default true.
    pub fn build_server(mut self, yes: bool) -> Self {
        self.server = yes;
        self
    }

    /// Whether to generate the client side (client, event enum). Default true.
    pub fn build_client(mut self, yes: bool) -> Self {
        self.client = yes;
        self
    }

    /// Writes to `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Compiles `protos` found under `includes`, and tells cargo to rerun when they change.
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let mut resolver = ChainFileResolver::new();
        for include in includes {
            resolver.add(IncludeFileResolver::new(include.as_ref().to_owned()));
        }
        resolver.add(Options);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_source_info(true);
        for proto in protos {
            compiler.open_file(proto)?;
        }
        for file in compiler.files() {
            if let Some(path) = file.path() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        let pool = compiler.descriptor_pool();
        let mut services = HashMap::new();
        for file in compiler.files() {
            if file.is_import() {
                continue;
            }
            let Some(fd) = pool.get_file_by_name(file.name()) else {
                continue;
            };
            for service in fd.services() {
                let info = ServiceInfo::read(&pool, &service)?;
                services.insert(service.full_name().to_owned(), info);
            }
        }
        let mut config = prost_build::Config::new();
        if let Some(dir) = &self.out_dir {
            config.out_dir(dir);
        }
        config.service_generator(Box::new(generate::Generator {
            services,
            server: self.server,
            client: self.client,
        }));
        config.compile_fds(compiler.file_descriptor_set())?;
        Ok(())
    }
}

/// How an rpc travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Notification,
    Topic,
    Raw,
}

/// What the options of one service say.
#[derive(Debug, Clone)]
struct ServiceInfo {
    namespace: String,
    version: u32,
    /// Kind per rpc, by its proto name.
    kinds: HashMap<String, Kind>,
}

const EMPTY: &str = "google.protobuf.Empty";
const BYTES: &str = "google.protobuf.BytesValue";

impl ServiceInfo {
    fn read(pool: &DescriptorPool, service: &ServiceDescriptor) -> Result<Self, Error> {
        let fail = |reason: String| Error::Service {
            service: service.full_name().to_owned(),
            reason,
        };
        let package = service.package_name();
        let mut parts = package.split('.');
        let first = parts.next().unwrap_or_default();
        let version = package
            .rsplit('.')
            .next()
            .and_then(|last| last.strip_prefix('v'))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|v| *v >= 1 && package.contains('.'))
            .ok_or_else(|| {
                fail(format!(
                    "the package {package:?} must end in a version component such as \".v1\""
                ))
            })?;
        let mut namespace = first.to_owned();
        if let Some(ext) = pool.get_extension_by_name("peerwire.v1.namespace") {
            let options = service.options();
            if options.has_extension(&ext) {
                if let Value::String(ns) = &*options.get_extension(&ext) {
                    namespace = ns.clone();
                }
            }
        }
        if !peerwire_proto::names::validate_namespace(&namespace)
            || namespace == peerwire_proto::RESERVED_NAMESPACE
        {
            return Err(fail(format!(
                "{namespace:?} is not a valid namespace (1-32 of [a-z0-9_], starting with a \
                 letter; \"peerwire\" is reserved)"
            )));
        }
        let kind_ext = pool.get_extension_by_name("peerwire.v1.kind");
        let mut kinds = HashMap::new();
        for method in service.methods() {
            let mut kind = Kind::Request;
            if let Some(ext) = &kind_ext {
                let options = method.options();
                if options.has_extension(ext) {
                    kind = match &*options.get_extension(ext) {
                        Value::EnumNumber(1) => Kind::Notification,
                        Value::EnumNumber(2) => Kind::Topic,
                        Value::EnumNumber(3) => Kind::Raw,
                        _ => Kind::Request,
                    };
                }
            }
            let name = method.name();
            if method.is_client_streaming() || method.is_server_streaming() {
                return Err(fail(format!(
                    "{name}: peerwire has no streaming rpcs (use a topic for server pushes)"
                )));
            }
            let input = method.input();
            let output = method.output();
            let (input, output) = (input.full_name(), output.full_name());
            let problem = match kind {
                Kind::Notification if output != EMPTY => {
                    Some("a notification must return google.protobuf.Empty")
                }
                Kind::Topic if input != EMPTY => Some("a topic must take google.protobuf.Empty"),
                Kind::Raw if input != BYTES || output != BYTES => {
                    Some("a raw method must take and return google.protobuf.BytesValue")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(fail(format!("{name}: {problem}")));
            }
            kinds.insert(name.to_owned(), kind);
        }
        Ok(Self {
            namespace,
            version,
            kinds,
        })
    }
}
