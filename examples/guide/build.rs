//! Generates the greeter service: messages, server trait, client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    peerwire_build::compile_protos(&["greeter/v1/greeter.proto"], &["proto"])?;
    Ok(())
}
