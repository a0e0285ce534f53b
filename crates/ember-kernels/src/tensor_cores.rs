//! Tensor-core (CMMA) versions of the kernels' products, forward and backward, for `f16`/`bf16`
//! inputs on devices with cooperative matrices: CUDA's tensor cores (16×16×16 tiles), and
//! Vulkan's `VK_KHR_cooperative_matrix` in a `--features vulkan` build, which Mesa's lavapipe
//! has from 25.x on (8×8×8, f16) and so checks these kernels on a CPU.
//!
//! Each plane (warp) computes one `tile × tile` output tile at a time. Operands are staged tile by
//! tile in the plane's own slice of shared memory, converted to the input type `F` (zero past the
//! tensor's edge, so any `K`, `V` and ragged last chunk work), and multiplied with f32
//! accumulation. Decays are applied while staging, in f32, as factors of at most 1.
//!
//! The scores of a chunk, `scale · Σ_c q_tc k_sc exp(G_tc − G_sc)` for `s ≤ t`, split as in the
//! FMA kernels ([`crate::kernels`]): below the diagonal tiles, with `f` the first row of `t`'s
//! tile, `exp(G_t − G_s) = exp(G_t − G_f) · exp(G_f − G_s)`, both at most 1 (`s < f ≤ t`), so
//! the tile is one product of `q ⊙ exp(G_t − G_f)` and `k ⊙ exp(G_f − G_s)`; the diagonal tiles
//! take one exp per product, unit by unit (`exp(G_f − G_s)` would overflow for `s > f`). The
//! gradients factor the same way. The scan over chunks and the decay's gradient are the FMA
//! kernels' (no products there).
#![allow(clippy::manual_div_ceil)]
use crate::kernels::{at, chunk_end};
use cubecl::prelude::*;

/// Sides of the square cooperative-matrix tiles (`m = n = k`) the kernels take, by preference:
/// CUDA's tensor cores have 16×16×16 for f16 and bf16, lavapipe 8×8×8 for f16. The side is a
/// comptime argument (`tile`) of every function here.
pub const TILES: [usize; 2] = [16, 8];

/// Byte alignment of the shared memory the matrices load from and store to (`wmma` wants 256
/// bits; tile offsets are multiples of 32 bytes).
pub const ALIGN: usize = 32;

/// Position of this unit's plane in the cube. Its staging starts at `plane · 2·tile²` (the `A`
/// tile, then the `B` tile), its f32 output tile at `plane · tile²`.
#[cube]
fn plane_index() -> usize {
    UNIT_POS as usize / PLANE_DIM as usize
}

/// Orders a plane's shared-memory writes before its other lanes read them (CUDA's
/// `__syncwarp`), with `sync`. Without it on wgpu: CubeCL's SPIR-V plane barrier orders no
/// memory anyway, and on lavapipe, whose subgroups run in lockstep, the kernels with it left
/// outputs unwritten (all zeros) in cubes where some planes had no tile to work on, and were
/// right without it (measured).
#[cube]
fn plane_barrier(#[comptime] sync: bool) {
    if sync {
        sync_plane();
    }
}

/// Stages the row-major `tile × tile` tile `(r, c) ↦ factor · src[base + r·rs + c·cs]` (zero
/// from row `rows` or column `cols` on) at `dst[off..]`. With `decay`, each element also gets
/// `exp(sign · (gc[j] − gc[reference + r·ref_rs + c·ref_cs]))`, `j` being its own index (`gc`
/// has `src`'s layout).
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage<E: Float, F: Float>(
    dst: &mut SharedMemory<F>,
    off: usize,
    src: &Tensor<E>,
    gc: &Tensor<f32>,
    base: usize,
    rs: usize,
    cs: usize,
    rows: usize,
    cols: usize,
    factor: f32,
    reference: usize,
    ref_rs: usize,
    ref_cs: usize,
    sign: f32,
    #[comptime] decay: bool,
    #[comptime] tile: usize,
) {
    let mut i = UNIT_POS_PLANE as usize;
    while i < tile * tile {
        let (r, c) = (i / tile, i % tile);
        let mut x = 0.0f32;
        if r < rows && c < cols {
            let j = base + r * rs + c * cs;
            x = f32::cast_from(src[j]) * factor;
            if decay {
                x *= (sign * (gc[j] - gc[reference + r * ref_rs + c * ref_cs])).exp();
            }
        }
        dst[off + i] = F::cast_from(x);
        i += PLANE_DIM as usize;
    }
}

