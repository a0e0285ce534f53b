//! The NIAH generator: examples hold what the definition in `ember_data::niah` says (checked by
//! reading the tokens back, not by re-running the generator), needles sit at their depth, random
//! depths are uniform, examples are pure functions of (seed, split, segment, index), the loader
//! resumes exactly, and configuration mistakes name their key.
use ember_data::niah::{assemble, token_ranges, NiahConfig, NiahDataset, NiahSegment, NiahSpec};
use ember_data::synthetic::{eval_batches, Order, Split};
use ember_data::{NiahLoader, IGNORE};

const V: usize = 64;

fn spec(seq_len: usize, needles: usize, depth: Option<f64>) -> NiahSpec {
    NiahSpec { vocab_size: V, seq_len, needles, depth }
}

fn dataset(segments: &[(usize, usize, Option<f64>, usize)], split: Split) -> NiahDataset {
    let segments = segments
        .iter()
        .map(|&(seq_len, needles, depth, examples)| NiahSegment { spec: spec(seq_len, needles, depth), examples })
        .collect();
    NiahDataset { segments, seed: 77, split }
}

/// What an example says about itself, read from its tokens: the position of each needle's key
/// (keys and values only occur in needles and queries), and for each needle the filler tokens
/// before it.
struct Parsed {
    /// (position of κ, κ, ν, filler tokens before it), in sequence order.
    needles: Vec<(usize, u32, u32, usize)>,
}

fn parse(inputs: &[u32], targets: &[u32], vocab: usize, needles: usize) -> Parsed {
    let [keys, values, filler] = token_ranges(vocab);
    let l = inputs.len();
    let query = l - needles;
    let mut found = Vec::new();
    let mut fillers = 0;
    let mut i = 0;
    while i < query {
        let t = inputs[i];
        if filler.contains(&t) {
            fillers += 1;
            i += 1;
            continue;
        }
        assert!(keys.contains(&t), "token {t} at {i} is neither filler nor a needle key");
        assert!(i + 1 < query && values.contains(&inputs[i + 1]), "a key at {i} is not followed by a value");
        found.push((i, t, inputs[i + 1], fillers));
        i += 2;
    }
    assert_eq!(found.len(), needles, "{inputs:?}");
    assert_eq!(fillers, l - 3 * needles, "the haystack is L − 3n filler tokens");
    // Nothing in the haystack is scored.
    assert!(targets[..query].iter().all(|&t| t == IGNORE));
    Parsed { needles: found }
}

#[test]
fn a_hand_built_example() {
    // Filler 40..44, needles (3, 20) after 1 filler token and (5, 21) after 4 (the end), queries
    // asking for needle 1 then needle 0.
    let ex = assemble(&[40, 41, 42, 43], &[(3, 20), (5, 21)], &[1, 4], &[1, 0]);
    assert_eq!(ex.inputs, vec![40, 3, 20, 41, 42, 43, 5, 21, 5, 3]);
    let mut targets = vec![IGNORE; 10];
    targets[8] = 21;
    targets[9] = 20;
    assert_eq!(ex.targets, targets);
    // Needles at one offset keep their index order.
    let ex = assemble(&[40, 41], &[(3, 20), (5, 21)], &[0, 0], &[0, 1]);
    assert_eq!(ex.inputs, vec![3, 20, 5, 21, 40, 41, 3, 5]);
}

#[test]
fn token_ranges_are_disjoint_and_cover_the_vocabulary_but_zero() {
    for v in [8, 9, 10, 11, 64, 255, 8192] {
        let [k, val, f] = token_ranges(v);
        assert_eq!(k.start, 1);
        assert!(k.start < k.end && k.end == val.start && val.start < val.end && val.end == f.start && f.start < f.end);
        assert_eq!(f.end as usize, v);
    }
}

