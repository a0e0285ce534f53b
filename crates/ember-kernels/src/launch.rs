//! Host side of the kernels: shapes, buffers and launches on one CubeCL runtime.
use crate::kernels;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::{CubeCount, CubeDim};

/// Units per cube. Every kernel strides its work over them, so any size works; 256 fits the
/// limits of every runtime ember targets.
const UNITS: u32 = 256;

/// The largest chunk: its `C×C` f32 scores fill WebGPU's guaranteed 16 KiB of shared memory.
pub const MAX_CHUNK: usize = 64;

/// What the backward pass needs from the forward pass.
#[derive(Clone, Debug)]
pub struct Saved<R: CubeRuntime> {
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    /// Within-chunk cumulative log decay (`[1]` and unread without decay).
    gc: CubeTensor<R>,
    /// `q ⊙ exp(G_t)` and `k ⊙ exp(G_end − G_t)` in f32 (see `kernels::prepare`).
    q_in: CubeTensor<R>,
    k_out: CubeTensor<R>,
    /// The same within each register block of rows (`q_in` and `k_out` without decay).
    q_blk: CubeTensor<R>,
    k_blk: CubeTensor<R>,
    decay: bool,
    /// The state entering every chunk, `[B, H, N, K, V]`.
    states: CubeTensor<R>,
    /// The packed output (its final state is read by the decay's gradient).
    out: CubeTensor<R>,
    scale: f32,
    chunk: usize,
    /// Dtypes of `k`, `v`, `h0` and `g` as given, for their gradients (`q`'s is the compute type).
    dtypes: [DType; 4],
}

/// Gradients of the op's inputs, each in its input's dtype.
pub struct Grads<R: CubeRuntime> {
    pub q: CubeTensor<R>,
    pub k: CubeTensor<R>,
    pub v: CubeTensor<R>,
    pub g: Option<CubeTensor<R>>,
    pub h0: CubeTensor<R>,
}

fn to_dtype<R: CubeRuntime>(x: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    let x = if x.dtype == dtype { x } else { cast(x, dtype) };
    into_contiguous(x)
}

fn f32_buffer<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        DType::F32,
    )
}

fn dims4<R: CubeRuntime>(x: &CubeTensor<R>) -> [usize; 4] {
    x.shape().dims::<4>()
}

/// Cubes for one unit per item of `items` per head, and the cube shape.
fn per_head(items: usize, heads: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static((items as u32).div_ceil(UNITS), heads as u32, 1),
        CubeDim::new_1d(UNITS),
    )
}

/// Forward pass: `q, k: [B, T, H, K]`, `v: [B, T, H, V]`, `g: [B, T, H, K]` log decays (or none),
/// `h0: [B, H, K, V]`. Returns the packed output `[B, T·H·V + H·K·V]` (f32) inside `Saved`.
pub fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    g: Option<CubeTensor<R>>,
    h0: CubeTensor<R>,
    scale: f32,
    chunk: usize,
) -> Saved<R> {
    assert!(
        (1..=MAX_CHUNK).contains(&chunk),
        "kernel chunk must be 1..={MAX_CHUNK}, got {chunk}"
    );
    let dtypes = [
        k.dtype,
        v.dtype,
        h0.dtype,
        g.as_ref().map_or(DType::F32, |g| g.dtype),
    ];
    // q, k and v share the compute type `F` of the kernels: q's.
    let dtype = q.dtype;
    let (q, k, v) = (to_dtype(q, dtype), to_dtype(k, dtype), to_dtype(v, dtype));
    let [b, t, h, dk] = dims4(&q);
    let dv = dims4(&v)[3];
    let n = t.div_ceil(chunk);
    let client = q.client.clone();
    let decay = g.is_some();
    let g = g.map_or_else(|| f32_buffer(&q, vec![1]), |g| to_dtype(g, DType::F32));
    let gc = f32_buffer(&q, if decay { vec![b, t, h, dk] } else { vec![1] });
    let q_in = f32_buffer(&q, vec![b, t, h, dk]);
    let k_out = f32_buffer(&q, vec![b, t, h, dk]);
    let per_block = |x: &CubeTensor<R>| if decay { f32_buffer(&q, vec![b, t, h, dk]) } else { x.clone() };
    let (q_blk, k_blk) = (per_block(&q_in), per_block(&k_out));
    // Without decay `prepare` writes no block factors; it gets buffers of its own to not write.
    let unwritten = |x: &CubeTensor<R>| if decay { x.clone() } else { f32_buffer(&q, vec![1]) };
    let (count, dim) = per_head(n * dk, b * h);
    kernels::prepare::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        g.into_tensor_arg(),
        gc.clone().into_tensor_arg(),
        q_in.clone().into_tensor_arg(),
        k_out.clone().into_tensor_arg(),
        unwritten(&q_blk).into_tensor_arg(),
        unwritten(&k_blk).into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        chunk as u32,
        decay,
        dtype.into(),
    );

    // Each chunk's own `k_outᵀ v`, then the scan turns them into the states entering chunks.
    let h0 = to_dtype(h0, DType::F32);
    let states = f32_buffer(&q, vec![b, h, n, dk, dv]);
    let out = f32_buffer(&q, vec![b, t * h * dv + h * dk * dv]);
    kernels::chunk_keys_values::launch::<R>(
        &client,
        CubeCount::Static(n as u32, (b * h) as u32, 1),
        CubeDim::new_1d(UNITS),
        k_out.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        states.clone().into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        dv as u32,
        chunk as u32,
        dtype.into(),
    );
    let (count, dim) = per_head(dk * dv, b * h);
    kernels::scan_chunks::launch::<R>(
        &client,
        count,
        dim,
        states.clone().into_tensor_arg(),
        gc.clone().into_tensor_arg(),
        h0.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        dv as u32,
        chunk as u32,
        (h * dk * dv) as u32,
        0,
        (t * h * dv + h * dk * dv) as u32,
        (t * h * dv) as u32,
        decay,
        false,
    );
    kernels::forward_output::launch::<R>(
        &client,
        CubeCount::Static(n as u32, (b * h) as u32, 1),
        CubeDim::new_1d(UNITS),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        gc.clone().into_tensor_arg(),
        q_blk.clone().into_tensor_arg(),
        k_blk.clone().into_tensor_arg(),
        q_in.clone().into_tensor_arg(),
        states.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        dv as u32,
        scale,
        chunk,
        decay,
        dtype.into(),
    );
    Saved {
        q,
        k,
        v,
        gc,
        q_in,
        k_out,
        q_blk,
        k_blk,
        decay,
        states,
        out,
        scale,
        chunk,
        dtypes,
    }
}

