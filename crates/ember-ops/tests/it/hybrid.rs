//! LoLCATs / Lizard hybrid attention: the tensor form against a direct loop over LAYERS.md §9's
//! formula, the parallel form against token-by-token generation, and the window-only limit
//! against softmax attention.
use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use ember_ops::random::TensorRng;
use ember_ops::hybrid::{hybrid, parallel, HybridInputs, HybridParams, HybridState};
use ember_ops::softmax_attention;

type B = NdArray<f32>;

fn rand<const D: usize>(rng: &mut TensorRng, shape: [usize; D]) -> Tensor<B, D> {
    rng.normal(shape, 1.0, &Default::default())
}

fn host<const D: usize>(x: &Tensor<B, D>) -> Vec<f64> {
    x.clone().into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Random inputs `[1, T, H, *]` with positive features and (optionally) decays in (−0.5, 0).
fn inputs(rng: &mut TensorRng, t: usize, h: usize, d: usize, f: usize, gated: bool) -> HybridInputs<B> {
    HybridInputs {
        q: rand(rng, [1, t, h, d]),
        k: rand(rng, [1, t, h, d]),
        v: rand(rng, [1, t, h, d]),
        fq: rand(rng, [1, t, h, f]).exp(),
        fk: rand(rng, [1, t, h, f]).exp(),
        log_decay: gated.then(|| rng.uniform([1, t, h], -0.5, 0.0, &Default::default())),
    }
}

/// LAYERS.md §9.1 (with §9.2's decay and sinks) evaluated query by query in f64.
fn reference(x: &HybridInputs<B>, p: &HybridParams<B>) -> Vec<f64> {
    let [_, t, h, d] = x.q.dims();
    let f = x.fq.dims()[3];
    let (q, k, v, fq, fk) = (host(&x.q), host(&x.k), host(&x.v), host(&x.fq), host(&x.fk));
    let g = x.log_decay.as_ref().map(host);
    let gamma = host(&p.gamma);
    let sinks = p.sinks.as_ref().map(|(sk, sv)| (host(sk), host(sv), sk.dims()[1]));
    let at = |i: usize, head: usize, c: usize, width: usize| (i * h + head) * width + c;
    let dot = |a: &[f64], ia: usize, b: &[f64], ib: usize, n: usize| (0..n).map(|c| a[ia + c] * b[ib + c]).sum::<f64>();
    let mut out = vec![0.0; t * h * d];
    for head in 0..h {
        for i in 0..t {
            let w = p.window;
            let window: Vec<usize> = (i.saturating_sub(w - 1)..=i).collect();
            let mut logits: Vec<(f64, Vec<f64>)> =
                window.iter().map(|&j| (dot(&q, at(i, head, 0, d), &k, at(j, head, 0, d), d) * p.scale, v[at(j, head, 0, d)..at(j, head, 0, d) + d].to_vec())).collect();
            if let Some((sk, sv, m)) = &sinks {
                for s in 0..*m {
                    let o = (head * m + s) * d;
                    logits.push((dot(&q, at(i, head, 0, d), sk, o, d) * p.scale, sv[o..o + d].to_vec()));
                }
            }
            let max = logits.iter().map(|l| l.0).fold(f64::NEG_INFINITY, f64::max);
            let (mut num, mut den) = (vec![0.0; d], 0.0);
            for (s, vj) in &logits {
                let e = gamma[head] * (s - max).exp();
                den += e;
                num.iter_mut().zip(vj).for_each(|(n, x)| *n += e * x);
            }
            for j in 0..(i + 1).saturating_sub(w) {
                let decay: f64 = g.as_ref().map_or(1.0, |g| ((j + 1)..=i).map(|s| g[s * h + head]).sum::<f64>().exp());
                let a = decay * dot(&fq, at(i, head, 0, f), &fk, at(j, head, 0, f), f);
                den += a;
                num.iter_mut().zip(&v[at(j, head, 0, d)..at(j, head, 0, d) + d]).for_each(|(n, x)| *n += a * x);
            }
            for c in 0..d {
                out[at(i, head, c, d)] = num[c] / den;
            }
        }
    }
    out
}

fn params(rng: &mut TensorRng, h: usize, d: usize, window: usize, sinks: usize) -> HybridParams<B> {
    HybridParams {
        gamma: rng.uniform([h], 0.05, 1.0, &Default::default()),
        sinks: (sinks > 0).then(|| (rand(rng, [h, sinks, d]), rand(rng, [h, sinks, d]))),
        window,
        scale: 1.0 / (d as f64).sqrt(),
    }
}

#[test]
fn matches_the_formula_query_by_query() {
    let mut rng = TensorRng::new(1);
    for (gated, sinks, window) in [(false, 0, 4), (true, 0, 4), (true, 3, 5), (false, 2, 2), (false, 0, 40)] {
        let x = inputs(&mut rng, 23, 2, 4, 6, gated);
        let p = params(&mut rng, 2, 4, window, sinks);
        let expected = reference(&x, &p);
        // The generation form from no state and the training form (which builds no state).
        for y in [hybrid(x.clone(), &p, None).0, parallel(x.clone(), &p)] {
            let err = host(&y).iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-5, "gated={gated} sinks={sinks} window={window}: {err}");
        }
    }
}

