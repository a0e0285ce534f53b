//! A pre-norm decoder language model whose layers each take a token mixer from a schedule.
//!
//! Block: `r = x + Mixer(RMSNorm(x)); x = r + MLP(RMSNorm(r))` (BASED §1.4, Llama-style).
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear};
use burn::tensor::{backend::Backend, Int, Tensor};
use ember_layers::init::{linear, INIT_STD};
use ember_layers::mlp::{Mlp, MlpConfig, MlpKind};
use ember_layers::norm::{Norm, NormKind};
use ember_layers::seeded::{init_seeded, Host};
use ember_layers::{LayerContext, Mixer, MixerConfig, MixerState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[model.schedule]`: which named mixer each layer uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Mixer used by every layer not listed in `at` (when there is no `pattern`).
    #[serde(default)]
    pub default: String,
    /// Mixer names repeated over the depth: layer `l` uses `pattern[l % len]` unless `at` lists
    /// it. Makes a hybrid schedule independent of `n_layers` (BASED's conv/linear/swa
    /// interleaving at any depth). Replaces `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Vec<String>>,
    /// Mixer name → 0-based layer indices that use it.
    #[serde(default)]
    pub at: BTreeMap<String, Vec<usize>>,
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    /// Tokenizer vocabulary; the embedding is padded up to a multiple of `pad_vocab_to`.
    pub vocab_size: usize,
    #[serde(default = "default_pad_vocab")]
    pub pad_vocab_to: usize,
    pub d_model: usize,
    pub n_layers: usize,
    /// Named mixer definitions, each a table with a `kind` key.
    pub mixers: BTreeMap<String, MixerConfig>,
    pub schedule: Schedule,
    #[serde(default)]
    pub mlp: MlpConfig,
    /// Block and final norms: "rmsnorm" (learnable gain) or "srmsnorm" (none, TransNormerLLM).
    #[serde(default = "default_norm")]
    pub norm: NormKind,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Share the embedding matrix with the output head.
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// Multiply token embeddings by `√d_model` (TransNormerLLM).
    #[serde(default)]
    pub scale_embeddings: bool,
}

fn default_pad_vocab() -> usize {
    8
}
fn default_norm() -> NormKind {
    NormKind::Rmsnorm
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// One line of `ember recipe check`'s per-layer table.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSummary {
    pub layer: usize,
    pub mixer: String,
    pub kind: &'static str,
    pub params: usize,
    pub flops_per_token: f64,
    pub state_floats: usize,
}

impl LmConfig {
    pub fn padded_vocab(&self) -> usize {
        let m = self.pad_vocab_to.max(1);
        self.vocab_size.div_ceil(m) * m
    }

