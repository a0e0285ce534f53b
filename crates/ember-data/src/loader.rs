//! Packed, shuffled, resumable batches of fixed-length windows over a token stream.
//!
//! The stream (documents separated by EOS) is cut into windows of `seq_len + 1` tokens
//! starting at multiples of `seq_len`; a window gives `inputs = w[..seq_len]` and
//! `targets = w[1..]`, so consecutive windows share one token and every token except the
//! first is a target exactly once per epoch. Windows cross document boundaries (the model
//! sees EOS and learns to start over), which wastes no tokens on padding.

use anyhow::{bail, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::mqar::MqarLoader;
use crate::niah::NiahLoader;
use crate::shards::TokenShards;

/// A target that contributes no loss (synthetic tasks such as MQAR and NIAH label a few positions only).
pub const IGNORE: u32 = u32::MAX;

/// `batch_size` rows of `seq_len` tokens, row-major. A target of [`IGNORE`] is not scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Everything needed to continue a [`PackedLoader`] exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    /// Windows of the current epoch already handed out.
    pub cursor: u64,
    pub seed: u64,
    pub seq_len: usize,
    pub batch_size: usize,
    pub num_windows: u64,
}

/// The training batches of a run: windows of a token stream, or examples of a synthetic task.
pub enum TrainLoader {
    Packed(PackedLoader),
    Mqar(MqarLoader),
    Niah(NiahLoader),
}

impl TrainLoader {
    pub fn next_batch(&mut self) -> Batch {
        match self {
            TrainLoader::Packed(l) => l.next_batch(),
            TrainLoader::Mqar(l) => l.next_batch(),
            TrainLoader::Niah(l) => l.next_batch(),
        }
    }

    pub fn state(&self) -> LoaderState {
        match self {
            TrainLoader::Packed(l) => l.state(),
            TrainLoader::Mqar(l) => l.state(),
            TrainLoader::Niah(l) => l.state(),
        }
    }

    /// Continues from `state` (see [`PackedLoader::restore`]).
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        match self {
            TrainLoader::Packed(l) => l.restore(state),
            TrainLoader::Mqar(l) => l.restore(state),
            TrainLoader::Niah(l) => l.restore(state),
        }
    }
}

/// Endless training batches: each epoch visits every window once in an order fixed by
/// (seed, epoch), then moves on to the next epoch's order.
pub struct PackedLoader {
    data: TokenShards,
    seq_len: usize,
    batch_size: usize,
    seed: u64,
    num_windows: usize,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
    buf: Vec<u32>,
}

impl PackedLoader {
    pub fn new(data: TokenShards, seq_len: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        let num_windows = num_windows(&data, seq_len)?;
        let order = permutation(num_windows, seed, 0);
        Ok(Self {
            data,
            seq_len,
            batch_size,
            seed,
            num_windows,
            epoch: 0,
            cursor: 0,
            order,
            buf: Vec::new(),
        })
    }

    pub fn next_batch(&mut self) -> Batch {
        let mut batch = Batch::empty(self.batch_size, self.seq_len);
        for _ in 0..self.batch_size {
            if self.cursor == self.num_windows {
                self.epoch += 1;
                self.cursor = 0;
                self.order = permutation(self.num_windows, self.seed, self.epoch);
            }
            let window = self.order[self.cursor];
            self.cursor += 1;
            push_window(&self.data, window, self.seq_len, &mut self.buf, &mut batch);
        }
        batch
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            cursor: self.cursor as u64,
            seed: self.seed,
            seq_len: self.seq_len,
            batch_size: self.batch_size,
            num_windows: self.num_windows as u64,
        }
    }

    /// Continues from `state`. The state's seed replaces this loader's seed, so a resumed
    /// run reproduces the original run's batches whatever seed it was constructed with.
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        if state.seq_len != self.seq_len {
            bail!("cannot restore loader state: it was saved with seq_len {} but this loader has seq_len {}", state.seq_len, self.seq_len);
        }
        if state.batch_size != self.batch_size {
            bail!("cannot restore loader state: it was saved with batch_size {} but this loader has batch_size {}", state.batch_size, self.batch_size);
        }
        if state.num_windows != self.num_windows as u64 {
            bail!(
                "cannot restore loader state: it was saved on a dataset of {} windows but {} has {} (different data)",
                state.num_windows,
                self.data.dir().display(),
                self.num_windows
            );
        }
        if state.cursor > state.num_windows {
            bail!(
                "cannot restore loader state: cursor {} is past the {} windows of an epoch",
                state.cursor,
                state.num_windows
            );
        }
        self.seed = state.seed;
        self.epoch = state.epoch;
        self.cursor = state.cursor as usize;
        self.order = permutation(self.num_windows, self.seed, self.epoch);
        Ok(())
    }

    pub fn num_windows(&self) -> usize {
        self.num_windows
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Deterministic batches for evaluation, in stream order, no shuffling. When
    /// `max_batches * batch_size` is fewer than the windows available, the windows are
    /// spread evenly over the whole set (so a capped eval still sees all of it); otherwise
    /// every window is used and the last batch may be smaller than `batch_size`.
    pub fn eval_batches(
        data: &TokenShards,
        seq_len: usize,
        batch_size: usize,
        max_batches: usize,
    ) -> Result<Vec<Batch>> {
        if batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        let total = num_windows(data, seq_len)?;
        let wanted = total.min(max_batches.saturating_mul(batch_size));
        let windows: Vec<usize> = (0..wanted)
            .map(|i| (i as u128 * total as u128 / wanted as u128) as usize)
            .collect();
        let mut batches = Vec::new();
        let mut buf = Vec::new();
        for chunk in windows.chunks(batch_size) {
            let mut batch = Batch::empty(chunk.len(), seq_len);
            for &w in chunk {
                push_window(data, w, seq_len, &mut buf, &mut batch);
            }
            batches.push(batch);
        }
        Ok(batches)
    }
}

impl Batch {
    pub(crate) fn empty(batch_size: usize, seq_len: usize) -> Self {
        let n = batch_size * seq_len;
        Batch {
            inputs: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            batch_size,
            seq_len,
        }
    }
}

fn num_windows(data: &TokenShards, seq_len: usize) -> Result<usize> {
    if seq_len == 0 {
        bail!("seq_len must be at least 1");
    }
    let n = data.num_tokens();
    if n < seq_len + 1 {
        bail!(
            "dataset {} has {n} tokens, fewer than seq_len + 1 = {} needed for one training window",
            data.dir().display(),
            seq_len + 1
        );
    }
    Ok((n - 1) / seq_len)
}

fn push_window(
    data: &TokenShards,
    window: usize,
    seq_len: usize,
    buf: &mut Vec<u32>,
    batch: &mut Batch,
) {
    let start = window * seq_len;
    buf.clear();
    data.read_into(start..start + seq_len + 1, buf);
    batch.inputs.extend_from_slice(&buf[..seq_len]);
    batch.targets.extend_from_slice(&buf[1..]);
}

/// Fisher–Yates shuffle of `0..n` driven by ChaCha8 keyed by `seed`, on stream `epoch`.
/// Only the raw ChaCha output is used (not `rand`'s range sampling, whose algorithm may
/// change between releases), so saved loader states stay valid across dependency updates.
pub(crate) fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Uniform integer in `0..n` (rejection sampling, no modulo bias).
pub(crate) fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let rem = (u64::MAX % n + 1) % n; // 2^64 mod n
    loop {
        let x = rng.next_u64();
        if x <= u64::MAX - rem {
            return x % n;
        }
    }
}
