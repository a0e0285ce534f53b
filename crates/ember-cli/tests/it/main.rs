//! ember-cli's integration tests, one module per subject, in one test binary (one link and one
//! set of generic instantiations instead of one per file: the CI build's largest cost).

mod common;
mod backends;
mod cli;
mod tasks;
