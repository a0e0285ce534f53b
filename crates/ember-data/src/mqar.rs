//! MQAR, multi-query associative recall (Zoology; LAYERS.md §10): a synthetic task that asks a
//! model to recall, at each query, the value paired with a key earlier in the sequence.
//!
//! An example of length `L` with `K` pairs is `κ₁ ν₁ κ₂ ν₂ … κ_K ν_K` followed by a query region
//! where each key appears again at an even offset `2γ` (slots drawn without replacement with
//! power-law weights `p(g) ∝ a·g^(a−1)`, so most queries come soon after the context); the target
//! at the position of a re-appearing key is its value, and every other target is [`IGNORE`].
//! Keys come from `1..⌊V/2⌋`, values from `⌊V/2⌋..V`, distinct within an example.
//!
//! Every example is a pure function of `(seed, split, segment, index)` (ChaCha8, raw output
//! only), so a dataset needs no storage and a run resumes exactly from a loader position.
//! Training batches hold examples of one length each (Zoology's rule), so a training mixture
//! may mix lengths: short, easy sequences teach recall fastest.

use crate::loader::{below, IGNORE};
use crate::synthetic::{distinct, unit, Dataset, Example, Loader, Order, Segment, Task};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::synthetic::{eval_batches as mqar_eval_batches, segment_batch as mqar_batch, Split};

/// The distribution one segment draws from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MqarSpec {
    /// Token ids used are `0..vocab_size`.
    pub vocab_size: usize,
    /// Input length `L` (even).
    pub seq_len: usize,
    /// Key-value pairs per example `K`.
    pub pairs: usize,
    /// Power-law exponent `a` of the query-gap distribution (Zoology's default 0.01).
    pub power_a: f64,
    /// Fill the unused query-region positions with random tokens instead of 0.
    pub random_non_queries: bool,
}

/// One example: `inputs` and next-token `targets`, both `seq_len` long.
pub type MqarExample = Example;

impl MqarSpec {
    /// Checks Zoology's constraints: `L` even, `V > L`, `4K ≤ L`, and room for `K` distinct
    /// keys in `1..⌊V/2⌋` and `K` distinct values in `⌊V/2⌋..V`. An error names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let (v, l, k) = (self.vocab_size, self.seq_len, self.pairs);
        if !(self.power_a > 0.0 && self.power_a.is_finite()) {
            return Err(("power_a", format!("must be positive, got {}", self.power_a)));
        }
        if k == 0 {
            return Err(("pairs", "must be at least 1".into()));
        }
        if l == 0 || l % 2 != 0 {
            return Err(("seq_len", format!("must be a positive even number, got {l}")));
        }
        if 4 * k > l {
            return Err(("pairs", format!("{k} pairs need seq_len ≥ 4·pairs = {} (a context of 2·pairs and as many query slots), got {l}", 4 * k)));
        }
        if v <= l {
            return Err(("vocab_size", format!("must exceed seq_len ({l}), got {v}")));
        }
        if k > v / 2 - 1 {
            return Err(("pairs", format!("{k} distinct keys do not fit in 1..{} (vocab_size {v})", v / 2)));
        }
        Ok(())
    }

    /// Number of query slots, `(L − 2K) / 2`.
    pub fn slots(&self) -> usize {
        (self.seq_len - 2 * self.pairs) / 2
    }

    /// Probability of each query slot `γ = 0..slots` (gap `g = γ + 1`): `∝ a·g^(a−1)`.
    pub fn gap_probabilities(&self) -> Vec<f64> {
        let a = self.power_a;
        let w: Vec<f64> = (1..=self.slots()).map(|g| a * (g as f64).powf(a - 1.0)).collect();
        let total: f64 = w.iter().sum();
        w.into_iter().map(|x| x / total).collect()
    }

    /// Draws one example from `rng`.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> MqarExample {
        let half = self.vocab_size / 2;
        let keys = distinct(rng, 1, half, self.pairs);
        let values = distinct(rng, half, self.vocab_size, self.pairs);
        let pairs: Vec<(u32, u32)> = keys.into_iter().zip(values).collect();
        let slots = weighted_distinct(rng, &self.gap_probabilities(), self.pairs);
        let mut example = assemble(self.seq_len, &pairs, &slots);
        if self.random_non_queries {
            let context = 2 * self.pairs;
            for x in &mut example.inputs[context..] {
                if *x == 0 {
                    *x = below(rng, self.vocab_size as u64) as u32;
                }
            }
        }
        example
    }
}

/// Builds an example from its `pairs` and the query slot `slots[i]` of pair `i` (steps 2–6 of
/// §10.1): context, then a zero query region with key `i` at offset `2·slots[i]`.
pub fn assemble(seq_len: usize, pairs: &[(u32, u32)], slots: &[usize]) -> MqarExample {
    assert_eq!(pairs.len(), slots.len(), "one slot per pair");
    let context = 2 * pairs.len();
    let mut full = vec![0u32; seq_len + 1];
    let mut labels = vec![IGNORE; seq_len + 1];
    for (i, &(key, value)) in pairs.iter().enumerate() {
        full[2 * i] = key;
        full[2 * i + 1] = value;
        let at = context + 2 * slots[i];
        full[at] = key;
        labels[at + 1] = value;
    }
    MqarExample { inputs: full[..seq_len].to_vec(), targets: labels[1..].to_vec() }
}

