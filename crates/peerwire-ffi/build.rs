//! Generates the C header from the crate's `extern "C"` items with cbindgen, into `OUT_DIR`.
//! `include/peerwire.h` is the committed copy; the `header` test fails when they differ, and
//! `cargo xtask ffi --bless` (or `PEERWIRE_BLESS_HEADER=1 cargo test -p peerwire-ffi`) updates it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let out = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // The shared library's SONAME: a distribution installs libpeerwire.so.0 and the
    // development symlink libpeerwire.so (xtask ffi, the Yocto recipe).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpeerwire.so.0");
    let config = match cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")) {
        Ok(c) => c,
        Err(e) => {
            println!("cargo:warning=cbindgen.toml: {e}");
            std::process::exit(1);
        }
    };
    match cbindgen::generate_with_config(&dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(format!("{out}/peerwire.h"));
        }
        Err(e) => {
            println!("cargo:warning=cbindgen: {e}");
            std::process::exit(1);
        }
    }
}
