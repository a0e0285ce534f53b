//! RAT (LAYERS.md §6.5): the parallel form equals token-by-token decoding and carries state,
//! is causal, reduces to a gated RNN at L = T and to softmax attention at L = 1, equals the
//! reference code's inter/intra log-sum-exp merge, sees the previous chunk only through its
//! cache entry, and initialises its forget gates in the A.4 ranges.
use crate::common;

use burn::backend::NdArray;
use burn::tensor::{activation::{sigmoid, softmax}, Tensor};
use ember_layers::rat::{Rat, RatConfig, RatInputs};
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;
use ember_ops::{rat, rope, softmax_attention, Form};

use crate::common::{assert_causal, bumped, in_pieces, rel_err, stepwise};

type B = NdArray<f32>;
const D: usize = 32;
const HEAD: usize = 8;

fn config(chunk_size: usize) -> RatConfig {
    RatConfig { head_dim: HEAD, chunk_size, groups: 2, ..Default::default() }
}

fn layer(chunk_size: usize) -> Rat<B> {
    build_seeded(1, &Default::default(), || config(chunk_size).init(LayerContext::single(D), 0.1, &Default::default()))
}

fn input(t: usize, seed: u64) -> Tensor<B, 3> {
    common::input(2, t, D, seed)
}

/// The gated recurrence written as a plain loop over tokens, reset every `chunk` tokens.
fn intra(g: Tensor<B, 4>, x: Tensor<B, 4>, chunk: usize) -> Tensor<B, 4> {
    let mut state = x.clone().narrow(1, 0, 1).zeros_like();
    let mut out = Vec::new();
    for t in 0..x.dims()[1] {
        if t % chunk == 0 {
            state = state.zeros_like();
        }
        let gt = g.clone().narrow(1, t, 1);
        state = gt.clone() * state + (gt.ones_like() - gt) * x.clone().narrow(1, t, 1);
        out.push(state.clone());
    }
    Tensor::cat(out, 1)
}

/// RoPE with every token at its chunk's index, one token at a time.
fn rope_by_chunk(x: Tensor<B, 4>, chunk: usize) -> Tensor<B, 4> {
    let rows = (0..x.dims()[1]).map(|t| rope::apply(x.clone().narrow(1, t, 1), t / chunk, 10_000.0)).collect();
    Tensor::cat(rows, 1)
}

fn finish(layer: &Rat<B>, z: Tensor<B, 3>, y: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, t, _, _] = y.dims();
    layer.out.forward(z * y.reshape([b, t, D]))
}

#[test]
fn parallel_equals_token_by_token_step() {
    // Chunks dividing T, not dividing it, of one token, and longer than the sequence.
    for chunk in [1, 3, 8, 16, 64] {
        let layer = layer(chunk);
        for t in [1, 7, 64, 65] {
            let x = input(t, 10 + t as u64);
            let parallel = layer.forward(x.clone());
            let err = rel_err(stepwise(x.clone(), |x, s| layer.step(x, s)), parallel.clone());
            assert!(err <= 1e-4, "L={chunk} T={t}: step vs forward rel err {err}");
            let err = rel_err(layer.forward_with(x.clone(), Form::Recurrent), parallel.clone());
            assert!(err <= 1e-4, "L={chunk} T={t}: recurrent form rel err {err}");
            if t > 1 {
                let (y, _) = in_pieces(x.clone(), &[t - 1], |x, s, _| layer.step(x, s));
                let err = rel_err(y, parallel);
                assert!(err <= 1e-4, "L={chunk} T={t}: prefill + step rel err {err}");
            }
        }
    }
}

#[test]
fn state_carries_across_calls_at_any_offset() {
    let (chunk, t) = (8, 40);
    let layer = layer(chunk);
    let config = config(chunk);
    let x = input(t, 3);
    let full = layer.forward(x.clone());
    // Splits inside a chunk, on a boundary, and three-way splits with a prompt in the middle.
    for cuts in [vec![1], vec![5], vec![8], vec![13], vec![16], vec![39], vec![3, 21], vec![8, 9, 30]] {
        let (y, _) = in_pieces(x.clone(), &cuts, |x, state, span| {
            let (y, s) = layer.step(x, state);
            assert_eq!(s.numel(), 2 * config.state_size(D, span.end), "state size after {} tokens", span.end);
            (y, s)
        });
        let err = rel_err(y, full.clone());
        assert!(err <= 1e-4, "cuts {cuts:?}: rel err {err}");
    }
}

#[test]
fn is_causal() {
    let (chunk, t) = (8, 40);
    let layer = layer(chunk);
    assert_causal(input(t, 4), &[0, 7, 8, 21, 39], 2.0, |x| layer.forward(x), &format!("L={chunk}"));
}

#[test]
fn one_chunk_is_a_gated_rnn() {
    // L ≥ T: no earlier chunk, so y_t = ṽ_t and the layer is W_o(z ⊙ ṽ_t).
    for (chunk, t) in [(20, 20), (64, 13)] {
        let layer = layer(chunk);
        let x = input(t, 5);
        let RatInputs { z, v, g, .. } = layer.project(x.clone());
        let expected = finish(&layer, z, intra(g, v, usize::MAX));
        let err = rel_err(layer.forward(x), expected);
        assert!(err <= 1e-4, "L={chunk} T={t}: rel err {err}");
    }
}

