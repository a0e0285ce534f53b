//! Test-time memory: Titans' neural long-term memory (LAYERS.md §4) and the Miras
//! generalisations of its objective and retention (§5).
//!
//! The memory is an MLP whose weights are the state. Each token writes by a gradient step on an
//! inner loss `ℓ(M; k, v)` (the "attentional bias"), with momentum ("surprise") and decay
//! ("forgetting"), and reads `y = M(q)`:
//!
//! ```text
//! S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; k_t, v_t)      M_t = (1 − α_t) M_{t−1} + S_t
//! ```
//!
//! The memory is `M(x) = MLP(x)`, `x + MLP(x)` (`residual`), or with a LayerNorm on the MLP's
//! output, `x + LN(MLP(x))` (`layer_norm`: titans-pytorch's `ResidualNorm`), which fixes the
//! scale of the MLP's part of every read whatever the weights' scale; every read and inner
//! gradient passes through it.
//!
//! Inner gradients are taken at the weights `M_{t'}` of the last chunk boundary (the paper's
//! mini-batch approximation; chunk size 1 is the exact per-token recurrence). They are written
//! out analytically (backpropagation through the memory MLP by hand), so the outer gradients are
//! ordinary first-order autodiff.
//!
//! Two update semantics ([`Update`]):
//! - `Token`: every token has its own weights `M_t` and reads `y_t = M_t(q_t)`. Inside a chunk,
//!   `M_t = β_t M_{t'} + σ_t S_{t'} − Σ_{i≤t} P_{ti} θ_i x_iᵀ g_i` for each weight matrix, where
//!   `x_i` is that layer's input and `g_i` the backpropagated error at its output for key `i`,
//!   `β, σ` products of decays and `P = A·E` the product of the decay and momentum transfer
//!   matrices. A read `r M_t` is then `β_t r M_{t'} + σ_t r S_{t'} − Σ_i P_{ti} θ_i (r·x_i) g_i`:
//!   attention-like `C×C` matmuls per layer, so a chunk costs a few batched matmuls.
//! - `Chunk` (the reference implementation's semantics): one write per chunk (θ-weighted sum of
//!   its gradients; η and α from the chunk's mean gate logits); a token reads the weights after
//!   the last completed chunk at or before it, so a chunk's last token sees its own chunk's write.
//!
//! Chunk boundaries are counted from the start of the sequence. The state holds the weights and
//! momentum at the last boundary plus the inputs of the tokens since ([`Pending`]); a continuation
//! replays them, so `forward(a‖b)` equals `forward(b)` after the state of `a` for any split.
//!
//! Miras' choices here: the objective (`ℓ2`, smoothed `ℓp`, Huber: [`Objective`]) and the
//! retention ([`Retention`]): Titans' decay; Moneta's ℓq normalisation `W = A / ‖A‖_q^{q−2}` of
//! the accumulated `A`; or Memora's KL retention `W = c·softmax(Z)` of accumulated logits `Z`.
//! Under the last two the state is the accumulator, and reads inside a chunk see it through the
//! chunk start: ℓq divides by the chunk-start norm (§5.2), softmax is linearised at the
//! chunk-start logits (§5.4's "linear approximation inside the chunk"). A token at a chunk's end
//! reads the exact weights, so chunk size 1 is the exact recurrence for every retention.
//!
//! All of it runs in f32 at least (bf16 inputs are lifted; f64 stays f64), and the output is
//! returned in the dtype of `v`.
use crate::mask::hidden_keys;
use crate::normal_cdf;
use crate::precision::{to_dtype, to_f32};
use burn::tensor::DType;
use burn::tensor::activation::{log_sigmoid, softmax};
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// `x` in f32, or f64 if it is (the tests' exact checks run in f64).
fn lift<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::F64 => x,
        _ => to_f32(x),
    }
}

/// Nonlinearity between the memory MLP's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    Silu,
}

impl Activation {
    fn apply<B: Backend, const D: usize>(self, z: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => crate::gelu(z),
            Activation::Silu => burn::tensor::activation::silu(z),
        }
    }

    /// `φ'(z)`, written out (the inner gradient must not need a second autodiff).
    fn derivative<B: Backend, const D: usize>(self, z: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            // d/dz z·Φ(z) = Φ(z) + z·pdf(z)
            Activation::Gelu => {
                let cdf = normal_cdf(z.clone());
                let pdf = (z.clone().powi_scalar(2) * -0.5).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + z * pdf
            }
            Activation::Silu => {
                let s = probability(z.clone());
                s.clone() * (z * (s.neg().add_scalar(1.0))).add_scalar(1.0)
            }
        }
    }
}

/// `σ(z)` as `exp(log σ(z))`: exact in f64, where Burn 0.21's `sigmoid` computes in f32 (so
/// the f64 finite-difference checks of `tests/titans.rs` would see its rounding;
/// `tests/autodiff_gates.rs` measures it).
pub fn probability<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    log_sigmoid(z).exp()
}

