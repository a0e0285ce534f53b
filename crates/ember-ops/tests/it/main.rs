//! ember-ops's integration tests, one module per subject, in one test binary: one link and one
//! set of generic instantiations per crate instead of one per file.
//! The f64 tests keep binaries of their own (`tests/*.rs`): Burn fixes a device's default float
//! dtype for the whole process at its first use, `NdArray<f32>` and `NdArray<f64>` share the
//! device, and in one process with these modules the f64 tests failed with dtype mismatches.

mod aaren;
mod gated;
mod head_loss;
mod hybrid;
mod kernels;
mod precision;
