//! Recipes, the step-based trainer, optimizer and schedules, checkpoints, metric sinks,
//! generation, conformance checks and synthetic-task evaluation (MQAR, NIAH).
pub mod bench;
pub mod checkpoint;
pub mod conformance;
pub mod export;
pub mod generate;
pub mod linearize;
pub mod metrics;
pub mod mqar;
pub mod niah;
pub mod optim;
pub mod recipe;
pub mod runs;
pub mod sweep;
pub mod trainer;
