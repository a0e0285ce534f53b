//! The output head and its cross-entropy, a block of rows at a time: the `[N, vocab]` logits
//! are never held whole. Forward keeps only each row's log-sum-exp; backward recomputes one
//! block of logits at a time and turns it straight into `softmax − one-hot`, the gradient of the
//! logits, so neither pass stores, copies or differentiates through a vocabulary-wide tensor the
//! size of the batch. (A tiny model's step is dominated by its head: at vocabulary 8192 and
//! 2048 tokens the logits alone are 64 MiB, and the op-by-op cross-entropy and its backward
//! walked them once per op.)
//!
//! [`cross_entropy`] is the forward alone, for evaluation (and, composed of Burn ops, correct
//! under autodiff too); [`cross_entropy_autodiff`] is the training form, with the hand-written
//! backward registered in Burn's autodiff graph.
use crate::precision::{to_dtype, to_f32};
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive};
use std::any::{Any, TypeId};

mod host;

/// Logits per block: rows · vocabulary ≤ this (4 MiB of f32, within a CPU's last-level cache;
/// chosen, not tuned: no other size was measured).
pub const BLOCK_ELEMENTS: usize = 1 << 20;

/// Rows per block for a vocabulary of `vocab`.
pub fn block_rows(vocab: usize) -> usize {
    (BLOCK_ELEMENTS / vocab.max(1)).max(1)
}

/// The head: `logits = h · weight + bias`, `weight: [d, vocab]`, `bias: [vocab]`.
fn logits<B: Backend>(h: Tensor<B, 2>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Tensor<B, 2> {
    let z = to_f32(h.matmul(weight.clone()));
    match bias {
        Some(b) => z + to_f32(b.clone()).unsqueeze::<2>(),
        None => z,
    }
}

/// The row blocks `(start, len)` of `n` rows.
fn blocks(n: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(rows.max(1)).map(move |start| (start, rows.max(1).min(n - start)))
}

/// `Σ_i lse(z_i) − z_i[t_i]` over the rows (a `[1]` tensor, f32) and each row's log-sum-exp
/// `[N]`, with `z = h · weight + bias` computed `rows` rows at a time.
fn forward<B: Backend>(
    h: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    targets: &Tensor<B, 1, Int>,
    rows: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let n = h.dims()[0];
    let device = h.device();
    let on_host = host::runs_on::<B>(&device);
    let host_targets = if on_host { host::ids(targets.clone()) } else { Vec::new() };
    let mut sums = Vec::new();
    let mut lses = Vec::new();
    for (start, len) in blocks(n, rows) {
        let z = logits(h.clone().narrow(0, start, len), weight, bias);
        if on_host {
            let (sum, lse) = host::loss_rows(z, &host_targets[start..start + len]);
            sums.push(Tensor::from_data(TensorData::new(vec![sum as f32], [1]), &device));
            lses.push(Tensor::from_data(TensorData::new(lse, [len]), &device));
            continue;
        }
        let max = z.clone().max_dim(1);
        let lse = (z.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let picked = z.gather(1, targets.clone().narrow(0, start, len).unsqueeze_dim::<2>(1));
        sums.push((lse.clone() - picked).sum());
        lses.push(lse.squeeze_dim::<1>(1));
    }
    (Tensor::cat(sums, 0).sum(), Tensor::cat(lses, 0))
}

/// Mean cross-entropy of the logits `h · weight + bias` (`h: [N, d]`, `weight: [d, vocab]`)
/// against `targets` (`[N]` class ids), `rows` rows of logits at a time. f32 whatever the
/// dtype of `h`.
pub fn cross_entropy<B: Backend>(
    h: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    targets: Tensor<B, 1, Int>,
    rows: usize,
) -> Tensor<B, 1> {
    let n = h.dims()[0];
    forward(&h, &weight, bias.as_ref(), &targets, rows).0 / n as f64
}

/// [`cross_entropy`] for training: the same value, with a backward pass that recomputes each
/// block of logits instead of keeping them (see the module's comment). On an autodiff backend
/// other than Burn's `Autodiff<_>` with its default checkpointing it is [`cross_entropy`]
/// differentiated op by op.
pub fn cross_entropy_autodiff<B: AutodiffBackend>(
    h: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    targets: Tensor<B, 1, Int>,
    rows: usize,
) -> Tensor<B, 1> {
    if !has_fused_backward::<B>() {
        return cross_entropy(h, weight, bias, targets, rows);
    }
    let loss = fused::<B::InnerBackend>(cast(h), cast(weight), bias.map(cast), cast(targets), rows);
    cast(loss)
}

/// Whether [`cross_entropy_autodiff`] runs its hand-written backward on `B` (Burn's
/// `Autodiff<_>` with its default checkpointing: every autodiff backend ember builds).
pub fn has_fused_backward<B: AutodiffBackend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Autodiff<B::InnerBackend>>()
}

/// `x` as the type it is (the caller checked that the two types are one).
fn cast<X: 'static, Y: 'static>(x: X) -> Y {
    *(Box::new(x) as Box<dyn Any>).downcast::<Y>().expect("the same type")
}

/// The backward step: parents `h, weight, bias`.
#[derive(Debug)]
struct HeadCrossEntropy;

/// What the backward pass needs: the inputs and each row's log-sum-exp.
#[derive(Clone, Debug)]
struct Saved<B: Backend> {
    h: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    targets: IntTensor<B>,
    lse: FloatTensor<B>,
    rows: usize,
}

impl<B: Backend> Backward<B, 3> for HeadCrossEntropy {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [h_node, weight_node, bias_node] = ops.parents;
        let d_loss = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let s = ops.state;
        let float = |x: FloatTensor<B>| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
        let (h, weight) = (float(s.h), float(s.weight));
        let bias = s.bias.map(|b| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(b)));
        let targets = Tensor::<B, 1, Int>::from_primitive(s.targets);
        let lse = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(s.lse));
        let [n, d] = h.dims();
        let vocab = weight.dims()[1];
        let device = h.device();
        // d loss / d z_i = (softmax(z_i) − onehot(t_i)) · d_loss / N.
        let scale = to_f32(d_loss).reshape([1, 1]) / n as f64;
        let on_host = host::runs_on::<B>(&device);
        let (host_targets, host_lse, host_scale) = if on_host {
            let lse = lse.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
            let scale = scale.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32 data")[0];
            (host::ids(targets.clone()), lse, scale)
        } else {
            (Vec::new(), Vec::new(), 0.0)
        };
        let mut d_h = Vec::new();
        let mut d_weight: Option<Tensor<B, 2>> = None;
        let mut d_bias: Option<Tensor<B, 1>> = None;
        for (start, len) in blocks(n, s.rows) {
            let h_block = h.clone().narrow(0, start, len);
            let z = logits(h_block.clone(), &weight, bias.as_ref());
            let d_z = if on_host {
                let range = start..start + len;
                host::logit_grads(z, &host_lse[range.clone()], &host_targets[range], host_scale)
            } else {
                let t = targets.clone().narrow(0, start, len).unsqueeze_dim::<2>(1);
                let minus_one = Tensor::<B, 2>::full([len, 1], -1.0, &device);
                let p = (z - lse.clone().narrow(0, start, len).unsqueeze_dim::<2>(1)).exp();
                p.scatter(1, t, minus_one, IndexingUpdateOp::Add) * scale.clone()
            };
            if bias_node.is_some() {
                let db = d_z.clone().sum_dim(0).squeeze_dim::<1>(0);
                d_bias = Some(match d_bias {
                    Some(acc) => acc + db,
                    None => db,
                });
            }
            let d_z = to_dtype(d_z, h.dtype());
            if weight_node.is_some() {
                let dw = h_block.transpose().matmul(d_z.clone());
                d_weight = Some(match d_weight {
                    Some(acc) => acc + dw,
                    None => dw,
                });
            }
            if h_node.is_some() {
                d_h.push(d_z.matmul(weight.clone().transpose()));
            }
        }
        if let Some(node) = h_node {
            let d_h = if d_h.is_empty() { Tensor::zeros([0, d], &device) } else { Tensor::cat(d_h, 0) };
            grads.register::<B>(node.id, d_h.into_primitive().tensor());
        }
        if let Some(node) = weight_node {
            let dw = d_weight.unwrap_or_else(|| Tensor::zeros([d, vocab], &device));
            grads.register::<B>(node.id, dw.into_primitive().tensor());
        }
        if let (Some(node), Some(db)) = (bias_node, d_bias) {
            grads.register::<B>(node.id, to_dtype(db, weight.dtype()).into_primitive().tensor());
        }
    }
}

