//! A wrong type for a generated method is a compile error, not a payload that decodes as
//! something else at run time: `tests/ui/*.rs` must fail to compile with the committed
//! `.stderr`. Regenerate that with `TRYBUILD=overwrite cargo test -p peerwire-examples --test
//! compile_fail` after a deliberate change.

#[test]
fn wrong_types_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
