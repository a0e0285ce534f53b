//! Recipes, the step-based trainer, optimizer and schedules, checkpoints, metric sinks,
//! generation and conformance checks.
pub mod bench;
pub mod checkpoint;
pub mod conformance;
pub mod generate;
pub mod metrics;
pub mod optim;
pub mod recipe;
pub mod trainer;