impl<R: CubeRuntime> Saved<R> {
    /// The packed output.
    pub fn output(&self) -> CubeTensor<R> {
        self.out.clone()
    }
}

/// Backward pass from the gradient of the packed output.
pub fn backward<R: CubeRuntime>(saved: Saved<R>, d_out: CubeTensor<R>) -> Grads<R> {
    let Saved {
        q,
        k,
        v,
        gc,
        q_in,
        k_out,
        q_blk,
        k_blk,
        decay,
        states,
        out,
        scale,
        chunk,
        dtypes,
    } = saved;
    let d_out = to_dtype(d_out, DType::F32);
    let [b, t, h, dk] = dims4(&q);
    let dv = dims4(&v)[3];
    let n = t.div_ceil(chunk);
    let client = q.client.clone();
    let dtype = q.dtype;

    // Each chunk's own `scale · q_inᵀ do`, then the reverse scan gives the gradient of the
    // state leaving every chunk, and of the initial state.
    let d_states = f32_buffer(&q, vec![b, h, n, dk, dv]);
    let dh0 = f32_buffer(&q, vec![b, h, dk, dv]);
    kernels::chunk_queries_grads::launch::<R>(
        &client,
        CubeCount::Static(n as u32, (b * h) as u32, 1),
        CubeDim::new_1d(UNITS),
        q_in.into_tensor_arg(),
        d_out.clone().into_tensor_arg(),
        d_states.clone().into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        dv as u32,
        chunk as u32,
        scale,
    );
    let (count, dim) = per_head(dk * dv, b * h);
    kernels::scan_chunks::launch::<R>(
        &client,
        count,
        dim,
        d_states.clone().into_tensor_arg(),
        gc.clone().into_tensor_arg(),
        d_out.clone().into_tensor_arg(),
        dh0.clone().into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        dv as u32,
        chunk as u32,
        (t * h * dv + h * dk * dv) as u32,
        (t * h * dv) as u32,
        (h * dk * dv) as u32,
        0,
        decay,
        true,
    );

    let dq = f32_buffer(&q, vec![b, t, h, dk]);
    let dkey = f32_buffer(&q, vec![b, t, h, dk]);
    let dval = f32_buffer(&q, vec![b, t, h, dv]);
    kernels::backward_inputs::launch::<R>(
        &client,
        CubeCount::Static(n as u32, (b * h) as u32, 1),
        CubeDim::new_1d(UNITS),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.into_tensor_arg(),
        gc.into_tensor_arg(),
        q_blk.into_tensor_arg(),
        k_blk.into_tensor_arg(),
        k_out.into_tensor_arg(),
        states.into_tensor_arg(),
        d_states.into_tensor_arg(),
        d_out.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        dkey.clone().into_tensor_arg(),
        dval.clone().into_tensor_arg(),
        t as u32,
        h as u32,
        dk as u32,
        dv as u32,
        scale,
        chunk,
        decay,
        dtype.into(),
    );

    let dg = decay.then(|| {
        let dg = f32_buffer(&q, vec![b, t, h, dk]);
        let (count, dim) = per_head(dk, b * h);
        kernels::backward_decay::launch::<R>(
            &client,
            count,
            dim,
            q.clone().into_tensor_arg(),
            k.into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            dkey.clone().into_tensor_arg(),
            out.into_tensor_arg(),
            d_out.into_tensor_arg(),
            dg.clone().into_tensor_arg(),
            t as u32,
            h as u32,
            dk as u32,
            dv as u32,
            dtype.into(),
        );
        dg
    });
    let [dk_type, dv_type, dh0_type, dg_type] = dtypes;
    Grads {
        q: to_dtype(dq, dtype),
        k: to_dtype(dkey, dk_type),
        v: to_dtype(dval, dv_type),
        g: dg.map(|dg| to_dtype(dg, dg_type)),
        h0: to_dtype(dh0, dh0_type),
    }
}
