//! LoRA adapters (Hu et al. 2021): `W x + (α/r) · B A x` with `A: d_in → r` random and
//! `B: r → d_out` zero at init, so an adapted model starts exactly where its base was.
//! Linearization's stage 2 trains only these (LAYERS.md §9.1).
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use serde::{Deserialize, Serialize};

/// `lora = { rank = 8, alpha = 16.0, targets = ["q", "k", "v", "o"] }` on a mixer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    /// The update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Projections that get an adapter: any of "q", "k", "v", "o".
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_targets() -> Vec<String> {
    ["q", "k", "v", "o"].map(String::from).to_vec()
}

/// The projections an attention-like mixer can adapt.
pub const TARGETS: &[&str] = &["q", "k", "v", "o"];

impl LoraConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("lora.rank must be positive".into());
        }
        if !(self.alpha > 0.0) {
            return Err("lora.alpha must be positive".into());
        }
        if let Some(bad) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(format!("lora.targets: unknown projection {bad:?} (known: {})", TARGETS.join(", ")));
        }
        Ok(())
    }

    pub fn targets(&self, projection: &str) -> bool {
        self.targets.iter().any(|t| t == projection)
    }

    pub fn params(&self, d_in: usize, d_out: usize) -> usize {
        self.rank * (d_in + d_out)
    }

    /// An adapter for a `d_in → d_out` projection if `projection` is a target.
    pub fn init<B: Backend>(&self, projection: &str, d_in: usize, d_out: usize, device: &B::Device) -> Option<LoraAdapter<B>> {
        self.targets(projection).then(|| {
            // PEFT's default: A ~ Kaiming-uniform(a = √5) = U(±1/√d_in), B = 0.
            let bound = 1.0 / (d_in as f64).sqrt();
            LoraAdapter {
                down: Param::from_tensor(Tensor::random([d_in, self.rank], Distribution::Uniform(-bound, bound), device)),
                up: Param::from_tensor(Tensor::zeros([self.rank, d_out], device)),
                scale: self.alpha / self.rank as f64,
            }
        })
    }
}

/// One adapter: `delta(x) = scale · x A B`.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `A: [d_in, r]`.
    pub down: Param<Tensor<B, 2>>,
    /// `B: [r, d_out]`.
    pub up: Param<Tensor<B, 2>>,
    pub scale: f64,
}

impl<B: Backend> LoraAdapter<B> {
    pub fn delta(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x.matmul(self.down.val().unsqueeze()).matmul(self.up.val().unsqueeze()) * self.scale
    }

    /// The dense update `scale · A B`, `[d_in, d_out]` (Burn's `Linear` weight layout).
    pub fn weight(&self) -> Tensor<B, 2> {
        self.down.val().matmul(self.up.val()) * self.scale
    }
}

/// `linear` with `adapter`'s update folded into columns `start..start + width` of its weight.
pub fn merge<B: Backend>(linear: Linear<B>, adapter: &LoraAdapter<B>, start: usize) -> Linear<B> {
    let Linear { weight, bias } = linear;
    let delta = adapter.weight();
    let [d_in, width] = delta.dims();
    let w = weight.val();
    let merged = w.clone().slice_assign([0..d_in, start..start + width], w.slice([0..d_in, start..start + width]) + delta);
    Linear { weight: Param::from_tensor(merged), bias }
}

/// `linear(x)` plus `adapter`'s update, if any.
pub fn forward<B: Backend>(linear: &Linear<B>, adapter: &Option<LoraAdapter<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match adapter {
        Some(a) => linear.forward(x.clone()) + a.delta(x),
        None => linear.forward(x),
    }
}
