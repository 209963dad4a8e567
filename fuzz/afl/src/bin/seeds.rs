//! Writes the seed corpora, valid encodings of every frame, to `seeds/<target>/` (or the
//! directory given), after checking that each one runs through its target cleanly.
//!
//! Usage: cargo run --release --bin seeds [-- DIR]
use std::{fs, path::PathBuf};

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    for target in agora_afl::TARGETS {
        let out = dir.join(target);
        fs::create_dir_all(&out).unwrap();
        let seeds = agora_afl::seeds(target);
        let total: usize = seeds.iter().map(|(_, b)| b.len()).sum();
        for (name, bytes) in &seeds {
            agora_afl::run(target, bytes);
            fs::write(out.join(name), bytes).unwrap();
        }
        println!(
            "{target}: {} seeds, {total} bytes in {}",
            seeds.len(),
            out.display()
        );
    }
}