#[test]
fn every_example_is_well_formed() {
    for (seq_len, needles, depth) in [(16, 1, None), (32, 1, Some(0.5)), (64, 3, None), (64, 4, Some(0.0)), (128, 2, Some(1.0)), (50, 15, None)] {
        let data = dataset(&[(seq_len, needles, depth, 200)], Split::Train);
        for i in 0..data.len() {
            let ex = data.example(i);
            assert_eq!((ex.inputs.len(), ex.targets.len()), (seq_len, seq_len));
            let parsed = parse(&ex.inputs, &ex.targets, V, needles);
            let mut keys: Vec<u32> = parsed.needles.iter().map(|n| n.1).collect();
            let mut values: Vec<u32> = parsed.needles.iter().map(|n| n.2).collect();
            keys.sort();
            keys.dedup();
            values.sort();
            values.dedup();
            assert_eq!((keys.len(), values.len()), (needles, needles), "keys and values distinct");
            // Exactly one labelled position per query, all in the last `needles` positions; its
            // input is a needle's key and its target that needle's value; every key asked once.
            let queries: Vec<usize> = ex.queries().collect();
            assert_eq!(queries, (seq_len - needles..seq_len).collect::<Vec<_>>());
            let mut asked: Vec<u32> = Vec::new();
            for &q in &queries {
                let needle = parsed.needles.iter().find(|n| n.1 == ex.inputs[q]).expect("a query asks for a needle's key");
                assert_eq!(ex.targets[q], needle.2);
                asked.push(ex.inputs[q]);
            }
            asked.sort();
            assert_eq!(asked, keys);
        }
    }
}

#[test]
fn needles_sit_at_their_depth() {
    for seq_len in [16, 33, 128, 1000] {
        for depth in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
            let data = dataset(&[(seq_len, 1, Some(depth), 20)], Split::Test);
            let expected = (depth * (seq_len - 2 - 1) as f64).round() as i64;
            for i in 0..data.len() {
                let ex = data.example(i);
                let at = parse(&ex.inputs, &ex.targets, V, 1).needles[0].0 as i64;
                assert!((at - expected).abs() <= 1, "L {seq_len}, depth {depth}: needle at {at}, expected {expected}");
            }
        }
        // Depth 0 is the very first token, depth 1 right before the query.
        let ex = dataset(&[(seq_len, 1, Some(0.0), 1)], Split::Test).example(0);
        assert_eq!(parse(&ex.inputs, &ex.targets, V, 1).needles[0].0, 0);
        let ex = dataset(&[(seq_len, 1, Some(1.0), 1)], Split::Test).example(0);
        assert_eq!(parse(&ex.inputs, &ex.targets, V, 1).needles[0].0, seq_len - 3);
    }
    // Several needles at one depth: each has that share of the haystack before it.
    let (seq_len, needles, depth) = (100, 4, 0.3);
    let filler = seq_len - 3 * needles;
    let data = dataset(&[(seq_len, needles, Some(depth), 20)], Split::Train);
    for i in 0..data.len() {
        let ex = data.example(i);
        for n in parse(&ex.inputs, &ex.targets, V, needles).needles {
            assert_eq!(n.3, (depth * filler as f64).round() as usize);
        }
    }
}

#[test]
fn random_depths_are_uniform() {
    // One needle in L = 32: F = 29 filler tokens, so 30 equally likely offsets; a χ² test.
    let data = dataset(&[(32, 1, None, 15_000)], Split::Train);
    let mut counts = [0usize; 30];
    for i in 0..data.len() {
        let ex = data.example(i);
        counts[parse(&ex.inputs, &ex.targets, V, 1).needles[0].3] += 1;
    }
    let expected = data.len() as f64 / 30.0;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    // 29 degrees of freedom: P(χ² > 58.3) = 0.001.
    assert!(chi2 < 58.3, "χ² = {chi2:.1} for counts {counts:?}");
    // Several needles: offsets independent, so not all at one place.
    let data = dataset(&[(64, 3, None, 50)], Split::Train);
    let spread = (0..data.len()).filter(|&i| {
        let ex = data.example(i);
        let offsets: Vec<usize> = parse(&ex.inputs, &ex.targets, V, 3).needles.iter().map(|n| n.3).collect();
        offsets.iter().any(|&o| o != offsets[0])
    });
    assert!(spread.count() > 40);
}

