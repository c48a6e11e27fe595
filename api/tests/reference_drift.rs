//! docs/reference.md must be exactly what the types generate.

#[test]
fn checked_in_field_reference_matches_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = fanout_api::reference::markdown();
    assert!(
        checked_in == generated,
        "{} is out of date with the types; run `cargo run -q -p fanout-api --example reference > docs/reference.md`",
        path.display()
    );
}
