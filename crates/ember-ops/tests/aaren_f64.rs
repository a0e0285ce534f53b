//! The combine of Aaren's scan is associative (LAYERS.md §7.4.2), checked in f64.
use burn::backend::NdArray;
use burn::tensor::Tensor;
use ember_ops::random::TensorRng;
use ember_ops::aaren::{combine, Segment};

type F = NdArray<f64>;

fn rel_err(a: Tensor<F, 3>, b: Tensor<F, 3>) -> f64 {
    let diff = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar();
    diff / b.powi_scalar(2).sum().sqrt().into_scalar()
}

#[test]
fn combine_is_associative_in_f64() {
    let mut rng = TensorRng::new(1);
    let mut segment = || {
        let u = rng.uniform([4, 6, 1], 0.1, 3.0, &Default::default());
        Segment { m: rng.normal([4, 6, 1], 10.0, &Default::default()), u, w: rng.normal([4, 6, 7], 1.0, &Default::default()) }
    };
    for _ in 0..5 {
        let (a, b, c) = (segment(), segment(), segment());
        let left = combine(combine(a.clone(), b.clone()), c.clone());
        let right = combine(a, combine(b, c));
        // Same max either way (exactly), and the same (u, w) up to rounding. NdArray's f64 `exp`
        // is only accurate to about 1e-7 relative (measured), which bounds the agreement; a
        // combine that is not associative misses by O(1).
        assert_eq!(left.m.clone().into_data(), right.m.clone().into_data());
        for (x, y) in [(left.u, right.u), (left.w, right.w)] {
            let err = rel_err(x, y);
            assert!(err <= 1e-6, "rel err {err}");
        }
    }
}
