//! ember-models's integration tests, one module per subject, in one test binary (one link and one
//! set of generic instantiations instead of one per file: the CI build's largest cost).

mod hf;
mod lm;
