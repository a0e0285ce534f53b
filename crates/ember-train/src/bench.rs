//! `ember bench train`: the speed of real training steps of a recipe (no checkpoints or logs).
use crate::optim::AdamW;
use crate::recipe::Recipe;
use crate::trainer::{batch_loss, open_data};
use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use ember_data::PackedLoader;
use ember_models::Lm;
use std::time::Instant;

/// Timing of `steps` optimizer steps after `warmup` untimed ones.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub params: usize,
    pub tokens_per_step: usize,
    pub step_ms: f64,
    pub tokens_per_sec: f64,
    /// `6·N·tokens/s`, the usual training-FLOPs estimate (N = parameters).
    pub model_flops_per_sec: f64,
}

pub fn train_steps<B: AutodiffBackend>(recipe: &Recipe, steps: usize, warmup: usize, device: &B::Device) -> Result<TrainBench> {
    let data = open_data(recipe, &recipe.data.train)?;
    let mut loader = PackedLoader::new(data, recipe.data.seq_len, recipe.train.batch_size, recipe.train.seed)?;
    let mut model: Lm<B> = recipe.model.init_seeded(recipe.train.seed, device);
    let mut optimizer = AdamW::<B::InnerBackend>::new(recipe.optim.clone());
    let mut started = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            started = Instant::now();
        }
        let batch = loader.next_batch();
        let loss = batch_loss(&model, &batch, device);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (m, info) = optimizer.step(model, grads, recipe.optim.lr);
        model = m;
        std::hint::black_box(info.grad_norm); // the norm is read back, so the step has finished
    }
    let secs = started.elapsed().as_secs_f64();
    let tokens_per_step = recipe.train.batch_size * recipe.data.seq_len;
    let tokens_per_sec = (steps * tokens_per_step) as f64 / secs;
    let params = recipe.model.num_params();
    Ok(TrainBench {
        params,
        tokens_per_step,
        step_ms: secs * 1e3 / steps as f64,
        tokens_per_sec,
        model_flops_per_sec: 6.0 * params as f64 * tokens_per_sec,
    })
}
