//! SwiGLU channel mixer (LAYERS.md P5, BASED layout §1.4).
use crate::init::{linear, INIT_STD};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{activation::silu, backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// `[model.mlp]`: `y = (value ⊙ SiLU(gate)) W_down` with `[value | gate] = x W_in`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Only "swiglu" for now.
    pub kind: String,
    /// Hidden width; when absent, `hidden_mult · d_model` rounded up to `multiple_of`.
    pub hidden: Option<usize>,
    pub hidden_mult: f64,
    pub multiple_of: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { kind: "swiglu".into(), hidden: None, hidden_mult: 2.0, multiple_of: 256 }
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
        if self.kind != "swiglu" {
            return Err(format!("unknown MLP kind {:?} (known: \"swiglu\")", self.kind));
        }
        if self.hidden == Some(0) || self.hidden_mult <= 0.0 {
            return Err("MLP width must be positive".into());
        }
        Ok(())
    }

    pub fn params(&self, d_model: usize) -> usize {
        3 * d_model * self.hidden_width(d_model)
    }

    pub fn init<B: Backend>(&self, d_model: usize, out_std: f64, device: &B::Device) -> SwiGlu<B> {
        let hidden = self.hidden_width(d_model);
        SwiGlu {
            fc_in: linear(d_model, 2 * hidden, false, INIT_STD, device),
            fc_out: linear(hidden, d_model, false, out_std, device),
        }
    }
}

#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    pub fc_in: Linear<B>,
    pub fc_out: Linear<B>,
}

impl<B: Backend> SwiGlu<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.fc_in.forward(x);
        let hidden = h.dims()[2] / 2;
        let value = h.clone().narrow(2, 0, hidden);
        let gate = h.narrow(2, hidden, hidden);
        self.fc_out.forward(value * silu(gate))
    }
}
