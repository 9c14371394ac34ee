//! Generates the example display protocol from `proto/display/v1/display.proto` with protox
//! (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = "display/v1/display.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let fds = protox::compile([file], [&root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
