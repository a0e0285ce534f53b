//! Shared bootstrap machinery: seeded resampling and percentile intervals.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// How many resamples to draw and from which seed, so reports are reproducible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapConfig {
    /// Number of resamples; 0 turns the bootstrap off.
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: 200,
            seed: 0,
        }
    }
}

impl BootstrapConfig {
    pub(crate) fn rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed)
    }
}

/// A 5th–95th percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// The 5th and 95th percentiles of the finite samples; `None` when there are none.
    pub fn from_samples(samples: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            lo: percentile(&v, 0.05),
            hi: percentile(&v, 0.95),
        })
    }
}

/// Linear-interpolation percentile of sorted data (`q` in 0..=1).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

/// `items.len()` draws with replacement from `items`.
pub(crate) fn resample<T: Clone>(items: &[T], rng: &mut impl Rng) -> Vec<T> {
    (0..items.len())
        .map(|_| items[rng.random_range(0..items.len())].clone())
        .collect()
}
