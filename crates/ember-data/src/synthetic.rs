//! What every synthetic task ([`crate::mqar`], [`crate::niah`]) shares: examples labelled at a
//! few positions ([`IGNORE`] elsewhere), datasets of segments whose examples are pure functions
//! of `(seed, split, segment, index)`, evaluation batches, and the shuffled, exactly resumable
//! training loader.
//!
//! A task is a [`Task`]: one segment's distribution, which knows its sequence length and draws
//! an example from a ChaCha8 stream. [`Dataset`] keys the stream by the task's own tag, the seed,
//! the split and the segment, and picks the stream by the example's index, so no example is
//! stored and no two tasks, splits or segments share random numbers.

use crate::loader::{below, permutation, Batch, LoaderState, IGNORE};
use anyhow::{bail, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One example: `inputs` and next-token `targets`, both `seq_len` long; a target of [`IGNORE`]
/// is not scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Example {
    /// Positions whose target is scored (the queries).
    pub fn queries(&self) -> impl Iterator<Item = usize> + '_ {
        self.targets.iter().enumerate().filter(|(_, &t)| t != IGNORE).map(|(i, _)| i)
    }
}

/// The distribution of one segment of a synthetic task.
pub trait Task {
    /// The task's name in messages (`"MQAR"`).
    const NAME: &'static str;
    /// The recipe section that configures it (`"data.mqar"`).
    const SECTION: &'static str;
    /// Byte 17 of the ChaCha8 key: tasks never share a random stream. MQAR's is 0, which keeps
    /// its examples what they were before other tasks existed.
    const STREAM: u8;
    /// Input length of every example.
    fn seq_len(&self) -> usize;
    /// Draws one example from `rng`.
    fn sample(&self, rng: &mut ChaCha8Rng) -> Example;
}

/// Train or test examples: the two never share a random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// `examples` draws from one spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment<T> {
    pub spec: T,
    pub examples: usize,
}

/// A dataset of segments; example `i` counts through the segments in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset<T> {
    pub segments: Vec<Segment<T>>,
    pub seed: u64,
    pub split: Split,
}

impl<T: Task> Dataset<T> {
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.examples).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example `index` of the whole dataset.
    pub fn example(&self, mut index: usize) -> Example {
        for (s, segment) in self.segments.iter().enumerate() {
            if index < segment.examples {
                return self.segment_example(s, index);
            }
            index -= segment.examples;
        }
        panic!("{} example index past the end of the dataset", T::NAME);
    }

    /// Example `index` of segment `segment`: the ChaCha8 key is (seed, split, segment, task),
    /// the stream is the index.
    pub fn segment_example(&self, segment: usize, index: usize) -> Example {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8] = match self.split {
            Split::Train => 1,
            Split::Test => 2,
        };
        key[9..17].copy_from_slice(&(segment as u64).to_le_bytes());
        key[17] = T::STREAM;
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(index as u64);
        self.segments[segment].spec.sample(&mut rng)
    }
}

impl Batch {
    fn push(&mut self, example: Example) {
        self.inputs.extend(example.inputs);
        self.targets.extend(example.targets);
    }
}

/// Examples `range` of segment `segment` as one batch.
pub fn segment_batch<T: Task>(data: &Dataset<T>, segment: usize, range: std::ops::Range<usize>) -> Batch {
    let mut batch = Batch::empty(range.len(), data.segments[segment].spec.seq_len());
    for i in range {
        batch.push(data.segment_example(segment, i));
    }
    batch
}

/// All the examples of segment `segment`, in order, in batches of at most `batch_size`.
pub fn segment_batches<T: Task>(data: &Dataset<T>, segment: usize, batch_size: usize) -> Vec<Batch> {
    let n = data.segments[segment].examples;
    let size = batch_size.max(1);
    (0..n).step_by(size).map(|start| segment_batch(data, segment, start..(start + size).min(n))).collect()
}

/// Evaluation batches of a test set: each batch holds examples of one segment, in order. With
/// `max_batches`, that many batches spread evenly over all of them.
pub fn eval_batches<T: Task>(data: &Dataset<T>, batch_size: usize, max_batches: Option<usize>) -> Result<Vec<Batch>> {
    if batch_size == 0 {
        bail!("batch_size must be at least 1");
    }
    let mut plan = Vec::new();
    for (s, segment) in data.segments.iter().enumerate() {
        for start in (0..segment.examples).step_by(batch_size) {
            plan.push((s, start, (segment.examples - start).min(batch_size)));
        }
    }
    if let Some(max) = max_batches.filter(|&m| m < plan.len()) {
        let total = plan.len();
        plan = (0..max).map(|i| plan[i * total / max]).collect();
    }
    Ok(plan.into_iter().map(|(s, start, n)| segment_batch(data, s, start..start + n)).collect())
}

