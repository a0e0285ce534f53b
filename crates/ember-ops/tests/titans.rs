//! Test-time memory (LAYERS.md §4.5, §5.7): the chunked form against the token-by-token
//! reference, the reference against the update rule written out by hand, analytic inner
//! gradients against autodiff, outer gradients against finite differences, state carry and
//! causality.
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use ember_ops::random::TensorRng;
use ember_ops::titans::{
    chunked, inner_gradients, sequential, Activation, MemoryInputs, MemoryRule, MemoryState, Objective, Retention, Update,
};

// f64 throughout, F included: Burn 0.21.0 keys a device's default float dtype by device, not by
// backend, so `NdArray<f32>` and `NdArray<f64>` in one process race to set it for the CPU, and
// with more than two test threads the loser's tensors came out in the other dtype (seen by
// `scripts/stress-tests.sh`). The f32 forms are held to each other through the layer
// (ember-layers' `titans` tests).
type F = NdArray<f64>;
type D = NdArray<f64>;

const B: usize = 2;
const H: usize = 2;
const DH: usize = 4;

fn rule(depth_residual: bool, objective: Objective, retention: Retention, update: Update, chunk: usize, momentum: bool) -> MemoryRule {
    MemoryRule { residual: depth_residual, activation: Activation::Gelu, objective, retention, update, chunk, momentum, eta_max: 0.9, grad_clip: None, mean_loss: false, layer_norm: false }
}

fn normal<Bk: Backend, const N: usize>(rng: &mut TensorRng, shape: [usize; N], std: f64) -> Tensor<Bk, N> {
    rng.normal(shape, std, &Default::default())
}

/// Random inputs of `t` tokens: unit-norm keys and queries as the layer makes them.
fn inputs<Bk: Backend>(rng: &mut TensorRng, t: usize, huber: bool) -> MemoryInputs<Bk> {
    let unit = |x: Tensor<Bk, 4>| x.clone() / x.powi_scalar(2).sum_dim(3).sqrt();
    MemoryInputs {
        q: unit(normal(rng, [B, t, H, DH], 1.0)),
        k: unit(normal(rng, [B, t, H, DH], 1.0)),
        v: normal(rng, [B, t, H, DH], 1.0),
        theta: rng.uniform([B, t, H], 0.02, 0.25, &Default::default()),
        eta: normal(rng, [B, t, H], 1.0),
        alpha: normal(rng, [B, t, H], 1.0).sub_scalar(2.0),
        delta: huber.then(|| rng.uniform([B, t, H], 0.2, 2.0, &Default::default())),
    }
}

/// Initial weights of a memory MLP `DH → 2·DH → … → DH` with `depth` layers.
fn weights<Bk: Backend>(rng: &mut TensorRng, depth: usize) -> Vec<Tensor<Bk, 4>> {
    (0..depth)
        .map(|l| {
            let (i, o) = (if l == 0 { DH } else { 2 * DH }, if l + 1 == depth { DH } else { 2 * DH });
            normal(rng, [B, H, i, o], 0.5)
        })
        .collect()
}

fn rel_err<Bk: Backend, const N: usize>(a: Tensor<Bk, N>, b: Tensor<Bk, N>) -> f64 {
    use burn::tensor::ElementConversion;
    let diff: f64 = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar().elem();
    let scale: f64 = b.powi_scalar(2).sum().sqrt().into_scalar().elem();
    diff / scale.max(1e-12)
}

fn assert_states_match<Bk: Backend>(a: &MemoryState<Bk>, b: &MemoryState<Bk>, tol: f64, what: &str) {
    assert_eq!(a.weights.len(), b.weights.len());
    assert_eq!(a.momentum.len(), b.momentum.len());
    for (x, y) in a.weights.iter().zip(&b.weights).chain(a.momentum.iter().zip(&b.momentum)) {
        let err = rel_err(x.clone(), y.clone());
        assert!(err < tol, "{what}: state rel err {err}");
    }
    assert_eq!(a.pending_len(), b.pending_len(), "{what}: pending tokens");
    if let (Some(p), Some(q)) = (&a.pending, &b.pending) {
        assert!(rel_err(p.k.clone(), q.k.clone()) < tol && rel_err(p.theta.clone(), q.theta.clone()) < tol, "{what}: pending inputs");
    }
}

