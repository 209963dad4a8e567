//! Rebuilds the crate when a file of the dashboard is added, changed or removed (rust-embed
//! compiles them into the binary; a new file would otherwise go unnoticed).

fn main() {
    println!("cargo:rerun-if-changed=dashboard");
}