/// The order in which a [`Loader`] hands out an epoch's batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Examples shuffled within each length, then batches shuffled, afresh every epoch.
    #[default]
    Shuffled,
    /// Zoology's loader (`shuffle=False`): each segment's examples in index order, segment
    /// after segment as listed, the same every epoch. With short segments listed first this is
    /// a short-first curriculum within every epoch.
    Sequential,
}

/// Endless training batches of a synthetic dataset. With [`Order::Shuffled`] each epoch shuffles
/// the examples of each length, cuts them into batches (the last of a length may be smaller),
/// and shuffles the batches, all as pure functions of (seed, epoch); with [`Order::Sequential`]
/// every epoch walks the segments in order. The position is (epoch, batches handed out). Every
/// batch holds examples of one length (Zoology's rule), so a mixture may mix lengths.
pub struct Loader<T> {
    data: Dataset<T>,
    batch_size: usize,
    order: Order,
    seed: u64,
    epoch: u64,
    cursor: usize,
    /// This epoch's batches: (segment, example) pairs.
    plan: Vec<Vec<(usize, usize)>>,
}

impl<T: Task> Loader<T> {
    pub fn new(data: Dataset<T>, batch_size: usize, seed: u64, order: Order) -> Result<Self> {
        if batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if data.is_empty() {
            bail!("the {} training set has no examples", T::NAME);
        }
        let plan = epoch_plan(&data, batch_size, order, seed, 0);
        Ok(Self { data, batch_size, order, seed, epoch: 0, cursor: 0, plan })
    }

    pub fn next_batch(&mut self) -> Batch {
        if self.cursor == self.plan.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.plan = epoch_plan(&self.data, self.batch_size, self.order, self.seed, self.epoch);
        }
        let members = &self.plan[self.cursor];
        self.cursor += 1;
        let seq_len = self.data.segments[members[0].0].spec.seq_len();
        let mut batch = Batch::empty(members.len(), seq_len);
        for &(s, i) in members {
            batch.push(self.data.segment_example(s, i));
        }
        batch
    }

    /// The position; `num_windows` counts batches per epoch, `seq_len` is the longest length.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            cursor: self.cursor as u64,
            seed: self.seed,
            seq_len: self.data.segments.iter().map(|s| s.spec.seq_len()).max().unwrap_or(0),
            batch_size: self.batch_size,
            num_windows: self.plan.len() as u64,
        }
    }

    /// Continues from `state`; its seed replaces this loader's.
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        let plan = epoch_plan(&self.data, self.batch_size, self.order, state.seed, state.epoch);
        if state.batch_size != self.batch_size || state.num_windows != plan.len() as u64 || state.cursor > state.num_windows {
            bail!(
                "cannot restore the {} loader: the state (batch_size {}, {} batches per epoch, at batch {}) does not fit \
                 this training set (batch_size {}, {} batches per epoch); was {} or train.batch_size changed?",
                T::NAME,
                state.batch_size,
                state.num_windows,
                state.cursor,
                self.batch_size,
                plan.len(),
                T::SECTION,
            );
        }
        self.seed = state.seed;
        self.epoch = state.epoch;
        self.cursor = state.cursor as usize;
        self.plan = plan;
        Ok(())
    }
}

/// The batches of one epoch (see [`Loader`]).
fn epoch_plan<T: Task>(data: &Dataset<T>, batch_size: usize, order: Order, seed: u64, epoch: u64) -> Vec<Vec<(usize, usize)>> {
    if order == Order::Sequential {
        return (0..data.segments.len())
            .flat_map(|s| {
                let n = data.segments[s].examples;
                (0..n).step_by(batch_size).map(move |start| (start..(start + batch_size).min(n)).map(|i| (s, i)).collect())
            })
            .collect();
    }
    let mut lengths: Vec<usize> = data.segments.iter().map(|s| s.spec.seq_len()).collect();
    lengths.sort();
    lengths.dedup();
    let mut batches = Vec::new();
    for (g, &len) in lengths.iter().enumerate() {
        let members: Vec<(usize, usize)> = data
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.spec.seq_len() == len)
            .flat_map(|(s, seg)| (0..seg.examples).map(move |i| (s, i)))
            .collect();
        // Each length has its own shuffle stream.
        let order = permutation(members.len(), seed.wrapping_add((g as u64 + 1) << 32), epoch);
        for chunk in order.chunks(batch_size) {
            batches.push(chunk.iter().map(|&k| members[k]).collect::<Vec<_>>());
        }
    }
    let order = permutation(batches.len(), seed, epoch);
    order.into_iter().map(|k| std::mem::take(&mut batches[k])).collect()
}

/// `n` distinct integers from `lo..hi`, in random order (a partial Fisher–Yates shuffle).
pub(crate) fn distinct(rng: &mut ChaCha8Rng, lo: usize, hi: usize, n: usize) -> Vec<u32> {
    let mut pool: Vec<u32> = (lo as u32..hi as u32).collect();
    for i in 0..n {
        let j = i + below(rng, (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool
}

/// Uniform in `[0, 1)` with 53 random bits.
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