/// Every rule the tests sweep: both update semantics, depth 1–3, with and without momentum and
/// residual, each objective and retention.
fn rules(chunk: usize) -> Vec<(String, MemoryRule, usize)> {
    let lp = Objective::Lp { p: 3.0, sharpness: 10.0 };
    let huber = Objective::Huber { sharpness: 10.0 };
    let lq = Retention::Lq { q: 4.0 };
    let mut out = Vec::new();
    for update in [Update::Token, Update::Chunk] {
        for (name, r, depth) in [
            ("titans depth 2", rule(false, Objective::L2, Retention::Decay, update, chunk, true), 2),
            ("titans depth 1", rule(false, Objective::L2, Retention::Decay, update, chunk, true), 1),
            ("residual depth 3", rule(true, Objective::L2, Retention::Decay, update, chunk, true), 3),
            ("moneta", rule(false, lp, lq, update, chunk, false), 2),
            ("yaad", rule(true, huber, Retention::Decay, update, chunk, false), 2),
            ("memora", rule(false, Objective::L2, Retention::Softmax { scale: 2.0 }, update, chunk, false), 2),
            ("memora momentum residual depth 1", rule(true, Objective::L2, Retention::Softmax { scale: 1.0 }, update, chunk, true), 1),
            ("titans clipped", MemoryRule { grad_clip: Some(0.3), ..rule(false, Objective::L2, Retention::Decay, update, chunk, true) }, 2),
            ("titans residual layer norm", MemoryRule { layer_norm: true, ..rule(true, Objective::L2, Retention::Decay, update, chunk, true) }, 2),
            ("matrix layer norm", MemoryRule { layer_norm: true, ..rule(false, Objective::L2, Retention::Decay, update, chunk, false) }, 1),
        ] {
            out.push((format!("{name}, {update:?} update, chunk {chunk}"), r, depth));
        }
    }
    out
}

#[test]
fn chunked_equals_sequential_reference() {
    let mut rng = TensorRng::new(1);
    // T = 19 divides by none of the chunk sizes but 1: the last chunk is partial.
    for chunk in [1, 4, 16] {
        for (name, rule, depth) in rules(chunk) {
            let x = inputs::<F>(&mut rng, 19, matches!(rule.objective, Objective::Huber { .. }));
            let w = weights::<F>(&mut rng, depth);
            let (y_fast, s_fast) = chunked(&rule, x.clone(), MemoryState::new(w.clone(), rule.momentum));
            let (y_ref, s_ref) = sequential(&rule, x, MemoryState::new(w, rule.momentum));
            // f32 rounding, amplified by up to 19 dependent writes (and ℓq's fourth powers),
            // stays near 1e-5; a wrong coefficient misses by O(1).
            let err = rel_err(y_fast, y_ref);
            assert!(err < 1e-4, "{name}: output rel err {err}");
            assert_states_match(&s_fast, &s_ref, 1e-4, &name);
            assert_eq!(s_fast.pending_len(), 19 % chunk, "{name}");
        }
    }
}

#[test]
fn chunked_input_gradients_equal_the_reference_ones() {
    let mut rng = TensorRng::new(2);
    type A = Autodiff<F>;
    for (name, rule, depth) in rules(4).into_iter().step_by(2) {
        let huber = matches!(rule.objective, Objective::Huber { .. });
        let x = inputs::<A>(&mut rng, 10, huber);
        let (k, theta, alpha) = (x.k.clone().require_grad(), x.theta.clone().require_grad(), x.alpha.clone().require_grad());
        let x = MemoryInputs { k: k.clone(), theta: theta.clone(), alpha: alpha.clone(), ..x };
        let w = weights::<A>(&mut rng, depth);
        let probe = normal::<A, 4>(&mut rng, [B, 10, H, DH], 1.0);
        let grads = |run: fn(&MemoryRule, MemoryInputs<A>, MemoryState<A>) -> (Tensor<A, 4>, MemoryState<A>)| {
            let (y, state) = run(&rule, x.clone(), MemoryState::new(w.clone(), rule.momentum));
            let loss = (y * probe.clone()).sum() + state.weights.iter().map(|w| w.clone().sum()).fold(Tensor::zeros([1], &Default::default()), |a, b| a + b);
            let g = loss.backward();
            (k.grad(&g).unwrap(), theta.grad(&g).unwrap(), alpha.grad(&g).unwrap())
        };
        let (fast, slow) = (grads(chunked), grads(sequential));
        for (what, err) in [("k", rel_err(fast.0, slow.0)), ("θ", rel_err(fast.1, slow.1)), ("α", rel_err(fast.2, slow.2))] {
            assert!(err < 1e-4, "{name}: d/d{what} rel err {err}");
        }
    }
}