/// The attentional bias: the inner loss of a write, through its derivative `e = ∂ℓ/∂M(k)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// `‖M(k) − v‖²` (Titans): `e = 2r`, `r = M(k) − v`.
    L2,
    /// `‖M(k) − v‖_p^p` (Moneta): `e = p·sign(r)·|r|^{p−1}` with the smooth surrogates
    /// `sign(r) ≈ tanh(a·r)`, `|r| ≈ √(r² + 1e−6)` (`a` = `sharpness`).
    Lp { p: f64, sharpness: f64 },
    /// Yaad's Huber bias with a per-token threshold δ: `e = 2r` where `‖r‖ ≤ δ`, else
    /// `δ·sign(r)` (smoothed as for ℓp).
    Huber { sharpness: f64 },
}

/// What keeps the memory bounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Retention {
    /// Titans' forget gate: `M_t = (1 − α_t) M_{t−1} + S_t`.
    Decay,
    /// Moneta: the decayed accumulator `A` is the state and reads use `A / ‖A‖_q^{q−2}` (per
    /// weight matrix).
    Lq { q: f64 },
    /// Memora: the weights live on the scaled simplex, `W = c·softmax(Z)` over each column's
    /// inputs (each output unit's incoming weights sum to `c` = `scale`), and the logits `Z`
    /// are the state: `Z_t = (1 − α_t) Z_{t−1} + S_t`. Softmax ignores a per-column constant, so
    /// this is exactly `W_t = c·softmax((1 − α_t) log W_{t−1} − θ_t ∇ℓ(W_{t−1}))` (§5.4).
    Softmax { scale: f64 },
}

/// When the memory's weights change (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Update {
    Token,
    Chunk,
}

/// The memory's structure and learning rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryRule {
    /// Add the input to the MLP's output: `M(x) = x + MLP(x)`.
    pub residual: bool,
    pub activation: Activation,
    pub objective: Objective,
    pub retention: Retention,
    pub update: Update,
    /// Chunk length `b` (inner gradients at chunk-start weights).
    pub chunk: usize,
    /// Carry the surprise `S` with momentum η; without it `S_t = −θ_t ∇ℓ`.
    pub momentum: bool,
    /// Upper bound of the momentum: η = eta_max·σ(·). As η → 1 the surprise integrates every
    /// gradient and the effective step θ/(1 − η) grows without bound.
    pub eta_max: f64,
    /// Soft bound on each token's inner gradient norm (all memory layers together):
    /// `u ← u·c·tanh(‖u‖/c)/‖u‖` (the reference implementation's soft clamp). `None`: no bound.
    pub grad_clip: Option<f64>,
    /// The inner loss averages over the value's `d` channels (titans-pytorch's
    /// `(pred − target)².mean(−1)`) instead of summing them (the paper's `‖M(k) − v‖²`): every
    /// write is `1/d` as large at the same θ.
    pub mean_loss: bool,
    /// LayerNorm (no gain, no bias) on the MLP's output before the residual:
    /// `M(x) = x + LN(MLP(x))`, titans-pytorch's `ResidualNorm` with its gain fixed at 1. The
    /// MLP's part of every read then has RMS 1 per row, whatever the weights' scale.
    pub layer_norm: bool,
}

/// Per-token inputs, `[B, T, H, d]` for `q, k, v` and `[B, T, H]` for the gates.
#[derive(Clone, Debug)]
pub struct MemoryInputs<B: Backend> {
    pub q: Tensor<B, 4>,
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// Inner learning rate θ > 0.
    pub theta: Tensor<B, 3>,
    /// Logit of the momentum η = σ(·) (ignored without momentum).
    pub eta: Tensor<B, 3>,
    /// Logit of the forget gate α = σ(·).
    pub alpha: Tensor<B, 3>,
    /// Huber threshold δ > 0 (only for [`Objective::Huber`]).
    pub delta: Option<Tensor<B, 3>>,
}

/// The inputs of the tokens since the last chunk boundary, replayed by the next call; the
/// same layout as [`MemoryInputs`] without `q`.
#[derive(Clone, Debug)]
pub struct Pending<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    pub theta: Tensor<B, 3>,
    pub eta: Tensor<B, 3>,
    pub alpha: Tensor<B, 3>,
    pub delta: Option<Tensor<B, 3>>,
}

/// The memory at the last chunk boundary: each weight matrix `[B, H, in, out]` (the accumulator
/// `A` under ℓq retention, the logits `Z` under softmax retention), its momentum, and the tokens
/// written since.
#[derive(Clone, Debug)]
pub struct MemoryState<B: Backend> {
    pub weights: Vec<Tensor<B, 4>>,
    pub momentum: Vec<Tensor<B, 4>>,
    pub pending: Option<Pending<B>>,
}

