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
use ember_data::synthetic::{eval_batches, segment_batches, Dataset, Loader, Order, Split, Task};
use ember_data::{open_source_with, Batch, PackedLoader, PrepareOptions, TokenShards, TrainLoader, IGNORE};
use ember_models::Lm;
use ember_ops::head_loss;
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
    /// Validation accuracy at each evaluation (see [`Eval::accuracy`]).
    pub val_accuracies: Vec<(usize, f64)>,
    /// Whether the run stopped at `train.stop_accuracy` before its last step.
    pub stopped_early: bool,
    /// Unigram entropy of the training tokens, nats/token: the loss of a model that ignores
    /// context (text data only).
    pub unigram_entropy: Option<f64>,
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

/// The final hidden states `[M, D]` of the scored positions of a batch, their targets, the
/// batch row each came from, and the mixers' auxiliary loss. When some targets are [`IGNORE`],
/// only the scored positions go on to the head (MQAR and NIAH score a few positions per
/// sequence; the head dominates their cost).
struct Scored<B: Backend> {
    hidden: Tensor<B, 2>,
    targets: Vec<i64>,
    rows: Vec<usize>,
    aux: Option<Tensor<B, 1>>,
}

impl<B: Backend> Scored<B> {
    /// The targets as a tensor.
    fn target_tensor(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        Tensor::from_data(TensorData::new(self.targets.clone(), [self.targets.len()]), device)
    }

    /// The head's logits (f32), `[M, vocab]`.
    fn logits(&self, model: &Lm<B>) -> Tensor<B, 2> {
        to_f32(model.unembed(self.hidden.clone().unsqueeze::<3>())).squeeze_dim::<2>(0)
    }
}

fn scored<B: Backend>(model: &Lm<B>, batch: &Batch, device: &B::Device) -> Scored<B> {
    let (hidden, aux) = model.hidden_aux(batch_tensor::<B>(&batch.inputs, batch, device));
    let [b, t, d] = hidden.dims();
    let positions: Vec<usize> = (0..b * t).filter(|&i| batch.targets[i] != IGNORE).collect();
    let hidden = hidden.reshape([b * t, d]);
    let hidden = if positions.len() == b * t {
        hidden
    } else {
        let index: Vec<i64> = positions.iter().map(|&i| i as i64).collect();
        hidden.select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(index, [positions.len()]), device))
    };
    Scored {
        hidden,
        targets: positions.iter().map(|&i| batch.targets[i] as i64).collect(),
        rows: positions.iter().map(|&i| i / t).collect(),
        aux: aux.map(to_f32),
    }
}

/// Cross-entropy and auxiliary loss of `model` on `batch`, computed in f32 whatever dtype the
/// model computes in (only the scored targets count). The head and its cross-entropy run a
/// block of rows at a time ([`head_loss::cross_entropy`]).
pub fn batch_losses<B: Backend>(model: &Lm<B>, batch: &Batch, device: &B::Device) -> BatchLoss<B> {
    losses_with(model, batch, device, head_loss::cross_entropy)
}

/// [`batch_losses`] for a training step: the same values, with the head's backward pass
/// written by hand ([`head_loss::cross_entropy_autodiff`]).
pub fn training_losses<B: AutodiffBackend>(model: &Lm<B>, batch: &Batch, device: &B::Device) -> BatchLoss<B> {
    losses_with(model, batch, device, head_loss::cross_entropy_autodiff)
}

/// The losses of `batch` with `head_ce(hidden, weight, bias, targets, rows per block)` as the
/// head and its cross-entropy.
fn losses_with<B: Backend>(
    model: &Lm<B>,
    batch: &Batch,
    device: &B::Device,
    head_ce: impl FnOnce(Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>, Tensor<B, 1, Int>, usize) -> Tensor<B, 1>,
) -> BatchLoss<B> {
    let s = scored(model, batch, device);
    let targets = s.target_tensor(device);
    let (weight, bias) = model.head_params();
    let rows = head_loss::block_rows(weight.dims()[1]);
    BatchLoss { ce: head_ce(s.hidden, weight, bias, targets, rows), aux: s.aux }
}