fn flat<const N: usize>(x: Tensor<D, N>) -> Vec<f64> {
    x.into_data().to_vec::<f64>().unwrap()
}

/// A matrix memory run by both forms on `t` random tokens, for the tests that redo the rule by
/// hand: the inputs, the initial state and both forms' reads (flattened), and the final state.
struct ByHand {
    x: MemoryInputs<D>,
    w_init: Vec<f64>,
    y: Vec<f64>,
    y_chunked: Vec<f64>,
    end: MemoryState<D>,
}

fn by_both_forms(rng: &mut TensorRng, rule: &MemoryRule, t: usize) -> ByHand {
    let x = inputs::<D>(rng, t, false);
    let w0 = weights::<D>(rng, 1);
    let (y, end) = sequential(rule, x.clone(), MemoryState::new(w0.clone(), rule.momentum));
    let (y_chunked, _) = chunked(rule, x.clone(), MemoryState::new(w0.clone(), rule.momentum));
    ByHand { x, w_init: flat(w0[0].clone()), y: flat(y), y_chunked: flat(y_chunked), end }
}

/// The per-token rule written out for a matrix memory (§4.5 test 1, generalised to momentum
/// and decay): `S ← η S − θ·2 kᵀ(kW − v)`, `W ← (1 − α) W + S`, `y = qW`, one token at a time in
/// plain Rust arithmetic.
#[test]
fn chunk_size_one_is_the_per_token_update_rule() {
    let mut rng = TensorRng::new(3);
    let t = 7;
    let ByHand { x, w_init, y, y_chunked, end } = by_both_forms(&mut rng, &rule(false, Objective::L2, Retention::Decay, Update::Token, 1, true), t);
    let (q, k, v) = (flat(x.q), flat(x.k), flat(x.v));
    let (theta, eta, alpha) = (flat(x.theta), flat(x.eta), flat(x.alpha));
    let w_end = flat(end.weights[0].clone());
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    for b in 0..B {
        for h in 0..H {
            let at = |i: usize, j: usize| ((b * H + h) * DH + i) * DH + j;
            let mut w: Vec<f64> = (0..DH * DH).map(|n| w_init[at(n / DH, n % DH)]).collect();
            let mut s = vec![0.0; DH * DH];
            for tok in 0..t {
                let row = |x: &[f64], j: usize| x[((b * t + tok) * H + h) * DH + j];
                let gate = |g: &[f64]| g[(b * t + tok) * H + h];
                let pred: Vec<f64> = (0..DH).map(|j| (0..DH).map(|i| row(&k, i) * w[i * DH + j]).sum()).collect();
                for i in 0..DH {
                    for j in 0..DH {
                        let grad = 2.0 * row(&k, i) * (pred[j] - row(&v, j));
                        s[i * DH + j] = 0.9 * sig(gate(&eta)) * s[i * DH + j] - gate(&theta) * grad;
                        w[i * DH + j] = (1.0 - sig(gate(&alpha))) * w[i * DH + j] + s[i * DH + j];
                    }
                }
                for j in 0..DH {
                    let want: f64 = (0..DH).map(|i| row(&q, i) * w[i * DH + j]).sum();
                    let at_y = ((b * t + tok) * H + h) * DH + j;
                    // NdArray's f64 sigmoid is accurate to about 1e-8 relative (measured), which
                    // bounds the agreement with the exact gates used here.
                    assert!((y[at_y] - want).abs() < 1e-6, "reference read, token {tok}: {} vs {want}", y[at_y]);
                    assert!((y_chunked[at_y] - want).abs() < 1e-6, "chunked read, token {tok}: {} vs {want}", y_chunked[at_y]);
                }
            }
            for n in 0..DH * DH {
                assert!((w_end[at(n / DH, n % DH)] - w[n]).abs() < 1e-6, "final weights");
            }
        }
    }
}

