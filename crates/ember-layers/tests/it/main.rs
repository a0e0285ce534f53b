//! ember-layers's integration tests, one module per subject, in one test binary: one link and one
//! set of generic instantiations per crate instead of one per file.

mod common;
mod aaren;
mod forms;
mod gla;
mod lolcats;
mod moh;
mod rat;
mod titans;
mod transnormer;