/// Feeds `x` in pieces of the given lengths, threading the state.
fn in_pieces(x: &HybridInputs<B>, p: &HybridParams<B>, lengths: &[usize]) -> (Tensor<B, 4>, HybridState<B>) {
    let (mut state, mut outputs, mut at) = (None, Vec::new(), 0);
    for &n in lengths {
        let piece = HybridInputs {
            q: x.q.clone().narrow(1, at, n),
            k: x.k.clone().narrow(1, at, n),
            v: x.v.clone().narrow(1, at, n),
            fq: x.fq.clone().narrow(1, at, n),
            fk: x.fk.clone().narrow(1, at, n),
            log_decay: x.log_decay.clone().map(|g| g.narrow(1, at, n)),
        };
        let (y, s) = hybrid(piece, p, state);
        outputs.push(y);
        state = Some(s);
        at += n;
    }
    (Tensor::cat(outputs, 1), state.unwrap())
}

#[test]
fn generation_token_by_token_and_by_prompt_matches_the_parallel_form() {
    let mut rng = TensorRng::new(2);
    for (gated, sinks) in [(false, 0), (true, 2)] {
        let x = inputs(&mut rng, 30, 3, 4, 5, gated);
        let p = params(&mut rng, 3, 4, 6, sinks);
        let (whole, final_state) = hybrid(x.clone(), &p, None);
        for lengths in [vec![1; 30], vec![4, 1, 1, 9, 15], vec![13, 17]] {
            let (pieces, state) = in_pieces(&x, &p, &lengths);
            assert!(max_diff(pieces, whole.clone()) < 1e-5, "gated={gated} {lengths:?}");
            assert!(max_diff(state.s, final_state.s.clone()) < 1e-4);
            assert!(max_diff(state.k, final_state.k.clone()) == 0.0);
            assert_eq!(state.position, 30);
        }
    }
}

#[test]
fn window_only_within_the_window_is_softmax_attention() {
    let mut rng = TensorRng::new(3);
    // γ → ∞ drowns the linear term; with T ≤ w there are no earlier keys anyway.
    let x = inputs(&mut rng, 12, 2, 8, 4, true);
    let mut p = params(&mut rng, 2, 8, 12, 0);
    p.gamma = Tensor::ones([2], &Default::default()) * 1e6;
    let (y, _) = hybrid(x.clone(), &p, None);
    let softmax = softmax_attention::parallel(x.q, x.k, x.v, p.scale, None, 0);
    assert!(max_diff(y, softmax) < 1e-5);
}

#[test]
fn gradients_are_finite_under_strong_decay() {
    let mut rng = TensorRng::new(4);
    type A = Autodiff<B>;
    let x = inputs(&mut rng, 64, 2, 4, 4, false);
    let lift = |t: Tensor<B, 4>| Tensor::<A, 4>::from_inner(t).require_grad();
    let fq = lift(x.fq.clone());
    let g: Tensor<A, 3> = Tensor::<A, 3>::from_inner(rng.uniform([1, 64, 2], -30.0, -10.0, &Default::default())).require_grad();
    let inputs = HybridInputs { q: lift(x.q), k: lift(x.k), v: lift(x.v), fq: fq.clone(), fk: lift(x.fk), log_decay: Some(g.clone()) };
    let p = HybridParams { gamma: Tensor::ones([2], &Default::default()) * 0.1, sinks: None, window: 4, scale: 0.5 };
    let (y, _) = hybrid(inputs, &p, None);
    let grads = y.sum().backward();
    for grad in [host(&g.grad(&grads).unwrap()), host(&fq.grad(&grads).unwrap())] {
        assert!(grad.iter().all(|v| v.is_finite()));
    }
}
