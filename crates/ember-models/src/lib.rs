//! Language models assembled from a per-layer schedule of token mixers.
pub mod lm;

pub use lm::{Lm, LmConfig, LmState, Schedule};