/// [`stage`] from f32 shared memory (the chunk's scores or their gradient): element `(r, c)` is
/// `src[base + r·rs + c·cs]`, so `(rs, cs) = (1, chunk)` stages a transposed tile.
#[cube]
fn stage_shared<F: Float>(dst: &mut SharedMemory<F>, off: usize, src: &SharedMemory<f32>, base: usize, rs: usize, cs: usize, #[comptime] tile: usize) {
    let mut i = UNIT_POS_PLANE as usize;
    while i < tile * tile {
        dst[off + i] = F::cast_from(src[base + i / tile * rs + i % tile * cs]);
        i += PLANE_DIM as usize;
    }
}

/// `acc += A · B` from the two tiles staged at `staging[off..]`.
#[cube]
fn multiply_staged<F: Float>(
    staging: &SharedMemory<F>,
    off: usize,
    a: &cmma::Matrix<F>,
    b: &cmma::Matrix<F>,
    acc: &cmma::Matrix<f32>,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
) {
    plane_barrier(sync);
    cmma::load(a, &staging.slice(off, off + tile * tile), tile as u32);
    cmma::load(b, &staging.slice(off + tile * tile, off + 2 * tile * tile), tile as u32);
    cmma::execute::<F, F, f32, f32>(a, b, acc, acc);
    // The next staging overwrites the tiles.
    plane_barrier(sync);
}

/// Writes the `rows × cols` valid corner of `acc` at `out[base + r·rs + c]` through the plane's
/// f32 tile `tmp[off..]` (a tile can overhang the tensor, which a direct store would overrun).
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_tile(
    acc: &cmma::Matrix<f32>,
    tmp: &mut SharedMemory<f32>,
    off: usize,
    out: &mut Tensor<f32>,
    base: usize,
    rs: usize,
    rows: usize,
    cols: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
) {
    cmma::store(&mut tmp.slice_mut(off, off + tile * tile), acc, tile as u32, cmma::MatrixLayout::RowMajor);
    plane_barrier(sync);
    let mut i = UNIT_POS_PLANE as usize;
    while i < tile * tile {
        let (r, c) = (i / tile, i % tile);
        if r < rows && c < cols {
            out[base + r * rs + c] = tmp[off + i];
        }
        i += PLANE_DIM as usize;
    }
    plane_barrier(sync);
}

/// The `A` and `B` fragments (both staged row-major); every use loads them first.
#[cube]
fn input_tiles<F: Float>(#[comptime] tile: usize) -> (cmma::Matrix<F>, cmma::Matrix<F>) {
    let layout = cmma::MatrixLayout::RowMajor;
    unsafe {
        (
            cmma::Matrix::<F>::uninitialized(cmma::MatrixIdent::A, tile, tile, tile, layout),
            cmma::Matrix::<F>::uninitialized(cmma::MatrixIdent::B, tile, tile, tile, layout),
        )
    }
}

/// An f32 accumulator fragment (each output tile fills it with zeros first).
#[cube]
fn accumulator(#[comptime] tile: usize) -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, tile, tile, tile, cmma::MatrixLayout::Undefined, 0.0)
}

