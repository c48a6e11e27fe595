//! The checked-in CRDs must be exactly what the types generate.

#[test]
fn checked_in_crds_match_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/fanout.dev.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = fanout_api::crd::yaml().unwrap();
    assert!(
        checked_in == generated,
        "{} is out of date with the types; run `cargo run -q -- crd > crds/fanout.dev.yaml`",
        path.display()
    );
}