/// Memora's update written as §5.4 states it, for a matrix memory in plain f64 arithmetic:
/// `W ← c·softmax((1 − α) log W − θ·2kᵀ(kW − v))` over each column, `y = qW`. The op keeps
/// logits instead; at chunk size 1 the two must agree (softmax ignores a per-column constant).
/// Every `W` here lies on the scaled simplex by construction, so agreement also shows the op's
/// reads are (§5.7 test 3).
#[test]
fn memora_chunk_size_one_is_mirror_descent_on_the_simplex() {
    let mut rng = TensorRng::new(4);
    let c = 1.5;
    let t = 6;
    let ByHand { x, w_init: z_init, y, y_chunked, .. } = by_both_forms(&mut rng, &rule(false, Objective::L2, Retention::Softmax { scale: c }, Update::Token, 1, false), t);
    let (q, k, v) = (flat(x.q), flat(x.k), flat(x.v));
    let (theta, alpha) = (flat(x.theta), flat(x.alpha));
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    // c·softmax over the inputs i of every column j of a DH×DH matrix stored row-major.
    let simplex = |logits: &[f64]| -> Vec<f64> {
        let mut w = vec![0.0; DH * DH];
        for j in 0..DH {
            let total: f64 = (0..DH).map(|i| logits[i * DH + j].exp()).sum();
            for i in 0..DH {
                w[i * DH + j] = c * logits[i * DH + j].exp() / total;
            }
        }
        w
    };
    for b in 0..B {
        for h in 0..H {
            let at = |i: usize, j: usize| ((b * H + h) * DH + i) * DH + j;
            let mut w = simplex(&(0..DH * DH).map(|n| z_init[at(n / DH, n % DH)]).collect::<Vec<_>>());
            for tok in 0..t {
                let row = |x: &[f64], j: usize| x[((b * t + tok) * H + h) * DH + j];
                let gate = |g: &[f64]| g[(b * t + tok) * H + h];
                let pred: Vec<f64> = (0..DH).map(|j| (0..DH).map(|i| row(&k, i) * w[i * DH + j]).sum()).collect();
                let logits: Vec<f64> = (0..DH * DH)
                    .map(|n| {
                        let (i, j) = (n / DH, n % DH);
                        let grad = 2.0 * row(&k, i) * (pred[j] - row(&v, j));
                        (1.0 - sig(gate(&alpha))) * w[n].ln() - gate(&theta) * grad
                    })
                    .collect();
                w = simplex(&logits);
                for j in 0..DH {
                    let want: f64 = (0..DH).map(|i| row(&q, i) * w[i * DH + j]).sum();
                    let at_y = ((b * t + tok) * H + h) * DH + j;
                    assert!((y[at_y] - want).abs() < 1e-6, "reference read, token {tok}: {} vs {want}", y[at_y]);
                    assert!((y_chunked[at_y] - want).abs() < 1e-6, "chunked read, token {tok}: {} vs {want}", y_chunked[at_y]);
                }
            }
        }
    }
}

/// The memory MLP's residual `M(k) − v`, written with Burn ops (autodiff differentiates it).
fn residual_of<Bk: Backend>(w: &[Tensor<Bk, 4>], k: Tensor<Bk, 4>, v: Tensor<Bk, 4>, residual: bool, layer_norm: bool, activation: Activation) -> Tensor<Bk, 4> {
    let mut h = k.clone();
    for (l, wl) in w.iter().enumerate() {
        h = h.matmul(wl.clone());
        if l + 1 < w.len() {
            h = match activation {
                // Exact GELU through erf: Burn's own `gelu` backward uses the tanh approximation.
                Activation::Gelu => h.clone() * (h / std::f64::consts::SQRT_2).erf().add_scalar(1.0) / 2.0,
                Activation::Silu => burn::tensor::activation::silu(h),
            };
        }
    }
    if layer_norm {
        // PyTorch's LayerNorm: biased variance, ε = 1e-5.
        let centred = h.clone() - h.mean_dim(3);
        h = centred.clone() / (centred.powi_scalar(2).mean_dim(3) + 1e-5).sqrt();
    }
    let out = if residual { h + k } else { h };
    out - v
}