/// Mean cross-entropy of `logits: [n, vocab]` against `targets` (n ids).
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: &[i64], device: &B::Device) -> Tensor<B, 1> {
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets.to_vec(), [targets.len()]), device);
    CrossEntropyLossConfig::new().init(device).forward(logits, targets)
}

/// Mean next-token cross-entropy of `model` on `batch` (see [`batch_losses`]).
pub fn batch_loss<B: Backend>(model: &Lm<B>, batch: &Batch, device: &B::Device) -> Tensor<B, 1> {
    batch_losses(model, batch, device).ce
}

/// Knowledge distillation from a teacher's logits (linearization's stage 2): the loss is
/// `ce_weight · CE + kl_weight · τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ))`.
pub struct Distill<B: Backend> {
    pub teacher: Lm<B>,
    pub ce_weight: f64,
    pub kl_weight: f64,
    pub temperature: f64,
}

/// A run that starts from a given model rather than a fresh one: linearization's stage 2.
pub struct Start<B: AutodiffBackend> {
    pub model: Lm<B>,
    /// Only parameters whose path contains one of these substrings train; the rest are frozen.
    pub trainable: Option<Vec<String>>,
    pub distill: Option<Distill<B::InnerBackend>>,
}

/// The training loss of `batch` with distillation: `(loss to minimise, cross-entropy)`. Zero KL
/// when the student is the teacher.
pub fn distill_losses<B: AutodiffBackend>(model: &Lm<B>, batch: &Batch, d: &Distill<B::InnerBackend>, device: &B::Device) -> (Tensor<B, 1>, Tensor<B, 1>) {
    use burn::tensor::activation::{log_softmax, softmax};
    let s = scored(model, batch, device);
    let logits = s.logits(model);
    let ce = cross_entropy(logits.clone(), &s.targets, device);
    let teacher = Tensor::<B, 2>::from_inner(scored(&d.teacher, batch, device).logits(&d.teacher));
    let tau = d.temperature;
    let p = softmax(teacher.clone() / tau, 1);
    let kl = (p * (log_softmax(teacher / tau, 1) - log_softmax(logits / tau, 1))).sum_dim(1).mean() * (tau * tau);
    let mut total = ce.clone() * d.ce_weight + kl * d.kl_weight;
    if let Some(aux) = s.aux {
        total = total + aux;
    }
    (total, ce)
}

/// The gradients of one optimizer step, its mean loss and the tokens it consumed.
pub struct StepGrads {
    pub grads: GradientsParams,
    pub loss: f64,
    pub tokens: u64,
}

/// Gradients of one optimizer step: the mean over `accum` micro-batches from `loader`, and
/// their mean loss. With bf16 each micro-batch runs on a cast copy of the parameters; the cast
/// is differentiable, so the gradients reach the f32 master weights.
pub fn accumulated_grads<B: AutodiffBackend>(
    model: &Lm<B>,
    loader: &mut TrainLoader,
    accum: usize,
    precision: Precision,
    distill: Option<&Distill<B::InnerBackend>>,
    device: &B::Device,
) -> StepGrads {
    let mut accumulator = GradientsAccumulator::<Lm<B>>::new();
    let (mut loss_sum, mut tokens) = (0.0, 0u64);
    for _ in 0..accum {
        let batch = loader.next_batch();
        tokens += (batch.batch_size * batch.seq_len) as u64;
        let cast = cast_params(model.clone(), precision);
        let (total, ce) = match distill {
            Some(d) => distill_losses(&cast, &batch, d, device),
            None => {
                let losses = training_losses(&cast, &batch, device);
                let ce = losses.ce.clone();
                (losses.total(), ce)
            }
        };
        loss_sum += ce.into_scalar().elem::<f64>();
        let total = total / accum as f64;
        accumulator.accumulate(model, GradientsParams::from_grads(total.backward(), model));
    }
    StepGrads { grads: accumulator.grads(), loss: loss_sum / accum as f64, tokens }
}

