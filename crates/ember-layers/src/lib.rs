//! Token mixers and channel mixers for ember, one file per family.
//!
//! Every token mixer has a serde config (what a recipe's `[model.mixers.NAME]` table holds), a
//! training `forward` and a recurrent `step` over an explicit state for generation. The
//! [`mixer`] module maps a recipe's `kind = "..."` to them.

pub mod aaren;
pub mod attention;
pub mod based;
pub mod conv;
pub mod gla;
pub mod init;
pub mod linear_attention;
pub mod lolcats;
pub mod lora;
pub mod mixer;
pub mod mlp;
pub mod moh;
pub mod norm;
pub mod rat;
pub mod seeded;
pub mod titans;
pub mod transnormer;
pub mod zoology_conv;

pub use mixer::{Mixer, MixerConfig, MixerState};

/// Where a mixer sits in the model: some layers depend on it (TransNormer's decay schedule
/// varies with depth; its LRPE is on the first layer only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerContext {
    pub d_model: usize,
    /// 0-based layer index.
    pub layer: usize,
    pub n_layers: usize,
}

impl LayerContext {
    /// A lone layer (layer 0 of 1): tests and benchmarks of a single mixer.
    pub fn single(d_model: usize) -> Self {
        Self { d_model, layer: 0, n_layers: 1 }
    }
}