/// Inner gradients by hand (§4.1) against Burn's autodiff of the inner loss. ℓ2 is `‖r‖²`;
/// the Huber error is the derivative of `‖r‖²` where `‖r‖ ≤ δ` and of `δ·Σ log cosh(a·r)/a`
/// elsewhere (its smoothed ℓ1 side). ℓp's error is checked on its own below.
#[test]
fn analytic_inner_gradients_equal_autodiff() {
    let mut rng = TensorRng::new(5);
    type A = Autodiff<D>;
    let a = 10.0;
    for activation in [Activation::Gelu, Activation::Silu] {
        for (residual, layer_norm) in [(false, false), (true, false), (false, true), (true, true)] {
            for depth in [1, 2, 3] {
                for objective in [Objective::L2, Objective::Huber { sharpness: a }] {
                    let rule = MemoryRule { residual, activation, objective, retention: Retention::Decay, update: Update::Token, chunk: 1, momentum: false, eta_max: 1.0, grad_clip: None, mean_loss: false, layer_norm };
                    let w: Vec<Tensor<A, 4>> = weights::<A>(&mut rng, depth).into_iter().map(|w| w.require_grad()).collect();
                    // Six tokens per (batch, head): the loss summed over them has the sum of
                    // the per-token gradients.
                    let x = inputs::<A>(&mut rng, 6, true);
                    let (k, v) = (x.k.swap_dims(1, 2), x.v.swap_dims(1, 2) * 3.0);
                    let delta = x.delta.unwrap().swap_dims(1, 2);
                    let r = residual_of(&w, k.clone(), v.clone(), residual, layer_norm, activation);
                    let loss = match objective {
                        Objective::Huber { .. } => {
                            let norm = r.clone().powi_scalar(2).sum_dim(3).sqrt();
                            let small = norm.lower_equal(delta.clone().unsqueeze_dim::<4>(3)).float().detach();
                            let cosh = ((r.clone() * a).exp() + (r.clone() * -a).exp()) / 2.0;
                            let linear = cosh.log() / a * delta.clone().unsqueeze_dim::<4>(3);
                            (r.powi_scalar(2) * small.clone() + linear * small.neg().add_scalar(1.0)).sum()
                        }
                        _ => r.powi_scalar(2).sum(),
                    };
                    let grads = loss.backward();
                    let plain: Vec<Tensor<D, 4>> = w.iter().map(|w| w.clone().inner()).collect();
                    let ours = inner_gradients(&rule, &plain, k.inner(), v.inner(), Some(delta.inner()));
                    for (l, wl) in w.iter().enumerate() {
                        let mine = ours.inputs[l].clone().swap_dims(2, 3).matmul(ours.errors[l].clone());
                        let err = rel_err(mine, wl.grad(&grads).unwrap());
                        // f64 throughout, but NdArray's f64 tanh/exp/erf are good to about 1e-8.
                        assert!(err < 1e-6, "{activation:?} residual {residual} layer norm {layer_norm} depth {depth} {objective:?} layer {l}: rel err {err}");
                    }
                }
            }
        }
    }
}

#[test]
fn lp_error_is_the_derivative_of_the_smoothed_loss() {
    // d/dr of  ∫ p·tanh(a r)(r² + ε)^{(p−1)/2} dr  is the integrand: check it by central
    // differences of a numerical integral, per element.
    let (p, a, eps) = (3.0f64, 10.0f64, 1e-6f64);
    let integrand = |r: f64| p * (a * r).tanh() * (r * r + eps).powf((p - 1.0) / 2.0);
    let rule = MemoryRule { residual: false, activation: Activation::Gelu, objective: Objective::Lp { p, sharpness: a }, retention: Retention::Decay, update: Update::Token, chunk: 1, momentum: false, eta_max: 1.0, grad_clip: None, mean_loss: false, layer_norm: false };
    // A depth-1 memory with W = I and k = e_0 has residual r = k − v, error e = ∂ℓ/∂p.
    let eye = Tensor::<D, 2>::eye(DH, &Default::default()).reshape([1, 1, DH, DH]);
    for r0 in [-1.3, -0.2, -0.01, 0.0, 0.03, 0.5, 2.0] {
        let k = Tensor::<D, 4>::from_data(TensorData::new(vec![1.0, 0.0, 0.0, 0.0], [1, 1, 1, DH]), &Default::default());
        let v = Tensor::<D, 4>::from_data(TensorData::new(vec![1.0 - r0, 0.0, 0.0, 0.0], [1, 1, 1, DH]), &Default::default());
        let g = inner_gradients(&rule, &[eye.clone()], k, v, None);
        let e = g.errors[0].clone().into_data().to_vec::<f64>().unwrap()[0];
        // Simpson's rule for the loss at r0 ± h, differenced.
        let h = 1e-4;
        let loss = |r: f64| {
            let n = 2000;
            let step = r / n as f64;
            (0..=n).map(|i| integrand(i as f64 * step) * step * if i == 0 || i == n { 1.0 } else if i % 2 == 1 { 4.0 } else { 2.0 } / 3.0).sum::<f64>()
        };
        let fd = (loss(r0 + h) - loss(r0 - h)) / (2.0 * h);
        assert!((e - fd).abs() < 1e-5 * (1.0 + fd.abs()), "r = {r0}: {e} vs {fd}");
    }
}


