//! Generates the envelope types from `proto/peerwire/v1/*.proto` with protox, a pure-Rust protobuf
//! compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "peerwire/v1/envelope.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let fds = protox::compile([file], [&root])?;
    // Payloads are `bytes::Bytes`: decoding a frame from the read buffer then shares the buffer
    // instead of copying every payload (a 1 MiB message is not copied on the way in).
    prost_build::Config::new()
        .bytes([
            ".peerwire.v1.Request.payload",
            ".peerwire.v1.Response.payload",
            ".peerwire.v1.Event.payload",
        ])
        .compile_fds(fds)?;
    Ok(())
}
