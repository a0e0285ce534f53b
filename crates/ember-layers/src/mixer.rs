//! The registry of token mixers: a recipe's `kind = "..."` → config, module and state.
use crate::attention::{Attention, AttentionConfig};
use crate::based::{TaylorAttention, TaylorAttentionConfig};
use crate::conv::{BaseConv, BaseConvConfig};
use crate::zoology_conv::{ZoologyConv, ZoologyConvConfig};
use crate::aaren::{Aaren, AarenConfig};
use crate::gla::{Gla, GlaConfig, GlaState};
use crate::linear_attention::{LinearAttention, LinearAttentionConfig};
use crate::lolcats::{Lolcats, LolcatsConfig};
use ember_ops::hybrid::HybridState;
use crate::rat::{Rat, RatConfig};
use ember_ops::aaren::AarenState;
use ember_ops::rat::RatState;
use crate::moh::{Moh, MohConfig, MohState};
use crate::transnormer::{TransNormer, TransNormerConfig, TransNormerState};
use crate::titans::{Mac, MacConfig, MacState, Mag, MagConfig, MagState, Memory, MemoryConfig, Preset, TitansState};
use crate::LayerContext;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use ember_ops::softmax_attention::KvCache;
use ember_ops::taylor::TaylorState;
use serde::{Deserialize, Serialize};

/// One `[model.mixers.NAME]` table of a recipe, selected by its `kind` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MixerConfig {
    /// Causal softmax attention (RoPE, GQA, optional sliding window).
    Attention(AttentionConfig),
    /// BASED's Taylor linear attention.
    BasedLinear(TaylorAttentionConfig),
    /// Plain linear attention with a positive feature map (no decay).
    LinearAttention(LinearAttentionConfig),
    /// BASED's gated short convolution.
    BaseConv(BaseConvConfig),
    /// Zoology's BaseConv: `(conv(u) + b) ⊙ (u W + b') + u`, the short convolution of its MQAR models.
    ZoologyConv(ZoologyConvConfig),
    /// Gated linear attention: data-dependent per-channel forget gate.
    Gla(GlaConfig),
    /// TransNormerLLM's norm linear attention with per-head decay (Lightning attention).
    Transnormer(TransNormerConfig),
    /// RAT: gated recurrence inside chunks, softmax attention across chunk states.
    Rat(RatConfig),
    /// Aaren: attention as a many-to-many RNN (learned query, prefix-scan softmax).
    Aaren(AarenConfig),
    /// Mixture-of-Head attention: shared plus top-k routed heads, with a load-balance loss.
    Moh(MohConfig),
    /// LoLCATs' sliding-window softmax + learned-feature linear attention (Lizard-style with
    /// `decay` and `sinks`): the student of `ember linearize`.
    Lolcats(LolcatsConfig),
    /// Titans' neural long-term memory: an MLP written by gradient steps with momentum and decay.
    Titans(MemoryConfig),
    /// Miras' Moneta: the memory with an ℓp objective and ℓq retention.
    Moneta(MemoryConfig),
    /// Miras' Yaad: the memory with a Huber objective.
    Yaad(MemoryConfig),
    /// Miras' Memora: the memory with KL retention (weights on the scaled simplex).
    Memora(MemoryConfig),
    /// Titans MAG: sliding-window attention gated by the memory.
    TitansMag(MagConfig),
    /// Titans MAC: attention over each segment and the memory's read-out of the past.
    TitansMac(MacConfig),
}

/// The mixer kinds a recipe may name.
pub const KINDS: &[&str] = &["attention", "based_linear", "linear_attention", "base_conv", "zoology_conv", "gla", "transnormer", "rat", "aaren", "moh", "lolcats", "titans", "moneta", "yaad", "memora", "titans_mag", "titans_mac"];