fn split_inputs<Bk: Backend>(x: &MemoryInputs<Bk>, start: usize, len: usize) -> MemoryInputs<Bk> {
    let n4 = |t: &Tensor<Bk, 4>| t.clone().narrow(1, start, len);
    let n3 = |t: &Tensor<Bk, 3>| t.clone().narrow(1, start, len);
    MemoryInputs { q: n4(&x.q), k: n4(&x.k), v: n4(&x.v), theta: n3(&x.theta), eta: n3(&x.eta), alpha: n3(&x.alpha), delta: x.delta.as_ref().map(n3) }
}

/// `forward(a‖b)` equals `forward(b)` started from the state after `a`, for splits inside and
/// at chunk boundaries, prompts and single tokens alike.
#[test]
fn state_carries_across_calls() {
    let mut rng = TensorRng::new(6);
    for (name, rule, depth) in rules(4) {
        let x = inputs::<F>(&mut rng, 13, matches!(rule.objective, Objective::Huber { .. }));
        let w = weights::<F>(&mut rng, depth);
        let (whole, end) = chunked(&rule, x.clone(), MemoryState::new(w.clone(), rule.momentum));
        for cuts in [vec![5], vec![8], vec![1, 2, 3, 9], (1..13).collect::<Vec<_>>()] {
            let mut state = MemoryState::new(w.clone(), rule.momentum);
            let mut parts = Vec::new();
            let mut bounds = vec![0];
            bounds.extend(&cuts);
            bounds.push(13);
            for pair in bounds.windows(2) {
                let (y, s) = chunked(&rule, split_inputs(&x, pair[0], pair[1] - pair[0]), state);
                parts.push(y);
                state = s;
            }
            let err = rel_err(Tensor::cat(parts, 1), whole.clone());
            assert!(err < 1e-5, "{name}, cuts {cuts:?}: rel err {err}");
            assert_states_match(&state, &end, 1e-5, &name);
        }
    }
}

/// Changing tokens from position `p` on leaves every earlier read unchanged.
#[test]
fn reads_are_causal() {
    let mut rng = TensorRng::new(7);
    for (name, rule, depth) in rules(4) {
        let huber = matches!(rule.objective, Objective::Huber { .. });
        let x = inputs::<F>(&mut rng, 12, huber);
        let w = weights::<F>(&mut rng, depth);
        let (y, _) = chunked(&rule, x.clone(), MemoryState::new(w.clone(), rule.momentum));
        for p in [1, 4, 7, 11] {
            let other = inputs::<F>(&mut rng, 12 - p, huber);
            let glue4 = |a: &Tensor<F, 4>, b: Tensor<F, 4>| Tensor::cat(vec![a.clone().narrow(1, 0, p), b], 1);
            let glue3 = |a: &Tensor<F, 3>, b: Tensor<F, 3>| Tensor::cat(vec![a.clone().narrow(1, 0, p), b], 1);
            let changed = MemoryInputs {
                q: glue4(&x.q, other.q),
                k: glue4(&x.k, other.k),
                v: glue4(&x.v, other.v),
                theta: glue3(&x.theta, other.theta),
                eta: glue3(&x.eta, other.eta),
                alpha: glue3(&x.alpha, other.alpha),
                delta: x.delta.as_ref().map(|d| glue3(d, other.delta.unwrap())),
            };
            let (y2, _) = chunked(&rule, changed, MemoryState::new(w.clone(), rule.momentum));
            let (before, before2) = (y.clone().narrow(1, 0, p), y2.clone().narrow(1, 0, p));
            assert_eq!(before.into_data(), before2.into_data(), "{name}: reads before {p} changed");
            assert!(rel_err(y2.narrow(1, p, 12 - p), y.clone().narrow(1, p, 12 - p)) > 1e-3, "{name}: later reads did not change");
        }
    }
}

