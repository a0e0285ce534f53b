//! CubeCL kernels for the chunked linear-attention core, registered with Burn's autodiff.
//!
//! One op covers the decay variants ember's layers use: none (linear attention, BASED's Taylor
//! features), and a log decay per channel (GLA), which a per-head or constant decay (RetNet,
//! TransNormer/Lightning) is broadcast to. The kernels run on Burn's CubeCL backends (`Wgpu`,
//! `Cuda`) and on `Autodiff` over them; `ember-ops` picks them for those backends at run time
//! and keeps its composed form for the others.
//!
//! Products run on tensor cores for `f16`/`bf16` inputs on CUDA (see [`TensorCores`] and
//! `src/tensor_cores.rs`), and as register-blocked f32 FMAs otherwise (`src/kernels.rs`).
mod kernels;
mod launch;
mod matmul;
mod tensor_cores;

pub use launch::MAX_CHUNK;
pub use matmul::{matmul_on, matmul_paths, MatmulPath};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::{element::BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use std::cell::Cell;

/// Whether the kernels multiply on tensor cores (cooperative matrices), for `f16`/`bf16` inputs
/// and chunks of whole tiles on a device that has them. The environment variable
/// `EMBER_TENSOR_CORES` (`auto`, `on`, `off`) sets it for a run; [`with_tensor_cores`] per thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TensorCores {
    /// On CUDA, whose planes (warps) the kernels synchronise with `__syncwarp`.
    #[default]
    Auto,
    /// On any device with the matrices, wgpu's SPIR-V build too, where the kernels cannot
    /// synchronise a plane (see `tensor_cores::plane_barrier`): correct where a plane's lanes
    /// run in lockstep, as on lavapipe, where the kernels are checked.
    On,
    /// Never: f32 FMAs everywhere.
    Off,
}

impl std::str::FromStr for TensorCores {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TensorCores::Auto),
            "on" => Ok(TensorCores::On),
            "off" => Ok(TensorCores::Off),
            other => Err(format!("unknown tensor-core setting {other:?} (known: auto, on, off)")),
        }
    }
}

