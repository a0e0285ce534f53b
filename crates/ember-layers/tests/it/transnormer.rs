//! TransNormerLLM's token mixer and the per-head (Lightning-2) decay op (LAYERS.md §3): forms
//! agree, causality, state carry with LRPE positions, and the §3.6 / A.3 sanity checks.
use crate::common;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use ember_layers::transnormer::{alibi_slopes, lrpe, DecaySchedule, LrpeLayers, TransNormer, TransNormerConfig};
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;
use ember_ops::random::TensorRng;
use ember_ops::{gated_linear_attention as op, Form};

use crate::common::{assert_causal, rel_err, stepwise};

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;
const D: usize = 32;

fn input(t: usize, seed: u64) -> Tensor<B, 3> {
    common::input(2, t, D, seed)
}

/// Layer `layer` of `n_layers`; the test width gives 4 heads of 8 channels.
fn layer(config: &TransNormerConfig, layer: usize, n_layers: usize) -> TransNormer<B> {
    build_seeded(2, &Default::default(), || config.init::<B>(LayerContext { d_model: D, layer, n_layers }, 0.1, &Default::default()))
}

/// Configurations covering LRPE on and off and both decay schedules (layer, of layers).
fn variants() -> Vec<(&'static str, TransNormerConfig, usize, usize)> {
    let base = TransNormerConfig { heads: 4, ..Default::default() };
    vec![
        ("released, lrpe (layer 0)", base.clone(), 0, 4),
        ("released, no lrpe (layer 2)", base.clone(), 2, 4),
        ("fla, lrpe all", TransNormerConfig { decay_schedule: DecaySchedule::Fla, lrpe: LrpeLayers::All, ..base.clone() }, 1, 4),
        ("single layer", base, 0, 1),
    ]
}

#[test]
fn parallel_chunked_recurrent_and_step_agree() {
    for (name, config, at, of) in variants() {
        for t in [1, 7, 64, 65] {
            let x = input(t, 20 + t as u64);
            // 1 and T divide T; 5 and 16 divide neither 64 nor 7 (and 5 divides 65, 16 divides 64).
            for chunk in [1, 5, 16, t] {
                let layer = layer(&TransNormerConfig { chunk_size: chunk, ..config.clone() }, at, of);
                let p = layer.forward_with(x.clone(), Form::Parallel);
                let c = layer.forward_with(x.clone(), Form::Chunked);
                let r = layer.forward_with(x.clone(), Form::Recurrent);
                assert!(rel_err(c, p.clone()) <= 1e-4, "{name} T={t} C={chunk}: chunked vs parallel");
                assert!(rel_err(r, p.clone()) <= 1e-4, "{name} T={t} C={chunk}: recurrent vs parallel");
                assert!(rel_err(stepwise(x.clone(), |x, s| layer.step(x, s)), p) <= 1e-4, "{name} T={t} C={chunk}: step");
            }
        }
    }
}

#[test]
fn layer_is_causal_in_both_training_forms() {
    let t = 40;
    for form in [Form::Parallel, Form::Chunked] {
        let layer = layer(&TransNormerConfig { heads: 4, chunk_size: 16, ..Default::default() }, 0, 2);
        assert_causal(input(t, 3), &[0, 15, 16, 39], 3.0, |x| layer.forward_with(x, form), &form.to_string());
    }
}

#[test]
fn prompt_then_continuation_equals_one_forward() {
    // LRPE uses absolute positions: the continuation must start where the prompt ended.
    for (name, config, at, of) in variants() {
        let layer = layer(&TransNormerConfig { chunk_size: 16, ..config }, at, of);
        let x = input(41, 8);
        let full = layer.forward(x.clone());
        let (a, state) = layer.step(x.clone().narrow(1, 0, 23), None);
        assert_eq!(state.position, 23);
        let (b, state) = layer.step(x.clone().narrow(1, 23, 17), Some(state));
        let (c, state) = layer.step(x.clone().narrow(1, 40, 1), Some(state));
        assert_eq!(state.position, 41);
        assert!(rel_err(Tensor::cat(vec![a, b, c], 1), full) <= 1e-4, "{name}");
    }
}