impl<B: Backend> MemoryState<B> {
    /// A fresh memory from initial weights `[B, H, in, out]`, with zero momentum if the rule
    /// has momentum (and none held otherwise).
    pub fn new(weights: Vec<Tensor<B, 4>>, momentum: bool) -> Self {
        let weights: Vec<_> = weights.into_iter().map(lift).collect();
        let momentum = match momentum {
            true => weights.iter().map(|w| w.zeros_like()).collect(),
            false => Vec::new(),
        };
        Self { weights, momentum, pending: None }
    }

    pub fn numel(&self) -> usize {
        let pending = self.pending.as_ref().map_or(0, |p| {
            let gates = 3 + p.delta.is_some() as usize;
            p.k.shape().num_elements() + p.v.shape().num_elements() + gates * p.theta.shape().num_elements()
        });
        let matrices = self.weights.iter().chain(&self.momentum);
        matrices.map(|w| w.shape().num_elements()).sum::<usize>() + pending
    }

    /// Tokens since the last chunk boundary.
    pub fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.k.dims()[1])
    }
}

/// Inputs of one chunk in the `[B, H, C, *]` layout, all f32.
#[derive(Clone)]
struct Chunk<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    theta: Tensor<B, 3>,
    eta: Tensor<B, 3>,
    alpha: Tensor<B, 3>,
    delta: Option<Tensor<B, 3>>,
}

impl<B: Backend> Chunk<B> {
    fn len(&self) -> usize {
        self.k.dims()[2]
    }

    fn narrow(&self, start: usize, len: usize) -> Self {
        let n4 = |x: &Tensor<B, 4>| x.clone().narrow(2, start, len);
        let n3 = |x: &Tensor<B, 3>| x.clone().narrow(2, start, len);
        Chunk {
            q: n4(&self.q),
            k: n4(&self.k),
            v: n4(&self.v),
            theta: n3(&self.theta),
            eta: n3(&self.eta),
            alpha: n3(&self.alpha),
            delta: self.delta.as_ref().map(n3),
        }
    }

    fn pending(&self) -> Pending<B> {
        let back4 = |x: &Tensor<B, 4>| x.clone().swap_dims(1, 2);
        let back3 = |x: &Tensor<B, 3>| x.clone().swap_dims(1, 2);
        Pending {
            k: back4(&self.k),
            v: back4(&self.v),
            theta: back3(&self.theta),
            eta: back3(&self.eta),
            alpha: back3(&self.alpha),
            delta: self.delta.as_ref().map(back3),
        }
    }
}