/// `n` distinct indices drawn one after another with probabilities `p` renormalised over the
/// indices not yet drawn (NumPy's `choice(replace=False, p=p)` distribution).
fn weighted_distinct(rng: &mut ChaCha8Rng, p: &[f64], n: usize) -> Vec<usize> {
    let mut w = p.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let total: f64 = w.iter().sum();
        let mut x = unit(rng) * total;
        // The last index with weight left, in case rounding carries `x` past the end.
        let mut pick = w.iter().rposition(|&wi| wi > 0.0).expect("fewer draws than slots");
        for (i, &wi) in w.iter().enumerate() {
            if wi > 0.0 && x < wi {
                pick = i;
                break;
            }
            x -= wi;
        }
        w[pick] = 0.0;
        out.push(pick);
    }
    out
}

impl Task for MqarSpec {
    const NAME: &'static str = "MQAR";
    const SECTION: &'static str = "data.mqar";
    const STREAM: u8 = 0;
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Example {
        MqarSpec::sample(self, rng)
    }
}

/// `examples` draws from one [`MqarSpec`].
pub type MqarSegment = Segment<MqarSpec>;

/// A dataset of MQAR segments; example `i` counts through the segments in order.
pub type MqarDataset = Dataset<MqarSpec>;

/// Endless shuffled training batches of an MQAR dataset (see [`Loader`]).
pub type MqarLoader = Loader<MqarSpec>;

/// `[data.mqar]` of a recipe: train on MQAR instead of text.
///
/// ```toml
/// [data.mqar]
/// vocab_size = 8192
/// train = [{ pairs = 4, seq_len = 64, examples = 20000 }, { pairs = 64, examples = 20000 }]
/// test = [{ pairs = 16, examples = 1000 }, { pairs = 128, seq_len = 512, examples = 500 }]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqarConfig {
    /// Token ids `0..vocab_size`; `model.vocab_size` must be at least this. Default 8192.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Exponent `a` of the query-gap power law. Default 0.01 (Zoology).
    #[serde(default = "default_power_a")]
    pub power_a: f64,
    /// Replace the zeros between queries by random tokens. Default false (Zoology's figure
    /// configs; its generator's own default is true).
    #[serde(default)]
    pub random_non_queries: bool,
    /// Seed of the examples; default `train.seed`. Train and test sets never share a stream.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Training batch order: `"shuffled"` (default) or `"sequential"`, Zoology's loader (each
    /// segment in order, segment after segment as listed, the same every epoch).
    #[serde(default)]
    pub order: Order,
    /// Training segments (a batch holds one length; lengths may differ). Required.
    pub train: Vec<MqarSegmentConfig>,
    /// Test segments (validation during training, and `ember eval mqar`); any length.
    #[serde(default)]
    pub test: Vec<MqarSegmentConfig>,
}

/// One `{ pairs, examples, seq_len }` entry of `data.mqar.train` or `data.mqar.test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqarSegmentConfig {
    /// Key-value pairs per example.
    pub pairs: usize,
    /// Examples in the segment.
    pub examples: usize,
    /// Sequence length; default `data.seq_len`.
    #[serde(default)]
    pub seq_len: Option<usize>,
}

fn default_vocab() -> usize {
    8192
}
fn default_power_a() -> f64 {
    0.01
}

impl MqarConfig {
    /// Checks every segment against `seq_len` (the recipe's `data.seq_len`); an error names the
    /// key under `data.mqar` (e.g. `train[1].pairs`) and what is wrong.
    pub fn validate(&self, seq_len: usize) -> Result<(), (String, String)> {
        if self.train.is_empty() {
            return Err(("train".into(), "needs at least one segment, e.g. [{ pairs = 16, examples = 10000 }]".into()));
        }
        for (list, segments) in [("train", &self.train), ("test", &self.test)] {
            for (i, s) in segments.iter().enumerate() {
                let key = |k: &str| format!("{list}[{i}].{k}");
                if s.examples == 0 {
                    return Err((key("examples"), "must be at least 1".into()));
                }
                if let Err((field, message)) = self.spec(s, seq_len).validate() {
                    return Err(match field {
                        "pairs" | "seq_len" => (key(field), message),
                        _ => (field.to_string(), message),
                    });
                }
            }
        }
        Ok(())
    }

    fn spec(&self, s: &MqarSegmentConfig, seq_len: usize) -> MqarSpec {
        MqarSpec {
            vocab_size: self.vocab_size,
            seq_len: s.seq_len.unwrap_or(seq_len),
            pairs: s.pairs,
            power_a: self.power_a,
            random_non_queries: self.random_non_queries,
        }
    }

    /// The train or test set, for a recipe with `data.seq_len = seq_len` and `train.seed = seed`.
    pub fn dataset(&self, split: Split, seq_len: usize, seed: u64) -> MqarDataset {
        let list = match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        };
        let segments = list.iter().map(|s| MqarSegment { spec: self.spec(s, seq_len), examples: s.examples }).collect();
        MqarDataset { segments, seed: self.seed.unwrap_or(seed), split }
    }
}