#[test]
fn decays_match_appendix_a3() {
    // H = 8, L = 24: λ per head for layers 0, 12, 23 under both schedules.
    let released = [
        (0, [0.606528, 0.778799, 0.882496, 0.939412, 0.969233, 0.984496, 0.992218, 0.996101]),
        (12, [0.787308, 0.887304, 0.941968, 0.970550, 0.985165, 0.992555, 0.996270, 0.998133]),
        (23, [0.999995, 0.999998, 0.999999, 0.999999, 1.0, 1.0, 1.0, 1.0]),
    ];
    let fla = [
        (0, [1.0, 0.367879, 0.135335, 0.049787, 0.018316, 0.006738, 0.002479, 0.000912]),
        (12, [1.0, 0.606531, 0.367879, 0.223130, 0.135335, 0.082085, 0.049787, 0.030197]),
        (23, [1.0, 0.959189, 0.920044, 0.882497, 0.846482, 0.811936, 0.778801, 0.747018]),
    ];
    for (schedule, table) in [(DecaySchedule::Released, released), (DecaySchedule::Fla, fla)] {
        let config = TransNormerConfig { decay_schedule: schedule, ..Default::default() };
        for (l, want) in table {
            let got = config.log_decays(LayerContext { d_model: 64, layer: l, n_layers: 24 });
            for (h, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(*g <= 0.0);
                // The table has six decimals ("≈1" rows: within 1e-6 of 1).
                assert!((g.exp() - w).abs() <= 1e-6, "{schedule:?} layer {l} head {h}: λ = {} want {w}", g.exp());
            }
        }
    }
    // The module holds the same constants.
    let layer = build_seeded(101, &Default::default(), || TransNormerConfig::default().init::<B>(LayerContext { d_model: 64, layer: 12, n_layers: 24 }, 0.1, &Default::default()));
    assert!((layer.log_decay[0].exp() - 0.787308).abs() <= 1e-6);
}

