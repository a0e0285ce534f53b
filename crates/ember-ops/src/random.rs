//! Random tensors from a generator of their own.
//!
//! `Tensor::random` draws from the backend's process-wide generator, which every thread shares:
//! whatever another thread seeds or draws in between changes the values. A [`TensorRng`] is a
//! local, seeded generator (ChaCha8), so the tensors it makes depend only on its seed and the
//! order of the draws, on every backend and under any number of threads. Tests and benchmarks
//! draw their inputs from one; initial weights go through `ember_layers::seeded`.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// A seeded generator of random tensors (see the module docs).
#[derive(Clone, Debug)]
pub struct TensorRng(ChaCha8Rng);

impl TensorRng {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// `N(0, std²)` values of the given shape.
    pub fn normal<B: Backend, const N: usize>(&mut self, shape: [usize; N], std: f64, device: &B::Device) -> Tensor<B, N> {
        let normal = Normal::new(0.0, std).unwrap_or_else(|e| panic!("normal with std {std}: {e}"));
        self.sample(shape, normal, device)
    }

    /// Values uniform on `[low, high)` of the given shape.
    pub fn uniform<B: Backend, const N: usize>(&mut self, shape: [usize; N], low: f64, high: f64, device: &B::Device) -> Tensor<B, N> {
        let uniform = Uniform::new(low, high).unwrap_or_else(|e| panic!("uniform on [{low}, {high}): {e}"));
        self.sample(shape, uniform, device)
    }

    /// Draws in f64 and converts to the device's default float dtype (as `Tensor::from_data`
    /// does), so a seed gives the same values, up to rounding, in every precision.
    fn sample<B: Backend, const N: usize>(&mut self, shape: [usize; N], dist: impl Distribution<f64>, device: &B::Device) -> Tensor<B, N> {
        let values: Vec<f64> = (0..shape.iter().product()).map(|_| dist.sample(&mut self.0)).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}