#[test]
fn chunks_of_one_token_are_softmax_attention() {
    // L = 1: k̃ = (1−g)k, ṽ = (1−g)v, every earlier token is a chunk-final, positions are token
    // indices: causal softmax attention over those keys and values.
    let layer = layer(1);
    let x = input(23, 6);
    let RatInputs { z, q, k, v, g } = layer.project(x.clone());
    let admit = g.ones_like() - g;
    let (k, v) = (admit.clone() * k, admit * v);
    let scale = 1.0 / (HEAD as f64).sqrt();
    let y = softmax_attention::parallel(rope::apply(q, 0, 10_000.0), rope::apply(k, 0, 10_000.0), v, scale, None, 0);
    let err = rel_err(layer.forward(x), finish(&layer, z, y));
    assert!(err <= 1e-4, "rel err {err}");
}

#[test]
fn one_softmax_equals_the_log_sum_exp_merge() {
    // The reference code attends over earlier chunk-finals (keeping their log-sum-exp) and
    // merges with the token's own state by a 2-way softmax; the op takes one softmax over the
    // concatenated keys. Built here from the plain-loop recurrence, per-token RoPE and a mask.
    let (chunk, t) = (5, 23);
    let layer = layer(chunk);
    let RatInputs { q, k, v, g, .. } = layer.project(input(t, 7));
    let op = rat::parallel(q.clone(), k.clone(), v.clone(), g.clone(), None, chunk, 10_000.0).output;

    let (kt, vt) = (intra(g.clone(), k, chunk), intra(g, v, chunk));
    let n = t.div_ceil(chunk);
    let last = |x: &Tensor<B, 4>, c: usize| x.clone().narrow(1, (c * chunk + chunk - 1).min(t - 1), 1);
    let final_k = Tensor::cat((0..n).map(|c| rope::apply(last(&kt, c), c, 10_000.0)).collect(), 1);
    let final_v = Tensor::cat((0..n).map(|c| last(&vt, c)).collect(), 1);
    let heads = |x: Tensor<B, 4>| x.swap_dims(1, 2); // [B, H, *, d]
    let qr = heads(rope_by_chunk(q, chunk));
    let scale = 1.0 / (HEAD as f64).sqrt();
    let inter = qr.clone().matmul(heads(final_k).swap_dims(2, 3)) * scale; // [B, H, T, n]
    let hidden: Vec<bool> = (0..t).flat_map(|i| (0..n).map(move |j| j >= i / chunk)).collect();
    let hidden = Tensor::<B, 2, burn::tensor::Bool>::from_data(burn::tensor::TensorData::new(hidden, [t, n]), &Default::default());
    let inter = inter.mask_fill(hidden.unsqueeze::<4>(), f32::NEG_INFINITY);
    let own = (qr * heads(rope_by_chunk(kt, chunk))).sum_dim(3) * scale; // [B, H, T, 1]
    let y_inter = softmax(inter.clone(), 3).matmul(heads(final_v));
    let vt = heads(vt);

    let mut rows = Vec::new();
    for i in 0..t {
        let at = |x: &Tensor<B, 4>| x.clone().narrow(2, i, 1);
        if i < chunk {
            rows.push(at(&vt)); // chunk 0: nothing earlier, y = ṽ_t
            continue;
        }
        let scores = at(&inter).narrow(3, 0, i / chunk);
        let peak = scores.clone().max_dim(3);
        let lse = peak.clone() + (scores - peak).exp().sum_dim(3).log();
        let m = lse.clone().max_pair(at(&own));
        let (wi, ws) = ((lse - m.clone()).exp(), (at(&own) - m).exp());
        rows.push((wi.clone() * at(&y_inter) + ws.clone() * at(&vt)) / (wi + ws));
    }
    let merged = Tensor::cat(rows, 2).swap_dims(1, 2);
    let err = rel_err(op, merged);
    assert!(err <= 1e-4, "rel err {err}");
}