#[test]
fn filler_is_uniform_over_its_range() {
    let data = dataset(&[(256, 1, None, 200)], Split::Train);
    let [_, _, filler] = token_ranges(V);
    let mut counts = vec![0usize; (filler.end - filler.start) as usize];
    for i in 0..data.len() {
        for &t in &data.example(i).inputs {
            if filler.contains(&t) {
                counts[(t - filler.start) as usize] += 1;
            }
        }
    }
    let n: usize = counts.iter().sum();
    assert_eq!(n, 200 * (256 - 3));
    let expected = n as f64 / counts.len() as f64;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    // 31 degrees of freedom: P(χ² > 61.1) = 0.001.
    assert!(chi2 < 61.1, "χ² = {chi2:.1}");
}

#[test]
fn examples_are_a_function_of_seed_split_segment_and_index() {
    let segments = [(64, 1, None, 10), (64, 2, Some(0.5), 10)];
    let a = dataset(&segments, Split::Train);
    let b = dataset(&segments, Split::Train);
    let test = dataset(&segments, Split::Test);
    let other_seed = NiahDataset { seed: 78, ..a.clone() };
    for i in 0..a.len() {
        assert_eq!(a.example(i), b.example(i));
        assert_ne!(a.example(i), test.example(i));
        assert_ne!(a.example(i), other_seed.example(i));
    }
    assert_eq!(a.example(12), a.segment_example(1, 2));
    assert_ne!(a.example(0), a.example(1));
    // The same spec in another segment is another stream.
    let twice = dataset(&[(64, 1, None, 10), (64, 1, None, 10)], Split::Train);
    assert_ne!(twice.example(0), twice.example(10));
}

#[test]
fn spec_constraints_are_checked() {
    assert!(spec(64, 1, None).validate().is_ok());
    assert!(spec(4, 1, Some(1.0)).validate().is_ok());
    assert!(spec(64, 15, None).validate().is_ok());
    let field = |s: NiahSpec| s.validate().unwrap_err().0;
    assert_eq!(field(spec(64, 0, None)), "needles");
    assert_eq!(field(spec(64, 16, None)), "needles", "keys 1..16 hold 15 needles");
    assert_eq!(field(spec(3, 1, None)), "seq_len");
    assert_eq!(field(spec(30, 10, None)), "seq_len");
    assert_eq!(field(spec(64, 1, Some(1.5))), "depth");
    assert_eq!(field(spec(64, 1, Some(-0.1))), "depth");
    assert_eq!(field(spec(64, 1, Some(f64::NAN))), "depth");
    assert_eq!(field(NiahSpec { vocab_size: 7, ..spec(64, 1, None) }), "vocab_size");
}