/// `factor · xᵀ y` over the tokens of chunk `CUBE_POS_X` into its `K×V` entries of `out:
/// [B, H, N, K, V]`, a `tile × tile` tile per plane at a time: `x` is `[B, T, H, K]`, `y` holds
/// `[T, H, V]` from `b · y_row` on (a plain tensor, or the packed output's gradient).
#[cube]
#[allow(clippy::too_many_arguments)]
fn chunk_outer<E: Float, F: Float>(
    x: &Tensor<f32>,
    y: &Tensor<E>,
    out: &mut Tensor<f32>,
    seq: usize,
    heads: usize,
    dk: usize,
    dv: usize,
    chunk: usize,
    y_row: usize,
    factor: f32,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
) {
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let (start, end) = (n * chunk, chunk_end(n, chunk, seq));
    let mut staging = SharedMemory::<F>::new_aligned(planes * 2 * tile * tile, ALIGN);
    let mut tmp = SharedMemory::<f32>::new_aligned(planes * tile * tile, ALIGN);
    let plane = plane_index();
    let off = plane * 2 * tile * tile;
    let (a, bt) = input_tiles::<F>(tile);
    let acc = accumulator(tile);
    let (rows, cols) = ((dk + tile - 1) / tile, (dv + tile - 1) / tile);
    let mut i = plane;
    while i < rows * cols {
        let (c0, e0) = (i / cols * tile, i % cols * tile);
        cmma::fill(&acc, 0.0);
        let mut t0 = start;
        while t0 < end {
            // A = xᵀ (channels × tokens), B = y (tokens × values); `x` stands in for the unread
            // log decays.
            let at_x = at(b, t0, h, c0, seq, heads, dk);
            let at_y = b * y_row + (t0 * heads + h) * dv + e0;
            stage::<f32, F>(&mut staging, off, x, x, at_x, 1, heads * dk, dk - c0, end - t0, factor, 0, 0, 0, 0.0, false, tile);
            stage::<E, F>(&mut staging, off + tile * tile, y, x, at_y, heads * dv, 1, end - t0, dv - e0, 1.0, 0, 0, 0, 0.0, false, tile);
            multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
            t0 += tile;
        }
        let state = (bh * n_chunks + n) * dk * dv + c0 * dv + e0;
        store_tile(&acc, &mut tmp, plane * tile * tile, out, state, dv, dk - c0, dv - e0, tile, sync);
        i += planes;
    }
}

/// Tensor-core [`crate::kernels::chunk_keys_values`]: `U_n = k_outᵀ v` of each chunk.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn chunk_keys_values<F: Float>(
    k_out: &Tensor<f32>,
    v: &Tensor<F>,
    states: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    chunk: u32,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dv) = (seq as usize, heads as usize, dv as usize);
    chunk_outer::<F, F>(k_out, v, states, seq, heads, dk as usize, dv, chunk as usize, seq * heads * dv, 1.0, planes, tile, sync);
}

/// Tensor-core [`crate::kernels::chunk_queries_grads`]: `scale · q_inᵀ do` of each chunk (`do`
/// is the packed output's gradient). `F` is the inputs' type, the type of the tiles.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn chunk_queries_grads<F: Float>(
    q_in: &Tensor<f32>,
    d_out: &Tensor<f32>,
    d_states: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    chunk: u32,
    scale: f32,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let row = seq * heads * dv + heads * dk * dv;
    chunk_outer::<f32, F>(q_in, d_out, d_states, seq, heads, dk, dv, chunk as usize, row, scale, planes, tile, sync);
}

