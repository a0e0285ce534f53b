//! Parameter initialisation shared by the layers.
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;

/// Standard deviation of the normal initialiser for projections and embeddings (GPT-2 style).
pub const INIT_STD: f64 = 0.02;

/// A linear map `d_in -> d_out` with normal(0, `std`) weights and zero bias.
pub fn linear<B: Backend>(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Linear<B> {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    if let Some(b) = layer.bias.take() {
        layer.bias = Some(b.map(|t| t.zeros_like()));
    }
    layer
}