#[test]
fn configuration_mistakes_name_their_key() {
    let config = |json: &str| -> NiahConfig { serde_json::from_str(json).unwrap() };
    let ok = config(r#"{"train": [{"examples": 10}], "test": [{"examples": 5, "depth": 0.5, "seq_len": 128}]}"#);
    assert_eq!(ok.validate(64, 256), Ok(()));
    assert_eq!((ok.train[0].needles, ok.train[0].depth, ok.vocab(256)), (1, None, 256));
    let key = |json: &str, seq_len: usize, vocab: usize| config(json).validate(seq_len, vocab).unwrap_err().0;
    assert_eq!(key(r#"{"train": []}"#, 64, 256), "train");
    assert_eq!(key(r#"{"train": [{"examples": 10}], "test": [{"examples": 5}, {"examples": 5, "depth": 2.0}]}"#, 64, 256), "test[1].depth");
    assert_eq!(key(r#"{"train": [{"examples": 10}, {"examples": 10, "needles": 0}]}"#, 64, 256), "train[1].needles");
    assert_eq!(key(r#"{"train": [{"examples": 10, "seq_len": 3}]}"#, 64, 256), "train[0].seq_len");
    assert_eq!(key(r#"{"train": [{"examples": 10}]}"#, 2, 256), "train[0].seq_len");
    assert_eq!(key(r#"{"train": [{"examples": 0}]}"#, 64, 256), "train[0].examples");
    assert_eq!(key(r#"{"vocab_size": 4, "train": [{"examples": 1}]}"#, 64, 256), "vocab_size");
    assert_eq!(key(r#"{"train": [{"examples": 1, "needles": 3}]}"#, 64, 12), "train[0].needles");
    assert!(serde_json::from_str::<NiahConfig>(r#"{"train": [{"examples": 1, "pairs": 2}]}"#).is_err(), "unknown keys are refused");
}

#[test]
fn the_training_loader_resumes_exactly_and_sees_every_example_once_per_epoch() {
    // 7 + 6 examples of length 32 and 5 of 64, batches of 4: 4 + 2 batches per epoch.
    let data = dataset(&[(32, 1, None, 7), (32, 2, Some(0.25), 6), (64, 1, None, 5)], Split::Train);
    let mut loader = NiahLoader::new(data.clone(), 4, 9, Order::Shuffled).unwrap();
    let epoch: Vec<_> = (0..6).map(|_| loader.next_batch()).collect();
    let saved = loader.state();
    let rest: Vec<_> = (0..5).map(|_| loader.next_batch()).collect();
    let mut resumed = NiahLoader::new(data.clone(), 4, 0, Order::Shuffled).unwrap();
    resumed.restore(&saved).unwrap();
    let again: Vec<_> = (0..5).map(|_| resumed.next_batch()).collect();
    assert_eq!(rest, again);
    // Resuming mid-epoch too.
    let mut loader = NiahLoader::new(data.clone(), 4, 9, Order::Shuffled).unwrap();
    loader.next_batch();
    loader.next_batch();
    let mid = loader.state();
    let mut resumed = NiahLoader::new(data.clone(), 4, 1, Order::Shuffled).unwrap();
    resumed.restore(&mid).unwrap();
    assert_eq!((0..7).map(|_| resumed.next_batch()).collect::<Vec<_>>(), (0..7).map(|_| loader.next_batch()).collect::<Vec<_>>());
    let mut seen: Vec<Vec<u32>> = Vec::new();
    for b in &epoch {
        assert_eq!(b.inputs.len(), b.batch_size * b.seq_len);
        seen.extend(b.inputs.chunks(b.seq_len).map(<[u32]>::to_vec));
    }
    let mut all: Vec<Vec<u32>> = (0..data.len()).map(|i| data.example(i).inputs).collect();
    seen.sort();
    all.sort();
    assert_eq!(seen, all, "one epoch is every example once");
    let mut lengths: Vec<usize> = epoch.iter().map(|b| b.seq_len).collect();
    lengths.sort();
    assert_eq!(lengths, [32, 32, 32, 32, 64, 64]);
    // A state from another training set is refused, naming the section.
    let other = NiahLoader::new(dataset(&[(32, 1, None, 30)], Split::Train), 4, 9, Order::Shuffled).unwrap().state();
    let err = NiahLoader::new(data, 4, 9, Order::Shuffled).unwrap().restore(&other).unwrap_err().to_string();
    assert!(err.contains("NIAH") && err.contains("data.niah"), "{err}");
}

#[test]
fn evaluation_batches_keep_one_length_each() {
    let data = dataset(&[(32, 1, Some(0.0), 5), (64, 1, Some(1.0), 3)], Split::Test);
    let batches = eval_batches(&data, 2, None).unwrap();
    let shapes: Vec<(usize, usize)> = batches.iter().map(|b| (b.batch_size, b.seq_len)).collect();
    assert_eq!(shapes, vec![(2, 32), (2, 32), (1, 32), (2, 64), (1, 64)]);
    assert_eq!(&batches[3].inputs[..64], &data.segment_example(1, 0).inputs[..]);
    assert_eq!(&batches[3].targets[..64], &data.segment_example(1, 0).targets[..]);
    // One scored target per sequence.
    assert!(batches.iter().all(|b| b.targets.iter().filter(|&&t| t != IGNORE).count() == b.batch_size));
}