    /// The mixer name of every layer. Call after `validate`.
    pub fn layer_mixers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = match &self.schedule.pattern {
            Some(p) if !p.is_empty() => (0..self.n_layers).map(|l| p[l % p.len()].as_str()).collect(),
            _ => vec![self.schedule.default.as_str(); self.n_layers],
        };
        for (name, layers) in &self.schedule.at {
            for &l in layers {
                if l < self.n_layers {
                    names[l] = name.as_str();
                }
            }
        }
        names
    }

    /// Checks everything that serde's types cannot; the error names the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.vocab_size == 0 {
            return err("model.vocab_size", "must be positive".into());
        }
        if self.d_model == 0 {
            return err("model.d_model", "must be positive".into());
        }
        if self.n_layers == 0 {
            return err("model.n_layers", "must be positive".into());
        }
        if !(self.norm_eps > 0.0) {
            return err("model.norm_eps", "must be positive".into());
        }
        if let Err(e) = self.mlp.validate() {
            return err("model.mlp", e);
        }
        for (name, mixer) in &self.mixers {
            if let Err(e) = mixer.validate(self.d_model) {
                return err(&format!("model.mixers.{name}"), e);
            }
        }
        let known = |name: &str| self.mixers.contains_key(name);
        let names = || self.mixers.keys().cloned().collect::<Vec<_>>().join(", ");
        match (&self.schedule.pattern, self.schedule.default.is_empty()) {
            (Some(_), false) => {
                return err("model.schedule.default", "give either default or pattern, not both".into());
            }
            (Some(pattern), true) => {
                if pattern.is_empty() {
                    return err("model.schedule.pattern", "must name at least one mixer".into());
                }
                if let Some(bad) = pattern.iter().find(|n| !known(n)) {
                    return err("model.schedule.pattern", format!("no mixer named {bad:?} in [model.mixers] (defined: {})", names()));
                }
            }
            (None, true) => return err("model.schedule.default", "required (or model.schedule.pattern)".into()),
            (None, false) if !known(&self.schedule.default) => {
                return err(
                    "model.schedule.default",
                    format!("no mixer named {:?} in [model.mixers] (defined: {})", self.schedule.default, names()),
                );
            }
            (None, false) => {}
        }
        let mut seen = BTreeMap::new();
        for (name, layers) in &self.schedule.at {
            let key = format!("model.schedule.at.{name}");
            if !known(name) {
                return err(&key, format!("no mixer named {name:?} in [model.mixers] (defined: {})", names()));
            }
            for &l in layers {
                if l >= self.n_layers {
                    return err(&key, format!("layer {l} is out of range (n_layers = {})", self.n_layers));
                }
                if let Some(other) = seen.insert(l, name.clone()) {
                    return err(&key, format!("layer {l} is also assigned to {other:?}"));
                }
            }
        }
        Ok(())
    }

    /// Per-layer parameters, FLOPs per token (forward) and generation state at `seq_len`.
    pub fn layer_summaries(&self, seq_len: usize) -> Vec<LayerSummary> {
        let d = self.d_model;
        let mlp = self.mlp.params(d);
        self.layer_mixers()
            .into_iter()
            .enumerate()
            .map(|(layer, name)| {
                let m = &self.mixers[name];
                let at = LayerContext { d_model: d, layer, n_layers: self.n_layers };
                LayerSummary {
                    layer,
                    mixer: name.to_string(),
                    kind: m.kind(),
                    params: m.params(at) + mlp + self.norm_params() * (1 + self.has_mlp_norm() as usize),
                    flops_per_token: m.flops_per_token(at, seq_len) + 2.0 * mlp as f64,
                    state_floats: m.state_size(at, seq_len),
                }
            })
            .collect()
    }

    /// Embedding parameters (counted once when tied).
    pub fn embedding_params(&self) -> usize {
        let e = self.padded_vocab() * self.d_model;
        if self.tie_embeddings { e } else { 2 * e }
    }

    pub fn num_params(&self) -> usize {
        let layers: usize = self.layer_summaries(1).iter().map(|l| l.params).sum();
        layers + self.embedding_params() + self.norm_params()
    }

    /// Parameters of one norm layer.
    fn norm_params(&self) -> usize {
        match self.norm {
            NormKind::Rmsnorm => self.d_model,
            NormKind::Srmsnorm => 0,
            NormKind::Layernorm => 2 * self.d_model,
        }
    }

    /// Whether each block has a second norm, before its channel mixer (every MLP kind but "none").
    fn has_mlp_norm(&self) -> bool {
        self.mlp.kind != MlpKind::None
    }

    /// Parameters excluding the embedding table (the `N` of scaling laws).
    pub fn non_embedding_params(&self) -> usize {
        self.num_params() - self.padded_vocab() * self.d_model
    }

    /// Forward FLOPs per token, the output head included.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let layers: f64 = self.layer_summaries(seq_len).iter().map(|l| l.flops_per_token).sum();
        layers + 2.0 * (self.padded_vocab() * self.d_model) as f64
    }

    /// Initialises the model reproducibly from `seed`, with the same weights on every backend.
    ///
    /// Burn initialises parameters lazily, on first use, from the backend's process-wide RNG:
    /// left alone, the weights would depend on whatever else drew from that RNG in between, and
    /// on the backend (each has its own generator). So the weights are drawn on the CPU
    /// (ndarray's seeded generator), every parameter materialised right after seeding under one
    /// lock, and then copied onto `device`: a seed means the same model on cpu, wgpu, cuda and
    /// libtorch, which is what lets their training curves be compared.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Lm<B> {
        init_seeded(seed, |host| self.init::<Host>(host), || self.init::<B>(device))
    }

    /// One mixer of this model, initialised reproducibly from `seed` like [`LmConfig::init_seeded`]
    /// (without building the rest of the model): linearization adds student mixers to a teacher.
    pub fn init_mixer_seeded<B: Backend>(&self, config: &MixerConfig, layer: usize, seed: u64, device: &B::Device) -> Mixer<B> {
        let at = LayerContext { d_model: self.d_model, layer, n_layers: self.n_layers };
        let out_std = INIT_STD / (2.0 * self.n_layers as f64).sqrt();
        init_seeded(seed, |host| config.init::<Host>(at, out_std, host), || config.init::<B>(at, out_std, device))
    }

    /// Builds the model with lazily initialised parameters; prefer [`LmConfig::init_seeded`],
    /// which makes the weights a function of the seed alone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Lm<B> {
        let vocab = self.padded_vocab();
        // Residual-branch outputs are scaled down with depth (GPT-2) so the stream stays O(1).
        let out_std = INIT_STD / (2.0 * self.n_layers as f64).sqrt();
        let blocks = self
            .layer_mixers()
            .into_iter()
            .enumerate()
            .map(|(layer, name)| {
                let at = LayerContext { d_model: self.d_model, layer, n_layers: self.n_layers };
                let mlp = self.mlp.init(self.d_model, out_std, device);
                Block {
                    mixer_norm: self.norm.init(self.d_model, self.norm_eps, device),
                    mixer: self.mixers[name].init(at, out_std, device),
                    mlp_norm: self.has_mlp_norm().then(|| self.norm.init(self.d_model, self.norm_eps, device)),
                    mlp,
                }
            })
            .collect();
        Lm {
            embed: EmbeddingConfig::new(vocab, self.d_model)
                .with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD })
                .init(device),
            blocks,
            final_norm: self.norm.init(self.d_model, self.norm_eps, device),
            embed_scale: if self.scale_embeddings { (self.d_model as f64).sqrt() } else { 1.0 },
            head: (!self.tie_embeddings).then(|| linear(self.d_model, vocab, false, INIT_STD, device)),
        }
    }
}


