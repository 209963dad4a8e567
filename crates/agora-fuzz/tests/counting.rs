//! The allocation accounting counts when `Counting` is the global allocator; varints are
//! LEB128. (The mutations are exercised by every crate's `tests/fuzz_decoders.rs`.)

use agora_fuzz::{Counting, peak_of, put_varint};

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn peak_of_counts_what_a_closure_holds() {
    let (v, peak) = peak_of(|| vec![0u8; 10_000]);
    assert!(peak >= 10_000, "{peak}");
    drop(v);
    let ((), peak) = peak_of(|| drop(vec![0u8; 1000]));
    assert!((1000..2000).contains(&peak), "{peak}");
    let ((), peak) = peak_of(|| ());
    assert_eq!(peak, 0);
}

#[test]
fn varints_are_leb128() {
    let mut b = Vec::new();
    put_varint(300, &mut b);
    assert_eq!(b, [0xac, 0x02]);
    b.clear();
    put_varint(u64::MAX, &mut b);
    assert_eq!(
        b,
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
}