/// Loss and accuracy on evaluation batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    /// Mean cross-entropy over the scored targets.
    pub loss: f64,
    /// Mean over sequences of the fraction of a sequence's scored targets that are the argmax
    /// of the logits (MQAR's and NIAH's accuracy; next-token accuracy on text).
    pub accuracy: f64,
    /// Scored targets seen.
    pub targets: usize,
    /// Sequences with at least one scored target.
    pub sequences: usize,
}

/// Loss and accuracy of `model` on `batches`.
pub fn evaluate<B: Backend>(model: &Lm<B>, batches: &[Batch], device: &B::Device) -> Eval {
    let (mut loss_sum, mut targets, mut accuracy_sum, mut sequences) = (0.0, 0usize, 0.0, 0usize);
    for batch in batches {
        let s = scored(model, batch, device);
        let n = s.targets.len();
        if n == 0 {
            continue;
        }
        let logits = s.logits(model);
        let predicted = logits.clone().argmax(1).into_data().convert::<i64>().to_vec::<i64>().expect("int data");
        let ce = cross_entropy(logits, &s.targets, device);
        loss_sum += ce.into_scalar().elem::<f64>() * n as f64;
        targets += n;
        // Per-row (correct, scored) counts; rows are in order.
        let mut per_row: Vec<(usize, usize)> = vec![(0, 0); batch.batch_size];
        for ((&row, &p), &t) in s.rows.iter().zip(&predicted).zip(&s.targets) {
            per_row[row].0 += (p == t) as usize;
            per_row[row].1 += 1;
        }
        for (correct, total) in per_row.into_iter().filter(|&(_, total)| total > 0) {
            accuracy_sum += correct as f64 / total as f64;
            sequences += 1;
        }
    }
    Eval {
        loss: loss_sum / targets.max(1) as f64,
        accuracy: accuracy_sum / sequences.max(1) as f64,
        targets,
        sequences,
    }
}

/// Loss and accuracy of `model` on each segment of a synthetic test set (all its examples, in
/// batches of `batch_size`), in order; `each` sees every segment's result as it comes.
pub fn evaluate_segments<B: Backend, T: Task>(
    model: &Lm<B>,
    data: &Dataset<T>,
    batch_size: usize,
    device: &B::Device,
    mut each: impl FnMut(usize, &Eval),
) -> Vec<Eval> {
    (0..data.segments.len())
        .map(|s| {
            let eval = evaluate(model, &segment_batches(data, s, batch_size), device);
            each(s, &eval);
            eval
        })
        .collect()
}

/// Opens a recipe's text data source, preparing raw files into the cache on first use, and
/// checks that the model's embedding can hold every token id in it.
pub fn open_data(recipe: &Recipe, source: &Path) -> Result<TokenShards> {
    let tokenizer = recipe.data.tokenizer.as_deref().context("text data needs data.tokenizer")?;
    let opts = PrepareOptions { text_field: recipe.data.text_field.clone(), ..Default::default() };
    let data = open_source_with(source, tokenizer, &recipe.data.cache_dir, &opts)
        .with_context(|| format!("preparing data source {}", source.display()))?;
    if data.vocab_size() > recipe.model.vocab_size {
        let msg = format!(
            "smaller than the vocabulary of the tokenizer the data was made with ({} tokens, {})",
            data.vocab_size(),
            tokenizer.display()
        );
        bail!("{}", recipe.error_at("model.vocab_size", msg));
    }
    Ok(data)
}

/// What a run trains and validates on.
pub struct RunData {
    pub loader: TrainLoader,
    /// Validation batches (empty without validation data).
    pub valid: Vec<Batch>,
    /// Unigram entropy of the training tokens, nats/token (text data only).
    pub unigram_entropy: Option<f64>,
}