/// The memory MLP applied to rows `x: [B, H, N, d]`: the input of every layer, every
/// pre-activation, the output, and (under [`MemoryRule::layer_norm`]) the normalised last layer
/// with its `1/σ` per row.
struct Pass<B: Backend> {
    inputs: Vec<Tensor<B, 4>>,
    pre: Vec<Tensor<B, 4>>,
    output: Tensor<B, 4>,
    normed: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

/// PyTorch's `nn.LayerNorm` default ε, which titans-pytorch's `ResidualNorm` uses.
const LAYER_NORM_EPS: f64 = 1e-5;

/// LayerNorm over the last axis without gain or bias: the normalised rows and `1/σ` per row.
fn layer_norm<B: Backend>(h: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let centred = h.clone() - h.mean_dim(3);
    let inv_std = centred.clone().powi_scalar(2).mean_dim(3).add_scalar(LAYER_NORM_EPS).powf_scalar(-0.5);
    (centred * inv_std.clone(), inv_std)
}

/// `∂ℓ/∂h` from `e = ∂ℓ/∂y` through `y = layer_norm(h)`: `(e − mean(e) − y·mean(e ⊙ y)) / σ`.
fn layer_norm_backward<B: Backend>(e: Tensor<B, 4>, y: Tensor<B, 4>, inv_std: Tensor<B, 4>) -> Tensor<B, 4> {
    let along = (e.clone() * y.clone()).mean_dim(3);
    (e.clone() - e.mean_dim(3) - y * along) * inv_std
}

/// The memory's output from its last layer's `h` and its input `x`: `[x +] [LN](h)`.
fn finish<B: Backend>(rule: &MemoryRule, h: Tensor<B, 4>, x: Tensor<B, 4>) -> (Tensor<B, 4>, Option<(Tensor<B, 4>, Tensor<B, 4>)>) {
    let (h, normed) = match rule.layer_norm {
        true => {
            let (y, inv_std) = layer_norm(h);
            (y.clone(), Some((y, inv_std)))
        }
        false => (h, None),
    };
    (if rule.residual { h + x } else { h }, normed)
}

fn mlp<B: Backend>(rule: &MemoryRule, weights: &[Tensor<B, 4>], x: Tensor<B, 4>) -> Pass<B> {
    let (mut inputs, mut pre) = (Vec::new(), Vec::new());
    let mut h = x.clone();
    for (l, w) in weights.iter().enumerate() {
        inputs.push(h.clone());
        let z = h.matmul(w.clone());
        h = if l + 1 < weights.len() {
            pre.push(z.clone());
            rule.activation.apply(z)
        } else {
            z
        };
    }
    let (output, normed) = finish(rule, h, x);
    Pass { inputs, pre, output, normed }
}

/// `sign(x) ≈ tanh(a·x)`.
fn smooth_sign<B: Backend>(x: Tensor<B, 4>, sharpness: f64) -> Tensor<B, 4> {
    (x * sharpness).tanh()
}

/// `e = ∂ℓ/∂M(k)` for the residual `r = M(k) − v`: `[B, H, N, d]`.
fn error<B: Backend>(objective: Objective, r: Tensor<B, 4>, delta: Option<Tensor<B, 3>>) -> Tensor<B, 4> {
    match objective {
        Objective::L2 => r * 2.0,
        Objective::Lp { p, sharpness } => {
            let magnitude = (r.clone().powi_scalar(2) + 1e-6).powf_scalar((p - 1.0) / 2.0);
            smooth_sign(r, sharpness) * magnitude * p
        }
        Objective::Huber { sharpness } => {
            let delta = delta.expect("the Huber objective needs a threshold δ per token").unsqueeze_dim::<4>(3);
            let norm = r.clone().powi_scalar(2).sum_dim(3).sqrt();
            let small = norm.lower_equal(delta.clone()).float();
            let linear = smooth_sign(r.clone(), sharpness) * delta;
            r * 2.0 * small.clone() + linear * small.neg().add_scalar(1.0)
        }
    }
}

/// Per-token inner gradients at `weights` for keys `k` and values `v` (`[B, H, N, d]`), as the
/// factors of their outer products: for layer `l`, token `i`'s gradient is `x_iᵀ g_i` with
/// `x = inputs[l]`, `g = errors[l]` (`∂ℓ/∂(x W)`).
pub struct InnerGradients<B: Backend> {
    pub inputs: Vec<Tensor<B, 4>>,
    pub errors: Vec<Tensor<B, 4>>,
}

pub fn inner_gradients<B: Backend>(
    rule: &MemoryRule,
    weights: &[Tensor<B, 4>],
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    delta: Option<Tensor<B, 3>>,
) -> InnerGradients<B> {
    let Pass { inputs, pre, output, normed } = mlp(rule, weights, k);
    let d = v.dims()[3];
    let mut g = error(rule.objective, output - v, delta);
    if rule.mean_loss {
        g = g / d as f64;
    }
    if let Some((y, inv_std)) = normed {
        g = layer_norm_backward(g, y, inv_std);
    }
    let mut errors = vec![g.clone()];
    for l in (1..weights.len()).rev() {
        g = g.matmul(weights[l].clone().swap_dims(2, 3)) * rule.activation.derivative(pre[l - 1].clone());
        errors.push(g.clone());
    }
    errors.reverse();
    if let Some(c) = rule.grad_clip {
        // ‖x_iᵀ g_i‖ = ‖x_i‖·‖g_i‖ per layer; the token's norm is over all its layers.
        let sq = |x: &Tensor<B, 4>| x.clone().powi_scalar(2).sum_dim(3);
        let norm = inputs.iter().zip(&errors).map(|(x, g)| sq(x) * sq(g)).reduce(|a, b| a + b).expect("depth ≥ 1").add_scalar(1e-12).sqrt();
        let scale = (norm.clone() / c).tanh() * c / norm;
        errors = errors.into_iter().map(|g| g * scale.clone()).collect();
    }
    InnerGradients { inputs, errors }
}

/// `‖A‖_q^{q−2}` per matrix, `[B, H, 1, 1]` (1 under decay and softmax retention).
fn normaliser<B: Backend>(retention: Retention, a: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    match retention {
        Retention::Decay | Retention::Softmax { .. } => None,
        Retention::Lq { q } if q == 2.0 => None,
        Retention::Lq { q } => {
            let sum = (a.clone().powi_scalar(2) + 1e-12).powf_scalar(q / 2.0).sum_dim(3).sum_dim(2);
            Some(sum.powf_scalar((q - 2.0) / q))
        }
    }
}

/// The weights reads and gradients use: `A / ‖A‖_q^{q−2}`, `c·softmax(Z)` or the state itself.
fn effective<B: Backend>(retention: Retention, weights: &[Tensor<B, 4>]) -> (Vec<Tensor<B, 4>>, Vec<Option<Tensor<B, 4>>>) {
    if let Retention::Softmax { scale } = retention {
        return (weights.iter().map(|z| softmax(z.clone(), 2) * scale).collect(), vec![None; weights.len()]);
    }
    let norms: Vec<_> = weights.iter().map(|w| normaliser(retention, w)).collect();
    let eff = weights.iter().zip(&norms).map(|(w, n)| match n {
        Some(n) => w.clone() / n.clone(),
        None => w.clone(),
    });
    (eff.collect(), norms)
}

/// `exp(L_t − L_s)` for `s ≤ t`, 0 above the diagonal, from inclusive cumulative logs
/// `[B, H, C]` → `[B, H, C, C]`.
fn transfer<B: Backend>(cum: Tensor<B, 3>) -> Tensor<B, 4> {
    let c = cum.dims()[2];
    let future = hidden_keys::<B>(c, c, 0, None, &cum.device()).reshape([1, 1, c, c]);
    (cum.clone().unsqueeze_dim::<4>(3) - cum.unsqueeze_dim::<4>(2)).mask_fill(future, f32::NEG_INFINITY).exp()
}

/// One chunk under per-token semantics: the reads of its tokens and the state at its end.
/// `complete`: the chunk is whole, so its last token reads the exact weights of the new state.
fn token_chunk<B: Backend>(rule: &MemoryRule, state: &MemoryState<B>, chunk: &Chunk<B>, complete: bool) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>, Vec<Tensor<B, 4>>) {
    let c = chunk.len();
    let (eff, norms) = effective(rule.retention, &state.weights);
    let grads = inner_gradients(rule, &eff, chunk.k.clone(), chunk.v.clone(), chunk.delta.clone());
    let log_keep = log_sigmoid(chunk.alpha.clone().neg()); // log(1 − α)
    let decay = transfer(log_keep.clone().cumsum(2)); // A_tj = Π_{l=j+1..t} (1 − α_l)
    let beta = log_keep.cumsum(2).exp(); // β_t, [B, H, C]
    // P = A·E folds the momentum scan into the decay scan; σ_t multiplies S_{t'}.
    let (mix, sigma, carry) = if rule.momentum {
        let log_eta = log_sigmoid(chunk.eta.clone()).add_scalar(rule.eta_max.ln()).cumsum(2);
        let momentum = transfer(log_eta.clone()); // E_ji = Π_{m=i+1..j} η_m
        let eta_from_start = log_eta.exp(); // Π_{m≤j} η_m
        let sigma = decay.clone().matmul(eta_from_start.clone().unsqueeze_dim::<4>(3)).squeeze_dim::<3>(3);
        (decay.matmul(momentum.clone()), Some(sigma), Some((momentum, eta_from_start)))
    } else {
        (decay, None, None)
    };
    let coeff = mix.clone() * chunk.theta.clone().unsqueeze_dim::<4>(2); // P_ti θ_i
    let col = |x: &Tensor<B, 3>| x.clone().unsqueeze_dim::<4>(3); // [B, H, C, 1]
    // Reads, layer by layer, each token through its own weights.
    let mut r = chunk.q.clone();
    let depth = state.weights.len();
    for l in 0..depth {
        let out = if let Retention::Softmax { scale } = rule.retention {
            let momentum = sigma.as_ref().map(|s| (state.momentum[l].clone(), s.clone()));
            let p = eff[l].clone() / scale;
            linearised_softmax_read(r, p, scale, state.weights[l].clone(), &beta, momentum, &coeff, &grads.inputs[l], &grads.errors[l])
        } else {
            let mut out = r.clone().matmul(state.weights[l].clone()) * col(&beta);
            if let Some(sigma) = &sigma {
                out = out + r.clone().matmul(state.momentum[l].clone()) * col(sigma);
            }
            let scores = r.clone().matmul(grads.inputs[l].clone().swap_dims(2, 3)) * coeff.clone();
            out = out - scores.matmul(grads.errors[l].clone());
            match &norms[l] {
                Some(n) => out / n.clone(),
                None => out,
            }
        };
        r = if l + 1 < depth { rule.activation.apply(out) } else { out };
    }
    let (reads, _) = finish(rule, r, chunk.q.clone());
    // The chunk's end: the last row of each transfer matrix.
    let last_row = |m: &Tensor<B, 4>| m.clone().narrow(2, c - 1, 1); // [B, H, 1, C]
    let written = |l: usize, w: Tensor<B, 4>| {
        let x = grads.inputs[l].clone() * w.swap_dims(2, 3); // rows x_i scaled
        x.swap_dims(2, 3).matmul(grads.errors[l].clone())
    };
    let theta_row = chunk.theta.clone().unsqueeze_dim::<4>(2);
    let end = |x: &Tensor<B, 3>| x.clone().narrow(2, c - 1, 1).unsqueeze_dim::<4>(3); // [B, H, 1, 1]
    let mut weights = Vec::with_capacity(depth);
    let mut momentum = Vec::with_capacity(depth);
    for l in 0..depth {
        let mut w = state.weights[l].clone() * end(&beta) - written(l, last_row(&coeff));
        match (&sigma, &carry) {
            (Some(sigma), Some((e, from_start))) => {
                w = w + state.momentum[l].clone() * end(sigma);
                let s = state.momentum[l].clone() * end(from_start) - written(l, last_row(e) * theta_row.clone());
                momentum.push(s);
            }
            _ => {}
        }
        weights.push(w);
    }
    // Under ℓq and softmax retention the reads above see the state through the chunk start; the
    // token at a boundary reads the new state's exact weights.
    let reads = match (complete, rule.retention) {
        (true, Retention::Lq { .. } | Retention::Softmax { .. }) => {
            let (new_eff, _) = effective(rule.retention, &weights);
            let last = mlp(rule, &new_eff, chunk.q.clone().narrow(2, c - 1, 1)).output;
            replace_last(reads, last)
        }
        _ => reads,
    };
    (reads, weights, momentum)
}

