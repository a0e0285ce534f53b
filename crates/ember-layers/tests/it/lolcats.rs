//! LoLCATs wiring: with the teacher's projections and the window drowning the linear part it
//! is the teacher's attention; its feature maps are positive and sum to one per half; LoRA
//! merged into the weights computes what the adapters did.
use crate::common;

use burn::backend::NdArray;
use burn::module::Param;
use burn::tensor::Tensor;
use ember_layers::attention::AttentionConfig;
use ember_layers::lolcats::LolcatsConfig;
use ember_layers::lora::LoraConfig;
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;
use ember_ops::random::TensorRng;
use crate::common::rel_err;

type B = NdArray<f32>;
const D: usize = 32;

fn gqa() -> AttentionConfig {
    AttentionConfig { heads: 4, kv_heads: Some(2), rope_base: 500.0, ..Default::default() }
}

#[test]
fn with_the_window_dominant_and_t_within_it_is_the_teachers_attention() {
    let device = Default::default();
    let at = LayerContext::single(D);
    let teacher = build_seeded(101, &device, || gqa().init::<B>(at, 0.1, &device));
    // Burn draws parameters lazily: read them once so the student's copies are these values.
    let _ = (teacher.qkv.weight.val(), teacher.out.weight.val());
    let mut student = build_seeded(102, &device, || LolcatsConfig { attention: gqa(), feature_dim: 8, window: 16, window_factor_init: 30.0, ..Default::default() }.init::<B>(at, 0.1, &device));
    student.qkv = teacher.qkv.clone();
    student.out = teacher.out.clone();
    let x = common::input(2, 16, D, 3);
    let err = rel_err(student.forward(x.clone()), teacher.forward(x));
    assert!(err < 1e-5, "rel err {err}");
}

#[test]
fn feature_halves_are_distributions() {
    let device = Default::default();
    let mut m = build_seeded(103, &device, || LolcatsConfig { attention: AttentionConfig { heads: 2, ..Default::default() }, feature_dim: 5, ..Default::default() }.init::<B>(LayerContext::single(D), 0.1, &device));
    m.feature_q = Param::from_tensor(TensorRng::new(2).normal([2, 16, 5], 1.0, &device));
    let x: Tensor<B, 3> = common::input(1, 9, D, 1);
    let (_, state) = m.step(x, None);
    let phi = state.fk; // [B, H, L, 2 d_f]
    let halves = [phi.clone().narrow(3, 0, 5), phi.clone().narrow(3, 5, 5)];
    for h in halves {
        let sums = h.sum_dim(3);
        assert!(rel_err(sums.clone(), sums.ones_like()) < 1e-5);
    }
    assert!(phi.min().into_scalar() > 0.0);
}

#[test]
fn merged_lora_computes_what_the_adapters_did() {
    let device = Default::default();
    let config = LolcatsConfig {
        attention: gqa(),
        feature_dim: 4,
        window: 4,
        lora: Some(LoraConfig { rank: 3, alpha: 6.0, targets: vec!["q".into(), "k".into(), "v".into(), "o".into()] }),
        ..Default::default()
    };
    let mut m = build_seeded(104, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
    // B starts at zero; give every adapter a real update.
    let mut rng = TensorRng::new(3);
    for a in [&mut m.q_lora, &mut m.k_lora, &mut m.v_lora, &mut m.out_lora].into_iter().flatten() {
        let shape = a.up.val().dims();
        a.up = Param::from_tensor(rng.normal(shape, 0.1, &device));
    }
    let x = common::input(2, 11, D, 5);
    let adapted = m.forward(x.clone());
    let base = { let mut b = m.clone(); b.q_lora = None; b.k_lora = None; b.v_lora = None; b.out_lora = None; b.forward(x.clone()) };
    assert!(rel_err(adapted.clone(), base) > 1e-2, "the adapters must change the output");
    let merged = m.merge_lora();
    assert!(merged.q_lora.is_none() && merged.out_lora.is_none());
    assert!(rel_err(merged.forward(x), adapted) < 1e-5);
}
