//! The MQAR generator follows LAYERS.md §10.1 (its §10.4 tests and the §A.6 hand example), and
//! its loader batches resume exactly.
use ember_data::mqar::{assemble, MqarDataset, MqarSegment, MqarSpec, Split};
use ember_data::synthetic::Order;
use ember_data::{mqar_eval_batches, MqarLoader, IGNORE};

fn spec(seq_len: usize, pairs: usize) -> MqarSpec {
    MqarSpec { vocab_size: 8192, seq_len, pairs, power_a: 0.01, random_non_queries: false }
}

fn dataset(segments: &[(usize, usize, usize)], split: Split) -> MqarDataset {
    let segments = segments
        .iter()
        .map(|&(seq_len, pairs, examples)| MqarSegment { spec: spec(seq_len, pairs), examples })
        .collect();
    MqarDataset { segments, seed: 123, split }
}

#[test]
fn the_hand_example_of_the_spec() {
    // §A.6: V = 20, L = 12, pairs (3,14), (7,11), slots γ = (2, 0).
    let ex = assemble(12, &[(3, 14), (7, 11)], &[2, 0]);
    assert_eq!(ex.inputs, vec![3, 14, 7, 11, 7, 0, 0, 0, 3, 0, 0, 0]);
    let mut labels = vec![IGNORE; 12];
    labels[4] = 11;
    labels[8] = 14;
    assert_eq!(ex.targets, labels);
}

#[test]
fn every_example_is_well_formed() {
    for (seq_len, pairs) in [(64, 4), (64, 16), (256, 16), (256, 64), (512, 128)] {
        let data = dataset(&[(seq_len, pairs, 200)], Split::Train);
        let half = 8192 / 2;
        for i in 0..data.len() {
            let ex = data.example(i);
            assert_eq!((ex.inputs.len(), ex.targets.len()), (seq_len, seq_len));
            let context = 2 * pairs;
            let keys: Vec<u32> = (0..pairs).map(|j| ex.inputs[2 * j]).collect();
            let values: Vec<u32> = (0..pairs).map(|j| ex.inputs[2 * j + 1]).collect();
            // Keys and values distinct, keys in the lower half, values in the upper half.
            let mut sorted = keys.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), pairs);
            let mut sorted = values.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), pairs);
            assert!(keys.iter().all(|&k| (1..half as u32).contains(&k)));
            assert!(values.iter().all(|&v| (half as u32..8192).contains(&v)));
            // Exactly one query per pair, at an even offset of the query region, asking for a
            // key of the context, labelled with that key's value; no target inside the context.
            let queries: Vec<usize> = ex.queries().collect();
            assert_eq!(queries.len(), pairs);
            let mut asked = Vec::new();
            for &q in &queries {
                assert!(q >= context && (q - context) % 2 == 0, "query at {q}");
                let j = keys.iter().position(|&k| k == ex.inputs[q]).expect("a query asks for a context key");
                assert_eq!(ex.targets[q], values[j]);
                asked.push(j);
            }
            asked.sort();
            assert_eq!(asked, (0..pairs).collect::<Vec<_>>(), "every key is asked once");
            // Without random non-queries, everything else in the query region is 0.
            let zeros = ex.inputs[context..].iter().filter(|&&x| x == 0).count();
            assert_eq!(zeros, seq_len - context - pairs);
        }
    }
}

#[test]
fn query_gaps_follow_the_power_law() {
    // One pair per example, so its slot is a single draw from p(g): a χ² goodness-of-fit test.
    let s = spec(64, 1);
    let data = MqarDataset { segments: vec![MqarSegment { spec: s, examples: 20_000 }], seed: 5, split: Split::Train };
    let p = s.gap_probabilities();
    assert_eq!(p.len(), 31);
    // p(g) ∝ a·g^(a−1): decreasing, and with a = 0.01 close to 1/g.
    assert!(p.windows(2).all(|w| w[0] > w[1]));
    assert!((p[0] / p[1] - 2f64.powf(0.99)).abs() < 1e-12);
    let mut counts = vec![0usize; p.len()];
    for i in 0..data.len() {
        let q = data.example(i).queries().next().unwrap();
        counts[(q - 2) / 2] += 1;
    }
    let n = data.len() as f64;
    let chi2: f64 = counts.iter().zip(&p).map(|(&c, &pi)| (c as f64 - n * pi).powi(2) / (n * pi)).sum();
    // 30 degrees of freedom: P(χ² > 59.7) = 0.001.
    assert!(chi2 < 59.7, "χ² = {chi2:.1} for counts {counts:?}");
}

#[test]
fn random_non_queries_fill_the_gaps_but_keep_the_queries() {
    let mut s = spec(256, 16);
    s.random_non_queries = true;
    let data = MqarDataset { segments: vec![MqarSegment { spec: s, examples: 50 }], seed: 1, split: Split::Train };
    for i in 0..data.len() {
        let ex = data.example(i);
        let zeros = ex.inputs[32..].iter().filter(|&&x| x == 0).count();
        assert!(zeros < 5, "{zeros} zeros left");
        for q in ex.queries() {
            let key = ex.inputs[q];
            let j = (0..16).find(|&j| ex.inputs[2 * j] == key).unwrap();
            assert_eq!(ex.targets[q], ex.inputs[2 * j + 1]);
        }
    }
}