/// The scores of a chunk, `scale · Σ_c q_tc k_sc exp(G_tc − G_sc)` for `s ≤ t`, into `scores`
/// (`chunk × chunk`, shared): tiles below the diagonal by planes (rows past `len` stage as
/// zeros), diagonal tiles by units, one exp per product (zero above the diagonal and past
/// `len`). Tiles above the diagonal are left as they are: nothing reads them.
#[cube]
#[allow(clippy::too_many_arguments)]
fn chunk_scores<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    gc: &Tensor<f32>,
    scores: &mut SharedMemory<f32>,
    staging: &mut SharedMemory<F>,
    b: usize,
    h: usize,
    start: usize,
    len: usize,
    seq: usize,
    heads: usize,
    dk: usize,
    scale: f32,
    #[comptime] chunk: usize,
    #[comptime] decay: bool,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
) {
    let plane = plane_index();
    let off = plane * 2 * tile * tile;
    let (a, bt) = input_tiles::<F>(tile);
    let acc = accumulator(tile);
    let tiles = chunk / tile;
    let step_k = heads * dk;
    let mut i = plane;
    while i < tiles * tiles {
        let (t0, s0) = (i / tiles * tile, i % tiles * tile);
        if s0 < t0 && t0 < len {
            cmma::fill(&acc, 0.0);
            let first = at(b, start + t0, h, 0, seq, heads, dk);
            let mut c0 = 0;
            while c0 < dk {
                // A = scale · q ⊙ exp(G_t − G_first) (tokens × channels),
                // B = (k ⊙ exp(G_first − G_s))ᵀ (channels × tokens).
                let (at_q, at_k) = (at(b, start + t0, h, c0, seq, heads, dk), at(b, start + s0, h, c0, seq, heads, dk));
                stage::<F, F>(staging, off, q, gc, at_q, step_k, 1, len - t0, dk - c0, scale, first + c0, 0, 1, 1.0, decay, tile);
                stage::<F, F>(staging, off + tile * tile, k, gc, at_k, 1, step_k, dk - c0, tile, 1.0, first + c0, 1, 0, -1.0, decay, tile);
                multiply_staged::<F>(staging, off, &a, &bt, &acc, tile, sync);
                c0 += tile;
            }
            cmma::store(&mut scores.slice_mut(t0 * chunk + s0, chunk * chunk), &acc, chunk as u32, cmma::MatrixLayout::RowMajor);
        }
        i += planes;
    }
    let mut e = UNIT_POS as usize;
    while e < tiles * tile * tile {
        let d0 = e / (tile * tile) * tile;
        let (t, s) = (d0 + e % (tile * tile) / tile, d0 + e % tile);
        let mut p = 0.0f32;
        if s <= t && t < len {
            let (jt, js) = (at(b, start + t, h, 0, seq, heads, dk), at(b, start + s, h, 0, seq, heads, dk));
            for c in 0..dk {
                let mut x = f32::cast_from(q[jt + c]) * f32::cast_from(k[js + c]);
                if decay {
                    x *= (gc[jt + c] - gc[js + c]).exp();
                }
                p += x;
            }
        }
        scores[t * chunk + s] = p * scale;
        e += CUBE_DIM as usize;
    }
}

