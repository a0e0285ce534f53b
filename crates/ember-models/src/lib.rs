//! Language models assembled from a per-layer schedule of token mixers, and Hugging Face
//! decoder checkpoints (Llama, Qwen2, Mistral) read into and written from them.
pub mod hf;
pub mod lm;

pub use lm::{Lm, LmConfig, LmState, Schedule};
