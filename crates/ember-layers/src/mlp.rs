//! Channel mixers: SwiGLU (LAYERS.md P5, BASED/GLA/Llama), SGLU (TransNormerLLM §3.2: the same
//! gated product without an activation) and a plain GELU MLP (RAT's FFN).
use crate::init::{linear, INIT_STD};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{activation::silu, backend::Backend, Tensor};
use ember_ops::gelu;
use serde::{Deserialize, Serialize};

/// `[model.mlp] kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `(x W_value ⊙ SiLU(x W_gate)) W_down`.
    Swiglu,
    /// `(x W_1 ⊙ x W_2) W_3`: no activation, no bias (TransNormerLLM).
    Sglu,
    /// `GELU(x W_up) W_down`.
    Gelu,
    /// No channel mixer: blocks are mixer-only.
    None,
    /// Zoology's `torch.nn.Identity` state mixer in its pre-norm block: the channel-mix half adds
    /// the normalised stream, `r + Norm(r)`, and has only the norm's parameters (Zoology's MQAR
    /// models).
    Identity,
}

/// `[model.mlp]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    pub kind: MlpKind,
    /// Hidden width; when absent, `hidden_mult · d_model` rounded up to `multiple_of`.
    pub hidden: Option<usize>,
    pub hidden_mult: f64,
    pub multiple_of: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { kind: MlpKind::Swiglu, hidden: None, hidden_mult: 2.0, multiple_of: 256 }
    }
}

impl MlpConfig {
    pub fn hidden_width(&self, d_model: usize) -> usize {
        self.hidden.unwrap_or_else(|| {
            let raw = (self.hidden_mult * d_model as f64).round() as usize;
            raw.div_ceil(self.multiple_of.max(1)) * self.multiple_of.max(1)
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.hidden == Some(0) || self.hidden_mult <= 0.0 {
            return Err("MLP width must be positive".into());
        }
        Ok(())
    }

    pub fn params(&self, d_model: usize) -> usize {
        let hidden = self.hidden_width(d_model);
        match self.kind {
            MlpKind::Swiglu | MlpKind::Sglu => 3 * d_model * hidden,
            MlpKind::Gelu => 2 * d_model * hidden,
            MlpKind::None | MlpKind::Identity => 0,
        }
    }

    /// `None` for `kind = "none"` and `"identity"` (whose block keeps only the norm).
    pub fn init<B: Backend>(&self, d_model: usize, out_std: f64, device: &B::Device) -> Option<Mlp<B>> {
        let hidden = self.hidden_width(d_model);
        let gated = |activation| Glu {
            fc_in: linear(d_model, 2 * hidden, false, INIT_STD, device),
            fc_out: linear(hidden, d_model, false, out_std, device),
            activation,
        };
        match self.kind {
            MlpKind::Swiglu => Some(Mlp::Glu(gated(true))),
            MlpKind::Sglu => Some(Mlp::Glu(gated(false))),
            MlpKind::Gelu => Some(Mlp::Gelu(GeluMlp {
                fc_in: linear(d_model, hidden, false, INIT_STD, device),
                fc_out: linear(hidden, d_model, false, out_std, device),
            })),
            MlpKind::None | MlpKind::Identity => None,
        }
    }
}

/// A gated linear unit: `(value ⊙ act(gate)) W_out` with `[value | gate] = x W_in`, `act` SiLU
/// (SwiGLU) or the identity (SGLU).
#[derive(Module, Debug)]
pub struct Glu<B: Backend> {
    pub fc_in: Linear<B>,
    pub fc_out: Linear<B>,
    pub activation: bool,
}

#[derive(Module, Debug)]
pub struct GeluMlp<B: Backend> {
    pub fc_in: Linear<B>,
    pub fc_out: Linear<B>,
}

#[derive(Module, Debug)]
pub enum Mlp<B: Backend> {
    Glu(Glu<B>),
    Gelu(GeluMlp<B>),
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Mlp::Glu(m) => {
                let h = m.fc_in.forward(x);
                let hidden = h.dims()[2] / 2;
                let value = h.clone().narrow(2, 0, hidden);
                let gate = h.narrow(2, hidden, hidden);
                m.fc_out.forward(value * if m.activation { silu(gate) } else { gate })
            }
            Mlp::Gelu(m) => m.fc_out.forward(gelu(m.fc_in.forward(x))),
        }
    }
}
