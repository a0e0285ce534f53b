//! NIAH, needle in a haystack: a synthetic retrieval task that asks a model to find a key-value
//! pair hidden at some depth of a long run of random filler, and recall the value when the key
//! is asked for at the end.
//!
//! An example of length `L` over the vocabulary `0..V` with `n` needles is built from three
//! disjoint token ranges,
//!
//! - keys from `1..⌊V/4⌋` and values from `⌊V/4⌋..⌊V/2⌋`, distinct within an example,
//! - filler from `⌊V/2⌋..V`, drawn uniformly and independently (token 0 is never used),
//!
//! and three parts:
//!
//! 1. a haystack of `F = L − 3n` filler tokens;
//! 2. `n` needles, each the two tokens `κᵢ νᵢ`, inserted into the haystack: needle `i` goes after
//!    `fᵢ` filler tokens, where `fᵢ = round(d·F)` for a segment with a fixed depth `d ∈ [0, 1]`,
//!    and `fᵢ` is uniform on `0..=F` (independently per needle) without one. Depth is thus the
//!    fraction of the haystack before the needle: 0 puts it at the very start of the sequence,
//!    1 right before the query. Needles at the same offset sit next to each other, in the order
//!    of their index (keys are random, so that order is too);
//! 3. a query region of `n` tokens at the end: every needle's key once, in a random order.
//!
//! The target at a query position (a key `κᵢ`) is its value `νᵢ`; every other target is
//! [`IGNORE`]. Accuracy is therefore, as for MQAR, the share of queries whose argmax over the
//! vocabulary is the value. With one needle at depth `d`, the needle starts at position
//! `round(d·(L − 3))` and the query is the last token.
//!
//! Every example is a pure function of `(seed, split, segment, index)` (ChaCha8, raw output only;
//! a stream of its own, never MQAR's), so a dataset needs no storage and a run resumes exactly
//! from a loader position. Batches, the loader and evaluation batches are [`crate::synthetic`]'s.

use crate::loader::{below, IGNORE};
use crate::synthetic::{distinct, Dataset, Example, Loader, Segment, Split, Task};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Tokens of a needle (`κ ν`).
pub const NEEDLE_LEN: usize = 2;

/// The distribution one segment draws from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NiahSpec {
    /// Token ids used are `0..vocab_size`.
    pub vocab_size: usize,
    /// Input length `L`.
    pub seq_len: usize,
    /// Key-value needles per example `n`.
    pub needles: usize,
    /// Fixed depth of every needle in `[0, 1]`; `None` draws each needle's offset uniformly.
    pub depth: Option<f64>,
}

/// The three token ranges of a vocabulary of `vocab_size` ids: keys, values, filler.
pub fn token_ranges(vocab_size: usize) -> [std::ops::Range<u32>; 3] {
    let (quarter, half, v) = ((vocab_size / 4) as u32, (vocab_size / 2) as u32, vocab_size as u32);
    [1..quarter, quarter..half, half..v]
}

impl NiahSpec {
    /// Checks that the needles and queries fit in `L` with at least one filler token, that the
    /// key and value ranges hold `n` distinct tokens each, and the depth. An error names the
    /// field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let (v, l, n) = (self.vocab_size, self.seq_len, self.needles);
        if v < 8 {
            return Err(("vocab_size", format!("must be at least 8 (keys, values and filler each need a range), got {v}")));
        }
        if n == 0 {
            return Err(("needles", "must be at least 1".into()));
        }
        if n > v / 4 - 1 {
            return Err(("needles", format!("{n} distinct keys do not fit in 1..{} (vocab_size {v})", v / 4)));
        }
        if l <= 3 * n {
            return Err(("seq_len", format!("must exceed 3·needles = {} (two tokens per needle, one query each, and some haystack), got {l}", 3 * n)));
        }
        if let Some(d) = self.depth {
            if !(0.0..=1.0).contains(&d) {
                return Err(("depth", format!("must be in [0, 1], got {d}")));
            }
        }
        Ok(())
    }

    /// Filler tokens of an example, `F = L − 3n`.
    pub fn haystack(&self) -> usize {
        self.seq_len - (NEEDLE_LEN + 1) * self.needles
    }

    /// Draws one example from `rng`.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Example {
        let [keys, values, filler] = token_ranges(self.vocab_size);
        let k = distinct(rng, keys.start as usize, keys.end as usize, self.needles);
        let v = distinct(rng, values.start as usize, values.end as usize, self.needles);
        let needles: Vec<(u32, u32)> = k.into_iter().zip(v).collect();
        let f = self.haystack();
        let offsets: Vec<usize> = match self.depth {
            Some(d) => vec![(d * f as f64).round() as usize; self.needles],
            None => (0..self.needles).map(|_| below(rng, f as u64 + 1) as usize).collect(),
        };
        // A uniform order of the queries (Fisher–Yates).
        let mut order: Vec<usize> = (0..self.needles).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, below(rng, i as u64 + 1) as usize);
        }
        let haystack: Vec<u32> = (0..f).map(|_| filler.start + below(rng, (filler.end - filler.start) as u64) as u32).collect();
        assemble(&haystack, &needles, &offsets, &order)
    }
}

