//! GLA (LAYERS.md §2): the forms agree, the layer is causal and carries its state, and the
//! gate and its limits behave as §2.2 / §2.8 / A.2 say.
use crate::common;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_layers::gla::{Gla, GlaConfig};
use ember_layers::init::linear;
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;
use ember_ops::random::TensorRng;
use ember_ops::{gated_linear_attention as gla_op, linear_attention, Form};

use crate::common::{assert_causal, rel_err, stepwise};

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;
const D: usize = 32;

fn input<Bk: Backend>(t: usize, seed: u64) -> Tensor<Bk, 3> {
    common::input(2, t, D, seed)
}

/// A layer whose gates vary from token to token and channel to channel: the default init puts
/// every gate near σ(0)^{1/16}, which would hide a decay bug behind a near-constant decay.
fn layer<Bk: Backend>(config: &GlaConfig) -> Gla<Bk> {
    let device = Default::default();
    build_seeded(1, &device, || {
        let mut layer = config.init::<Bk>(LayerContext::single(D), 0.1, &device);
        layer.decay_down = linear(D, config.gate_low_rank, false, 0.5, &device);
        layer.decay_up = linear(config.gate_low_rank, config.key_dim(D), true, 0.5, &device);
        layer
    })
}

#[test]
fn parallel_chunked_recurrent_and_step_agree() {
    // τ = 16 (long memory) and τ = 1 (strong decay: cumulative log decays of several hundred).
    for normalizer in [16.0, 1.0] {
        for t in [1, 7, 64, 65] {
            let x = input::<B>(t, 10 + t as u64);
            // 1 and T divide T; 5 and 16 divide neither 64 nor 7 (and 5 divides 65, 16 divides 64).
            for chunk in [1, 5, 16, t] {
                let config = GlaConfig { gate_normalizer: normalizer, chunk_size: chunk, ..Default::default() };
                let layer = layer::<B>(&config);
                let p = layer.forward_with(x.clone(), Form::Parallel);
                let c = layer.forward_with(x.clone(), Form::Chunked);
                let r = layer.forward_with(x.clone(), Form::Recurrent);
                assert!(rel_err(c, p.clone()) <= 1e-4, "τ={normalizer} T={t} C={chunk}: chunked vs parallel");
                assert!(rel_err(r, p.clone()) <= 1e-4, "τ={normalizer} T={t} C={chunk}: recurrent vs parallel");
                assert!(rel_err(stepwise(x.clone(), |x, s| layer.step(x, s)), p) <= 1e-4, "τ={normalizer} T={t} C={chunk}: step");
            }
        }
    }
}

#[test]
fn output_gate_off_and_gate_clamp_keep_the_forms_equal() {
    let config = GlaConfig { output_gate: false, gate_clamp_min: Some(-0.05), chunk_size: 8, ..Default::default() };
    let layer = layer::<B>(&config);
    assert!(layer.gate.is_none());
    let x = input::<B>(30, 4);
    let p = layer.forward_with(x.clone(), Form::Parallel);
    assert!(rel_err(layer.forward(x.clone()), p.clone()) <= 1e-4);
    assert!(rel_err(stepwise(x, |x, s| layer.step(x, s)), p) <= 1e-4);
}

#[test]
fn layer_is_causal_in_both_training_forms() {
    let t = 40;
    for form in [Form::Parallel, Form::Chunked] {
        let layer = layer::<B>(&GlaConfig { chunk_size: 16, ..Default::default() });
        assert_causal(input::<B>(t, 3), &[0, 15, 16, 39], 3.0, |x| layer.forward_with(x, form), &form.to_string());
    }
}

#[test]
fn prompt_then_continuation_equals_one_forward() {
    // forward(a ‖ b) == step(a) then step(b, state): a prompt of 23 tokens (not a multiple of
    // the chunk), a continuation of 17, then a single token.
    let layer = layer::<B>(&GlaConfig { chunk_size: 16, ..Default::default() });
    let x = input::<B>(41, 8);
    let full = layer.forward(x.clone());
    let (a, state) = layer.step(x.clone().narrow(1, 0, 23), None);
    let (b, state) = layer.step(x.clone().narrow(1, 23, 17), Some(state));
    let (c, state) = layer.step(x.clone().narrow(1, 40, 1), Some(state));
    assert!(rel_err(Tensor::cat(vec![a, b, c], 1), full) <= 1e-4);
    // State: [B, H, d_k, d_v] with d_k = D/2/H, d_v = D/H.
    assert_eq!(state.kv.dims(), [2, 4, 4, 8]);
    assert_eq!(state.numel(), 2 * GlaConfig::default().state_size(D, 41));
}