#[test]
fn the_previous_chunk_is_seen_only_through_its_cache_entry() {
    // L = 8; chunk 1 = tokens 8..16, chunk 2 = tokens 16..24.
    let (chunk, t) = (8, 32);
    let layer = layer(chunk);
    let x = input(t, 8);
    let y = layer.forward(x.clone());
    for changed in [15, 10] {
        // Token 15 ends chunk 1; token 10 does not, yet reaches its final state through the gates.
        let x2 = bumped(x.clone(), changed, 2.0);
        let y2 = layer.forward(x2.clone());
        for i in 16..24 {
            let row = |y: &Tensor<B, 3>| y.clone().narrow(1, i, 1).into_data();
            assert_ne!(row(&y), row(&y2), "token {changed} did not reach token {i} of the next chunk");
        }
        // After chunk 1 the intra state is reset and the caches differ only in chunk 1's entry.
        let (_, s) = layer.step(x.clone().narrow(1, 0, 16), None);
        let (_, s2) = layer.step(x2.clone().narrow(1, 0, 16), None);
        let zeros = s2.key.zeros_like().into_data();
        assert_eq!(s2.key.clone().into_data(), zeros);
        assert_eq!(s2.value.clone().into_data(), zeros);
        let ((k, v), (k2, v2)) = (s.chunks.clone().unwrap(), s2.chunks.clone().unwrap());
        let entry = |x: &Tensor<B, 4>, j: usize| x.clone().narrow(1, j, 1).into_data();
        assert_eq!(entry(&k, 0), entry(&k2, 0));
        assert_eq!(entry(&v, 0), entry(&v2, 0));
        assert_ne!(entry(&k, 1), entry(&k2, 1));
        assert_ne!(entry(&v, 1), entry(&v2, 1));
        // Chunk 2's tokens (the same in x and x2) from that cache give x2's outputs.
        let (from_cache, _) = layer.step(x.clone().narrow(1, 16, 8), Some(s2));
        let err = rel_err(from_cache, y2.narrow(1, 16, 8));
        assert!(err <= 1e-4, "token {changed}: rel err {err}");
    }
}

#[test]
fn forget_gates_start_in_the_a4_ranges() {
    // A.4: σ(b_g) ∈ (1/2, (L−1)/L): (0.5, 0.9375) at L = 16, (0.5, 0.984375) at L = 64.
    let d = 256;
    for (chunk, upper) in [(16, 0.9375), (64, 0.984375)] {
        let rat = build_seeded(1, &Default::default(), || RatConfig { chunk_size: chunk, ..Default::default() }.init::<B>(LayerContext::single(d), 0.1, &Default::default()));
        let gates = sigmoid(rat.gate_bias.val()).into_data().to_vec::<f32>().unwrap();
        let (lo, hi) = gates.iter().fold((1.0f32, 0.0f32), |(lo, hi), &g| (lo.min(g), hi.max(g)));
        assert!(lo >= 0.5 && hi < upper, "L={chunk}: gates in [{lo}, {hi}]");
        // u = e^{b_g} = σ/(1−σ) spreads over U(1, L−1): its ends are reached to within a tenth
        // of the range, and its mean is L/2 (to 4.5 standard errors).
        let u: Vec<f32> = gates.iter().map(|g| g / (1.0 - g)).collect();
        let (span, l) = ((chunk - 2) as f32, chunk as f32);
        let (u_lo, u_hi) = u.iter().fold((f32::MAX, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(u_lo < 1.0 + 0.1 * span && u_hi > l - 1.0 - 0.1 * span, "L={chunk}: u in [{u_lo}, {u_hi}]");
        let mean = u.iter().sum::<f32>() / d as f32;
        let standard_error = span / 12f32.sqrt() / (d as f32).sqrt();
        assert!((mean - l / 2.0).abs() < 4.5 * standard_error, "L={chunk}: mean u {mean}");
    }
    for chunk in [1, 2] {
        let rat = build_seeded(102, &Default::default(), || config(chunk).init::<B>(LayerContext::single(D), 0.1, &Default::default()));
        let bias = rat.gate_bias.val().into_data().to_vec::<f32>().unwrap();
        assert!(bias.iter().all(|&b| b == 0.0), "L={chunk}: bias must start at 0");
    }
}

#[test]
fn validation_names_the_problem() {
    assert!(config(8).validate(D).is_ok());
    let err = |c: RatConfig| c.validate(D).unwrap_err();
    assert!(err(RatConfig { head_dim: 12, ..config(8) }).contains("head_dim"));
    assert!(err(RatConfig { head_dim: 1, ..config(8) }).contains("even"));
    assert!(err(RatConfig { groups: 3, ..config(8) }).contains("groups"));
    assert!(err(RatConfig { chunk_size: 0, ..config(8) }).contains("chunk_size"));
}

#[test]
fn parallel_gradients_equal_those_of_the_recurrent_form() {
    // The parallel form's masked columns (−∞ before the softmax) must not leak NaN or wrong
    // gradients: compare d(loss)/dx and d(loss)/d(b_g) with the token-by-token form's.
    type A = burn::backend::Autodiff<B>;
    let (chunk, t) = (4, 18);
    let layer = build_seeded(103, &Default::default(), || config(chunk).init::<A>(LayerContext::single(D), 0.1, &Default::default()));
    let x0 = Tensor::<A, 3>::from_inner(input(t, 12));
    let weights = Tensor::<A, 3>::from_inner(input(t, 13));
    let grads = |form: Form| {
        let x = x0.clone().require_grad();
        let g = (layer.forward_with(x.clone(), form) * weights.clone()).sum().backward();
        (x.grad(&g).unwrap(), layer.gate_bias.grad(&g).unwrap())
    };
    let (dx, db) = grads(Form::Parallel);
    let (rx, rb) = grads(Form::Recurrent);
    assert!(dx.clone().is_nan().any().into_scalar() == false);
    let err = rel_err(dx, rx);
    assert!(err <= 1e-4, "d/dx rel err {err}");
    let err = rel_err(db, rb);
    assert!(err <= 1e-4, "d/db_g rel err {err}");
}
