//! Prints the field reference: `cargo run -q -p fanout-api --example reference > docs/reference.md`.

fn main() {
    print!("{}", fanout_api::reference::markdown());
}
