//! The Aaren layer (LAYERS.md §7): every form equals an explicit per-head softmax of the learned
//! query over each prefix; decoding equals the forward and carries a constant-size state; causal.
use crate::common;

use burn::backend::NdArray;
use burn::tensor::{activation::softmax, Tensor};
use ember_layers::aaren::{Aaren, AarenConfig};
use ember_layers::seeded::build_seeded;
use ember_layers::LayerContext;
use ember_ops::mask::hidden_keys;
use ember_ops::Form;

use crate::common::{assert_causal, in_pieces, rel_err, stepwise};

type B = NdArray<f32>;
const D: usize = 32;
const HEADS: usize = 4;

fn layer(form: Form, chunk_size: usize) -> Aaren<B> {
    let config = AarenConfig { heads: HEADS, form, chunk_size };
    config.validate(D).unwrap();
    build_seeded(1, &Default::default(), || config.init(LayerContext::single(D), 0.1, &Default::default()))
}

fn input(t: usize, seed: u64) -> Tensor<B, 3> {
    common::input(2, t, D, seed)
}

/// Head h at token t: softmax over s ≤ t of `q_h · k_{s,h} / √d_head`, times the values.
fn explicit(layer: &Aaren<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, _] = x.dims();
    let dh = D / HEADS;
    let k = layer.key.forward(x.clone()).reshape([b, t, HEADS, dh]).swap_dims(1, 2); // [B, H, T, dh]
    let v = layer.value.forward(x).reshape([b, t, HEADS, dh]).swap_dims(1, 2);
    let q = layer.query.val().reshape([1, HEADS, 1, dh]);
    let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt(); // [B, H, 1, T]
    let future = hidden_keys::<B>(t, t, 0, None, &Default::default()).unsqueeze::<4>();
    let probs = softmax(scores.expand([b, HEADS, t, t]).mask_fill(future, f32::NEG_INFINITY), 3);
    layer.out.forward(probs.matmul(v).swap_dims(1, 2).reshape([b, t, D]))
}

#[test]
fn every_form_equals_the_explicit_softmax() {
    for (form, chunk) in [(Form::Parallel, 64), (Form::Chunked, 1), (Form::Chunked, 5), (Form::Chunked, 16), (Form::Chunked, 64)] {
        let layer = layer(form, chunk);
        for t in [1, 7, 64, 65] {
            let x = input(t, 20 + t as u64);
            let expected = explicit(&layer, x.clone());
            let err = rel_err(layer.forward(x.clone()), expected.clone());
            assert!(err <= 1e-4, "{form} C={chunk} T={t}: forward rel err {err}");
            let err = rel_err(layer.forward_with(x.clone(), Form::Recurrent), expected.clone());
            assert!(err <= 1e-4, "{form} C={chunk} T={t}: recurrent rel err {err}");
            let err = rel_err(stepwise(x, |x, s| layer.step(x, s)), expected);
            assert!(err <= 1e-4, "{form} C={chunk} T={t}: step rel err {err}");
        }
    }
}

#[test]
fn state_carries_across_calls_and_stays_constant_in_size() {
    let t = 40;
    let config = AarenConfig { heads: HEADS, form: Form::Chunked, chunk_size: 8 };
    for form in [Form::Chunked, Form::Parallel] {
        let layer = layer(form, 8);
        let x = input(t, 9);
        let full = layer.forward(x.clone());
        for cuts in [vec![1], vec![8], vec![13], vec![39], vec![5, 6, 30]] {
            let (y, _) = in_pieces(x.clone(), &cuts, |x, state, span| {
                let (y, s) = layer.step(x, state);
                assert_eq!(s.numel(), 2 * config.state_size(D, span.end));
                (y, s)
            });
            let err = rel_err(y, full.clone());
            assert!(err <= 1e-4, "{form} cuts {cuts:?}: rel err {err}");
        }
    }
}

#[test]
fn is_causal() {
    let t = 30;
    for form in [Form::Chunked, Form::Parallel, Form::Recurrent] {
        let layer = layer(Form::Chunked, 8);
        assert_causal(input(t, 11), &[0, 8, 17, 29], 2.0, |x| layer.forward_with(x, form), &form.to_string());
    }
}

#[test]
fn validation_names_the_problem() {
    let ok = AarenConfig { heads: HEADS, ..Default::default() };
    assert!(ok.validate(D).is_ok());
    assert!(AarenConfig { heads: 5, ..ok.clone() }.validate(D).unwrap_err().contains("heads"));
    assert!(AarenConfig { chunk_size: 0, ..ok.clone() }.validate(D).unwrap_err().contains("chunk_size"));
    assert!(AarenConfig { form: Form::Recurrent, ..ok }.validate(D).unwrap_err().contains("form"));
}
