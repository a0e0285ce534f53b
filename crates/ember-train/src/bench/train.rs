//! `ember bench train`: the speed of real training steps of a recipe (no checkpoints or logs).
use super::{median_ms, MemoryProbe};
use crate::optim::AdamW;
use crate::recipe::Recipe;
use crate::trainer::{accumulated_grads, open_run_data};
use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use ember_models::Lm;
use ember_ops::precision::{supported, Precision};
use std::time::Instant;

/// How to run the benchmark, beyond the recipe.
#[derive(Clone, Debug)]
pub struct TrainBenchOptions {
    /// Timed optimizer steps.
    pub steps: usize,
    /// Untimed steps before them (compilation, autotuning, allocator warm-up).
    pub warmup: usize,
    /// Compute dtype (the recipe's `train.dtype` unless overridden).
    pub precision: Precision,
}

/// Timing of `steps` optimizer steps after `warmup` untimed ones.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub params: usize,
    pub precision: Precision,
    /// `batch_size · seq_len · grad_accum`.
    pub tokens_per_step: usize,
    /// Mean and median time of one optimizer step.
    pub step_ms: f64,
    pub median_step_ms: f64,
    pub tokens_per_sec: f64,
    /// `6·N·tokens/s`, the usual training-FLOPs estimate (N = parameters).
    pub model_flops_per_sec: f64,
    /// The model's own forward FLOPs per token at the recipe's `seq_len` (sequence mixing and
    /// output head included; [`ember_models::LmConfig::flops_per_token`]).
    pub forward_flops_per_token: f64,
    /// `3 · forward FLOPs/token · tokens/s`: training ≈ forward + backward at twice the forward.
    pub counted_flops_per_sec: f64,
}

/// Runs `warmup + steps` optimizer steps of `recipe` (gradient accumulation included, constant
/// learning rate) and times the last `steps`, reading `memory` after every step.
///
/// Each step is the trainer's ([`accumulated_grads`], then AdamW), bf16 included.
pub fn train_steps<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &TrainBenchOptions,
    memory: &mut MemoryProbe,
    device: &B::Device,
) -> Result<TrainBench> {
    let precision = opts.precision;
    if !supported::<B>(precision, device) {
        bail!("{} on {device:?} cannot compute in {precision}; use --dtype f32 or another device", B::name(device));
    }
    if opts.steps == 0 {
        bail!("--steps must be at least 1");
    }
    crate::trainer::use_kernels::<B>(recipe, device)?;
    let mut loader = open_run_data(recipe, false)?.loader;
    let mut model: Lm<B> = recipe.model.init_seeded(recipe.train.seed, device);
    let mut optimizer = AdamW::<B::InnerBackend>::new(recipe.optim.clone());
    let accum = recipe.optim.grad_accum;
    let mut step_secs = Vec::with_capacity(opts.steps);
    memory.sample();
    for i in 0..opts.warmup + opts.steps {
        let started = Instant::now();
        let grads = accumulated_grads(&model, &mut loader, accum, precision, None, device).grads;
        let (m, info) = optimizer.step(model, grads, recipe.optim.lr);
        model = m;
        std::hint::black_box(info.grad_norm); // the norm is read back, so the step has finished
        if i >= opts.warmup {
            step_secs.push(started.elapsed());
        }
        memory.sample();
    }
    let secs: f64 = step_secs.iter().map(|d| d.as_secs_f64()).sum();
    let tokens_per_step = recipe.tokens_per_step();
    let tokens_per_sec = (opts.steps * tokens_per_step) as f64 / secs;
    let params = recipe.model.num_params();
    let forward_flops_per_token = recipe.model.flops_per_token(recipe.data.seq_len);
    Ok(TrainBench {
        params,
        precision,
        tokens_per_step,
        step_ms: secs * 1e3 / opts.steps as f64,
        median_step_ms: median_ms(&step_secs),
        tokens_per_sec,
        model_flops_per_sec: 6.0 * params as f64 * tokens_per_sec,
        forward_flops_per_token,
        counted_flops_per_sec: 3.0 * forward_flops_per_token * tokens_per_sec,
    })
}
