//! The page-aligned leaf reader of downloads (`agora_files::aligned`), alone in its process:
//! its buffer pool is shared by the whole process, so no other test takes from it here.

use agora_files::aligned::{LeafReader, pages};
use iroh_io::AsyncStreamReader;

const GROUP: usize = 16 * 1024;

/// Leaves come back as sent, page-aligned while they are whole pages; the short last leaf and
/// the end of the stream come back as such; buffers of dropped leaves are used again.
#[tokio::test]
async fn leaves_are_page_aligned_and_their_buffers_reused() {
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 5000)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut reader = LeafReader::new(&data[..]);
    let mut at = 0;
    let mut run = Vec::new();
    while at + GROUP <= data.len() {
        let leaf = reader.read_bytes(GROUP).await.unwrap();
        assert_eq!(&leaf[..], &data[at..at + GROUP]);
        seen.insert(leaf.as_ptr() as usize);
        at += GROUP;
        run.push(leaf);
        if run.len() == 16 {
            assert!(pages(&run));
            run.clear();
        }
    }
    assert_eq!(
        seen.len(),
        16,
        "16 leaves held at most, their buffers then reused"
    );
    let last = reader.read_bytes(GROUP).await.unwrap();
    assert_eq!(&last[..], &data[at..]);
    assert!(!pages(&[last]), "the short last leaf is not whole pages");
    let end = reader.read_bytes(GROUP).await.unwrap();
    assert!(end.is_empty(), "the end of the stream");
    drop(run);

    // Every leaf is gone: the responses after this one take pooled buffers, not new memory.
    for _ in 0..4 {
        let mut reader = LeafReader::new(&data[..]);
        for _ in 0..64 {
            let leaf = reader.read_bytes(GROUP).await.unwrap();
            let at = leaf.as_ptr() as usize;
            assert!(
                seen.contains(&at),
                "a leaf at {at:#x}, in memory not pooled"
            );
        }
    }
}