/// `reads` `[B, H, C, d]` with its last row replaced by `last`.
fn replace_last<B: Backend>(reads: Tensor<B, 4>, last: Tensor<B, 4>) -> Tensor<B, 4> {
    let c = reads.dims()[2];
    match c {
        1 => last,
        _ => Tensor::cat(vec![reads.narrow(2, 0, c - 1), last], 2),
    }
}

/// Reads `r: [B, H, C, in]` through one softmax-retention weight matrix linearised at the chunk
/// start: `W_t ≈ W_b + J(Z_t − Z_b)` with `W_b = c·p`, `p = softmax(Z_b)` over inputs and
/// `J(D) = c·p ⊙ (D − 1ᵀ(p ⊙ D))` the softmax Jacobian, where
/// `Z_t − Z_b = (β_t − 1) Z_b + σ_t S_b − Σ_i P_ti θ_i x_iᵀ g_i` as for decay retention.
/// For a write `x_iᵀ g_i`, `r_t J(x_iᵀ g_i) = c·g_i ⊙ ((r_t ⊙ x_i) p − (x_i p) ⊙ (r_t p))`: a
/// `C×C×in` by `in×out` matmul per chunk, not the `C×C` of the linear retentions.
#[allow(clippy::too_many_arguments)]
fn linearised_softmax_read<B: Backend>(
    r: Tensor<B, 4>,
    p: Tensor<B, 4>,
    scale: f64,
    logits: Tensor<B, 4>,
    beta: &Tensor<B, 3>,
    momentum: Option<(Tensor<B, 4>, Tensor<B, 3>)>,
    coeff: &Tensor<B, 4>,
    x: &Tensor<B, 4>,
    g: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, c, d_in] = r.dims();
    let d_out = p.dims()[3];
    let col = |x: Tensor<B, 3>| x.unsqueeze_dim::<4>(3);
    let rp = r.clone().matmul(p.clone()); // [B, H, C, out]
    // r J(D) for a state matrix D: c·(r (p ⊙ D) − (r p) ⊙ 1ᵀ(p ⊙ D)).
    let jacobian = |d: Tensor<B, 4>| {
        let pd = p.clone() * d;
        (r.clone().matmul(pd.clone()) - rp.clone() * pd.sum_dim(2)) * scale
    };
    let mut out = rp.clone() * scale + jacobian(logits) * col(beta.clone().sub_scalar(1.0));
    if let Some((s, sigma)) = momentum {
        out = out + jacobian(s) * col(sigma);
    }
    let pairs = r.unsqueeze_dim::<5>(3) * x.clone().unsqueeze_dim::<5>(2); // r_t ⊙ x_i, [B, H, C, C, in]
    let through = pairs.reshape([b, h, c * c, d_in]).matmul(p.clone()).reshape([b, h, c, c, d_out]);
    let first = (through * g.clone().unsqueeze_dim::<5>(2) * coeff.clone().unsqueeze_dim::<5>(4)).sum_dim(3).squeeze_dim::<4>(3);
    let second = rp * coeff.clone().matmul(g.clone() * x.clone().matmul(p));
    out - (first - second) * scale
}

