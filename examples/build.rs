//! Generates the example display protocol (`proto/display/v1/display.proto`) and the reference
//! echo service of `peerwire serve` (`proto/echo/v1/echo.proto`) with peerwire-build: the
//! messages, and per service a server trait, its registration, typed push helpers and a typed
//! client (protox, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    peerwire_build::compile_protos(&["display/v1/display.proto", "echo/v1/echo.proto"], &[root])?;
    Ok(())
}