/// §5.7: Yaad with δ → ∞ is ℓ2 gradient descent with decay.
#[test]
fn huber_with_a_huge_threshold_is_l2() {
    let mut rng = TensorRng::new(8);
    let huber = rule(false, Objective::Huber { sharpness: 10.0 }, Retention::Decay, Update::Token, 4, false);
    let l2 = MemoryRule { objective: Objective::L2, ..huber };
    let mut x = inputs::<F>(&mut rng, 9, true);
    x.delta = Some(x.delta.unwrap() * 1e6);
    let w = weights::<F>(&mut rng, 2);
    let (a, _) = chunked(&huber, x.clone(), MemoryState::new(w.clone(), false));
    let (b, _) = chunked(&l2, MemoryInputs { delta: None, ..x }, MemoryState::new(w, false));
    assert!(rel_err(a, b) < 1e-6);
}

/// Outer gradients (through Burn's autodiff of the chunked form) against central finite
/// differences in f64, for every input the layer feeds the memory.
#[test]
fn outer_gradients_match_finite_differences() {
    let mut rng = TensorRng::new(9);
    type A = Autodiff<D>;
    for (name, rule, depth) in rules(3).into_iter().step_by(3) {
        let huber = matches!(rule.objective, Objective::Huber { .. });
        let x = inputs::<D>(&mut rng, 7, huber);
        let w = weights::<D>(&mut rng, depth);
        let probe = normal::<D, 4>(&mut rng, [B, 7, H, DH], 1.0);
        let loss = |x: MemoryInputs<D>, w: Vec<Tensor<D, 4>>| -> f64 {
            let (y, _) = chunked(&rule, x, MemoryState::new(w, rule.momentum));
            (y * probe.clone()).sum().into_scalar()
        };
        // Autodiff.
        let lift4 = |t: &Tensor<D, 4>| Tensor::<A, 4>::from_inner(t.clone()).require_grad();
        let lift3 = |t: &Tensor<D, 3>| Tensor::<A, 3>::from_inner(t.clone()).require_grad();
        let xa = MemoryInputs { q: lift4(&x.q), k: lift4(&x.k), v: lift4(&x.v), theta: lift3(&x.theta), eta: lift3(&x.eta), alpha: lift3(&x.alpha), delta: x.delta.as_ref().map(lift3) };
        let wa: Vec<_> = w.iter().map(lift4).collect();
        let (y, _) = chunked(&rule, xa.clone(), MemoryState::new(wa.clone(), rule.momentum));
        let grads = (y * Tensor::from_inner(probe.clone())).sum().backward();
        // A few coordinates of each input, perturbed both ways.
        fn check<const N: usize>(name: &str, what: &str, auto: Tensor<D, N>, bump: &dyn Fn(Tensor<D, N>) -> f64, base: &Tensor<D, N>) {
            let eps = 1e-5;
            let auto = auto.into_data().to_vec::<f64>().unwrap();
            for idx in [0, 5, 11, auto.len() - 1] {
                let mut up = base.clone().into_data().to_vec::<f64>().unwrap();
                let mut down = up.clone();
                up[idx] += eps;
                down[idx] -= eps;
                let at = |x: Vec<f64>| Tensor::from_data(TensorData::new(x, base.shape()), &Default::default());
                let fd = (bump(at(up)) - bump(at(down))) / (2.0 * eps);
                assert!((fd - auto[idx]).abs() < 1e-5 * (1.0 + fd.abs()), "{name}: d/d{what}[{idx}] autodiff {} vs finite difference {fd}", auto[idx]);
            }
        }
        let check4 = |what: &str, auto, bump: &dyn Fn(Tensor<D, 4>) -> f64, base| check::<4>(&name, what, auto, bump, base);
        let check3 = |what: &str, auto, bump: &dyn Fn(Tensor<D, 3>) -> f64, base| check::<3>(&name, what, auto, bump, base);
        check4("q", xa.q.grad(&grads).unwrap(), &|t| loss(MemoryInputs { q: t, ..x.clone() }, w.clone()), &x.q);
        check4("k", xa.k.grad(&grads).unwrap(), &|t| loss(MemoryInputs { k: t, ..x.clone() }, w.clone()), &x.k);
        check4("v", xa.v.grad(&grads).unwrap(), &|t| loss(MemoryInputs { v: t, ..x.clone() }, w.clone()), &x.v);
        check3("θ", xa.theta.grad(&grads).unwrap(), &|t| loss(MemoryInputs { theta: t, ..x.clone() }, w.clone()), &x.theta);
        check3("α", xa.alpha.grad(&grads).unwrap(), &|t| loss(MemoryInputs { alpha: t, ..x.clone() }, w.clone()), &x.alpha);
        if rule.momentum {
            check3("η", xa.eta.grad(&grads).unwrap(), &|t| loss(MemoryInputs { eta: t, ..x.clone() }, w.clone()), &x.eta);
        }
        for l in 0..depth {
            let bump = |t: Tensor<D, 4>| {
                let mut w2 = w.clone();
                w2[l] = t;
                loss(x.clone(), w2)
            };
            check4(&format!("W{l}"), wa[l].grad(&grads).unwrap(), &bump, &w[l]);
        }
    }
}


