//! Host side of the kernels: shapes, buffers and launches on one CubeCL runtime.
use crate::{kernels, tensor_cores};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::ComputeClient;
use cubecl::{CubeCount, CubeDim};

/// Units per cube. Every kernel strides its work over them, so any size works; 256 fits the
/// limits of every runtime ember targets.
const UNITS: u32 = 256;

/// The largest chunk: its `C×C` f32 scores fill WebGPU's guaranteed 16 KiB of shared memory.
pub const MAX_CHUNK: usize = 64;

/// How the tensor-core kernels run on a device: the side of their square tiles, its plane
/// (warp) width, and how many planes a cube of each kernel gets (as many as fit its shared
/// memory, at most 8).
#[derive(Clone, Copy, Debug)]
struct TensorCoreLaunch {
    tile: usize,
    /// Whether the kernels synchronise a plane's lanes (CUDA; see `tensor_cores::plane_barrier`).
    sync: bool,
    plane: u32,
    /// For `chunk_outer`, `forward_output` and `backward_inputs`.
    planes: [usize; 3],
}

impl TensorCoreLaunch {
    /// Where the tensor-core kernels can run this call: inputs in f16 or bf16, a device with
    /// square cooperative matrices of that type accumulating in f32 (the largest of
    /// `tensor_cores::TILES`), a chunk of whole tiles, and the setting allows them
    /// (`crate::TensorCores`: by default on CUDA only).
    fn find<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType, chunk: usize) -> Option<Self> {
        use cubecl::ir::{features::MmaConfig, StorageType};
        let cuda = R::name(client) == "cuda";
        let allowed = match crate::tensor_cores() {
            crate::TensorCores::Auto => cuda,
            crate::TensorCores::On => true,
            crate::TensorCores::Off => false,
        };
        if !allowed || !matches!(dtype, DType::F16 | DType::BF16) {
            return None;
        }
        let (input, f32_): (StorageType, StorageType) = (dtype.into(), DType::F32.into());
        let tile = tensor_cores::TILES.into_iter().find(|&tile| {
            let size = tile as u32;
            let config = MmaConfig { a_type: input, b_type: input, cd_type: f32_, m: size, k: size, n: size };
            chunk.is_multiple_of(tile) && client.features().matmul.cmma.contains(&config)
        })?;
        let hardware = &client.properties().hardware;
        // The cube's size in planes is fixed at launch, so the plane width must be too.
        if hardware.plane_size_min != hardware.plane_size_max {
            return None;
        }
        // Each plane stages two input tiles (2 bytes an element) and one or two f32 output
        // tiles; the scores take `chunk²` f32; each of the (up to) three arrays is aligned.
        let fits = |out_tiles: usize, scores: usize| {
            let bytes = |planes: usize| scores + planes * tile * tile * (2 * 2 + 4 * out_tiles) + 3 * tensor_cores::ALIGN;
            [8, 4, 2, 1].into_iter().find(|&planes| bytes(planes) <= hardware.max_shared_memory_size)
        };
        let scores = chunk * chunk * 4;
        Some(TensorCoreLaunch {
            tile,
            sync: cuda,
            plane: hardware.plane_size_max,
            planes: [fits(1, 0)?, fits(1, scores)?, fits(2, scores)?],
        })
    }

    fn cube(&self, kernel: usize) -> CubeDim {
        CubeDim::new_1d(self.plane * self.planes[kernel] as u32)
    }
}

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
    /// The same within each register block of rows (`q_in` and `k_out` without decay; unused
    /// with tensor cores).
    q_blk: CubeTensor<R>,
    k_blk: CubeTensor<R>,
    decay: bool,
    /// The state entering every chunk, `[B, H, N, K, V]`.
    states: CubeTensor<R>,
    /// The packed output (its final state is read by the decay's gradient).
    out: CubeTensor<R>,
    /// Whether (and how) the forward pass ran on tensor cores; the backward pass does the same.
    tensor_cores: Option<TensorCoreLaunch>,
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
    let tensor_cores = TensorCoreLaunch::find(&client, dtype, chunk);
    // The FMA kernels' block factors: with decay and without tensor cores only (else `prepare`
    // writes none, and gets buffers of its own to not write).
    let blocks = decay && tensor_cores.is_none();
    let per_block = |x: &CubeTensor<R>| if blocks { f32_buffer(&q, vec![b, t, h, dk]) } else { x.clone() };
    let (q_blk, k_blk) = (per_block(&q_in), per_block(&k_out));
    let unwritten = |x: &CubeTensor<R>| if blocks { x.clone() } else { f32_buffer(&q, vec![1]) };
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
        blocks,
        dtype.into(),
    );

    // Each chunk's own `k_outᵀ v`, then the scan turns them into the states entering chunks.
    let h0 = to_dtype(h0, DType::F32);
    let states = f32_buffer(&q, vec![b, h, n, dk, dv]);
    let out = f32_buffer(&q, vec![b, t * h * dv + h * dk * dv]);
    let chunks = CubeCount::Static(n as u32, (b * h) as u32, 1);
    if let Some(tc) = tensor_cores {
        tensor_cores::chunk_keys_values::launch::<R>(
            &client,
            chunks.clone(),
            tc.cube(0),
            k_out.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            states.clone().into_tensor_arg(),
            t as u32,
            h as u32,
            dk as u32,
            dv as u32,
            chunk as u32,
            tc.planes[0],
            tc.tile,
            tc.sync,
            dtype.into(),
        );
    } else {
        kernels::chunk_keys_values::launch::<R>(
            &client,
            chunks.clone(),
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
    }
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
    if let Some(tc) = tensor_cores {
        crate::TENSOR_CORE_CALLS.with(|c| c.set(c.get() + 1));
        tensor_cores::forward_output::launch::<R>(
            &client,
            chunks,
            tc.cube(1),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            gc.clone().into_tensor_arg(),
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
            tc.planes[1],
            tc.tile,
            tc.sync,
            dtype.into(),
        );
    } else {
        kernels::forward_output::launch::<R>(
            &client,
            chunks,
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
    }
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
        tensor_cores,
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
        tensor_cores,
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
    let chunks = CubeCount::Static(n as u32, (b * h) as u32, 1);
    if let Some(tc) = tensor_cores {
        tensor_cores::chunk_queries_grads::launch::<R>(
            &client,
            chunks.clone(),
            tc.cube(0),
            q_in.into_tensor_arg(),
            d_out.clone().into_tensor_arg(),
            d_states.clone().into_tensor_arg(),
            t as u32,
            h as u32,
            dk as u32,
            dv as u32,
            chunk as u32,
            scale,
            tc.planes[0],
            tc.tile,
            tc.sync,
            dtype.into(),
        );
    } else {
        kernels::chunk_queries_grads::launch::<R>(
            &client,
            chunks.clone(),
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
    }
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
    if let Some(tc) = tensor_cores {
        tensor_cores::backward_inputs::launch::<R>(
            &client,
            chunks,
            tc.cube(2),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.into_tensor_arg(),
            gc.clone().into_tensor_arg(),
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
            tc.planes[2],
            tc.tile,
            tc.sync,
            dtype.into(),
        );
    } else {
        kernels::backward_inputs::launch::<R>(
            &client,
            chunks,
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
    }

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
