//! AFL++ target: see `agora_afl::files`. Outside afl-fuzz it runs one input from stdin.
fn main() {
    afl::fuzz!(|data: &[u8]| agora_afl::files::run(data));
}
