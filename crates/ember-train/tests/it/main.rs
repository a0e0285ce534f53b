//! ember-train's integration tests, one module per subject, in one test binary (one link and one
//! set of generic instantiations instead of one per file: the CI build's largest cost).

mod bench;
mod conformance;
mod linearize;
mod mqar;
mod niah;
mod optim;
mod recipe;
mod sweep;
mod train;
mod zoo;
