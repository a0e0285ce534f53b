//! Every mixer's forms compute the same function, and every mixer is causal.
use crate::common;

use burn::backend::NdArray;
use burn::tensor::Tensor;
use ember_layers::attention::AttentionConfig;
use ember_layers::based::TaylorAttentionConfig;
use ember_layers::conv::BaseConvConfig;
use ember_layers::zoology_conv::ZoologyConvConfig;
use ember_layers::aaren::AarenConfig;
use ember_layers::gla::GlaConfig;
use ember_layers::linear_attention::{LinearAttentionConfig, LinearFeatureMap};
use ember_layers::lolcats::LolcatsConfig;
use ember_layers::lora::LoraConfig;
use ember_layers::rat::RatConfig;
use ember_layers::moh::MohConfig;
use ember_layers::seeded::build_seeded;
use ember_layers::transnormer::TransNormerConfig;
use ember_layers::titans::{Combine, InitialMemory, LossReduction, MacConfig, MacWrite, MagConfig, MemoryConfig, ObjectiveKind};
use ember_ops::titans::Update;
use ember_layers::{LayerContext, MixerConfig};
use ember_ops::taylor::FeatureMap;
use ember_ops::random::TensorRng;
use ember_ops::Form;

use crate::common::{assert_causal, in_pieces, rel_err, stepwise};

type B = NdArray<f32>;
const D: usize = 32;

fn mixers() -> Vec<(&'static str, MixerConfig)> {
    vec![
        ("attention", MixerConfig::Attention(AttentionConfig { heads: 4, ..Default::default() })),
        ("gqa_window", MixerConfig::Attention(AttentionConfig { heads: 4, kv_heads: Some(2), window: Some(5), ..Default::default() })),
        ("taylor_compact", MixerConfig::BasedLinear(TaylorAttentionConfig { heads: 4, feature_dim: 8, chunk_size: 16, ..Default::default() })),
        ("taylor_full", MixerConfig::BasedLinear(TaylorAttentionConfig { heads: 2, feature_dim: 4, feature_map: FeatureMap::Full, chunk_size: 8, ..Default::default() })),
        ("linear_elu", MixerConfig::LinearAttention(LinearAttentionConfig { heads: 4, chunk_size: 16, ..Default::default() })),
        ("linear_relu_unnormalized", MixerConfig::LinearAttention(LinearAttentionConfig { heads: 2, feature_dim: Some(8), feature_map: LinearFeatureMap::Relu, normalize: false, chunk_size: 8, ..Default::default() })),
        ("base_conv", MixerConfig::BaseConv(BaseConvConfig::default())),
        ("zoology_conv", MixerConfig::ZoologyConv(ZoologyConvConfig::default())),
        ("gla", MixerConfig::Gla(GlaConfig { heads: 4, chunk_size: 16, ..Default::default() })),
        ("transnormer", MixerConfig::Transnormer(TransNormerConfig { heads: 4, chunk_size: 16, ..Default::default() })),
        ("rat", MixerConfig::Rat(RatConfig { head_dim: 8, chunk_size: 8, ..Default::default() })),
        ("aaren", MixerConfig::Aaren(AarenConfig { heads: 4, chunk_size: 16, ..Default::default() })),
        ("moh", MixerConfig::Moh(MohConfig { heads: 4, shared_heads: 2, top_k: 1, ..Default::default() })),
        ("lolcats_gqa_lora", MixerConfig::Lolcats(LolcatsConfig {
            attention: AttentionConfig { heads: 4, kv_heads: Some(2), ..Default::default() },
            feature_dim: 6,
            window: 8,
            lora: Some(LoraConfig { rank: 2, alpha: 4.0, targets: vec!["q".into(), "v".into(), "o".into()] }),
            ..Default::default()
        })),
        ("lizard", MixerConfig::Lolcats(LolcatsConfig {
            attention: AttentionConfig { heads: 2, ..Default::default() },
            feature_dim: 8,
            window: 5,
            decay: true,
            decay_bias_init: 0.0,
            decay_normalizer: 1.0,
            sinks: 2,
            ..Default::default()
        })),
        ("titans", MixerConfig::Titans(MemoryConfig { heads: 2, chunk_size: 8, persistent: 3, ..Default::default() })),
        ("titans_chunk_update", MixerConfig::Titans(MemoryConfig { heads: 4, depth: 1, chunk_size: 5, update: Update::Chunk, ..Default::default() })),
        ("moneta", MixerConfig::Moneta(MemoryConfig { heads: 2, chunk_size: 4, ..Default::default() })),
        // titans-pytorch's choices: mean inner loss, no q/k or read norm, strong steps, no clamp,
        // its ResidualNorm;
        // and a zero matrix memory (the delta rule's start).
        ("titans_reference_choices", MixerConfig::Titans(MemoryConfig {
            heads: 2,
            chunk_size: 8,
            loss_reduction: LossReduction::Mean,
            qk_norm: false,
            output_norm: false,
            theta_max: 1.0,
            theta_init: 0.5,
            grad_clip: 0.0,
            memory_layer_norm: true,
            ..Default::default()
        })),
        // A kernel of 1 has no convolution history (it crashed the step path once).
        ("titans_zero_matrix_memory", MixerConfig::Titans(MemoryConfig { heads: 2, chunk_size: 4, depth: 1, residual: false, initial_memory: InitialMemory::Zero, conv_kernel: 1, ..Default::default() })),
        ("titans_mag", MixerConfig::TitansMag(MagConfig {
            attention: AttentionConfig { heads: 4, window: Some(6), persistent: 2, ..Default::default() },
            memory: MemoryConfig { heads: 2, chunk_size: 8, persistent: 2, ..Default::default() },
            ..Default::default()
        })),
        ("titans_mac", MixerConfig::TitansMac(MacConfig {
            attention: AttentionConfig { heads: 4, persistent: 2, ..Default::default() },
            memory: MemoryConfig { heads: 2, chunk_size: 8, ..Default::default() },
            ..Default::default()
        })),
        ("titans_mac_input_add", MixerConfig::TitansMac(MacConfig {
            attention: AttentionConfig { heads: 4, persistent: 2, ..Default::default() },
            memory: MemoryConfig { heads: 2, chunk_size: 8, ..Default::default() },
            combine: Combine::Add,
            write: MacWrite::Input,
            ..Default::default()
        })),
        ("titans_mac_attention_only", MixerConfig::TitansMac(MacConfig {
            attention: AttentionConfig { heads: 4, persistent: 2, ..Default::default() },
            memory: MemoryConfig { heads: 2, chunk_size: 8, ..Default::default() },
            combine: Combine::Attention,
            ..Default::default()
        })),
        ("swa_persistent", MixerConfig::Attention(AttentionConfig { heads: 4, window: Some(5), persistent: 3, ..Default::default() })),
        ("yaad", MixerConfig::Yaad(MemoryConfig { heads: 2, chunk_size: 8, objective: Some(ObjectiveKind::Huber), ..Default::default() })),
        ("memora", MixerConfig::Memora(MemoryConfig { heads: 2, chunk_size: 4, simplex_scale: 2.0, ..Default::default() })),
    ]
}