/// One chunk under per-chunk semantics. `complete`: the chunk is whole, so it writes and its
/// last token reads the new weights.
fn chunk_chunk<B: Backend>(rule: &MemoryRule, state: &MemoryState<B>, chunk: &Chunk<B>, complete: bool) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>, Vec<Tensor<B, 4>>) {
    let c = chunk.len();
    let (eff, _) = effective(rule.retention, &state.weights);
    let reads = mlp(rule, &eff, chunk.q.clone()).output;
    if !complete {
        return (reads, state.weights.clone(), state.momentum.clone());
    }
    let grads = inner_gradients(rule, &eff, chunk.k.clone(), chunk.v.clone(), chunk.delta.clone());
    let pooled = |x: &Tensor<B, 3>| x.clone().mean_dim(2).unsqueeze_dim::<4>(3); // [B, H, 1, 1]
    let keep = probability(pooled(&chunk.alpha).neg());
    let theta = chunk.theta.clone().unsqueeze_dim::<4>(3);
    let mut weights = Vec::new();
    let mut momentum = Vec::new();
    for l in 0..state.weights.len() {
        let write = (grads.inputs[l].clone() * theta.clone()).swap_dims(2, 3).matmul(grads.errors[l].clone());
        let s = match rule.momentum {
            true => state.momentum[l].clone() * probability(pooled(&chunk.eta)) * rule.eta_max - write,
            false => write.neg(),
        };
        weights.push(state.weights[l].clone() * keep.clone() + s.clone());
        if rule.momentum {
            momentum.push(s);
        }
    }
    let (new_eff, _) = effective(rule.retention, &weights);
    let last = mlp(rule, &new_eff, chunk.q.clone().narrow(2, c - 1, 1)).output;
    (replace_last(reads, last), weights, momentum)
}

