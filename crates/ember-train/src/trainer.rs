//! The step-based training loop: forward, loss, backward, global-norm clip, AdamW, schedule;
//! periodic validation, metrics, checkpoints, and exact resume.
use crate::checkpoint::{self, TrainerState};
use crate::metrics::Metrics;
use crate::optim::AdamW;
use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{open_source_with, Batch, PackedLoader, PrepareOptions, TokenShards, IGNORE};
use ember_models::Lm;
use ember_ops::precision::{cast_params, supported, to_f32, Precision};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run, beyond the recipe.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from this checkpoint (or run directory's newest checkpoint).
    pub resume: Option<PathBuf>,
    /// Stop (after checkpointing) once this many steps are done, as an interruption would.
    pub stop_after: Option<usize>,
    /// No progress bar and no per-eval lines (tests).
    pub quiet: bool,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub run_dir: PathBuf,
    pub final_step: usize,
    pub total_steps: usize,
    /// Training loss of every step taken in this invocation.
    pub losses: Vec<(usize, f64)>,
    /// Validation loss at each evaluation.
    pub val_losses: Vec<(usize, f64)>,
    pub tokens_per_sec: f64,
    pub last_checkpoint: Option<PathBuf>,
    /// Unigram entropy of the training tokens, nats/token: the loss of a model that ignores context.
    pub unigram_entropy: f64,
}

/// Token ids of a batch as a `[batch, seq_len]` tensor.
pub fn batch_tensor<B: Backend>(ids: &[u32], batch: &Batch, device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [batch.batch_size, batch.seq_len]), device)
}

/// The losses of one batch, in f32: next-token cross-entropy (over the scored targets) and the
/// mixers' weighted auxiliary loss, if the model has one.
pub struct BatchLoss<B: Backend> {
    pub ce: Tensor<B, 1>,
    pub aux: Option<Tensor<B, 1>>,
}

impl<B: Backend> BatchLoss<B> {
    /// What training minimises: `ce + aux`.
    pub fn total(self) -> Tensor<B, 1> {
        match self.aux {
            Some(aux) => self.ce + aux,
            None => self.ce,
        }
    }
}

/// Cross-entropy and auxiliary loss of `model` on `batch`, computed in f32 whatever dtype the
/// model computes in. When some targets are [`IGNORE`], only the scored positions go through
/// the output head (MQAR scores a few positions per sequence; the head dominates its cost).
pub fn batch_losses<B: Backend>(model: &Lm<B>, batch: &Batch, device: &B::Device) -> BatchLoss<B> {
    let (hidden, aux) = model.hidden_aux(batch_tensor::<B>(&batch.inputs, batch, device));
    let [b, t, d] = hidden.dims();
    let scored: Vec<i64> = (0..b * t).filter(|&i| batch.targets[i] != IGNORE).map(|i| i as i64).collect();
    let (hidden, targets) = if scored.len() == b * t {
        (hidden, batch.targets.iter().map(|&x| x as i64).collect::<Vec<_>>())
    } else {
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(scored.clone(), [scored.len()]), device);
        let targets = scored.iter().map(|&i| batch.targets[i as usize] as i64).collect();
        (hidden.reshape([b * t, d]).select(0, rows).unsqueeze::<3>(), targets)
    };
    let logits = to_f32(model.unembed(hidden));
    let [_, n, v] = logits.dims();
    let n = n * logits.dims()[0];
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), device);
    let ce = CrossEntropyLossConfig::new().init(device).forward(logits.reshape([n, v]), targets);
    BatchLoss { ce, aux: aux.map(to_f32) }
}

/// Mean next-token cross-entropy of `model` on `batch` (see [`batch_losses`]).
pub fn batch_loss<B: Backend>(model: &Lm<B>, batch: &Batch, device: &B::Device) -> Tensor<B, 1> {
    batch_losses(model, batch, device).ce
}

/// Gradients of one optimizer step: the mean over `accum` micro-batches from `loader`, and
/// their mean loss. With bf16 each micro-batch runs on a cast copy of the parameters; the cast
/// is differentiable, so the gradients reach the f32 master weights.
pub fn accumulated_grads<B: AutodiffBackend>(
    model: &Lm<B>,
    loader: &mut PackedLoader,
    accum: usize,
    precision: Precision,
    device: &B::Device,
) -> (GradientsParams, f64) {
    let mut accumulator = GradientsAccumulator::<Lm<B>>::new();
    let mut loss_sum = 0.0;
    for _ in 0..accum {
        let losses = batch_losses(&cast_params(model.clone(), precision), &loader.next_batch(), device);
        loss_sum += losses.ce.clone().into_scalar().elem::<f64>();
        let total = losses.total() / accum as f64;
        accumulator.accumulate(model, GradientsParams::from_grads(total.backward(), model));
    }
    (accumulator.grads(), loss_sum / accum as f64)
}

/// Mean loss over evaluation batches (weighted by tokens).
pub fn evaluate<B: Backend>(model: &Lm<B>, batches: &[Batch], device: &B::Device) -> f64 {
    let (mut total, mut tokens) = (0.0, 0usize);
    for batch in batches {
        let n = batch.targets.iter().filter(|&&t| t != IGNORE).count();
        total += batch_loss(model, batch, device).into_scalar().elem::<f64>() * n as f64;
        tokens += n;
    }
    total / tokens.max(1) as f64
}