thread_local! {
    static TENSOR_CORES: Cell<Option<TensorCores>> = const { Cell::new(None) };
    static TENSOR_CORE_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` under `setting` on this thread, then restores the previous one (tests compare the
/// two paths on one device).
pub fn with_tensor_cores<T>(setting: TensorCores, f: impl FnOnce() -> T) -> T {
    let previous = TENSOR_CORES.with(|c| c.replace(Some(setting)));
    let result = f();
    TENSOR_CORES.with(|c| c.set(previous));
    result
}

/// How many kernel calls on this thread ran on tensor cores (counted at the forward pass; its
/// backward pass follows it).
pub fn tensor_core_calls() -> u64 {
    TENSOR_CORE_CALLS.with(Cell::get)
}

/// The setting in force on this thread: [`with_tensor_cores`], else `EMBER_TENSOR_CORES`, else auto.
fn tensor_cores() -> TensorCores {
    static FROM_ENV: std::sync::OnceLock<TensorCores> = std::sync::OnceLock::new();
    TENSOR_CORES.with(Cell::get).unwrap_or_else(|| {
        *FROM_ENV.get_or_init(|| match std::env::var("EMBER_TENSOR_CORES") {
            Ok(value) => value.parse().unwrap_or_else(|e| panic!("EMBER_TENSOR_CORES: {e}")),
            Err(_) => TensorCores::Auto,
        })
    })
}

/// Backends that run the chunked linear-attention kernels.
pub trait ChunkedLinearAttention: Backend {
    /// The packed output `[B, T·H·V + H·K·V]` (f32): the output `[T, H, V]` then the final state
    /// `[H, K, V]` of each batch row. See [`chunked`] for the arguments.
    fn chunked_linear_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: Option<FloatTensor<Self>>,
        h0: FloatTensor<Self>,
        scale: f32,
        chunk: usize,
    ) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ChunkedLinearAttention
    for CubeBackend<R, F, I, BT>
{
    fn chunked_linear_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: Option<FloatTensor<Self>>,
        h0: FloatTensor<Self>,
        scale: f32,
        chunk: usize,
    ) -> FloatTensor<Self> {
        launch::forward(q, k, v, g, h0, scale, chunk).output()
    }
}

/// The backward step Burn's autodiff calls: parents `q, k, v, g, h0`.
#[derive(Debug)]
struct ChunkedBackward;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>
    Backward<CubeBackend<R, F, I, BT>, 5> for ChunkedBackward
{
    type State = launch::Saved<R>;

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
        let [q, k, v, g, h0] = ops.parents;
        let d_out = grads.consume::<B<R, F, I, BT>>(&ops.node);
        let d = launch::backward(ops.state, d_out);
        for (node, grad) in [
            (q, Some(d.q)),
            (k, Some(d.k)),
            (v, Some(d.v)),
            (g, d.g),
            (h0, Some(d.h0)),
        ] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B<R, F, I, BT>>(node.id, grad);
            }
        }
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, C: CheckpointStrategy>
    ChunkedLinearAttention for Autodiff<CubeBackend<R, F, I, BT>, C>
{
    fn chunked_linear_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: Option<FloatTensor<Self>>,
        h0: FloatTensor<Self>,
        scale: f32,
        chunk: usize,
    ) -> FloatTensor<Self> {
        // Without a decay the parent is a placeholder that nothing tracks.
        let decay = g.is_some();
        let g = g.unwrap_or_else(|| <Self as AutodiffBackend>::from_inner(h0.primitive.clone()));
        let nodes = [
            q.node.clone(),
            k.node.clone(),
            v.node.clone(),
            g.node.clone(),
            h0.node.clone(),
        ];
        let g = decay.then_some(g.primitive);
        // Kernels are compute bound: keep what backward needs rather than recompute it.
        match ChunkedBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let saved = launch::forward(
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    g,
                    h0.primitive,
                    scale,
                    chunk,
                );
                let out = saved.output();
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                launch::forward(
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    g,
                    h0.primitive,
                    scale,
                    chunk,
                )
                .output(),
            ),
        }
    }
}

/// Output and final state of [`chunked`].
pub struct ChunkedOutput<B: Backend> {
    /// `[B, T, H, V]`, in the dtype of `v`.
    pub output: Tensor<B, 4>,
    /// `[B, H, K, V]`, f32.
    pub state: Tensor<B, 4>,
}

/// Chunked linear attention `S_t = diag(exp g_t) S_{t-1} + k_tᵀ v_t`, `o_t = scale · q_t S_t`,
/// `S_0 = h0`, on the kernels: `q, k: [B, T, H, K]`, `v: [B, T, H, V]`, `g: [B, T, H, K]` log
/// decays ≤ 0 (none: no decay), `h0: [B, H, K, V]` (none: zeros). `chunk` (1 to [`MAX_CHUNK`])
/// only sets how the work is split: the function is the same for every chunk size.
pub fn chunked<B: ChunkedLinearAttention>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Option<Tensor<B, 4>>,
    h0: Option<Tensor<B, 4>>,
    scale: f64,
    chunk: usize,
) -> ChunkedOutput<B> {
    let [b, t, h, dk] = q.dims();
    let dv = v.dims()[3];
    let dtype = v.dtype();
    let h0 = h0.unwrap_or_else(|| Tensor::zeros([b, h, dk, dv], (&q.device(), DType::F32)));
    let packed = B::chunked_linear_attention(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        g.map(|g| g.into_primitive().tensor()),
        h0.into_primitive().tensor(),
        scale as f32,
        chunk.clamp(1, MAX_CHUNK),
    );
    let packed = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(packed));
    let output = packed
        .clone()
        .narrow(1, 0, t * h * dv)
        .reshape([b, t, h, dv]);
    let state = packed
        .narrow(1, t * h * dv, h * dk * dv)
        .reshape([b, h, dk, dv]);
    let output = if output.dtype() == dtype {
        output
    } else {
        output.cast(dtype)
    };
    ChunkedOutput { output, state }
}