/// `[B, T, H, *]` → `[B, H, T, *]` in f32, with the pending tokens of `state` in front (their
/// queries zero; their reads are dropped).
fn gather<B: Backend>(inputs: MemoryInputs<B>, pending: Option<Pending<B>>) -> Chunk<B> {
    let MemoryInputs { q, k, v, theta, eta, alpha, delta } = inputs;
    let t4 = |x: Tensor<B, 4>| lift(x).swap_dims(1, 2);
    let t3 = |x: Tensor<B, 3>| lift(x).swap_dims(1, 2);
    let mut chunk = Chunk { q: t4(q), k: t4(k), v: t4(v), theta: t3(theta), eta: t3(eta), alpha: t3(alpha), delta: delta.map(t3) };
    if let Some(p) = pending {
        let cat4 = |a: Tensor<B, 4>, b: Tensor<B, 4>| Tensor::cat(vec![t4(a), b], 2);
        let cat3 = |a: Tensor<B, 3>, b: Tensor<B, 3>| Tensor::cat(vec![t3(a), b], 2);
        chunk.q = Tensor::cat(vec![t4(p.k.zeros_like()), chunk.q], 2);
        chunk.k = cat4(p.k, chunk.k);
        chunk.v = cat4(p.v, chunk.v);
        chunk.theta = cat3(p.theta, chunk.theta);
        chunk.eta = cat3(p.eta, chunk.eta);
        chunk.alpha = cat3(p.alpha, chunk.alpha);
        chunk.delta = match (p.delta, chunk.delta) {
            (Some(a), Some(b)) => Some(cat3(a, b)),
            (None, None) => None,
            _ => panic!("pending tokens and new tokens disagree on the Huber threshold"),
        };
    }
    chunk
}

/// Reads `q: [B, T, H, d]` through the weights at the state's last chunk boundary (no write):
/// Titans MAC's retrieval from the memory of the previous segments.
pub fn read<B: Backend>(rule: &MemoryRule, state: &MemoryState<B>, q: Tensor<B, 4>) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let (eff, _) = effective(rule.retention, &state.weights);
    to_dtype(mlp(rule, &eff, lift(q).swap_dims(1, 2)).output.swap_dims(1, 2), dtype)
}

/// The chunked form: chunks of `rule.chunk` tokens in sequence, each a few batched matmuls.
/// Returns the reads `[B, T, H, d]` and the state after the last token.
pub fn chunked<B: Backend>(rule: &MemoryRule, inputs: MemoryInputs<B>, state: MemoryState<B>) -> (Tensor<B, 4>, MemoryState<B>) {
    run(rule, inputs, state, false)
}

/// The sequential reference: the same rule token by token (each token's weights built by the
/// explicit scans, each gradient its own pass). The recurrent form, and the tests' oracle.
pub fn sequential<B: Backend>(rule: &MemoryRule, inputs: MemoryInputs<B>, state: MemoryState<B>) -> (Tensor<B, 4>, MemoryState<B>) {
    run(rule, inputs, state, true)
}

fn run<B: Backend>(rule: &MemoryRule, inputs: MemoryInputs<B>, state: MemoryState<B>, by_token: bool) -> (Tensor<B, 4>, MemoryState<B>) {
    assert!(rule.chunk > 0, "chunk size must be positive");
    let dtype = inputs.v.dtype();
    let skip = state.pending_len();
    let MemoryState { weights, momentum, pending } = state;
    let mut state = MemoryState { weights: weights.into_iter().map(lift).collect(), momentum: momentum.into_iter().map(lift).collect(), pending: None };
    let all = gather(inputs, pending);
    let t = all.len();
    let mut reads = Vec::new();
    let mut start = 0;
    while start < t {
        let len = rule.chunk.min(t - start);
        // Slicing per chunk costs a full-size zero tensor per chunk in the backward pass
        // (`O(T²/C)` writes); chunks depend on each other non-linearly, so there is no scan.
        let chunk = all.narrow(start, len);
        let complete = len == rule.chunk;
        let (y, w, s) = match (by_token, rule.update) {
            (false, Update::Token) => token_chunk(rule, &state, &chunk, complete),
            (false, Update::Chunk) => chunk_chunk(rule, &state, &chunk, complete),
            (true, _) => reference_chunk(rule, &state, &chunk, complete),
        };
        reads.push(y);
        if complete {
            state.weights = w;
            state.momentum = s;
        } else {
            state.pending = Some(chunk.pending());
        }
        start += len;
    }
    let reads = Tensor::cat(reads, 2);
    let reads = reads.narrow(2, skip, t - skip).swap_dims(1, 2);
    (to_dtype(reads, dtype), state)
}