/// Opens a recipe data source, preparing raw files into the cache on first use, and checks
/// that the model's embedding can hold every token id in it.
pub fn open_data(recipe: &Recipe, source: &Path) -> Result<TokenShards> {
    let opts = PrepareOptions { text_field: recipe.data.text_field.clone(), ..Default::default() };
    let data = open_source_with(source, &recipe.data.tokenizer, &recipe.data.cache_dir, &opts)
        .with_context(|| format!("preparing data source {}", source.display()))?;
    if data.vocab_size() > recipe.model.vocab_size {
        let msg = format!(
            "smaller than the vocabulary of the tokenizer the data was made with ({} tokens, {})",
            data.vocab_size(),
            recipe.data.tokenizer.display()
        );
        bail!("{}", recipe.error_at("model.vocab_size", msg));
    }
    Ok(data)
}

pub fn train<B: AutodiffBackend>(recipe: &Recipe, opts: &TrainOptions, device: &B::Device) -> Result<TrainReport> {
    let precision = recipe.train.precision();
    if !supported::<B>(precision, device) {
        bail!("{}", recipe.error_at("train.dtype", format!("this backend (device {device:?}) cannot compute in {precision} (ndarray and wgpu's WGSL shaders have no bf16; flex, tch and cuda do): use \"f32\"")));
    }
    let train_data = open_data(recipe, &recipe.data.train)?;
    let entropy = ember_data::unigram_entropy(&train_data);
    let (seq_len, batch_size) = (recipe.data.seq_len, recipe.train.batch_size);
    let valid = match &recipe.data.valid {
        Some(path) => {
            let data = open_data(recipe, path)?;
            PackedLoader::eval_batches(&data, seq_len, batch_size, recipe.train.eval_batches)?
        }
        None => Vec::new(),
    };
    let mut loader = PackedLoader::new(train_data, seq_len, batch_size, recipe.train.seed)?;

    let mut model: Lm<B> = recipe.model.init_seeded(recipe.train.seed, device);
    let mut optimizer = AdamW::<B::InnerBackend>::new(recipe.optim.clone());
    let mut state = TrainerState { step: 0, tokens: 0, loader: loader.state(), elapsed_secs: 0.0, last_val_loss: None };
    if let Some(resume) = &opts.resume {
        let ckpt = checkpoint::resolve(resume)?;
        state = checkpoint::load_state(&ckpt)?;
        model = checkpoint::load_model(&ckpt, model)?;
        optimizer = checkpoint::load_optimizer(&ckpt, recipe.optim.clone(), device)?;
        loader
            .restore(&state.loader)
            .with_context(|| format!("resuming the data loader from {}", ckpt.display()))?;
    }

    let run_dir = recipe.train.out_dir.clone();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let mut metrics = Metrics::open(&run_dir, recipe.log.jsonl, recipe.log.tensorboard)?;
    let total = recipe.steps();
    let stop = opts.stop_after.map_or(total, |s| s.min(total));
    let accum = recipe.optim.grad_accum;
    let bar = progress_bar(total, state.step, opts.quiet || !recipe.log.progress);

    let mut report = TrainReport {
        run_dir: run_dir.clone(),
        final_step: state.step,
        total_steps: total,
        losses: Vec::new(),
        val_losses: Vec::new(),
        tokens_per_sec: 0.0,
        last_checkpoint: None,
        unigram_entropy: entropy,
    };
    let started = Instant::now();
    let (elapsed_before, tokens_before) = (state.elapsed_secs, state.tokens);
    while state.step < stop {
        let lr = recipe.optim.lr_at(state.step, total);
        let (grads, loss) = accumulated_grads(&model, &mut loader, accum, precision, device);
        if !loss.is_finite() {
            bail!("training diverged at step {}: loss is {loss} (last checkpoint is intact)", state.step);
        }
        let (updated, info) = optimizer.step(model, grads, lr);
        model = updated;
        state.step += 1;
        state.tokens += (batch_size * seq_len * accum) as u64;
        state.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
        report.losses.push((state.step, loss));
        let tok_s = (state.tokens - tokens_before) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {:.0} tok/s", tok_s));

        if state.step % recipe.log.every == 0 || state.step == total {
            let values = [
                ("train/loss", loss),
                ("train/lr", lr),
                ("train/grad_norm", info.grad_norm),
                ("train/tokens", state.tokens as f64),
                ("train/tokens_per_sec", tok_s),
            ];
            metrics.log(state.step, &values)?;
        }
        let last = state.step == stop;
        if !valid.is_empty() && (state.step % recipe.train.eval_interval == 0 || state.step == total) {
            let val = evaluate(&cast_params(model.valid(), precision), &valid, device);
            state.last_val_loss = Some(val);
            report.val_losses.push((state.step, val));
            metrics.log(state.step, &[("valid/loss", val), ("valid/perplexity", val.exp())])?;
            if !opts.quiet {
                bar.println(format!("step {:>6}  valid loss {val:.4}  ppl {:.2}", state.step, val.exp()));
            }
        }
        if state.step % recipe.train.checkpoint_interval == 0 || last {
            state.loader = loader.state();
            let path = checkpoint::save(
                &run_dir,
                &model,
                &optimizer,
                &state,
                &recipe.source.text,
                &recipe.data.tokenizer,
                recipe.train.keep_last,
            )?;
            report.last_checkpoint = Some(path);
        }
    }
    bar.finish_and_clear();
    report.final_step = state.step;
    report.tokens_per_sec = (state.tokens - tokens_before) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok(report)
}

fn progress_bar(total: usize, at: usize, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(at as u64);
    bar
}
