//! The committed header is what the code generates: cbindgen runs in build.rs (into OUT_DIR);
//! this test compares. `PEERWIRE_BLESS_HEADER=1` (what `cargo xtask ffi --bless` sets)
//! writes the generated header over the committed one instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn committed_header_is_what_the_code_generates() {
    let generated = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/peerwire.h")).unwrap();
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../include/peerwire.h");
    if std::env::var_os("PEERWIRE_BLESS_HEADER").is_some() {
        std::fs::write(committed_path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(
                committed.lines().count().min(generated.lines().count()),
                |n| n,
            )
            + 1;
        panic!(
            "include/peerwire.h differs from what the code generates (first at line {line}); \
             run `cargo xtask ffi --bless` and commit it"
        );
    }
    // Every function of the header returns a status or is one of the documented exceptions.
    for line in generated
        .lines()
        .filter(|l| l.starts_with("peerwire_status peerwire_"))
    {
        assert!(
            line.ends_with('(') || line.ends_with(';') || line.contains(','),
            "{line}"
        );
    }
    assert!(generated.contains("PEERWIRE_INTERNAL = 16"));
}