#[test]
fn gate_values_match_appendix_a2() {
    // With W_α1 = 0 the gate pre-activation is b_α: α = σ(b_α)^{1/16}.
    let device = Default::default();
    let mut layer = build_seeded(2, &device, || GlaConfig::default().init::<B>(LayerContext::single(D), 0.1, &device));
    layer.decay_down.weight = Param::from_tensor(Tensor::zeros([D, 16], &device));
    let x = input::<B>(3, 2);
    for (bias, alpha) in [(0.0, 0.957603), (2.0, 0.992098)] {
        layer.decay_up.bias = Some(Param::from_tensor(Tensor::full([D / 2], bias, &device)));
        let g = layer.log_decay(x.clone()).exp();
        assert_eq!(g.dims(), [2, 3, 4, 4]);
        let (lo, hi): (f32, f32) = (g.clone().min().into_scalar(), g.max().into_scalar());
        assert!((lo - alpha).abs() < 1e-6 && (hi - alpha).abs() < 1e-6, "b_α={bias}: α in [{lo}, {hi}], want {alpha}");
    }
    // The clamp bounds log α from below.
    let config = GlaConfig { gate_clamp_min: Some(-3.0), ..Default::default() };
    let mut clamped = build_seeded(3, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
    clamped.decay_down.weight = Param::from_tensor(Tensor::zeros([D, 16], &device));
    clamped.decay_up.bias = Some(Param::from_tensor(Tensor::full([D / 2], -500.0, &device)));
    let g: f32 = clamped.log_decay(x).max().into_scalar();
    assert_eq!(g, -3.0);
}

#[test]
fn gates_at_one_reduce_to_unnormalised_linear_attention() {
    // §2.8.2: with log α = 0 every form of the gated op is `o_t = scale · q_t Σ_{s≤t} k_sᵀ v_s`.
    let device = Default::default();
    let mut rng = TensorRng::new(4);
    let mut rand = |shape: [usize; 4]| rng.normal::<B, 4>(shape, 1.0, &device);
    let (q, k, v, h0) = (rand([2, 37, 3, 4]), rand([2, 37, 3, 4]), rand([2, 37, 3, 6]), rand([2, 3, 4, 6]));
    let reference = linear_attention::recurrent(q.clone(), k.clone(), v.clone(), Some(h0.clone()), 0.5);
    let g = Tensor::<B, 4>::zeros([2, 37, 3, 4], &device);
    let g_head = Tensor::<B, 3>::zeros([2, 37, 3], &device);
    let outputs = [
        gla_op::parallel(q.clone(), k.clone(), v.clone(), g.clone(), Some(h0.clone()), 0.5),
        gla_op::chunked(q.clone(), k.clone(), v.clone(), g.clone(), Some(h0.clone()), 0.5, 16),
        gla_op::recurrent(q.clone(), k.clone(), v.clone(), g, Some(h0.clone()), 0.5),
        gla_op::parallel_per_head(q.clone(), k.clone(), v.clone(), g_head.clone(), Some(h0.clone()), 0.5),
        gla_op::chunked_per_head(q, k, v, g_head, Some(h0), 0.5, 16),
    ];
    for (i, out) in outputs.into_iter().enumerate() {
        assert!(rel_err(out.output, reference.output.clone()) <= 1e-5, "form {i}: output");
        assert!(rel_err(out.state, reference.state.clone()) <= 1e-5, "form {i}: state");
    }
    // And the layer's gate does reach 1 as b_α → +∞.
    let mut layer = build_seeded(5, &device, || GlaConfig::default().init::<B>(LayerContext::single(D), 0.1, &device));
    layer.decay_up.bias = Some(Param::from_tensor(Tensor::full([D / 2], 60.0, &device)));
    let g: f32 = layer.log_decay(input::<B>(5, 1)).abs().max().into_scalar();
    assert!(g < 1e-12, "log α = {g}");
}

#[test]
fn chunked_and_parallel_gradients_agree() {
    // The gate's parameters get the same gradient through both training forms.
    let layer = layer::<AD>(&GlaConfig { chunk_size: 8, ..Default::default() });
    let x = input::<AD>(21, 6);
    let grad = |form: Form| {
        let grads = layer.forward_with(x.clone(), form).powi_scalar(2).sum().backward();
        let up = layer.decay_up.weight.val().grad(&grads).unwrap();
        let q = layer.q.weight.val().grad(&grads).unwrap();
        (up, q)
    };
    let (up_p, q_p) = grad(Form::Parallel);
    let (up_c, q_c) = grad(Form::Chunked);
    assert!(up_p.clone().abs().max().into_scalar() > 0.0);
    assert!(rel_err(up_c, up_p) <= 1e-4);
    assert!(rel_err(q_c, q_p) <= 1e-4);
}

#[test]
fn config_counts_and_validation() {
    let device = Default::default();
    for config in [GlaConfig::default(), GlaConfig { output_gate: false, expand_v: 2.0, ..Default::default() }] {
        assert!(config.validate(D).is_ok());
        let layer = build_seeded(6, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
        assert_eq!(config.params(D), layer.num_params());
    }
    // At D = 1024 (§2.1): d_k = 128, d_v = 256, state 4·128·256 floats.
    assert_eq!(GlaConfig::default().state_size(1024, 2048), 131_072);
    let bad = [
        GlaConfig { form: Form::Recurrent, ..Default::default() },
        GlaConfig { heads: 3, ..Default::default() },
        GlaConfig { expand_k: 0.3, ..Default::default() },
        GlaConfig { gate_clamp_min: Some(1.0), ..Default::default() },
        GlaConfig { gate_normalizer: 0.0, ..Default::default() },
    ];
    for config in bad {
        assert!(config.validate(D).is_err(), "{config:?} should be rejected");
    }
}
