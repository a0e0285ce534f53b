//! Aaren's prefix attention: the scan, chunked and recurrent forms equal an explicit softmax
//! over every prefix (LAYERS.md §7.4), gradients match the explicit form, and the forms are
//! causal and carry state. (Associativity of the combine in f64 is in `aaren_f64.rs`: NdArray's
//! f32 and f64 backends share one device, whose default float dtype a process sets only once.)
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{activation::softmax, backend::Backend, Tensor};
use ember_ops::random::TensorRng;
use ember_ops::aaren::{chunked, parallel, recurrent, AarenOutput, AarenState};
use ember_ops::mask::hidden_keys;

type B = NdArray<f32>;
type A = Autodiff<NdArray<f32>>;

fn normal<Bk: Backend, const D: usize>(rng: &mut TensorRng, shape: [usize; D], std: f64) -> Tensor<Bk, D> {
    rng.normal(shape, std, &Default::default())
}

fn rel_err<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    use burn::tensor::ElementConversion;
    let diff: f32 = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar().elem();
    let norm: f32 = b.powi_scalar(2).sum().sqrt().into_scalar().elem();
    diff / norm
}

/// `o_k = softmax(s_{0..=k}) · v_{0..=k}` written out: a `T×T` masked softmax.
fn explicit<Bk: Backend>(s: Tensor<Bk, 3>, v: Tensor<Bk, 4>) -> Tensor<Bk, 4> {
    let [b, t, h] = s.dims();
    let scores = s.swap_dims(1, 2).reshape([b, h, 1, t]).expand([b, h, t, t]);
    let future = hidden_keys::<Bk>(t, t, 0, None, &scores.device()).unsqueeze::<4>();
    let probs = softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3);
    probs.matmul(v.swap_dims(1, 2)).swap_dims(1, 2)
}

type Op = fn(Tensor<B, 3>, Tensor<B, 4>, Option<AarenState<B>>) -> AarenOutput<B>;

fn forms() -> Vec<(String, Box<dyn Fn(Tensor<B, 3>, Tensor<B, 4>, Option<AarenState<B>>) -> AarenOutput<B>>)> {
    let mut forms: Vec<(String, Box<dyn Fn(_, _, _) -> _>)> = vec![
        ("parallel".into(), Box::new(parallel as Op)),
        ("recurrent".into(), Box::new(recurrent as Op)),
    ];
    for c in [1, 3, 7, 16, 64] {
        forms.push((format!("chunked C={c}"), Box::new(move |s, v, st| chunked(s, v, st, c))));
    }
    forms
}

#[test]
fn every_form_equals_the_explicit_prefix_softmax() {
    let mut rng = TensorRng::new(1);
    // Scores ×50 span hundreds: naive exponentials would overflow f32.
    for score_std in [1.0, 50.0] {
        for t in [1, 7, 64, 65] {
            let (s, v) = (normal::<B, 3>(&mut rng, [2, t, 3], score_std), normal::<B, 4>(&mut rng, [2, t, 3, 5], 1.0));
            let expected = explicit(s.clone(), v.clone());
            for (name, form) in forms() {
                let out = form(s.clone(), v.clone(), None);
                let err = rel_err(out.output, expected.clone());
                assert!(err <= 1e-4, "{name} T={t} scores×{score_std}: rel err {err}");
                // The state is the segment of the whole sequence: its output is the last one.
                let last = out.state.output().unsqueeze_dim::<4>(1);
                assert!(rel_err(last, expected.clone().narrow(1, t - 1, 1)) <= 1e-4, "{name} T={t}: state");
            }
        }
    }
}

#[test]
fn forms_agree_from_a_carried_state() {
    let mut rng = TensorRng::new(2);
    let t = 45;
    let (s, v) = (normal::<B, 3>(&mut rng, [2, t, 3], 3.0), normal::<B, 4>(&mut rng, [2, t, 3, 4], 1.0));
    let expected = explicit(s.clone(), v.clone());
    for split in [1, 16, 30] {
        let (s1, s2) = (s.clone().narrow(1, 0, split), s.clone().narrow(1, split, t - split));
        let (v1, v2) = (v.clone().narrow(1, 0, split), v.clone().narrow(1, split, t - split));
        for (name, first) in forms() {
            let state = first(s1.clone(), v1.clone(), None).state;
            for (name2, second) in forms() {
                let out = second(s2.clone(), v2.clone(), Some(state.clone()));
                let err = rel_err(out.output, expected.clone().narrow(1, split, t - split));
                assert!(err <= 1e-4, "split {split}: {name} then {name2}: rel err {err}");
            }
        }
    }
}

#[test]
fn gradients_equal_those_of_the_explicit_softmax() {
    let mut rng = TensorRng::new(3);
    let t = 37;
    let s0 = normal::<A, 3>(&mut rng, [2, t, 3], 4.0);
    let v0 = normal::<A, 4>(&mut rng, [2, t, 3, 5], 1.0);
    let weights = normal::<A, 4>(&mut rng, [2, t, 3, 5], 1.0);
    let grads = |f: &dyn Fn(Tensor<A, 3>, Tensor<A, 4>) -> Tensor<A, 4>| {
        let (s, v) = (s0.clone().require_grad(), v0.clone().require_grad());
        let g = (f(s.clone(), v.clone()) * weights.clone()).sum().backward();
        (s.grad(&g).unwrap(), v.grad(&g).unwrap())
    };
    let (ds, dv) = grads(&|s, v| explicit(s, v));
    let forms: Vec<(&str, Box<dyn Fn(Tensor<A, 3>, Tensor<A, 4>) -> Tensor<A, 4>>)> = vec![
        ("parallel", Box::new(|s, v| parallel(s, v, None).output)),
        ("chunked C=8", Box::new(|s, v| chunked(s, v, None, 8).output)),
        ("recurrent", Box::new(|s, v| recurrent(s, v, None).output)),
    ];
    for (name, f) in forms {
        let (gs, gv) = grads(&*f);
        assert!(rel_err(gs, ds.clone()) <= 1e-4, "{name}: d/ds");
        assert!(rel_err(gv, dv.clone()) <= 1e-4, "{name}: d/dv");
    }
}

#[test]
fn every_form_is_causal() {
    let mut rng = TensorRng::new(4);
    let t = 40;
    let (s, v) = (normal::<B, 3>(&mut rng, [1, t, 2], 2.0), normal::<B, 4>(&mut rng, [1, t, 2, 3], 1.0));
    for changed in [0, 13, 39] {
        let bump = |x: Tensor<B, 3>| {
            let row = x.clone().narrow(1, changed, 1) + 5.0;
            x.slice_assign([0..1, changed..changed + 1, 0..2], row)
        };
        let v2 = v.clone().slice_assign([0..1, changed..changed + 1, 0..2, 0..3], normal(&mut rng, [1, 1, 2, 3], 1.0));
        for (name, form) in forms() {
            let y = form(s.clone(), v.clone(), None).output;
            let y2 = form(bump(s.clone()), v2.clone(), None).output;
            if changed > 0 {
                let head = |y: &Tensor<B, 4>| y.clone().narrow(1, 0, changed).into_data();
                assert_eq!(head(&y), head(&y2), "{name}: token {changed} changed earlier outputs");
            }
            let at = |y: &Tensor<B, 4>| y.clone().narrow(1, changed, 1).into_data();
            assert_ne!(at(&y), at(&y2), "{name}: token {changed} did not change its own output");
        }
    }
}
