//! The trybuild UI suite of `#[smache::computed]` and `#[derive(smache::Entity)]`.
//!
//! * `tests/ui/pass/*.rs` must compile and run: every supported form of the
//!   attribute and the derive, with assertions on the cached behaviour (on
//!   the embedded store, so no server is needed).
//! * `tests/ui/fail/*.rs` must fail to compile with exactly the diagnostics
//!   in the `.stderr` file beside each one: one misuse per file, and every
//!   error points at the offending token.
//!
//! After an intended change to a diagnostic, regenerate the golden files with
//! `TRYBUILD=overwrite cargo test --test ui` and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