impl MixerConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            MixerConfig::Attention(_) => "attention",
            MixerConfig::BasedLinear(_) => "based_linear",
            MixerConfig::LinearAttention(_) => "linear_attention",
            MixerConfig::BaseConv(_) => "base_conv",
            MixerConfig::ZoologyConv(_) => "zoology_conv",
            MixerConfig::Gla(_) => "gla",
            MixerConfig::Transnormer(_) => "transnormer",
            MixerConfig::Rat(_) => "rat",
            MixerConfig::Aaren(_) => "aaren",
            MixerConfig::Moh(_) => "moh",
            MixerConfig::Lolcats(_) => "lolcats",
            MixerConfig::Titans(_) => "titans",
            MixerConfig::Moneta(_) => "moneta",
            MixerConfig::Yaad(_) => "yaad",
            MixerConfig::Memora(_) => "memora",
            MixerConfig::TitansMag(_) => "titans_mag",
            MixerConfig::TitansMac(_) => "titans_mac",
        }
    }

    /// The memory config and named model of a test-time-memory kind.
    fn memory(&self) -> Option<(&MemoryConfig, Preset)> {
        match self {
            MixerConfig::Titans(c) => Some((c, Preset::Titans)),
            MixerConfig::Moneta(c) => Some((c, Preset::Moneta)),
            MixerConfig::Yaad(c) => Some((c, Preset::Yaad)),
            MixerConfig::Memora(c) => Some((c, Preset::Memora)),
            _ => None,
        }
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        match self {
            MixerConfig::Attention(c) => c.validate(d_model),
            MixerConfig::BasedLinear(c) => c.validate(d_model),
            MixerConfig::LinearAttention(c) => c.validate(d_model),
            MixerConfig::BaseConv(c) => c.validate(),
            MixerConfig::ZoologyConv(c) => c.validate(),
            MixerConfig::Gla(c) => c.validate(d_model),
            MixerConfig::Transnormer(c) => c.validate(d_model),
            MixerConfig::Rat(c) => c.validate(d_model),
            MixerConfig::Aaren(c) => c.validate(d_model),
            MixerConfig::Moh(c) => c.validate(d_model),
            MixerConfig::Lolcats(c) => c.validate(d_model),
            MixerConfig::Titans(c) | MixerConfig::Moneta(c) | MixerConfig::Yaad(c) | MixerConfig::Memora(c) => c.validate(d_model),
            MixerConfig::TitansMag(c) => c.validate(d_model),
            MixerConfig::TitansMac(c) => c.validate(d_model),
        }
    }

    pub fn params(&self, at: LayerContext) -> usize {
        let d_model = at.d_model;
        match self {
            MixerConfig::Attention(c) => c.params(d_model),
            MixerConfig::BasedLinear(c) => c.params(d_model),
            MixerConfig::LinearAttention(c) => c.params(d_model),
            MixerConfig::BaseConv(c) => c.params(d_model),
            MixerConfig::ZoologyConv(c) => c.params(d_model),
            MixerConfig::Gla(c) => c.params(d_model),
            MixerConfig::Transnormer(c) => c.params_at(at),
            MixerConfig::Rat(c) => c.params(d_model),
            MixerConfig::Aaren(c) => c.params(d_model),
            MixerConfig::Moh(c) => c.params(d_model),
            MixerConfig::Lolcats(c) => c.params(d_model),
            MixerConfig::Titans(_) | MixerConfig::Moneta(_) | MixerConfig::Yaad(_) | MixerConfig::Memora(_) => {
                let (c, preset) = self.memory().expect("a memory kind");
                c.params(d_model, preset)
            }
            MixerConfig::TitansMag(c) => c.params(d_model),
            MixerConfig::TitansMac(c) => c.params(d_model),
        }
    }

    /// Forward FLOPs per token at `seq_len`, sequence mixing included.
    pub fn flops_per_token(&self, at: LayerContext, seq_len: usize) -> f64 {
        let d_model = at.d_model;
        match self {
            MixerConfig::Attention(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::BasedLinear(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::LinearAttention(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::BaseConv(c) => c.flops_per_token(d_model),
            MixerConfig::ZoologyConv(c) => c.flops_per_token(d_model),
            MixerConfig::Gla(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::Transnormer(c) => c.flops_per_token_at(at, seq_len),
            MixerConfig::Rat(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::Aaren(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::Moh(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::Lolcats(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::Titans(_) | MixerConfig::Moneta(_) | MixerConfig::Yaad(_) | MixerConfig::Memora(_) => {
                let (c, preset) = self.memory().expect("a memory kind");
                c.flops_per_token(d_model, seq_len, preset)
            }
            MixerConfig::TitansMag(c) => c.flops_per_token(d_model, seq_len),
            MixerConfig::TitansMac(c) => c.flops_per_token(d_model, seq_len),
        }
    }

    /// Floats of generation state per sequence after `seq_len` tokens.
    pub fn state_size(&self, at: LayerContext, seq_len: usize) -> usize {
        let d_model = at.d_model;
        match self {
            MixerConfig::Attention(c) => c.state_size(d_model, seq_len),
            MixerConfig::BasedLinear(c) => c.state_size(d_model),
            MixerConfig::LinearAttention(c) => c.state_size(d_model),
            MixerConfig::BaseConv(c) => c.state_size(d_model),
            MixerConfig::ZoologyConv(c) => c.state_size(d_model),
            MixerConfig::Gla(c) => c.state_size(d_model, seq_len),
            MixerConfig::Transnormer(c) => c.state_size_at(at),
            MixerConfig::Rat(c) => c.state_size(d_model, seq_len),
            MixerConfig::Aaren(c) => c.state_size(d_model, seq_len),
            MixerConfig::Moh(c) => c.state_size(d_model, seq_len),
            MixerConfig::Lolcats(c) => c.state_size(d_model, seq_len),
            MixerConfig::Titans(_) | MixerConfig::Moneta(_) | MixerConfig::Yaad(_) | MixerConfig::Memora(_) => {
                let (c, preset) = self.memory().expect("a memory kind");
                c.state_size(d_model, seq_len, preset)
            }
            MixerConfig::TitansMag(c) => c.state_size(d_model, seq_len),
            MixerConfig::TitansMac(c) => c.state_size(d_model, seq_len),
        }
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Mixer<B> {
        match self {
            MixerConfig::Attention(c) => Mixer::Attention(c.init(at, out_std, device)),
            MixerConfig::BasedLinear(c) => Mixer::BasedLinear(c.init(at, out_std, device)),
            MixerConfig::LinearAttention(c) => Mixer::LinearAttention(c.init(at, out_std, device)),
            MixerConfig::BaseConv(c) => Mixer::BaseConv(c.init(at, out_std, device)),
            MixerConfig::ZoologyConv(c) => Mixer::ZoologyConv(c.init(at, out_std, device)),
            MixerConfig::Gla(c) => Mixer::Gla(c.init(at, out_std, device)),
            MixerConfig::Transnormer(c) => Mixer::Transnormer(c.init(at, out_std, device)),
            MixerConfig::Rat(c) => Mixer::Rat(c.init(at, out_std, device)),
            MixerConfig::Aaren(c) => Mixer::Aaren(c.init(at, out_std, device)),
            MixerConfig::Moh(c) => Mixer::Moh(c.init(at, out_std, device)),
            MixerConfig::Lolcats(c) => Mixer::Lolcats(c.init(at, out_std, device)),
            MixerConfig::Titans(_) | MixerConfig::Moneta(_) | MixerConfig::Yaad(_) | MixerConfig::Memora(_) => {
                let (c, preset) = self.memory().expect("a memory kind");
                Mixer::Memory(c.init(at, out_std, preset, device))
            }
            MixerConfig::TitansMag(c) => Mixer::Mag(c.init(at, out_std, device)),
            MixerConfig::TitansMac(c) => Mixer::Mac(c.init(at, out_std, device)),
        }
    }
}

#[derive(Module, Debug)]
pub enum Mixer<B: Backend> {
    Attention(Attention<B>),
    BasedLinear(TaylorAttention<B>),
    LinearAttention(LinearAttention<B>),
    BaseConv(BaseConv<B>),
    ZoologyConv(ZoologyConv<B>),
    Gla(Gla<B>),
    Transnormer(TransNormer<B>),
    Rat(Rat<B>),
    Aaren(Aaren<B>),
    Moh(Moh<B>),
    Lolcats(Lolcats<B>),
    /// Titans / Moneta / Yaad / Memora.
    Memory(Memory<B>),
    Mag(Mag<B>),
    Mac(Mac<B>),
}

/// A mixer's generation state.
#[derive(Clone, Debug)]
pub enum MixerState<B: Backend> {
    KvCache(KvCache<B>),
    Taylor(TaylorState<B>),
    /// Linear attention's `[B, H, K, V(+1)]` state.
    Linear(Tensor<B, 4>),
    Conv(Tensor<B, 3>),
    Gla(GlaState<B>),
    Transnormer(TransNormerState<B>),
    Rat(RatState<B>),
    Aaren(AarenState<B>),
    Moh(MohState<B>),
    Hybrid(HybridState<B>),
    Titans(TitansState<B>),
    Mag(MagState<B>),
    Mac(MacState<B>),
}

impl<B: Backend> MixerState<B> {
    /// Number of scalars held.
    pub fn numel(&self) -> usize {
        match self {
            MixerState::KvCache(c) => c.numel(),
            MixerState::Taylor(s) => s.numel(),
            MixerState::Linear(s) => s.shape().num_elements(),
            MixerState::Conv(h) => h.shape().num_elements(),
            MixerState::Gla(s) => s.numel(),
            MixerState::Transnormer(s) => s.numel(),
            MixerState::Rat(s) => s.numel(),
            MixerState::Aaren(s) => s.numel(),
            MixerState::Moh(s) => s.numel(),
            MixerState::Hybrid(s) => s.numel(),
            MixerState::Titans(s) => s.numel(),
            MixerState::Mag(s) => s.numel(),
            MixerState::Mac(s) => s.numel(),
        }
    }
}

impl<B: Backend> Mixer<B> {
    /// Training forward: `[B, T, D] -> [B, T, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Mixer::Attention(m) => m.forward(x),
            Mixer::BasedLinear(m) => m.forward(x),
            Mixer::LinearAttention(m) => m.forward(x),
            Mixer::BaseConv(m) => m.forward(x),
            Mixer::ZoologyConv(m) => m.forward(x),
            Mixer::Gla(m) => m.forward(x),
            Mixer::Transnormer(m) => m.forward(x),
            Mixer::Rat(m) => m.forward(x),
            Mixer::Aaren(m) => m.forward(x),
            Mixer::Moh(m) => m.forward(x),
            Mixer::Lolcats(m) => m.forward(x),
            Mixer::Memory(m) => m.forward(x),
            Mixer::Mag(m) => m.forward(x),
            Mixer::Mac(m) => m.forward(x),
        }
    }

    /// Training forward plus the mixer's auxiliary loss, already weighted (MoH's load balance);
    /// `None` for mixers without one.
    pub fn forward_aux(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Option<Tensor<B, 1>>) {
        match self {
            Mixer::Moh(m) => m.forward_aux(x),
            _ => (self.forward(x), None),
        }
    }

    /// Recurrent form: consumes `x: [B, T, D]` (a prompt or one token) after `state`.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<MixerState<B>>) -> (Tensor<B, 3>, MixerState<B>) {
        match (self, state) {
            (Mixer::Attention(m), None) => wrap(m.step(x, None), MixerState::KvCache),
            (Mixer::Attention(m), Some(MixerState::KvCache(c))) => wrap(m.step(x, Some(c)), MixerState::KvCache),
            (Mixer::BasedLinear(m), None) => wrap(m.step(x, None), MixerState::Taylor),
            (Mixer::BasedLinear(m), Some(MixerState::Taylor(s))) => wrap(m.step(x, Some(s)), MixerState::Taylor),
            (Mixer::LinearAttention(m), None) => wrap(m.step(x, None), MixerState::Linear),
            (Mixer::LinearAttention(m), Some(MixerState::Linear(s))) => wrap(m.step(x, Some(s)), MixerState::Linear),
            (Mixer::BaseConv(m), None) => wrap(m.step(x, None), MixerState::Conv),
            (Mixer::BaseConv(m), Some(MixerState::Conv(h))) => wrap(m.step(x, Some(h)), MixerState::Conv),
            (Mixer::ZoologyConv(m), None) => wrap(m.step(x, None), MixerState::Conv),
            (Mixer::ZoologyConv(m), Some(MixerState::Conv(h))) => wrap(m.step(x, Some(h)), MixerState::Conv),
            (Mixer::Gla(m), None) => wrap(m.step(x, None), MixerState::Gla),
            (Mixer::Gla(m), Some(MixerState::Gla(s))) => wrap(m.step(x, Some(s)), MixerState::Gla),
            (Mixer::Transnormer(m), None) => wrap(m.step(x, None), MixerState::Transnormer),
            (Mixer::Transnormer(m), Some(MixerState::Transnormer(s))) => {
                wrap(m.step(x, Some(s)), MixerState::Transnormer)
            }
            (Mixer::Rat(m), None) => wrap(m.step(x, None), MixerState::Rat),
            (Mixer::Rat(m), Some(MixerState::Rat(s))) => wrap(m.step(x, Some(s)), MixerState::Rat),
            (Mixer::Aaren(m), None) => wrap(m.step(x, None), MixerState::Aaren),
            (Mixer::Aaren(m), Some(MixerState::Aaren(s))) => wrap(m.step(x, Some(s)), MixerState::Aaren),
            (Mixer::Moh(m), None) => wrap(m.step(x, None), MixerState::Moh),
            (Mixer::Moh(m), Some(MixerState::Moh(s))) => wrap(m.step(x, Some(s)), MixerState::Moh),
            (Mixer::Lolcats(m), None) => wrap(m.step(x, None), MixerState::Hybrid),
            (Mixer::Lolcats(m), Some(MixerState::Hybrid(s))) => wrap(m.step(x, Some(s)), MixerState::Hybrid),
            (Mixer::Memory(m), None) => wrap(m.step(x, None), MixerState::Titans),
            (Mixer::Memory(m), Some(MixerState::Titans(s))) => wrap(m.step(x, Some(s)), MixerState::Titans),
            (Mixer::Mag(m), None) => wrap(m.step(x, None), MixerState::Mag),
            (Mixer::Mag(m), Some(MixerState::Mag(s))) => wrap(m.step(x, Some(s)), MixerState::Mag),
            (Mixer::Mac(m), None) => wrap(m.step(x, None), MixerState::Mac),
            (Mixer::Mac(m), Some(MixerState::Mac(s))) => wrap(m.step(x, Some(s)), MixerState::Mac),
            _ => panic!("mixer state does not match the mixer kind"),
        }
    }
}

fn wrap<B: Backend, S>(
    (y, s): (Tensor<B, 3>, S),
    into: impl FnOnce(S) -> MixerState<B>,
) -> (Tensor<B, 3>, MixerState<B>) {
    (y, into(s))
}
