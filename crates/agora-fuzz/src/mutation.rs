//! Mutations of valid frames, and the proptest config of the fuzz properties.

use proptest::{prelude::*, sample::Index};

/// One change to a frame. Positions are [`Index`]es, scaled to the frame's length when applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit of a byte.
    FlipBit(Index, u8),
    /// Overwrites a byte.
    SetByte(Index, u8),
    /// Inserts bytes (the end of the frame included).
    Insert(Index, Vec<u8>),
    /// Deletes up to this many bytes.
    Delete(Index, usize),
    /// Cuts the frame short.
    Truncate(Index),
    /// Replaces the varint (LEB128, as postcard writes lengths and integers) at a position.
    Varint(Index, u64),
    /// Replaces four bytes at a position with a big-endian u32 (agora-net's length prefix).
    U32(Index, u32),
    /// This frame up to a point, then another frame from a point.
    Splice(Index, Index),
    /// Repeats a slice of the frame in place.
    Repeat(Index, usize),
    /// Replaces the decimal digits at a position (JSON numbers), or inserts some. Only
    /// [`mutations_with_numbers`] makes these.
    Number(Index, u64),
}

/// Numbers a hostile length prefix likes: limits and their neighbours, and anything.
pub fn interesting() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            63,
            64,
            65,
            127,
            128,
            255,
            256,
            257,
            1023,
            1024,
            1025,
            16_384,
            65_535,
            65_536,
            65_537,
            1 << 20,
            3 << 20,
            4 << 20,
            (4 << 20) + 1,
            (1 << 31) - 1,
            1 << 31,
            u32::MAX as u64,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ]),
        0u64..300,
        any::<u64>(),
    ]
}

/// The strategy of one [`Mutation`]: every kind, equally likely, then `$extra` arms.
macro_rules! mutation {
    ($($extra:expr),* $(,)?) => {
        prop_oneof![
            (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
            (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
            any::<Index>().prop_map(Mutation::Truncate),
            (any::<Index>(), interesting()).prop_map(|(i, v)| Mutation::Varint(i, v)),
            (any::<Index>(), interesting()).prop_map(|(i, v)| Mutation::U32(i, v as u32)),
            (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Splice(i, j)),
            (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
            $($extra),*
        ]
    };
}

/// One mutation of a binary frame: every kind but [`Mutation::Number`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    mutation!()
}

/// One mutation of a frame that may be text (JSON): every kind, [`Mutation::Number`] included.
pub fn mutation_with_numbers() -> impl Strategy<Value = Mutation> {
    mutation!((any::<Index>(), interesting()).prop_map(|(i, v)| Mutation::Number(i, v)))
}

/// Writes `v` as a varint (LEB128, as postcard writes lengths and integers).
pub fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Applies `mutations` to `frame` in order; `other` is the second frame of a splice.
pub fn mutate(frame: &[u8], other: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = frame.to_vec();
    for m in mutations {
        // Positions index existing bytes; insertion points may also be the end.
        let len = b.len();
        let at = |i: &Index| i.index(len + 1);
        let pos = |i: &Index| (len > 0).then(|| i.index(len));
        match m {
            Mutation::FlipBit(i, bit) => {
                if let Some(p) = pos(i) {
                    b[p] ^= 1 << bit;
                }
            }
            Mutation::SetByte(i, v) => {
                if let Some(p) = pos(i) {
                    b[p] = *v;
                }
            }
            Mutation::Insert(i, bytes) => {
                let p = at(i);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if let Some(p) = pos(i) {
                    b.drain(p..(p + n).min(len));
                }
            }
            Mutation::Truncate(i) => b.truncate(at(i)),
            Mutation::Varint(i, v) => {
                let p = at(i);
                let old = b[p..]
                    .iter()
                    .take(10)
                    .position(|x| x & 0x80 == 0)
                    .map_or(len - p, |n| n + 1);
                let mut new = Vec::new();
                put_varint(*v, &mut new);
                b.splice(p..p + old, new);
            }
            Mutation::U32(i, v) => {
                let p = at(i);
                let end = (p + 4).min(len);
                b.splice(p..end, v.to_be_bytes());
            }
            Mutation::Splice(i, j) => {
                b.truncate(at(i));
                b.extend_from_slice(&other[j.index(other.len() + 1)..]);
            }
            Mutation::Repeat(i, n) => {
                if let Some(p) = pos(i) {
                    let piece = b[p..(p + n).min(len)].to_vec();
                    b.splice(p..p, piece);
                }
            }
            Mutation::Number(i, v) => {
                let p = at(i);
                let digits = b[p..].iter().take_while(|x| x.is_ascii_digit()).count();
                b.splice(p..p + digits, v.to_string().into_bytes());
            }
        }
    }
    b
}

/// A few mutations of a binary frame ([`mutation`]).
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    // Mostly one mutation, so that many mutated frames still parse and reach the checks.
    prop_oneof![
        3 => prop::collection::vec(mutation(), 1..2),
        1 => prop::collection::vec(mutation(), 2..5),
    ]
}

/// A few mutations of a frame that may be text ([`mutation_with_numbers`]).
pub fn mutations_with_numbers() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        3 => prop::collection::vec(mutation_with_numbers(), 1..2),
        1 => prop::collection::vec(mutation_with_numbers(), 2..5),
    ]
}

/// The config of every fuzz property: `PROPTEST_CASES` cases (256 unless set; `bench/fuzz.sh`
/// raises it); failures are reported, not written to files: a failure found becomes a named
/// regression test in the crate's `tests/fuzz_decoders.rs`.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
