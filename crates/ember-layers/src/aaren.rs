//! Aaren: attention as a many-to-many RNN (LAYERS.md §7). Each head has one learned query (a
//! parameter, not computed from the input); every token outputs that query's softmax attention
//! over the prefix ending at it. The spec leaves the multi-head layout open: `H` heads with
//! their own query, keys and values projected from the input, outputs concatenated and
//! projected by `W_o`, scores scaled by `1/√d_head` (its recommended defaults).
use crate::init::{linear, INIT_STD};
use crate::LayerContext;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use ember_ops::aaren::{self, AarenState};
use ember_ops::Form;
use serde::{Deserialize, Serialize};

/// `kind = "aaren"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AarenConfig {
    /// Heads, each with its own learned query; `d_head = d_model / heads`.
    pub heads: usize,
    /// Training form: "chunked" (masked prefix softmax inside chunks, state across them) or
    /// "parallel" (the doubling prefix scan).
    pub form: Form,
    /// Chunk length of the chunked form.
    pub chunk_size: usize,
}

impl Default for AarenConfig {
    fn default() -> Self {
        Self { heads: 8, form: Form::Chunked, chunk_size: 64 }
    }
}

impl AarenConfig {
    pub fn head_dim(&self, d_model: usize) -> usize {
        d_model / self.heads.max(1)
    }

    pub fn validate(&self, d_model: usize) -> Result<(), String> {
        if self.heads == 0 || d_model % self.heads != 0 {
            return Err(format!("heads ({}) must be positive and divide d_model ({d_model})", self.heads));
        }
        if self.chunk_size == 0 {
            return Err("chunk_size must be positive".into());
        }
        if self.form == Form::Recurrent {
            return Err("form must be \"chunked\" or \"parallel\" (the recurrent form is for generation)".into());
        }
        Ok(())
    }

    /// `W_k`, `W_v`, `W_o` (D×D each) and the queries (H × d_head = D).
    pub fn params(&self, d_model: usize) -> usize {
        3 * d_model * d_model + d_model
    }

    pub fn flops_per_token(&self, d_model: usize, seq_len: usize) -> f64 {
        let (d, h) = (d_model as f64, self.heads as f64);
        let projections = 2.0 * 3.0 * d * d;
        let scores = 2.0 * d;
        // Per head, a segment (m, u, w) has d_head + 2 floats; a combine costs ~3 flops on each.
        let combine = 3.0 * (d + 2.0 * h);
        let mixing = match self.form {
            // ⌈log2 T⌉ doubling rounds of one combine per token.
            Form::Parallel => (seq_len.max(1) as f64).log2().ceil() * combine,
            // C×C weights (exp, sum, product with the values), then one combine with the carry.
            _ => {
                let c = self.chunk_size.min(seq_len.max(1)) as f64;
                2.0 * c * (d + 2.0 * h) + combine
            }
        };
        projections + scores + mixing
    }

    /// `(m, u, w)` per head: `H·(2 + d_head)` floats whatever the length.
    pub fn state_size(&self, d_model: usize, _seq_len: usize) -> usize {
        self.heads * (2 + self.head_dim(d_model))
    }

    pub fn init<B: Backend>(&self, at: LayerContext, out_std: f64, device: &B::Device) -> Aaren<B> {
        let d_model = at.d_model;
        let query = Tensor::random([self.heads, self.head_dim(d_model)], Distribution::Normal(0.0, INIT_STD), device);
        Aaren {
            query: Param::from_tensor(query),
            key: linear(d_model, d_model, false, INIT_STD, device),
            value: linear(d_model, d_model, false, INIT_STD, device),
            out: linear(d_model, d_model, false, out_std, device),
            heads: self.heads,
            chunked: self.form == Form::Chunked,
            chunk_size: self.chunk_size,
        }
    }
}

#[derive(Module, Debug)]
pub struct Aaren<B: Backend> {
    /// One learned query per head, `[H, d_head]`.
    pub query: Param<Tensor<B, 2>>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub out: Linear<B>,
    pub heads: usize,
    pub chunked: bool,
    pub chunk_size: usize,
}

impl<B: Backend> Aaren<B> {
    /// Scores `q_h · k_{t,h} / √d_head` `[B, T, H]` and values `[B, T, H, d_head]`.
    pub fn scores_and_values(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let [b, t, d] = x.dims();
        let (h, dh) = (self.heads, d / self.heads);
        let k = self.key.forward(x.clone()).reshape([b, t, h, dh]);
        let v = self.value.forward(x).reshape([b, t, h, dh]);
        let q = self.query.val().reshape([1, 1, h, dh]);
        let s = (k * q).sum_dim(3).squeeze_dim::<3>(3) / (dh as f64).sqrt();
        (s, v)
    }

    fn merge(&self, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, t, h, d] = o.dims();
        self.out.forward(o.reshape([b, t, h * d]))
    }

    fn form(&self) -> Form {
        if self.chunked { Form::Chunked } else { Form::Parallel }
    }

    fn mix(&self, s: Tensor<B, 3>, v: Tensor<B, 4>, state: Option<AarenState<B>>, form: Form) -> aaren::AarenOutput<B> {
        match form {
            Form::Parallel => aaren::parallel(s, v, state),
            Form::Chunked => aaren::chunked(s, v, state, self.chunk_size),
            Form::Recurrent => aaren::recurrent(s, v, state),
        }
    }

    /// Training forward with an explicit form (the config's form is `forward`'s default).
    pub fn forward_with(&self, x: Tensor<B, 3>, form: Form) -> Tensor<B, 3> {
        let (s, v) = self.scores_and_values(x);
        self.merge(self.mix(s, v, None, form).output)
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, self.form())
    }

    /// Consumes `x: [B, T, D]` (a prompt in one pass of the training form, or one token) after
    /// `state`.
    pub fn step(&self, x: Tensor<B, 3>, state: Option<AarenState<B>>) -> (Tensor<B, 3>, AarenState<B>) {
        let (s, v) = self.scores_and_values(x);
        let out = if s.dims()[1] == 1 { aaren::step(s, v, state) } else { self.mix(s, v, state, self.form()) };
        (self.merge(out.output), out.state)
    }
}