#[test]
fn slopes_follow_alibi() {
    // H = 8: s = 2^-1 … 2^-8; the last layer's multiplier is 1e-5.
    let want: Vec<f64> = (1..=8).map(|i| 0.5f64.powi(i)).collect();
    assert_eq!(alibi_slopes(8), want);
    let config = TransNormerConfig::default();
    let last = config.log_decays(LayerContext { d_model: 64, layer: 23, n_layers: 24 });
    for (g, s) in last.iter().zip(&want) {
        assert!((-g / s - 1e-5).abs() < 1e-12);
    }
    // Not a power of two (ALiBi's rule): the 4-head slopes, then every other 8-head slope.
    assert_eq!(alibi_slopes(6), vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    // One layer: the plain slopes (no 0/0 from l/(L−1)).
    let single = config.log_decays(LayerContext::single(64));
    assert_eq!(single, want.iter().map(|s| -s).collect::<Vec<_>>());
}

#[test]
fn lrpe_depends_on_relative_position_only() {
    let device = Default::default();
    let mut rng = TensorRng::new(5);
    let (t, h, d) = (9, 2, 6);
    let q = rng.normal::<B, 4>([1, t, h, d], 1.0, &device);
    let k = rng.normal::<B, 4>([1, t, h, d], 1.0, &device);
    let theta = rng.uniform::<B, 2>([h, d], 0.0, 1.0, &device);
    // Scores [1, H, T, T] with queries and keys both at positions offset..offset+T.
    let scores = |offset: usize| {
        let q = lrpe(q.clone(), theta.clone(), offset).swap_dims(1, 2);
        let k = lrpe(k.clone(), theta.clone(), offset).swap_dims(1, 2);
        q.matmul(k.swap_dims(2, 3))
    };
    let base = scores(0);
    assert!(rel_err(scores(37), base.clone()) <= 1e-4);
    // And equal to Σ_i q_i k_i cos((n − m) θ_i).
    let [qv, kv, th] = [q, k, theta.unsqueeze::<4>()].map(|x| x.into_data().to_vec::<f32>().unwrap());
    let base = base.into_data().to_vec::<f32>().unwrap();
    for head in 0..h {
        for n in 0..t {
            for m in 0..t {
                let want: f64 = (0..d)
                    .map(|i| {
                        let (qi, ki) = (qv[(n * h + head) * d + i] as f64, kv[(m * h + head) * d + i] as f64);
                        qi * ki * ((n as f64 - m as f64) * th[head * d + i] as f64).cos()
                    })
                    .sum();
                let got = base[(head * t + n) * t + m] as f64;
                assert!((got - want).abs() < 1e-4, "head {head} n={n} m={m}: {got} vs {want}");
            }
        }
    }
    // θ's initialisation: 10000^{−2(h·d+i)/(H·d)}.
    let layer = build_seeded(102, &device, || TransNormerConfig { heads: 4, ..Default::default() }.init::<B>(LayerContext::single(D), 0.1, &device));
    let theta = layer.lrpe_theta.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
    assert_eq!(theta.len(), D);
    assert_eq!(theta[0], 1.0);
    assert!((theta[9] as f64 - 10_000f64.powf(-18.0 / 32.0)).abs() < 1e-7); // head 1, i = 1
}

/// Splits a 3-D tensor's last dimension in `[.., H, d]` and returns head `h`.
fn head(y: &Tensor<B, 3>, h: usize, d: usize) -> Vec<f32> {
    y.clone().narrow(2, h * d, d).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn srmsnorm_couples_the_heads() {
    // With W_o = I the output is SRMSNorm(O) ⊙ u channel by channel. Scaling head 0's values
    // changes only O's head 0; because the norm is over all E channels, every other head's
    // output changes too, by one factor per token (the ratio of the two norms).
    let device = Default::default();
    let config = TransNormerConfig { heads: 4, lrpe: LrpeLayers::None, ..Default::default() };
    let mut layer = layer(&config, 0, 1);
    let eye = Tensor::<B, 2>::eye(D, &device);
    layer.out.weight = Param::from_tensor(eye);
    let x = input(6, 9);
    let y = layer.forward(x.clone());
    // Columns 2E..2E+d of W_qkvu produce head 0's values.
    let w = layer.qkvu.weight.val();
    let d = D / 4;
    let scaled = w.clone().slice_assign([0..D, 2 * D..2 * D + d], w.narrow(1, 2 * D, d) * 3.0);
    layer.qkvu.weight = Param::from_tensor(scaled);
    let y2 = layer.forward(x);
    for h in 1..4 {
        let (a, b) = (head(&y, h, d), head(&y2, h, d));
        assert!(a != b, "head {h} did not see head 0's change");
        // Same ratio for every channel of a token (one norm), checked on token 0 of batch 0.
        let ratio = b[0] / a[0];
        for i in 0..d {
            assert!((b[i] - ratio * a[i]).abs() <= 1e-5 * a[i].abs().max(1.0), "head {h} channel {i}");
        }
    }
}

fn rand_ad<const N: usize>(rng: &mut TensorRng, shape: [usize; N], lo: f64, hi: f64) -> Tensor<AD, N> {
    rng.uniform(shape, lo, hi, &Default::default()).require_grad()
}

#[test]
fn per_head_op_equals_general_op_with_gradients() {
    // The Lightning-2 path against the per-channel op fed the same decay broadcast over K:
    // outputs, final states and the gradients of q, k, v, h0 and the per-head g.
    let mut rng = TensorRng::new(11);
    for t in [1, 7, 64, 65] {
        for chunk in [1, 5, 16, 64] {
            let (q, k, v) = (rand_ad(&mut rng, [2, t, 3, 4], -1.0, 1.0), rand_ad(&mut rng, [2, t, 3, 4], -1.0, 1.0), rand_ad(&mut rng, [2, t, 3, 5], -1.0, 1.0));
            let g = rand_ad(&mut rng, [2, t, 3], -1.5, 0.0);
            let h0 = rand_ad(&mut rng, [2, 3, 4, 5], -1.0, 1.0);
            let (w_out, w_state) = (rand_ad(&mut rng, [2, t, 3, 5], -1.0, 1.0), rand_ad(&mut rng, [2, 3, 4, 5], -1.0, 1.0));
            let run = |per_head: bool, chunked: bool| {
                let (qq, kk, vv, start) = (q.clone(), k.clone(), v.clone(), Some(h0.clone()));
                let out = match (per_head, chunked) {
                    (true, true) => op::chunked_per_head(qq, kk, vv, g.clone(), start, 0.7, chunk),
                    (true, false) => op::parallel_per_head(qq, kk, vv, g.clone(), start, 0.7),
                    (false, true) => op::chunked(qq, kk, vv, op::per_head(g.clone(), 4), start, 0.7, chunk),
                    (false, false) => op::recurrent(qq, kk, vv, op::per_head(g.clone(), 4), start, 0.7),
                };
                let objective = (out.output.clone() * w_out.clone()).sum() + (out.state.clone() * w_state.clone()).sum();
                let grads = objective.backward();
                let grad = |x: &Tensor<AD, 4>| x.grad(&grads).unwrap();
                let all = [grad(&q), grad(&k), grad(&v), grad(&h0), g.grad(&grads).unwrap().unsqueeze::<4>()];
                (out.output.inner(), out.state.inner(), all)
            };
            let (o_ref, s_ref, g_ref) = run(false, false);
            for (per_head, chunked) in [(true, true), (true, false), (false, true)] {
                let (o, s, grads) = run(per_head, chunked);
                let tag = format!("T={t} C={chunk} per_head={per_head} chunked={chunked}");
                assert!(rel_err(o, o_ref.clone()) <= 1e-4, "{tag}: output");
                assert!(rel_err(s, s_ref.clone()) <= 1e-4, "{tag}: state");
                for (i, (got, want)) in grads.into_iter().zip(g_ref.clone()).enumerate() {
                    assert!(rel_err(got, want) <= 1e-4, "{tag}: gradient of input {i} (q, k, v, h0, g)");
                }
            }
        }
    }
}

#[test]
fn per_head_op_stays_finite_under_long_strong_decay() {
    // Cumulative log decay near −900: exp(−G) would overflow f32 long before.
    let device = Default::default();
    let mut rng = TensorRng::new(4);
    let (q, k, v) = (rng.normal::<B, 4>([1, 300, 2, 4], 1.0, &device), rng.normal([1, 300, 2, 4], 1.0, &device), rng.normal([1, 300, 2, 4], 1.0, &device));
    let g = rng.uniform::<B, 3>([1, 300, 2], -6.0, 0.0, &device);
    let reference = op::recurrent(q.clone(), k.clone(), v.clone(), op::per_head(g.clone(), 4), None, 0.5);
    let outs = [
        op::chunked_per_head(q.clone(), k.clone(), v.clone(), g.clone(), None, 0.5, 64),
        op::parallel_per_head(q, k, v, g, None, 0.5),
    ];
    for out in outs {
        assert!(out.output.clone().is_finite().all().into_scalar());
        assert!(rel_err(out.output, reference.output.clone()) <= 1e-4);
    }
}

#[test]
fn config_counts_and_validation() {
    let device = Default::default();
    let config = TransNormerConfig { heads: 4, hidden_dim: Some(48), ..Default::default() };
    assert!(config.validate(D).is_ok());
    for l in [0, 1] {
        let at = LayerContext { d_model: D, layer: l, n_layers: 3 };
        let layer = build_seeded(103, &device, || config.init::<B>(at, 0.1, &device));
        assert_eq!(layer.lrpe_theta.is_some(), l == 0);
        assert_eq!(config.params_at(at), layer.num_params(), "layer {l}");
        let (_, state) = layer.step(input(3, 1), None);
        assert_eq!(state.numel(), 2 * config.state_size_at(at), "layer {l}");
    }
    assert_eq!(config.params(D), config.params_at(LayerContext::single(D)));
    let bad = [
        TransNormerConfig { form: Form::Recurrent, ..Default::default() },
        TransNormerConfig { heads: 3, ..Default::default() },
        TransNormerConfig { chunk_size: 0, ..Default::default() },
        TransNormerConfig { norm_eps: 0.0, ..Default::default() },
    ];
    for config in bad {
        assert!(config.validate(D).is_err(), "{config:?} should be rejected");
    }
}
