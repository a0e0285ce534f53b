//! The memory mixers (Titans, Moneta, Yaad, Memora) as layers: the chunked form equals the
//! token-by-token reference through the whole layer, outputs and input gradients, for chunk
//! sizes 1, 4 and 16 and a length none of them divides; recipes' defaults per kind.
use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use ember_layers::titans::{InitialMemory, LossReduction, MemoryConfig, Preset};
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;
use ember_ops::random::TensorRng;
use ember_ops::titans::{Objective, Retention, Update};

type B = Autodiff<NdArray<f32>>;
const D: usize = 16;

fn rel_err(a: Tensor<NdArray<f32>, 3>, b: Tensor<NdArray<f32>, 3>) -> f64 {
    let diff = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar() as f64;
    diff / (b.powi_scalar(2).sum().sqrt().into_scalar() as f64).max(1e-12)
}

/// Two forward passes from the same leaves, then a backward pass each: with test threads running
/// beside it, this is the test that lost every gradient of the sequential pass about one run in
/// twenty, through Burn's autodiff bookkeeping (`vendor/burn-autodiff/EMBER_PATCH.md`; the
/// regression test is `crates/ember-ops/tests/autodiff_threads.rs`).
#[test]
fn chunked_layer_equals_sequential_layer_with_gradients() {
    let device = Default::default();
    for preset in [Preset::Titans, Preset::Moneta, Preset::Yaad, Preset::Memora] {
        for update in [Update::Token, Update::Chunk] {
            for chunk in [1, 4, 16] {
                let config = MemoryConfig { heads: 2, chunk_size: chunk, update, persistent: 2, ..Default::default() };
                let layer = build_seeded(101, &device, || config.init::<B>(LayerContext::single(D), 0.1, preset, &device));
                let mut rng = TensorRng::new(chunk as u64);
                let x = rng.normal::<B, 3>([2, 19, D], 1.0, &device).require_grad();
                let probe = rng.normal::<B, 3>([2, 19, D], 1.0, &device);
                let (fast, _) = layer.run(x.clone(), None, false);
                let (slow, _) = layer.run(x.clone(), None, true);
                let what = format!("{preset:?} {update:?} chunk {chunk}");
                let err = rel_err(fast.clone().inner(), slow.clone().inner());
                assert!(err < 1e-4, "{what}: output rel err {err}");
                let g_fast = (fast * probe.clone()).sum().backward();
                let dx_fast = x.grad(&g_fast).unwrap();
                let dm_fast = layer.memory[0].grad(&g_fast).unwrap();
                let g_slow = (slow * probe).sum().backward();
                let (dx_slow, dm_slow) = (x.grad(&g_slow).unwrap(), layer.memory[0].grad(&g_slow).unwrap());
                let err = rel_err(dx_fast, dx_slow);
                assert!(err < 1e-4, "{what}: input gradient rel err {err}");
                let err = rel_err(dm_fast, dm_slow);
                assert!(err < 1e-4, "{what}: M_0 gradient rel err {err}");
            }
        }
    }
}

#[test]
fn kinds_set_the_miras_defaults_and_keys_override_them() {
    let c = MemoryConfig::default();
    let titans = c.rule(Preset::Titans, 8);
    assert_eq!((titans.objective, titans.retention, titans.momentum), (Objective::L2, Retention::Decay, true));
    let moneta = c.rule(Preset::Moneta, 8);
    assert_eq!((moneta.objective, moneta.retention, moneta.momentum), (Objective::Lp { p: 3.0, sharpness: 10.0 }, Retention::Lq { q: 4.0 }, false));
    let yaad = c.rule(Preset::Yaad, 8);
    assert_eq!((yaad.objective, yaad.retention, yaad.momentum), (Objective::Huber { sharpness: 10.0 }, Retention::Decay, false));
    let memora = MemoryConfig { simplex_scale: 3.0, ..Default::default() }.rule(Preset::Memora, 8);
    assert_eq!((memora.objective, memora.retention, memora.momentum), (Objective::L2, Retention::Softmax { scale: 3.0 }, false));
    let custom = MemoryConfig { momentum: Some(true), p: 2.5, ..Default::default() }.rule(Preset::Moneta, 8);
    assert_eq!((custom.objective, custom.momentum), (Objective::Lp { p: 2.5, sharpness: 10.0 }, true));
}

