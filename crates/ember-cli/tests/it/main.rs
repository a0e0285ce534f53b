//! ember-cli's integration tests, one module per subject, in one test binary: one link and one
//! set of generic instantiations per crate instead of one per file.

mod common;
mod backends;
mod cli;
mod tasks;
