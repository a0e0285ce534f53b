//! Gradients survive other threads' backward passes.
//!
//! Burn 0.21.0's autodiff keeps one process-wide map from graph nodes to graphs, and every
//! `backward()` ends by sweeping *all* graphs, every thread's, for orphans. A graph another
//! thread is still building can look orphaned (its newest nodes' tensors dropped while an op such
//! as `cat` builds its output), and merges left stale map entries that split one computation
//! into several graphs. The sweep then deleted steps the other thread still needed, and a leaf
//! came back from that thread's `backward()` with no gradient at all: one run in a few of
//! `cargo test`. ember builds Burn's autodiff from `vendor/burn-autodiff` with both fixed
//! (`EMBER_PATCH.md` there); this test fails within seconds without them.
use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use ember_ops::random::TensorRng;
use std::sync::atomic::{AtomicBool, Ordering};

type B = Autodiff<NdArray<f32>>;
/// Leaf side: large enough that `cat` takes a while.
const N: usize = 64;

/// `a + b + c + d` from four leaves (`[N, N]`), plus `exp` of each leaf's multiples put
/// through a `cat`. Each leaf starts a graph of its own and the sums merge them; Burn 0.21.0 then
/// left a leaf whose graph had been merged twice pointing at an emptied graph, so that leaf's
/// `exp` pieces started a graph cut off from the rest, unreferenced while `cat` runs.
fn computation(leaves: &[Tensor<B, 2>; 4]) -> Tensor<B, 2> {
    let [a, b, c, d] = leaves.clone();
    let sum = ((a + b) + c) + d;
    let pieces = leaves.iter().map(|leaf| {
        let multiples: Vec<Tensor<B, 2>> = (0..8).map(|i| (leaf.clone() * (i as f64 / 8.0)).exp()).collect();
        Tensor::cat(multiples, 0)
    });
    pieces.fold(sum.repeat_dim(0, 8), |acc, piece| acc + piece)
}

/// The leaf's gradient of `sum(computation)`: `8 + Σ_i (i/8)·exp(i·x/8)` elementwise.
fn check_gradient(leaf: &Tensor<B, 2>, grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients) -> Result<(), String> {
    let got = leaf.grad(grads).ok_or("no gradient")?.into_data().to_vec::<f32>().unwrap();
    let x = leaf.clone().inner().into_data().to_vec::<f32>().unwrap();
    for (g, x) in got.iter().zip(&x) {
        let want: f64 = 8.0 + (0..8).map(|i| i as f64 / 8.0 * (i as f64 * *x as f64 / 8.0).exp()).sum::<f64>();
        if (*g as f64 - want).abs() > 1e-4 * want.abs() {
            return Err(format!("gradient {g}, want {want}"));
        }
    }
    Ok(())
}

#[test]
fn leaves_keep_their_gradients_while_other_threads_run_backward() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Sweepers: back-to-back tiny backward passes, each ending in Burn's orphan sweep.
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let a = Tensor::<B, 1>::ones([4], &Default::default()).require_grad();
                    let _ = (a * 2.0).sum().backward();
                }
            });
        }
        let victims: Vec<_> = (0..2u64)
            .map(|thread| {
                scope.spawn(move || {
                    let mut missing = Vec::new();
                    for round in 0..150u64 {
                        let mut rng = TensorRng::new(thread * 1000 + round);
                        let device = Default::default();
                        let leaves: [Tensor<B, 2>; 4] = std::array::from_fn(|_| rng.normal([N, N], 0.3, &device).require_grad());
                        let grads = computation(&leaves).sum().backward();
                        for (i, leaf) in leaves.iter().enumerate() {
                            if let Err(e) = check_gradient(leaf, &grads) {
                                missing.push(format!("thread {thread} round {round} leaf {i}: {e}"));
                            }
                        }
                    }
                    missing
                })
            })
            .collect();
        let missing: Vec<String> = victims.into_iter().flat_map(|v| v.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        assert!(missing.is_empty(), "{} of 600 backward passes lost part of a leaf's gradient: {missing:?}", missing.len());
    });
}