#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub mixer_norm: Norm<B>,
    pub mixer: Mixer<B>,
    /// `None` for `mlp.kind = "none"`.
    pub mlp_norm: Option<Norm<B>>,
    /// `None` for `mlp.kind = "none"` and `"identity"`.
    pub mlp: Option<Mlp<B>>,
}

impl<B: Backend> Block<B> {
    /// The residual channel-mixer half of the block.
    fn channel_mix(&self, r: Tensor<B, 3>) -> Tensor<B, 3> {
        match (&self.mlp_norm, &self.mlp) {
            (Some(norm), Some(mlp)) => r.clone() + mlp.forward(norm.forward(r)),
            // `mlp.kind = "identity"`: Zoology's Identity state mixer after its norm.
            (Some(norm), None) => r.clone() + norm.forward(r),
            (None, _) => r,
        }
    }
}

#[derive(Module, Debug)]
pub struct Lm<B: Backend> {
    pub embed: Embedding<B>,
    pub blocks: Vec<Block<B>>,
    pub final_norm: Norm<B>,
    /// Multiplies token embeddings (`√d_model` with `scale_embeddings`, else 1).
    pub embed_scale: f64,
    /// Untied output head; `None` when tied to `embed`.
    pub head: Option<Linear<B>>,
}

/// Generation state of every layer.
#[derive(Clone, Debug)]
pub struct LmState<B: Backend> {
    pub layers: Vec<MixerState<B>>,
}

impl<B: Backend> LmState<B> {
    pub fn numel(&self) -> usize {
        self.layers.iter().map(|s| s.numel()).sum()
    }
}

impl<B: Backend> Lm<B> {
    fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.unembed(self.final_norm.forward(x))
    }

    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.embed.forward(tokens);
        if self.embed_scale == 1.0 { x } else { x * self.embed_scale }
    }

    /// Training forward: token ids `[B, T]` → logits `[B, T, vocab]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_aux(tokens).0
    }

    /// Final hidden states `[B, T, D]` (after the final norm) and the mean over layers of the
    /// mixers' weighted auxiliary losses (MoH load balance), if any layer has one.
    pub fn hidden_aux(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 3>, Option<Tensor<B, 1>>) {
        let mut x = self.embed(tokens);
        let mut aux: Vec<Tensor<B, 1>> = Vec::new();
        for block in &self.blocks {
            let (h, a) = block.mixer.forward_aux(block.mixer_norm.forward(x.clone()));
            aux.extend(a);
            x = block.channel_mix(x + h);
        }
        let n = aux.len();
        let aux = (n > 0).then(|| Tensor::cat(aux, 0).sum() / n as f64);
        (self.final_norm.forward(x), aux)
    }

    /// Every layer's mixer input (after its norm) and output, `[B, T, D]` each: what
    /// layer-wise distillation matches a student mixer against.
    pub fn mixer_io(&self, tokens: Tensor<B, 2, Int>) -> Vec<(Tensor<B, 3>, Tensor<B, 3>)> {
        let mut x = self.embed(tokens);
        let mut io = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let input = block.mixer_norm.forward(x.clone());
            let h = block.mixer.forward(input.clone());
            io.push((input, h.clone()));
            x = block.channel_mix(x + h);
        }
        io
    }

    /// Hidden states `[.., D]` → logits `[.., vocab]` (the output head).
    pub fn unembed(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.head {
            Some(head) => head.forward(h),
            None => h.matmul(self.embed.weight.val().transpose().unsqueeze::<3>()),
        }
    }

    /// The output head as `logits = h · weight + bias`: `weight: [d_model, vocab]` (the
    /// embedding, transposed, when tied) and the untied head's bias, if it has one.
    pub fn head_params(&self) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        match &self.head {
            Some(head) => (head.weight.val(), head.bias.as_ref().map(|b| b.val())),
            None => (self.embed.weight.val().transpose(), None),
        }
    }

    /// Logits and the auxiliary loss (see [`Lm::hidden_aux`]).
    pub fn forward_aux(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 3>, Option<Tensor<B, 1>>) {
        let (h, aux) = self.hidden_aux(tokens);
        (self.unembed(h), aux)
    }

    /// Recurrent forward: consumes `tokens: [B, T]` (a prompt, or one token) after `state`.
    pub fn step(&self, tokens: Tensor<B, 2, Int>, state: Option<LmState<B>>) -> (Tensor<B, 3>, LmState<B>) {
        let mut previous = state.map(|s| s.layers.into_iter().map(Some).collect::<Vec<_>>());
        let mut x = self.embed(tokens);
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let s = previous.as_mut().and_then(|p| p[i].take());
            let (h, s) = block.mixer.step(block.mixer_norm.forward(x.clone()), s);
            x = block.channel_mix(x + h);
            layers.push(s);
        }
        (self.logits(x), LmState { layers })
    }
}
