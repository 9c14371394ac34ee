//! peerwire's benchmark service from `proto/pw/v1/bench.proto` (peerwire-build), and with the
//! `peers` feature tonic code for `proto/bench.proto`; both compiled by protox (pure Rust, no
//! system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    peerwire_build::compile_protos(&["pw/v1/bench.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/bench.proto");
    #[cfg(feature = "peers")]
    {
        let fds = protox::compile(["proto/bench.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .bytes(".bench.Payload.data")
            .compile_fds(fds)?;
    }
    Ok(())
}