/// Tensor-core [`crate::kernels::forward_output`]: the scores of chunk `CUBE_POS_X`
/// ([`chunk_scores`]), then each output tile `scores · v + scale · q_in · S_in` by a plane.
/// `chunk` is a multiple of `tile`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn forward_output<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    gc: &Tensor<f32>,
    q_in: &Tensor<f32>,
    states: &Tensor<f32>,
    out: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    scale: f32,
    #[comptime] chunk: usize,
    #[comptime] decay: bool,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let start = n * chunk;
    let len = chunk_end(n, chunk, seq) - start;
    let (step_k, step_v) = (heads * dk, heads * dv);
    let mut scores = SharedMemory::<f32>::new_aligned(chunk * chunk, ALIGN);
    let mut staging = SharedMemory::<F>::new_aligned(planes * 2 * tile * tile, ALIGN);
    let mut tmp = SharedMemory::<f32>::new_aligned(planes * tile * tile, ALIGN);
    chunk_scores::<F>(q, k, gc, &mut scores, &mut staging, b, h, start, len, seq, heads, dk, scale, chunk, decay, planes, tile, sync);
    sync_cube();

    let plane = plane_index();
    let off = plane * 2 * tile * tile;
    let (a, bt) = input_tiles::<F>(tile);
    let acc = accumulator(tile);
    let state = (bh * n_chunks + n) * dk * dv;
    let row = b * (seq * heads * dv + heads * dk * dv);
    let cols = (dv + tile - 1) / tile;
    let mut i = plane;
    while i < chunk / tile * cols {
        let (t0, e0) = (i / cols * tile, i % cols * tile);
        if t0 < len {
            cmma::fill(&acc, 0.0);
            // Intra-chunk: scores (zero above the diagonal) times v, tile by tile up to t's.
            let mut s0 = 0;
            while s0 <= t0 {
                stage_shared::<F>(&mut staging, off, &scores, t0 * chunk + s0, chunk, 1, tile);
                let at_v = at(b, start + s0, h, e0, seq, heads, dv);
                stage::<F, F>(&mut staging, off + tile * tile, v, gc, at_v, step_v, 1, len - s0, dv - e0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                s0 += tile;
            }
            // The state entering the chunk, read by `scale · q_in`.
            let mut c0 = 0;
            while c0 < dk {
                let at_q = at(b, start + t0, h, c0, seq, heads, dk);
                stage::<f32, F>(&mut staging, off, q_in, gc, at_q, step_k, 1, len - t0, dk - c0, scale, 0, 0, 0, 0.0, false, tile);
                stage::<f32, F>(&mut staging, off + tile * tile, states, gc, state + c0 * dv + e0, dv, 1, dk - c0, dv - e0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                c0 += tile;
            }
            let at_out = row + ((start + t0) * heads + h) * dv + e0;
            store_tile(&acc, &mut tmp, plane * tile * tile, out, at_out, step_v, len - t0, dv - e0, tile, sync);
        }
        i += planes;
    }
}

/// Tensor-core [`crate::kernels::backward_inputs`]: `dq, dk, dv` of chunk `CUBE_POS_X` (f32,
/// `[B, T, H, *]`). Shared memory holds first `dP = scale · do vᵀ`, then the forward scores.
/// Below the diagonal tiles the decays factor as in [`chunk_scores`], around the first row of
/// `t`'s tile (`dq`) or the last row of `s`'s tile (`dk`); the diagonal tiles take one exp per
/// product, unit by unit, in each output element's epilogue.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn backward_inputs<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    gc: &Tensor<f32>,
    k_out: &Tensor<f32>,
    states: &Tensor<f32>,
    d_states: &Tensor<f32>,
    d_out: &Tensor<f32>,
    dq: &mut Tensor<f32>,
    dkey: &mut Tensor<f32>,
    dval: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    scale: f32,
    #[comptime] chunk: usize,
    #[comptime] decay: bool,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] sync: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let start = n * chunk;
    let len = chunk_end(n, chunk, seq) - start;
    let state = (bh * n_chunks + n) * dk * dv;
    let row = b * (seq * heads * dv + heads * dk * dv);
    let (step_k, step_v) = (heads * dk, heads * dv);
    // Indices of the chunk's first token (channel or value 0) in `[B, T, H, *]` and in `do`.
    let at_k = (b * seq + start) * step_k + h * dk;
    let at_v = (b * seq + start) * step_v + h * dv;
    let at_do = row + start * step_v + h * dv;
    let mut shared = SharedMemory::<f32>::new_aligned(chunk * chunk, ALIGN);
    let mut staging = SharedMemory::<F>::new_aligned(planes * 2 * tile * tile, ALIGN);
    // Per plane: the off-diagonal sum, then the term of the chunk's state.
    let mut tmp = SharedMemory::<f32>::new_aligned(planes * 2 * tile * tile, ALIGN);
    let plane = plane_index();
    let off = plane * 2 * tile * tile;
    let (t_off, t_inter) = (plane * 2 * tile * tile, plane * 2 * tile * tile + tile * tile);
    let (a, bt) = input_tiles::<F>(tile);
    let acc = accumulator(tile);
    let inter = accumulator(tile);
    let tiles = chunk / tile;

    // dP = scale · do vᵀ on and below the diagonal tiles (nothing reads above the diagonal).
    let mut i = plane;
    while i < tiles * tiles {
        let (t0, s0) = (i / tiles * tile, i % tiles * tile);
        if s0 <= t0 && t0 < len {
            cmma::fill(&acc, 0.0);
            let mut e0 = 0;
            while e0 < dv {
                // A = scale · do (tokens t × values), B = vᵀ (values × tokens s).
                stage::<f32, F>(&mut staging, off, d_out, gc, at_do + t0 * step_v + e0, step_v, 1, len - t0, dv - e0, scale, 0, 0, 0, 0.0, false, tile);
                stage::<F, F>(&mut staging, off + tile * tile, v, gc, at_v + s0 * step_v + e0, 1, step_v, dv - e0, len - s0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                e0 += tile;
            }
            cmma::store(&mut shared.slice_mut(t0 * chunk + s0, chunk * chunk), &acc, chunk as u32, cmma::MatrixLayout::RowMajor);
        }
        i += planes;
    }
    sync_cube();

    // dq_t = Σ_{s≤t} dP_ts k_s ⊙ exp(G_t − G_s) + exp(G_t) ⊙ (scale · do_t S_inᵀ).
    let cols = (dk + tile - 1) / tile;
    i = plane;
    while i < tiles * cols {
        let (t0, c0) = (i / cols * tile, i % cols * tile);
        if t0 < len {
            cmma::fill(&acc, 0.0);
            cmma::fill(&inter, 0.0);
            let first = at_k + t0 * step_k + c0;
            let mut s0 = 0;
            while s0 < t0 {
                // A = dP (t × s), B = k ⊙ exp(G_first − G_s) (s × channels).
                stage_shared::<F>(&mut staging, off, &shared, t0 * chunk + s0, chunk, 1, tile);
                stage::<F, F>(&mut staging, off + tile * tile, k, gc, at_k + s0 * step_k + c0, step_k, 1, tile, dk - c0, 1.0, first, 0, 1, -1.0, decay, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                s0 += tile;
            }
            let mut e0 = 0;
            while e0 < dv {
                // A = scale · do (t × values), B = S_inᵀ (values × channels).
                stage::<f32, F>(&mut staging, off, d_out, gc, at_do + t0 * step_v + e0, step_v, 1, len - t0, dv - e0, scale, 0, 0, 0, 0.0, false, tile);
                stage::<f32, F>(&mut staging, off + tile * tile, states, gc, state + c0 * dv + e0, 1, dv, dv - e0, dk - c0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &inter, tile, sync);
                e0 += tile;
            }
            cmma::store(&mut tmp.slice_mut(t_off, t_off + tile * tile), &acc, tile as u32, cmma::MatrixLayout::RowMajor);
            cmma::store(&mut tmp.slice_mut(t_inter, t_inter + tile * tile), &inter, tile as u32, cmma::MatrixLayout::RowMajor);
            plane_barrier(sync);
            let mut x = UNIT_POS_PLANE as usize;
            while x < tile * tile {
                let (r, c) = (x / tile, x % tile);
                if t0 + r < len && c0 + c < dk {
                    let t = t0 + r;
                    let jt = at_k + t * step_k + c0 + c;
                    let mut g_t = 0.0f32;
                    if decay {
                        g_t = gc[jt];
                    }
                    // The diagonal tile, one exp per product.
                    let mut diag = 0.0f32;
                    for y in 0..r + 1 {
                        let js = at_k + (t0 + y) * step_k + c0 + c;
                        let mut w = shared[t * chunk + t0 + y] * f32::cast_from(k[js]);
                        if decay {
                            w *= (g_t - gc[js]).exp();
                        }
                        diag += w;
                    }
                    let mut from_first = 1.0f32;
                    let mut read = 1.0f32;
                    if decay {
                        from_first = (g_t - gc[first + c]).exp();
                        read = g_t.exp();
                    }
                    dq[jt] = tmp[t_off + x] * from_first + diag + read * tmp[t_inter + x];
                }
                x += PLANE_DIM as usize;
            }
            plane_barrier(sync);
        }
        i += planes;
    }

    // dk_s = Σ_{t≥s} dP_ts q_t ⊙ exp(G_t − G_s) + exp(G_end − G_s) ⊙ (v_s dS_outᵀ).
    i = plane;
    while i < tiles * cols {
        let (s0, c0) = (i / cols * tile, i % cols * tile);
        if s0 < len {
            cmma::fill(&acc, 0.0);
            cmma::fill(&inter, 0.0);
            // Off-diagonal terms exist only for whole tiles of s, whose last row is `s0 + tile − 1`.
            let mut last_row = s0 + tile - 1;
            if last_row >= len {
                last_row = len - 1;
            }
            let last = at_k + last_row * step_k + c0;
            let mut t0 = s0 + tile;
            while t0 < len {
                // A = dPᵀ (s × t), B = q ⊙ exp(G_t − G_last) (t × channels).
                stage_shared::<F>(&mut staging, off, &shared, t0 * chunk + s0, 1, chunk, tile);
                stage::<F, F>(&mut staging, off + tile * tile, q, gc, at_k + t0 * step_k + c0, step_k, 1, len - t0, dk - c0, 1.0, last, 0, 1, 1.0, decay, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                t0 += tile;
            }
            let mut e0 = 0;
            while e0 < dv {
                // A = v (s × values), B = dS_outᵀ (values × channels).
                stage::<F, F>(&mut staging, off, v, gc, at_v + s0 * step_v + e0, step_v, 1, len - s0, dv - e0, 1.0, 0, 0, 0, 0.0, false, tile);
                stage::<f32, F>(&mut staging, off + tile * tile, d_states, gc, state + c0 * dv + e0, 1, dv, dv - e0, dk - c0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &inter, tile, sync);
                e0 += tile;
            }
            cmma::store(&mut tmp.slice_mut(t_off, t_off + tile * tile), &acc, tile as u32, cmma::MatrixLayout::RowMajor);
            cmma::store(&mut tmp.slice_mut(t_inter, t_inter + tile * tile), &inter, tile as u32, cmma::MatrixLayout::RowMajor);
            plane_barrier(sync);
            let mut x = UNIT_POS_PLANE as usize;
            while x < tile * tile {
                let (r, c) = (x / tile, x % tile);
                if s0 + r < len && c0 + c < dk {
                    let s = s0 + r;
                    let js = at_k + s * step_k + c0 + c;
                    let mut g_s = 0.0f32;
                    if decay {
                        g_s = gc[js];
                    }
                    let mut diag = 0.0f32;
                    for y in r..tile {
                        if s0 + y < len {
                            let jt = at_k + (s0 + y) * step_k + c0 + c;
                            let mut w = shared[(s0 + y) * chunk + s] * f32::cast_from(q[jt]);
                            if decay {
                                w *= (gc[jt] - g_s).exp();
                            }
                            diag += w;
                        }
                    }
                    let mut to_last = 1.0f32;
                    let mut leave = 1.0f32;
                    if decay {
                        to_last = (gc[last + c] - g_s).exp();
                        leave = (gc[at_k + (len - 1) * step_k + c0 + c] - g_s).exp();
                    }
                    dkey[js] = tmp[t_off + x] * to_last + diag + leave * tmp[t_inter + x];
                }
                x += PLANE_DIM as usize;
            }
            plane_barrier(sync);
        }
        i += planes;
    }
    sync_cube();

    chunk_scores::<F>(q, k, gc, &mut shared, &mut staging, b, h, start, len, seq, heads, dk, scale, chunk, decay, planes, tile, sync);
    sync_cube();

    // dv_s = Σ_{t≥s} A_ts do_t + k_out_s dS_out.
    let cols = (dv + tile - 1) / tile;
    i = plane;
    while i < tiles * cols {
        let (s0, e0) = (i / cols * tile, i % cols * tile);
        if s0 < len {
            cmma::fill(&acc, 0.0);
            let mut t0 = s0;
            while t0 < len {
                // A = scoresᵀ (s × t), B = do (t × values).
                stage_shared::<F>(&mut staging, off, &shared, t0 * chunk + s0, 1, chunk, tile);
                stage::<f32, F>(&mut staging, off + tile * tile, d_out, gc, at_do + t0 * step_v + e0, step_v, 1, len - t0, dv - e0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                t0 += tile;
            }
            let mut c0 = 0;
            while c0 < dk {
                // A = k_out (s × channels), B = dS_out (channels × values).
                stage::<f32, F>(&mut staging, off, k_out, gc, at_k + s0 * step_k + c0, step_k, 1, len - s0, dk - c0, 1.0, 0, 0, 0, 0.0, false, tile);
                stage::<f32, F>(&mut staging, off + tile * tile, d_states, gc, state + c0 * dv + e0, dv, 1, dk - c0, dv - e0, 1.0, 0, 0, 0, 0.0, false, tile);
                multiply_staged::<F>(&staging, off, &a, &bt, &acc, tile, sync);
                c0 += tile;
            }
            store_tile(&acc, &mut tmp, t_off, dval, at_v + s0 * step_v + e0, step_v, len - s0, dv - e0, tile, sync);
        }
        i += planes;
    }
}