/// Builds an example from its filler `haystack`, `needles` `(κ, ν)`, the filler tokens `offsets[i]`
/// before needle `i`, and the order in which the query region asks for the needles' keys.
/// Needles at equal offsets keep their index order. `L = haystack + 3·needles`.
pub fn assemble(haystack: &[u32], needles: &[(u32, u32)], offsets: &[usize], order: &[usize]) -> Example {
    assert_eq!(needles.len(), offsets.len(), "one offset per needle");
    assert_eq!(needles.len(), order.len(), "one query per needle");
    let mut by_offset: Vec<usize> = (0..needles.len()).collect();
    by_offset.sort_by_key(|&i| (offsets[i], i));
    let mut inputs = Vec::with_capacity(haystack.len() + 3 * needles.len());
    let mut next = by_offset.into_iter().peekable();
    for at in 0..=haystack.len() {
        while let Some(i) = next.next_if(|&i| offsets[i] == at) {
            inputs.extend([needles[i].0, needles[i].1]);
        }
        if at < haystack.len() {
            inputs.push(haystack[at]);
        }
    }
    assert!(next.peek().is_none(), "a needle offset past the haystack");
    let mut targets = vec![IGNORE; inputs.len()];
    for &i in order {
        inputs.push(needles[i].0);
        targets.push(needles[i].1);
    }
    Example { inputs, targets }
}

impl Task for NiahSpec {
    const NAME: &'static str = "NIAH";
    const SECTION: &'static str = "data.niah";
    const STREAM: u8 = 1;
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Example {
        NiahSpec::sample(self, rng)
    }
}

/// `examples` draws from one [`NiahSpec`].
pub type NiahSegment = Segment<NiahSpec>;

/// A dataset of NIAH segments; example `i` counts through the segments in order.
pub type NiahDataset = Dataset<NiahSpec>;

/// Endless shuffled training batches of a NIAH dataset (see [`Loader`]).
pub type NiahLoader = Loader<NiahSpec>;

/// `[data.niah]` of a recipe: train on NIAH instead of text.
///
/// ```toml
/// [data.niah]
/// vocab_size = 256
/// train = [{ needles = 4, examples = 20000 }, { seq_len = 64, examples = 20000 }]
/// test = [{ examples = 200, depth = 0.5 }, { seq_len = 256, examples = 200 }]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NiahConfig {
    /// Token ids `0..vocab_size`; `model.vocab_size` must be at least this. Default
    /// `model.vocab_size`.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Seed of the examples; default `train.seed`. Train and test sets never share a stream.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Training segments (a batch holds one length; lengths may differ). Required.
    pub train: Vec<NiahSegmentConfig>,
    /// Test segments (validation during training, and `ember eval niah`); any length.
    #[serde(default)]
    pub test: Vec<NiahSegmentConfig>,
}

/// One `{ seq_len, needles, depth, examples }` entry of `data.niah.train` or `data.niah.test`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NiahSegmentConfig {
    /// Examples in the segment.
    pub examples: usize,
    /// Needles per example. Default 1.
    #[serde(default = "one")]
    pub needles: usize,
    /// Sequence length; default `data.seq_len`.
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Fixed depth in `[0, 1]`; default: uniformly random per needle.
    #[serde(default)]
    pub depth: Option<f64>,
}

fn one() -> usize {
    1
}

impl NiahConfig {
    /// The vocabulary of the task for a model of `model_vocab` tokens.
    pub fn vocab(&self, model_vocab: usize) -> usize {
        self.vocab_size.unwrap_or(model_vocab)
    }

    /// Checks every segment against `seq_len` (the recipe's `data.seq_len`) and `model_vocab`
    /// (`model.vocab_size`, the default vocabulary); an error names the key under `data.niah`
    /// (e.g. `test[1].depth`) and what is wrong.
    pub fn validate(&self, seq_len: usize, model_vocab: usize) -> Result<(), (String, String)> {
        if self.train.is_empty() {
            return Err(("train".into(), "needs at least one segment, e.g. [{ needles = 1, examples = 10000 }]".into()));
        }
        self.validate_list("train", &self.train, seq_len, model_vocab)?;
        self.validate_test(seq_len, model_vocab)
    }

    /// [`NiahConfig::validate`] for the test segments alone (an evaluation needs no training set).
    pub fn validate_test(&self, seq_len: usize, model_vocab: usize) -> Result<(), (String, String)> {
        self.validate_list("test", &self.test, seq_len, model_vocab)
    }

    fn validate_list(&self, list: &str, segments: &[NiahSegmentConfig], seq_len: usize, model_vocab: usize) -> Result<(), (String, String)> {
        for (i, s) in segments.iter().enumerate() {
            let key = |k: &str| format!("{list}[{i}].{k}");
            if s.examples == 0 {
                return Err((key("examples"), "must be at least 1".into()));
            }
            if let Err((field, message)) = self.spec(s, seq_len, model_vocab).validate() {
                return Err(match field {
                    "vocab_size" => (field.to_string(), message),
                    _ => (key(field), message),
                });
            }
        }
        Ok(())
    }

    fn spec(&self, s: &NiahSegmentConfig, seq_len: usize, model_vocab: usize) -> NiahSpec {
        NiahSpec { vocab_size: self.vocab(model_vocab), seq_len: s.seq_len.unwrap_or(seq_len), needles: s.needles, depth: s.depth }
    }

    /// The train or test set, for a recipe with `data.seq_len = seq_len`, `model.vocab_size =
    /// model_vocab` and `train.seed = seed`.
    pub fn dataset(&self, split: Split, seq_len: usize, model_vocab: usize, seed: u64) -> NiahDataset {
        let list = match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        };
        let segments = list.iter().map(|s| NiahSegment { spec: self.spec(s, seq_len, model_vocab), examples: s.examples }).collect();
        NiahDataset { segments, seed: self.seed.unwrap_or(seed), split }
    }
}
