//! `#[rabbit_listener]`'s compile errors (each case in `tests/ui/*.rs` with the expected message
//! in its `.stderr`) and expansions that must compile (`tests/ui/pass/`).
//!
//! After changing a message: `TRYBUILD=overwrite cargo test -p amqp-core --test ui`, then read the
//! `.stderr` diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
