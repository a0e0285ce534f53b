//! ember-train's integration tests, one module per subject, in one test binary: one link and one
//! set of generic instantiations per crate instead of one per file.

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
