//! Generates the envelope types from `proto/peerwire/v1/*.proto` with protox, a pure-Rust protobuf
//! compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "peerwire/v1/envelope.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let fds = protox::compile([file], [&root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
