
use std::collections::HashSet;

use crate::common::*;
use ember_data::{Batch, LoaderState, PackedLoader, TokenShards};

/// Token i has value i % 1000 (vocab 1000): a window's values tell where it starts.
fn stream(tmp: &std::path::Path, n: usize) -> TokenShards {
    let tokens: Vec<u32> = (0..n as u32).map(|i| i % 1000).collect();
    synthetic(tmp, &tokens, 97, 1000)
}

fn starts(batch: &Batch) -> Vec<u32> {
    batch
        .inputs
        .chunks(batch.seq_len)
        .map(|row| row[0])
        .collect()
}

#[test]
fn targets_are_inputs_shifted_by_one_and_windows_cover_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 1001;
    let data = stream(tmp.path(), n);
    let (seq_len, batch_size) = (10, 4);
    let mut loader = PackedLoader::new(data.clone(), seq_len, batch_size, 7).unwrap();
    assert_eq!(loader.num_windows(), (n - 1) / seq_len); // 100

    let all = data.get(0..n);
    let mut seen = Vec::new();
    for _ in 0..25 {
        let b = loader.next_batch();
        assert_eq!((b.batch_size, b.seq_len), (batch_size, seq_len));
        assert_eq!(b.inputs.len(), batch_size * seq_len);
        for (x, y) in b.inputs.chunks(seq_len).zip(b.targets.chunks(seq_len)) {
            let start = x[0] as usize;
            assert_eq!(start % seq_len, 0, "windows start at multiples of seq_len");
            assert_eq!(x, &all[start..start + seq_len]);
            assert_eq!(
                y,
                &all[start + 1..start + seq_len + 1],
                "target t is input t+1"
            );
            seen.push(start);
        }
    }
    // One epoch = every window exactly once, so every token but the first is a target once.
    assert_eq!(loader.epoch(), 0);
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), 100);
    assert_eq!(unique, (0..100).map(|w| w * seq_len).collect());
    assert_ne!(
        seen,
        (0..100).map(|w| w * seq_len).collect::<Vec<_>>(),
        "order is shuffled"
    );

    // The next batch starts epoch 1 with a different order.
    let next = loader.next_batch();
    assert_eq!(loader.epoch(), 1);
    let mut epoch1: Vec<usize> = starts(&next).iter().map(|&s| s as usize).collect();
    while epoch1.len() < 100 {
        epoch1.extend(starts(&loader.next_batch()).iter().map(|&s| s as usize));
    }
    assert_eq!(epoch1.iter().copied().collect::<HashSet<_>>(), unique);
    assert_ne!(epoch1, seen);
}

#[test]
fn same_seed_same_batches_different_seed_different_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stream(tmp.path(), 2000);
    let run = |seed| {
        let mut l = PackedLoader::new(data.clone(), 16, 3, seed).unwrap();
        (0..50).map(|_| l.next_batch()).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn restore_continues_exactly_including_across_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stream(tmp.path(), 500); // 49 windows of 10: batches of 4 straddle epochs
    let mut reference = PackedLoader::new(data.clone(), 10, 4, 42).unwrap();
    let expected: Vec<Batch> = (0..60).map(|_| reference.next_batch()).collect();

    for k in [0, 1, 12, 13, 30, 59] {
        let mut first = PackedLoader::new(data.clone(), 10, 4, 42).unwrap();
        for _ in 0..k {
            first.next_batch();
        }
        // Save through JSON, as a checkpoint would.
        let saved: LoaderState =
            serde_json::from_str(&serde_json::to_string(&first.state()).unwrap()).unwrap();
        let mut resumed = PackedLoader::new(data.clone(), 10, 4, 999).unwrap(); // seed comes from the state
        resumed.restore(&saved).unwrap();
        let rest: Vec<Batch> = (k..60).map(|_| resumed.next_batch()).collect();
        assert_eq!(rest, expected[k..], "resume after {k} batches");
    }
    assert!(reference.epoch() >= 4);
}

#[test]
fn restore_rejects_mismatched_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stream(tmp.path(), 500);
    let state = PackedLoader::new(data.clone(), 10, 4, 1).unwrap().state();

    let msg = err_text(
        PackedLoader::new(data.clone(), 12, 4, 1)
            .unwrap()
            .restore(&state),
    );
    assert!(
        msg.contains("seq_len 10") && msg.contains("seq_len 12"),
        "{msg}"
    );
    let msg = err_text(
        PackedLoader::new(data.clone(), 10, 8, 1)
            .unwrap()
            .restore(&state),
    );
    assert!(
        msg.contains("batch_size 4") && msg.contains("batch_size 8"),
        "{msg}"
    );
    let other = stream(&tmp.path().join("other"), 800);
    let msg = err_text(PackedLoader::new(other, 10, 4, 1).unwrap().restore(&state));
    assert!(msg.contains("49 windows") && msg.contains("79"), "{msg}");
}

#[test]
fn too_small_dataset_says_how_many_tokens_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stream(tmp.path(), 64);
    let msg = err_text(PackedLoader::new(data.clone(), 64, 1, 0));
    assert!(msg.contains("has 64 tokens") && msg.contains("65"), "{msg}");
    // Exactly seq_len + 1 tokens is one window.
    let mut l = PackedLoader::new(data, 63, 2, 0).unwrap();
    assert_eq!(l.num_windows(), 1);
    let b = l.next_batch();
    assert_eq!(starts(&b), [0, 0]);
}

#[test]
fn eval_batches_are_ordered_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stream(tmp.path(), 1001); // 100 windows of 10
    let all = PackedLoader::eval_batches(&data, 10, 8, 1000).unwrap();
    assert_eq!(all.len(), 13);
    assert_eq!(all.last().unwrap().batch_size, 4);
    let firsts: Vec<u32> = all.iter().flat_map(starts).collect();
    assert_eq!(firsts, (0..100).map(|w| w * 10).collect::<Vec<u32>>());
    for b in &all {
        for (x, y) in b.inputs.chunks(10).zip(b.targets.chunks(10)) {
            assert_eq!(&x[1..], &y[..9]);
        }
    }
    // Capped: evenly spread over the set, still in order, same every time.
    let capped = PackedLoader::eval_batches(&data, 10, 5, 2).unwrap();
    assert_eq!(capped, PackedLoader::eval_batches(&data, 10, 5, 2).unwrap());
    assert_eq!(
        capped.iter().flat_map(starts).collect::<Vec<_>>(),
        [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    );
}
