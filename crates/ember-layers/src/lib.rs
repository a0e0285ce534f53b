//! Token mixers and channel mixers for ember, one file per family.
//!
//! Every token mixer has a serde config (what a recipe's `[model.mixers.NAME]` table holds), a
//! training `forward` and a recurrent `step` over an explicit state for generation. The
//! [`mixer`] module maps a recipe's `kind = "..."` to them.

pub mod attention;
pub mod based;
pub mod conv;
pub mod init;
pub mod mixer;
pub mod mlp;
pub mod norm;

pub use mixer::{Mixer, MixerConfig, MixerState};
