//! Sampling from a trained model with the recurrent forms: the prompt is consumed in one
//! prefill pass, then each new token is one `step` over constant-size (or window-bounded) state.
use crate::checkpoint::{self, RECIPE_FILE, TOKENIZER_FILE};
use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_data::Tokenizer;
use ember_models::Lm;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;

/// Sampling settings (`ember generate` flags).
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self { max_tokens: 64, temperature: 0.8, top_k: 50, top_p: 0.95, seed: 0 }
    }
}

/// A sample and what producing it cost.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: Vec<u32>,
    /// Decode speed (new tokens / decode time), prefill excluded.
    pub tokens_per_sec: f64,
    pub prefill_ms: f64,
    /// Bytes of recurrent state (all layers) after the last token, at f32.
    pub state_bytes: usize,
}

/// A model with its tokenizer, loaded from a checkpoint directory.
pub struct Loaded<B: Backend> {
    pub model: Lm<B>,
    pub tokenizer: Tokenizer,
    pub recipe: Recipe,
}

pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Loaded<B>> {
    let (model, recipe, ckpt) = load_model(dir, device)?;
    let path = ckpt.join(TOKENIZER_FILE);
    let task = match (&recipe.data.mqar, &recipe.data.niah) {
        (Some(_), _) => Some(("MQAR", "mqar")),
        (None, Some(_)) => Some(("NIAH", "niah")),
        (None, None) => None,
    };
    if let (false, Some((name, command))) = (path.is_file(), task) {
        bail!("{} was trained on {name} (synthetic tokens, no tokenizer): evaluate it with `ember eval {command} --checkpoint {}`", ckpt.display(), dir.display());
    }
    let tokenizer = Tokenizer::from_file(path)?;
    Ok(Loaded { model, tokenizer, recipe })
}

/// The model and recipe of a checkpoint (or of a run directory's newest checkpoint), and the
/// checkpoint directory itself.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Lm<B>, Recipe, std::path::PathBuf)> {
    let ckpt = checkpoint::resolve(dir)?;
    let recipe_path = ckpt.join(RECIPE_FILE);
    let text = std::fs::read_to_string(&recipe_path).with_context(|| format!("cannot read {}", recipe_path.display()))?;
    let recipe = Recipe::from_str(&text, &recipe_path, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = checkpoint::load_model(&ckpt, recipe.model.init_seeded::<B>(recipe.train.seed, device))?;
    Ok((model, recipe, ckpt))
}

/// Samples one continuation of `prompt`.
pub fn generate<B: Backend>(
    model: &Lm<B>,
    tokenizer: &Tokenizer,
    prompt: &str,
    opts: &SampleOptions,
    device: &B::Device,
) -> Result<Generation> {
    let mut ids = tokenizer.encode(prompt);
    if ids.is_empty() {
        // An empty prompt starts a fresh document.
        ids.push(tokenizer.eos_id());
    }
    let prompt_tokens = ids.len();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let vocab = tokenizer.vocab_size();
    let started = Instant::now();
    let (logits, mut state) = model.step(tokens::<B>(&ids, device), None);
    let mut last = last_logits(logits, vocab)?;
    let prefill_ms = started.elapsed().as_secs_f64() * 1e3;
    let decode_start = Instant::now();
    let mut new_tokens = Vec::new();
    for _ in 0..opts.max_tokens {
        let next = sample(&last, opts, &mut rng);
        if next == tokenizer.eos_id() {
            break;
        }
        new_tokens.push(next);
        if new_tokens.len() == opts.max_tokens {
            break;
        }
        let (logits, s) = model.step(tokens::<B>(&[next], device), Some(state));
        state = s;
        last = last_logits(logits, vocab)?;
    }
    let secs = decode_start.elapsed().as_secs_f64();
    Ok(Generation {
        text: tokenizer.decode(&new_tokens),
        prompt_tokens,
        tokens_per_sec: new_tokens.len() as f64 / secs.max(1e-9),
        new_tokens,
        prefill_ms,
        state_bytes: state.numel() * 4,
    })
}

fn tokens<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// Logits of the last position, restricted to the tokenizer's vocabulary (the rest is padding).
fn last_logits<B: Backend>(logits: Tensor<B, 3>, vocab: usize) -> Result<Vec<f32>> {
    let [_, t, v] = logits.dims();
    if vocab > v {
        bail!("tokenizer has {vocab} tokens but the model only {v}");
    }
    let row = logits.narrow(1, t - 1, 1).reshape([v]).narrow(0, 0, vocab);
    row.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Temperature, then top-k, then top-p (nucleus), then a draw; greedy at temperature 0.
pub fn sample(logits: &[f32], opts: &SampleOptions, rng: &mut impl Rng) -> u32 {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / opts.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut kept = 0;
    let mut mass = 0.0;
    for w in &weights {
        kept += 1;
        mass += w / total;
        if mass >= opts.top_p {
            break;
        }
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    let mut draw = rng.random::<f64>() * kept_total;
    for (i, w) in weights[..kept].iter().enumerate() {
        draw -= w;
        if draw <= 0.0 {
            return order[i] as u32;
        }
    }
    order[kept - 1] as u32
}