/// titans-pytorch's mean inner loss at step bound `d_head·θ_max` is the paper's summed loss at
/// `θ_max`: the same layer (same seed, same gate logits) computes the same outputs.
#[test]
fn mean_loss_at_d_head_times_the_step_is_the_summed_loss() {
    let device = Default::default();
    let dh = D / 2;
    // No soft clamp: it bounds the unweighted gradient, which the reduction scales.
    let sum = MemoryConfig { heads: 2, chunk_size: 4, theta_max: 0.2, theta_init: 0.1, grad_clip: 0.0, ..Default::default() };
    let mean = MemoryConfig { loss_reduction: LossReduction::Mean, theta_max: 0.2 * dh as f64, theta_init: 0.1 * dh as f64, ..sum.clone() };
    let x = TensorRng::new(5).normal::<B, 3>([2, 11, D], 1.0, &device);
    let out = |c: &MemoryConfig| build_seeded(7, &device, || c.init::<B>(LayerContext::single(D), 0.1, Preset::Titans, &device)).forward(x.clone()).inner();
    let (a, b) = (out(&sum), out(&mean));
    assert!(rel_err(b.clone(), a.clone()) < 1e-5, "mean at d_head·θ vs sum at θ: rel err {}", rel_err(b, a.clone()));
    // And the reduction is not a no-op: the mean loss at the same θ writes d_head times less.
    let weak = MemoryConfig { loss_reduction: LossReduction::Mean, ..sum.clone() };
    assert!(rel_err(out(&weak), a) > 1e-3, "loss_reduction = mean changed nothing");
}

/// The optional pieces are counted in `params` exactly as the module holds them, and a zero
/// initial memory starts at zero.
#[test]
fn reference_choices_count_their_parameters_and_zero_memory_starts_empty() {
    use burn::module::Module;
    let device = Default::default();
    for output_norm in [true, false] {
        for initial_memory in [InitialMemory::Xavier, InitialMemory::Zero] {
            let c = MemoryConfig { heads: 2, depth: 1, residual: false, output_norm, qk_norm: !output_norm, initial_memory, ..Default::default() };
            let layer = c.init::<B>(LayerContext::single(D), 0.1, Preset::Titans, &device);
            assert_eq!(c.params(D, Preset::Titans), layer.num_params(), "output_norm {output_norm}");
            let m0 = layer.memory[0].val().abs().max().into_scalar();
            assert_eq!(m0 == 0.0, initial_memory == InitialMemory::Zero, "{initial_memory:?}: max |M_0| = {m0}");
        }
    }
}

/// `simplex_scale_per_channel = s` is Memora with `simplex_scale = s·d_head` at every width:
/// the same layer (same seed) computes the same outputs.
#[test]
fn memoras_per_channel_simplex_scale_grows_with_the_head_width() {
    let device = Default::default();
    for d_model in [D, 2 * D] {
        let dh = d_model / 2;
        let per_channel = MemoryConfig { heads: 2, chunk_size: 4, simplex_scale_per_channel: 0.25, ..Default::default() };
        let fixed = MemoryConfig { simplex_scale_per_channel: 0.0, simplex_scale: 0.25 * dh as f64, ..per_channel.clone() };
        assert_eq!(per_channel.rule(Preset::Memora, dh).retention, Retention::Softmax { scale: 0.25 * dh as f64 });
        let x = TensorRng::new(3).normal::<B, 3>([2, 9, d_model], 1.0, &device);
        let out = |c: &MemoryConfig| build_seeded(11, &device, || c.init::<B>(LayerContext::single(d_model), 0.1, Preset::Memora, &device)).forward(x.clone()).inner();
        let err = rel_err(out(&per_channel), out(&fixed));
        assert!(err < 1e-6, "d_model {d_model}: rel err {err}");
    }
    let both = MemoryConfig { simplex_scale: 8.0, simplex_scale_per_channel: 0.25, ..Default::default() };
    assert!(both.validate(D).unwrap_err().contains("not both"));
}

/// Yaad's threshold starts at `delta_init` (softplus of the gate bias), also for a threshold so
/// large that the Huber objective never leaves its ℓ2 branch (where `ln(eˣ − 1)` overflowed).
#[test]
fn yaads_threshold_starts_at_delta_init_even_when_large() {
    let device = Default::default();
    for delta in [0.5, 1.0, 20.0, 1000.0] {
        let c = MemoryConfig { heads: 2, delta_init: delta, ..Default::default() };
        let layer = c.init::<B>(LayerContext::single(D), 0.1, Preset::Yaad, &device);
        let bias: Vec<f32> = layer.gates.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        // [θ | η | α | δ] blocks of `heads` logits each.
        for &b in &bias[6..8] {
            let softplus = (b as f64).max(0.0) + (-(b as f64).abs()).exp().ln_1p();
            assert!((softplus - delta).abs() <= 1e-5 * delta, "delta_init {delta}: bias {b} gives δ = {softplus}");
        }
    }
}