/// The training loader and validation batches of `recipe`: its text corpus, or its synthetic
/// task (MQAR or NIAH; validation on at most `train.eval_batches` batches of the test set,
/// spread over it).
pub fn open_run_data(recipe: &Recipe, with_valid: bool) -> Result<RunData> {
    let (seq_len, batch_size, seed) = (recipe.data.seq_len, recipe.train.batch_size, recipe.train.seed);
    if let Some(mqar) = &recipe.data.mqar {
        let (train, test) = (mqar.dataset(Split::Train, seq_len, seed), mqar.dataset(Split::Test, seq_len, seed));
        return synthetic_run_data(recipe, train, test, mqar.order, TrainLoader::Mqar, with_valid);
    }
    if let Some(niah) = &recipe.data.niah {
        let vocab = recipe.model.vocab_size;
        let (train, test) = (niah.dataset(Split::Train, seq_len, vocab, seed), niah.dataset(Split::Test, seq_len, vocab, seed));
        return synthetic_run_data(recipe, train, test, Order::Shuffled, TrainLoader::Niah, with_valid);
    }
    let train_path = recipe.data.train.as_deref().context("text data needs data.train")?;
    let train_data = open_data(recipe, train_path)?;
    let entropy = ember_data::unigram_entropy(&train_data);
    let valid = match (&recipe.data.valid, with_valid) {
        (Some(path), true) => {
            let data = open_data(recipe, path)?;
            PackedLoader::eval_batches(&data, seq_len, batch_size, recipe.train.eval_batches)?
        }
        _ => Vec::new(),
    };
    let loader = TrainLoader::Packed(PackedLoader::new(train_data, seq_len, batch_size, seed)?);
    Ok(RunData { loader, valid, unigram_entropy: Some(entropy) })
}

/// The [`RunData`] of a synthetic task's train and test sets.
fn synthetic_run_data<T: Task>(
    recipe: &Recipe,
    train: Dataset<T>,
    test: Dataset<T>,
    order: Order,
    wrap: fn(Loader<T>) -> TrainLoader,
    with_valid: bool,
) -> Result<RunData> {
    let (batch_size, seed) = (recipe.train.batch_size, recipe.train.seed);
    let loader = wrap(Loader::new(train, batch_size, seed, order)?);
    let valid = match with_valid {
        true => eval_batches(&test, batch_size, Some(recipe.train.eval_batches))?,
        false => Vec::new(),
    };
    Ok(RunData { loader, valid, unigram_entropy: None })
}

pub fn train<B: AutodiffBackend>(recipe: &Recipe, opts: &TrainOptions, device: &B::Device) -> Result<TrainReport> {
    train_from::<B>(recipe, opts, device, None)
}

/// Puts the recipe's `train.kernels` in force on this thread; "on" needs a backend with kernels.
pub fn use_kernels<B: AutodiffBackend>(recipe: &Recipe, device: &B::Device) -> Result<()> {
    let kernels = recipe.train.kernels;
    if kernels == ember_ops::kernels::Kernels::On && !ember_ops::kernels::available::<B>() {
        bail!("{}", recipe.error_at("train.kernels", format!("\"on\", but this backend (device {device:?}) has no CubeCL kernels in this build: they run on the wgpu and cuda devices; use \"auto\" or \"off\"")));
    }
    ember_ops::kernels::set_policy(kernels);
    Ok(())
}