fn input(t: usize, seed: u64) -> Tensor<B, 3> {
    common::input(2, t, D, seed)
}

#[test]
fn recurrent_equals_parallel_for_every_mixer() {
    let device = Default::default();
    for (name, config) in mixers() {
        let mixer = build_seeded(101, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
        for t in [1, 7, 64, 65] {
            let x = input(t, 7 + t as u64);
            let parallel = mixer.forward(x.clone());
            // Token-by-token generation through `step` reproduces the training forward.
            let err = rel_err(stepwise(x.clone(), |x, s| mixer.step(x, s)), parallel.clone());
            assert!(err <= 1e-4, "{name} T={t}: recurrent vs forward rel err {err}");
            // Prefill of a prompt then one more token equals the forward too.
            if t > 1 {
                let (y, _) = in_pieces(x.clone(), &[t - 1], |x, s, _| mixer.step(x, s));
                let err = rel_err(y, parallel);
                assert!(err <= 1e-4, "{name} T={t}: prefill+step vs forward rel err {err}");
            }
        }
    }
}

#[test]
fn state_carries_across_calls_for_every_mixer() {
    // forward(a‖b) == step(a) then step(b) from the state after a: prefill then continuation.
    let device = Default::default();
    for (name, config) in mixers() {
        let mixer = build_seeded(102, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
        let x = input(65, 21);
        let whole = mixer.forward(x.clone());
        for split in [1, 16, 37] {
            let (y, _) = in_pieces(x.clone(), &[split], |x, s, _| mixer.step(x, s));
            let err = rel_err(y, whole.clone());
            assert!(err <= 1e-4, "{name} split {split}: a‖b vs a then b rel err {err}");
        }
    }
}

#[test]
fn taylor_chunked_equals_parallel_equals_recurrent() {
    let device = Default::default();
    for map in [FeatureMap::Compact, FeatureMap::Full] {
        for chunk in [1, 5, 16, 64] {
            let config = TaylorAttentionConfig { heads: 4, feature_dim: 8, feature_map: map, chunk_size: chunk, ..Default::default() };
            let layer = build_seeded(103, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
            for t in [1, 7, 64, 65] {
                let x = input(t, 100 + t as u64);
                let p = layer.forward_with(x.clone(), Form::Parallel);
                let c = layer.forward_with(x.clone(), Form::Chunked);
                let r = layer.forward_with(x, Form::Recurrent);
                assert!(rel_err(c, p.clone()) <= 1e-4, "{map:?} chunk={chunk} T={t}: chunked");
                assert!(rel_err(r, p) <= 1e-4, "{map:?} chunk={chunk} T={t}: recurrent");
            }
        }
    }
}

#[test]
fn every_mixer_is_causal() {
    let device = Default::default();
    let t = 40;
    for (name, config) in mixers() {
        let mixer = build_seeded(104, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
        assert_causal(input(t, 3), &[0, 17, 33, 39], 3.0, |x| mixer.forward(x), name);
    }
}

#[test]
fn mag_combines_its_branches_as_configured() {
    let device = Default::default();
    let x = input(20, 12);
    let config = |combine| MagConfig {
        attention: AttentionConfig { heads: 4, window: Some(6), ..Default::default() },
        memory: MemoryConfig { heads: 2, chunk_size: 8, ..Default::default() },
        combine,
        ..Default::default()
    };
    let build = |combine| build_seeded(106, &device, || config(combine).init::<B>(LayerContext::single(D), 0.1, &device));
    // `attention`: the attention branch through W_o, the memory unused.
    let mag = build(Combine::Attention);
    let expected = mag.out.forward(mag.attention.forward(x.clone()));
    assert!(rel_err(mag.forward(x.clone()), expected) < 1e-6);
    // `add` and `gate`: the same weights, the two RMSNorms' outputs summed or gated.
    let mag = build(Combine::Add);
    let (a, m) = (mag.norm_attention.forward(mag.attention.forward(x.clone())), mag.norm_memory.forward(mag.memory.forward(x.clone())));
    assert!(rel_err(mag.forward(x.clone()), mag.out.forward(a.clone() + m.clone())) < 1e-5);
    let gated = build(Combine::Gate).forward(x.clone());
    assert!(rel_err(gated, mag.out.forward(a * burn::tensor::activation::sigmoid(m))) < 1e-5);
}

#[test]
fn sliding_window_ignores_tokens_outside_the_window() {
    let device = Default::default();
    let w_left = 5;
    let config = AttentionConfig { heads: 4, window: Some(w_left), ..Default::default() };
    let layer = build_seeded(105, &device, || config.init::<B>(LayerContext::single(D), 0.1, &device));
    let x = input(30, 11);
    let y = layer.forward(x.clone());
    let x2 = x.clone().slice_assign([0..2, 10..11, 0..D], Tensor::zeros([2, 1, D], &device));
    let y2 = layer.forward(x2);
    // Query 16 sees keys 11..=16: token 10 is out of its window. Query 15 sees token 10.
    let q = |y: &Tensor<B, 3>, i: usize| y.clone().narrow(1, i, 1).into_data().to_vec::<f32>().unwrap();
    assert_eq!(q(&y, 16), q(&y2, 16));
    assert_eq!(q(&y, 29), q(&y2, 29));
    assert_ne!(q(&y, 15), q(&y2, 15));
}

#[test]
fn base_conv_sees_only_the_last_three_tokens() {
    let device = Default::default();
    let layer = build_seeded(106, &device, || BaseConvConfig::default().init::<B>(LayerContext::single(D), 0.1, &device));
    let x = input(20, 5);
    let y = layer.forward(x.clone());
    let x2 = x.clone().slice_assign([0..2, 8..9, 0..D], Tensor::zeros([2, 1, D], &device));
    let y2 = layer.forward(x2);
    let q = |y: &Tensor<B, 3>, i: usize| y.clone().narrow(1, i, 1).into_data().to_vec::<f32>().unwrap();
    for i in 8..=10 {
        assert_ne!(q(&y, i), q(&y2, i), "token {i} should see token 8");
    }
    assert_eq!(q(&y, 11), q(&y2, 11), "token 11 must not see token 8 (kernel 3)");
}

#[test]
fn zoology_conv_matches_a_hand_computed_case() {
    // One channel pair, kernel 2, set by hand: u = [[1, 2], [3, -1]] over two tokens.
    // conv[c, t] = w[c,0]·u[t-1, c] + w[c,1]·u[t, c] + b_conv[c]; proj = u W + b;
    // y = conv ⊙ proj + u.
    use burn::module::Param;
    use burn::tensor::TensorData;
    let device = Default::default();
    let mut layer = build_seeded(7, &device, || ZoologyConvConfig { kernel_size: 2 }.init::<B>(LayerContext::single(2), 0.0, &device));
    let t2 = |v: [[f32; 2]; 2]| Tensor::<B, 2>::from_data(TensorData::from(v), &device);
    layer.conv = Param::from_tensor(t2([[0.5, 2.0], [-1.0, 1.0]]));
    layer.conv_bias = Param::from_tensor(Tensor::from_data(TensorData::from([0.1f32, -0.2]), &device));
    // Burn's Linear computes u · weight with weight [d_in, d_out].
    layer.projection.weight = Param::from_tensor(t2([[1.0, 0.0], [1.0, 2.0]]));
    layer.projection.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::from([0.0f32, 1.0]), &device)));
    let u = Tensor::<B, 3>::from_data(TensorData::from([[[1.0f32, 2.0], [3.0, -1.0]]]), &device);
    // t=0: conv = [2·1 + 0.1, 1·2 - 0.2] = [2.1, 1.8]; proj = [1+2, 0+4+1] = [3, 5]
    //      y = [6.3 + 1, 9 + 2] = [7.3, 11]
    // t=1: conv = [0.5·1 + 2·3 + 0.1, -1·2 + 1·(-1) - 0.2] = [6.6, -3.2]; proj = [3-1, -2+1] = [2, -1]
    //      y = [13.2 + 3, 3.2 - 1] = [16.2, 2.2]
    let expected = [7.3f32, 11.0, 16.2, 2.2];
    let y = layer.forward(u.clone()).into_data().to_vec::<f32>().unwrap();
    for (got, want) in y.iter().zip(expected) {
        assert!((got - want).abs() < 1e-5, "forward {y:?} != {expected:?}");
    }
    let (first, state) = layer.step(u.clone().narrow(1, 0, 1), None);
    let (second, _) = layer.step(u.narrow(1, 1, 1), Some(state));
    let stepped = [first.into_data().to_vec::<f32>().unwrap(), second.into_data().to_vec::<f32>().unwrap()].concat();
    for (got, want) in stepped.iter().zip(expected) {
        assert!((got - want).abs() < 1e-5, "step {stepped:?} != {expected:?}");
    }
}

#[test]
fn taylor_kernel_matches_feature_map_dot_product() {
    // φ(q)·φ(k) = 1 + s + s²/2 with s = q·k/√d' (LAYERS.md §1.5.1), for both maps.
    use ember_ops::taylor::feature_map;
    let device = Default::default();
    let d = 16;
    let mut rng = TensorRng::new(1);
    let q = rng.normal::<B, 4>([1, 5, 1, d], 1.0, &device);
    let k = rng.normal::<B, 4>([1, 5, 1, d], 1.0, &device);
    let s = (q.clone() * k.clone()).sum_dim(3) / (d as f64).sqrt();
    let expected = s.clone() + s.powi_scalar(2) / 2.0 + 1.0;
    for map in [FeatureMap::Compact, FeatureMap::Full] {
        let phi_q = feature_map(q.clone(), map);
        assert_eq!(phi_q.dims()[3], map.dim(d));
        let got = (phi_q * feature_map(k.clone(), map)).sum_dim(3);
        let err = (got - expected.clone()).abs().max().into_scalar();
        assert!(err < 1e-4, "{map:?}: {err}");
    }
    assert_eq!(FeatureMap::Compact.dim(16), 153);
    assert_eq!(FeatureMap::Full.dim(16), 273);
}