/// [`cross_entropy`] on `Autodiff<B>`, with [`HeadCrossEntropy`] as its backward.
fn fused<B: Backend>(
    h: Tensor<Autodiff<B>, 2>,
    weight: Tensor<Autodiff<B>, 2>,
    bias: Option<Tensor<Autodiff<B>, 1>>,
    targets: Tensor<Autodiff<B>, 1, Int>,
    rows: usize,
) -> Tensor<Autodiff<B>, 1> {
    let n = h.dims()[0];
    let primitive = |x: Tensor<Autodiff<B>, 2>| x.into_primitive().tensor();
    let (h, weight) = (primitive(h), primitive(weight));
    // Without a bias the third parent is a placeholder that nothing tracks.
    let has_bias = bias.is_some();
    let bias = match bias {
        Some(b) => b.into_primitive().tensor(),
        None => <Autodiff<B> as AutodiffBackend>::from_inner(h.primitive.clone()),
    };
    let nodes = [h.node.clone(), weight.node.clone(), bias.node.clone()];
    let inner_h = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(h.primitive.clone()));
    let inner_weight = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(weight.primitive.clone()));
    let inner_bias = has_bias.then(|| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(bias.primitive.clone())));
    let inner_targets = Tensor::<B, 1, Int>::from_primitive(targets.into_primitive());
    let (sum, lse) = forward(&inner_h, &inner_weight, inner_bias.as_ref(), &inner_targets, rows);
    let loss = (sum / n as f64).into_primitive().tensor();
    let out = match HeadCrossEntropy.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                h: h.primitive,
                weight: weight.primitive,
                bias: inner_bias.map(|b| b.into_primitive().tensor()),
                targets: inner_targets.into_primitive(),
                lse: lse.into_primitive().tensor(),
                rows,
            };
            prep.finish(saved, loss)
        }
        OpsKind::UnTracked(prep) => prep.finish(loss),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