#[test]
fn examples_are_a_function_of_seed_split_and_index() {
    let a = dataset(&[(64, 4, 10), (64, 8, 10)], Split::Train);
    let b = dataset(&[(64, 4, 10), (64, 8, 10)], Split::Train);
    let test = dataset(&[(64, 4, 10), (64, 8, 10)], Split::Test);
    let other_seed = MqarDataset { seed: 124, ..a.clone() };
    for i in 0..a.len() {
        assert_eq!(a.example(i), b.example(i));
        assert_ne!(a.example(i), test.example(i));
        assert_ne!(a.example(i), other_seed.example(i));
    }
    assert_eq!(a.example(12), a.segment_example(1, 2));
    assert_ne!(a.example(0), a.example(1));
}

#[test]
fn spec_constraints_are_checked() {
    assert!(spec(256, 64).validate().is_ok());
    let field = |s: MqarSpec| s.validate().unwrap_err().0;
    assert_eq!(field(spec(256, 65)), "pairs");
    assert_eq!(field(spec(255, 4)), "seq_len");
    assert_eq!(field(MqarSpec { vocab_size: 200, ..spec(256, 4) }), "vocab_size");
    assert_eq!(field(spec(64, 0)), "pairs");
    assert_eq!(field(MqarSpec { power_a: 0.0, ..spec(64, 4) }), "power_a");
}

#[test]
fn the_training_loader_resumes_exactly_and_sees_every_example_once_per_epoch() {
    // Two lengths: every batch holds one; 7 + 6 examples of length 64 and 5 of 128, batches of 4
    // give 4 + 2 batches per epoch.
    let data = dataset(&[(64, 4, 7), (64, 8, 6), (128, 8, 5)], Split::Train);
    let mut loader = MqarLoader::new(data.clone(), 4, 9, Order::Shuffled).unwrap();
    let epoch: Vec<_> = (0..6).map(|_| loader.next_batch()).collect();
    let saved = loader.state();
    let rest: Vec<_> = (0..5).map(|_| loader.next_batch()).collect();
    let mut resumed = MqarLoader::new(data.clone(), 4, 0, Order::Shuffled).unwrap();
    resumed.restore(&saved).unwrap();
    let again: Vec<_> = (0..5).map(|_| resumed.next_batch()).collect();
    assert_eq!(rest, again);
    assert_ne!(epoch[..5], rest[..], "a new epoch, a new order");
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
    assert_eq!(lengths, [64, 64, 64, 64, 128, 128]);
    // A state from another training set is refused.
    let other = MqarLoader::new(dataset(&[(64, 4, 30)], Split::Train), 4, 9, Order::Shuffled).unwrap().state();
    assert!(MqarLoader::new(data, 4, 9, Order::Shuffled).unwrap().restore(&other).is_err());
}

#[test]
fn the_sequential_order_walks_the_segments_as_listed_every_epoch() {
    // Zoology's loader: segment 0's examples in order in batches of 4 (7 → 4 + 3), then
    // segment 1's, then segment 2's; the next epoch repeats it, and resume continues it.
    let data = dataset(&[(64, 4, 7), (128, 8, 5), (64, 8, 6)], Split::Train);
    let mut loader = MqarLoader::new(data.clone(), 4, 9, Order::Sequential).unwrap();
    let first: Vec<_> = (0..6).map(|_| loader.next_batch()).collect();
    let expected: Vec<(usize, std::ops::Range<usize>)> = vec![(0, 0..4), (0, 4..7), (1, 0..4), (1, 4..5), (2, 0..4), (2, 4..6)];
    for (batch, (segment, range)) in first.iter().zip(&expected) {
        let want: Vec<u32> = range.clone().flat_map(|i| data.segment_example(*segment, i).inputs).collect();
        assert_eq!(batch.inputs, want, "segment {segment}, examples {range:?}");
    }
    let saved = loader.state();
    let second: Vec<_> = (0..6).map(|_| loader.next_batch()).collect();
    assert_eq!(first, second, "every epoch is the same walk");
    let mut resumed = MqarLoader::new(data, 4, 0, Order::Sequential).unwrap();
    resumed.restore(&saved).unwrap();
    assert_eq!(resumed.next_batch(), first[0]);
}

#[test]
fn evaluation_batches_keep_one_length_each() {
    let data = dataset(&[(64, 4, 5), (128, 8, 3)], Split::Test);
    let batches = mqar_eval_batches(&data, 2, None).unwrap();
    let shapes: Vec<(usize, usize)> = batches.iter().map(|b| (b.batch_size, b.seq_len)).collect();
    assert_eq!(shapes, vec![(2, 64), (2, 64), (1, 64), (2, 128), (1, 128)]);
    assert_eq!(&batches[3].inputs[..128], &data.segment_example(1, 0).inputs[..]);
    let capped = mqar_eval_batches(&data, 2, Some(2)).unwrap();
    assert_eq!(capped.iter().map(|b| b.seq_len).collect::<Vec<_>>(), vec![64, 64]);
    let capped = mqar_eval_batches(&data, 2, Some(3)).unwrap();
    assert_eq!(capped.iter().map(|b| b.seq_len).collect::<Vec<_>>(), vec![64, 64, 128]);
}