/// One chunk, token by token: `S` and `M` by the recurrences as written, gradients at the
/// chunk-start weights, each read through the token's own weights (or, per chunk, through the
/// last written ones).
fn reference_chunk<B: Backend>(rule: &MemoryRule, state: &MemoryState<B>, chunk: &Chunk<B>, complete: bool) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>, Vec<Tensor<B, 4>>) {
    let c = chunk.len();
    let (eff, norms) = effective(rule.retention, &state.weights);
    // The weights a token inside the chunk reads: through the chunk-start normaliser, or the
    // chunk-start softmax linearised (its Jacobian applied to the change of the logits).
    let inside = |w: Vec<Tensor<B, 4>>| -> Vec<Tensor<B, 4>> {
        match rule.retention {
            Retention::Softmax { scale } => w
                .into_iter()
                .zip(&state.weights)
                .zip(&eff)
                .map(|((z, z_b), w_b)| {
                    let p = w_b.clone() / scale;
                    let pd = p.clone() * (z - z_b.clone());
                    w_b.clone() + (pd.clone() - p * pd.sum_dim(2)) * scale
                })
                .collect(),
            _ => w.into_iter().zip(&norms).map(|(w, n)| n.as_ref().map_or(w.clone(), |n| w / n.clone())).collect(),
        }
    };
    let gate = |x: &Tensor<B, 3>, i: usize| x.clone().narrow(2, i, 1).unsqueeze_dim::<4>(3); // [B, H, 1, 1]
    let (mut weights, mut momentum) = (state.weights.clone(), state.momentum.clone());
    let mut reads = Vec::with_capacity(c);
    let gradient = |i: usize| {
        let delta = chunk.delta.as_ref().map(|d| d.clone().narrow(2, i, 1));
        let g = inner_gradients(rule, &eff, chunk.k.clone().narrow(2, i, 1), chunk.v.clone().narrow(2, i, 1), delta);
        g.inputs.into_iter().zip(g.errors).map(|(x, e)| x.swap_dims(2, 3).matmul(e)).collect::<Vec<_>>()
    };
    match rule.update {
        Update::Token => {
            for i in 0..c {
                let (theta, keep) = (gate(&chunk.theta, i), probability(gate(&chunk.alpha, i).neg()));
                for (l, u) in gradient(i).into_iter().enumerate() {
                    let s = match rule.momentum {
                        true => momentum[l].clone() * probability(gate(&chunk.eta, i)) * rule.eta_max - u * theta.clone(),
                        false => (u * theta.clone()).neg(),
                    };
                    weights[l] = weights[l].clone() * keep.clone() + s.clone();
                    if rule.momentum {
                        momentum[l] = s;
                    }
                }
                let read_weights = match complete && i + 1 == c {
                    true => effective(rule.retention, &weights).0,
                    false => inside(weights.clone()),
                };
                let read = mlp(rule, &read_weights, chunk.q.clone().narrow(2, i, 1)).output;
                reads.push(read);
            }
        }
        Update::Chunk => {
            for i in 0..c {
                reads.push(mlp(rule, &eff, chunk.q.clone().narrow(2, i, 1)).output);
            }
            if complete {
                let mean = |x: &Tensor<B, 3>| x.clone().mean_dim(2).unsqueeze_dim::<4>(3);
                let keep = probability(mean(&chunk.alpha).neg());
                let mut total: Vec<Option<Tensor<B, 4>>> = vec![None; weights.len()];
                for i in 0..c {
                    let theta = gate(&chunk.theta, i);
                    for (l, u) in gradient(i).into_iter().enumerate() {
                        let u = u * theta.clone();
                        total[l] = Some(match total[l].take() {
                            Some(acc) => acc + u,
                            None => u,
                        });
                    }
                }
                for (l, write) in total.into_iter().enumerate() {
                    let write = write.expect("a chunk has at least one token");
                    let s = match rule.momentum {
                        true => momentum[l].clone() * probability(mean(&chunk.eta)) * rule.eta_max - write,
                        false => write.neg(),
                    };
                    weights[l] = weights[l].clone() * keep.clone() + s.clone();
                    if rule.momentum {
                        momentum[l] = s;
                    }
                }
                let (new_eff, _) = effective(rule.retention, &weights);
                reads[c - 1] = mlp(rule, &new_eff, chunk.q.clone().narrow(2, c - 1, 1)).output;
            }
        }
    }
    (Tensor::cat(reads, 2), weights, momentum)
}