/// The soft clamp bounds every token's inner gradient (all layers together) by `c`, and leaves a
/// small gradient almost as it is (`c·tanh(n/c) ≈ n`).
#[test]
fn gradient_clamp_bounds_each_token() {
    let mut rng = TensorRng::new(10);
    let plain = MemoryRule { residual: false, activation: Activation::Silu, objective: Objective::L2, retention: Retention::Decay, update: Update::Token, chunk: 1, momentum: false, eta_max: 1.0, grad_clip: None, mean_loss: false, layer_norm: false };
    let w = weights::<D>(&mut rng, 2);
    let x = inputs::<D>(&mut rng, 8, false);
    let (k, v) = (x.k.swap_dims(1, 2), x.v.swap_dims(1, 2));
    let norms = |rule: &MemoryRule, v: Tensor<D, 4>| -> Vec<f64> {
        let g = inner_gradients(rule, &w, k.clone(), v, None);
        let sq = |x: &Tensor<D, 4>| x.clone().powi_scalar(2).sum_dim(3);
        let n = g.inputs.iter().zip(&g.errors).map(|(x, e)| sq(x) * sq(e)).reduce(|a, b| a + b).unwrap().sqrt();
        n.into_data().to_vec::<f64>().unwrap()
    };
    for c in [0.05, 1.0] {
        let clipped = MemoryRule { grad_clip: Some(c), ..plain };
        for (raw, got) in norms(&plain, v.clone() * 50.0).into_iter().zip(norms(&clipped, v.clone() * 50.0)) {
            assert!(got <= c * (1.0 + 1e-9), "clamp {c}: norm {got} from {raw}");
            assert!((got - c * (raw / c).tanh()).abs() < 1e-9 * (1.0 + raw), "clamp {c}: {got} vs c·tanh(n/c) from {raw}");
        }
    }
}

/// titans-pytorch's mean inner loss `mean_c (M(k) − v)_c²` is the paper's summed loss divided by
/// the value width `d`, so each token's inner gradient (every layer's error) is `1/d` as large.
#[test]
fn mean_loss_divides_each_gradient_by_the_value_width() {
    let mut rng = TensorRng::new(11);
    let sum = MemoryRule { residual: true, activation: Activation::Gelu, objective: Objective::L2, retention: Retention::Decay, update: Update::Token, chunk: 1, momentum: false, eta_max: 1.0, grad_clip: None, mean_loss: false, layer_norm: false };
    let mean = MemoryRule { mean_loss: true, ..sum };
    let w = weights::<D>(&mut rng, 2);
    let x = inputs::<D>(&mut rng, 8, false);
    let (k, v) = (x.k.swap_dims(1, 2), x.v.swap_dims(1, 2));
    let d = v.dims()[3] as f64;
    let a = inner_gradients(&sum, &w, k.clone(), v.clone(), None);
    let b = inner_gradients(&mean, &w, k, v, None);
    for (l, (ea, eb)) in a.errors.into_iter().zip(b.errors).enumerate() {
        let (ea, eb) = (ea.into_data().to_vec::<f64>().unwrap(), eb.into_data().to_vec::<f64>().unwrap());
        assert!(ea.iter().any(|e| e.abs() > 1e-6), "layer {l}: the summed loss's errors are all zero");
        for (s, m) in ea.iter().zip(&eb) {
            assert!((s / d - m).abs() < 1e-12 * (1.0 + s.abs()), "layer {l}: mean-loss error {m} is not {s} / {d}");
        }
    }
}
