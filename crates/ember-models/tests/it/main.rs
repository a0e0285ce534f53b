//! ember-models's integration tests, one module per subject, in one test binary: one link and one
//! set of generic instantiations per crate instead of one per file.

mod hf;
mod lm;