/// [`train`], from `start`'s model (frozen where it says, distilling if it says) instead of a
/// fresh one from the recipe's seed. A resumed run loads its checkpoint over that model.
pub fn train_from<B: AutodiffBackend>(recipe: &Recipe, opts: &TrainOptions, device: &B::Device, start: Option<Start<B>>) -> Result<TrainReport> {
    let precision = recipe.train.precision();
    if !supported::<B>(precision, device) {
        bail!("{}", recipe.error_at("train.dtype", format!("this backend (device {device:?}) cannot compute in {precision} (ndarray and wgpu's WGSL shaders have no bf16; flex, tch and cuda do): use \"f32\"")));
    }
    use_kernels::<B>(recipe, device)?;
    let RunData { mut loader, valid, unigram_entropy } = open_run_data(recipe, true)?;

    let (mut model, trainable, distill) = match start {
        Some(s) => (s.model, s.trainable, s.distill),
        None => (recipe.model.init_seeded(recipe.train.seed, device), None, None),
    };
    let mut optimizer = AdamW::<B::InnerBackend>::new(recipe.optim.clone());
    let mut state = TrainerState { step: 0, tokens: 0, loader: loader.state(), elapsed_secs: 0.0, last_val_loss: None, last_val_accuracy: None, finished: false };
    if let Some(resume) = &opts.resume {
        let ckpt = checkpoint::resolve(resume)?;
        state = checkpoint::load_state(&ckpt)?;
        model = checkpoint::load_model(&ckpt, model)?;
        optimizer = checkpoint::load_optimizer(&ckpt, recipe.optim.clone(), device)?;
        loader
            .restore(&state.loader)
            .with_context(|| format!("resuming the data loader from {}", ckpt.display()))?;
        // A run that ended at its last step goes on when `train.steps` now asks for more (the
        // schedule is then the one over the new total); one that stopped at its target accuracy
        // stays finished while the target holds.
        let goal_met = recipe.train.stop_accuracy.zip(state.last_val_accuracy).is_some_and(|(goal, accuracy)| accuracy >= goal);
        if state.finished && state.step < recipe.steps() && !goal_met {
            state.finished = false;
        }
    }
    if let Some(patterns) = &trainable {
        model = crate::optim::set_trainable(model, |path| patterns.iter().any(|p| path.contains(p.as_str())));
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
        unigram_entropy,
        val_accuracies: Vec::new(),
        stopped_early: false,
    };
    let started = Instant::now();
    let (elapsed_before, tokens_before) = (state.elapsed_secs, state.tokens);
    while state.step < stop && !state.finished {
        let lr = recipe.optim.lr_at(state.step, total);
        let StepGrads { grads, loss, tokens } = accumulated_grads(&model, &mut loader, accum, precision, distill.as_ref(), device);
        if !loss.is_finite() {
            bail!("training diverged at step {}: loss is {loss} (last checkpoint is intact)", state.step);
        }
        let (updated, info) = optimizer.step(model, grads, lr);
        model = updated;
        state.step += 1;
        state.tokens += tokens;
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
            let eval = evaluate(&cast_params(model.valid(), precision), &valid, device);
            let val = eval.loss;
            state.last_val_loss = Some(val);
            state.last_val_accuracy = Some(eval.accuracy);
            report.val_losses.push((state.step, val));
            report.val_accuracies.push((state.step, eval.accuracy));
            let values = [("valid/loss", val), ("valid/perplexity", val.exp()), ("valid/accuracy", eval.accuracy)];
            metrics.log(state.step, &values)?;
            if !opts.quiet {
                print_line(&bar, format!(
                    "step {:>6}  valid loss {val:.4}  ppl {:.2}  accuracy {:.4}",
                    state.step,
                    val.exp(),
                    eval.accuracy
                ));
            }
            if recipe.train.stop_accuracy.is_some_and(|goal| eval.accuracy >= goal) && state.step < total {
                report.stopped_early = true;
                state.finished = true;
            }
        }
        state.finished |= state.step == total;
        let last = last || state.finished;
        if state.step % recipe.train.checkpoint_interval == 0 || last {
            state.loader = loader.state();
            let path = checkpoint::save(
                &run_dir,
                &model,
                &optimizer,
                &state,
                &recipe.source.text,
                recipe.data.tokenizer.as_deref(),
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

/// Prints `line` above `bar`, or to stderr when the bar is hidden (indicatif drops lines printed
/// through a hidden bar, e.g. when output goes to a file).
pub(crate) fn print_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

pub(crate) fn progress_bar(total: usize, at: usize, hidden: bool) -> ProgressBar {
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
