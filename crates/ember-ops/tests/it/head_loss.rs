//! The blocked head + cross-entropy against the whole logits: the value against a hand
//! computation in f64, the gradients against Burn's autodiff through the whole logits.
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use ember_ops::head_loss::{cross_entropy, cross_entropy_autodiff, has_fused_backward};
use ember_ops::random::TensorRng;

type I = NdArray<f32>;
type B = Autodiff<I>;

const N: usize = 10;
const D: usize = 6;
const V: usize = 13;

fn values<X: burn::tensor::backend::Backend, const K: usize>(x: &Tensor<X, K>) -> Vec<f32> {
    x.clone().into_data().to_vec::<f32>().unwrap()
}

fn targets(device: &NdArrayDevice) -> (Vec<i64>, Tensor<B, 1, Int>) {
    let t: Vec<i64> = (0..N).map(|i| ((i * 7 + 3) % V) as i64).collect();
    (t.clone(), Tensor::from_data(TensorData::new(t, [N]), device))
}

/// Mean of `lse(z_i) − z_i[t_i]` over rows, `z = h · w + b`, in f64 on the host.
fn by_hand(h: &[f32], w: &[f32], b: Option<&[f32]>, t: &[i64]) -> f64 {
    let mut total = 0.0;
    for i in 0..N {
        let z: Vec<f64> = (0..V)
            .map(|v| (0..D).map(|k| h[i * D + k] as f64 * w[k * V + v] as f64).sum::<f64>() + b.map_or(0.0, |b| b[v] as f64))
            .collect();
        let max = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        total += lse - z[t[i] as usize];
    }
    total / N as f64
}

#[test]
fn blocked_loss_equals_the_whole_logits_loss_and_its_gradients() {
    let device = Default::default();
    assert!(has_fused_backward::<B>(), "the test must exercise the hand-written backward");
    let mut rng = TensorRng::new(7);
    let (t_host, t) = targets(&device);
    // Tied (a transposed embedding, no bias) and untied with a bias; blocks of 3 rows (the last
    // one short), and one block holding every row.
    for (tied, rows) in [(true, 3), (true, 64), (false, 3), (false, 4)] {
        let h = rng.normal::<B, 2>([N, D], 1.0, &device).require_grad();
        let embed = rng.normal::<B, 2>([V, D], 1.0, &device).require_grad();
        let linear = rng.normal::<B, 2>([D, V], 1.0, &device).require_grad();
        let bias = rng.normal::<B, 1>([V], 1.0, &device).require_grad();
        // Each loss gets its own transpose node: a backward pass consumes the graph steps it
        // runs, so two losses must not share an intermediate tensor.
        let head = || if tied { (embed.clone().transpose(), None) } else { (linear.clone(), Some(bias.clone())) };
        let (w, b) = head();

        let expected = by_hand(&values(&h), &values(&w), b.as_ref().map(values).as_deref(), &t_host);
        let plain = cross_entropy(h.clone(), w.clone(), b.clone(), t.clone(), rows).into_scalar() as f64;
        let fused = cross_entropy_autodiff(h.clone(), w.clone(), b.clone(), t.clone(), rows);
        let fused_value = fused.clone().into_scalar() as f64;
        for (name, got) in [("forward", plain), ("autodiff", fused_value)] {
            assert!((got - expected).abs() < 1e-5 * expected.abs(), "{name}, tied {tied}, rows {rows}: {got} vs {expected}");
        }

        // Burn's autodiff through the whole logits and log-softmax.
        let (w, b) = head();
        let z = match &b {
            Some(b) => h.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>(),
            None => h.clone().matmul(w.clone()),
        };
        let onehot: Vec<f32> = (0..N * V).map(|j| (t_host[j / V] as usize == j % V) as u8 as f32).collect();
        let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot, [N, V]), &device);
        let whole = (log_softmax(z, 1) * onehot).sum().neg() / N as f64;
        let (g_fused, g_whole) = (fused.backward(), whole.backward());
        let mut params = vec![("h", h.clone())];
        if tied {
            params.push(("embedding", embed.clone()));
        } else {
            params.push(("weight", linear.clone()));
        }
        for (name, p) in params {
            let (a, e) = (values(&p.grad(&g_fused).unwrap()), values(&p.grad(&g_whole).unwrap()));
            let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(&e).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(scale > 0.0 && diff <= 1e-5 * scale, "d{name}, tied {tied}, rows {rows}: differs by {diff} (scale {scale})");
        }
        if !tied {
            let (a, e) = (bias.grad(&g_fused).unwrap().into_data().to_vec::<f32>().unwrap(), bias.grad(&g_whole).unwrap().into_data().to_vec::<f32>().unwrap());
            let diff = a.iter().zip(&e).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-6, "dbias, rows {rows}: differs by {diff}");
        }
    }
}

#[test]
fn the_loss_scales_the_gradient() {
    // d(c · loss) = c · d(loss): the upstream gradient reaches the blocks (gradient
    // accumulation divides the loss by the number of micro-batches).
    let device = Default::default();
    let mut rng = TensorRng::new(9);
    let (_, t) = targets(&device);
    let h = rng.normal::<B, 2>([N, D], 1.0, &device).require_grad();
    let w = rng.normal::<B, 2>([D, V], 1.0, &device).require_grad();
    let g1 = cross_entropy_autodiff(h.clone(), w.clone(), None, t.clone(), 4).backward();
    let g3 = (cross_entropy_autodiff(h.clone(), w.clone(), None, t, 4) * 3.0).backward();
    let (a, b) = (values(&h.grad(&g1).unwrap()), values(&h.grad(&g3).unwrap()));
    for (x, y) in a.iter().zip(&b) {
        assert!((3.0 * x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{x} · 3 vs {y}");
    }
}
