//! The CubeCL kernels of the chunked linear-attention core (one source, compiled by CubeCL for
//! CUDA through NVRTC and for wgpu through WGSL/SPIR-V).
//!
//! Recurrence: `S_t = diag(exp g_t) S_{t-1} + k_tᵀ v_t`, `o_t = scale · q_t S_t`, `S_0 = h0`.
//! Inputs are in the `[B, T, H, D]` layout, contiguous; `q, k, v` in their own float type `F`
//! (f32, bf16 or f16, chosen at run time), everything else in f32. Sums accumulate in f32.
//!
//! Grid: `CUBE_POS_Y` is `b·H + h`; `CUBE_POS_X` (with `UNIT_POS_X`) walks what one head needs.
//! `decay` (comptime) drops every read of the log decays when the op has none.
//!
//! Within a chunk `G_t` is the cumulative log decay from the chunk's start (`gc`), so every
//! factor is `exp(G_t − G_s)` with `s ≤ t`, at most 1: nothing overflows however long the decay.
//!
//! The packed output `out: [B, T·H·V + H·K·V]` holds `o` (`[T, H, V]` per batch row) followed
//! by the final state (`[H, K, V]`): Burn's autodiff registers one output per op.
// `(a + b - 1) / b` rather than `div_ceil`: cube functions are traced by CubeCL's frontend, which
// has the arithmetic operators but not every integer method.
#![allow(clippy::manual_div_ceil)]
use cubecl::prelude::*;

/// Index of `[b, t, h, d]` in a contiguous `[B, T, H, D]` tensor.
#[cube]
pub(crate) fn at(b: usize, t: usize, h: usize, d: usize, seq: usize, heads: usize, dim: usize) -> usize {
    ((b * seq + t) * heads + h) * dim + d
}

/// Last token (exclusive) of chunk `n`.
#[cube]
pub(crate) fn chunk_end(n: usize, chunk: usize, seq: usize) -> usize {
    let end = (n + 1) * chunk;
    if end < seq {
        end
    } else {
        seq
    }
}

/// Rows (or columns) of the register blocks: each unit computes `BLOCK × BLOCK` products from
/// `2·BLOCK` loads, a quarter of the memory reads of one product per unit.
const BLOCK: usize = 4;

/// A `BLOCK × BLOCK` block of zeros (in registers: every index is a constant once unrolled).
#[cube]
fn zeros() -> Array<f32> {
    let mut acc = Array::<f32>::new(BLOCK * BLOCK);
    #[unroll]
    for j in 0..BLOCK * BLOCK {
        acc[j] = 0.0;
    }
    acc
}

/// `BLOCK` values `x[base + j·stride]` in f32, zero from `j = valid` on.
#[cube]
fn load<E: Float>(x: &Tensor<E>, base: usize, stride: usize, valid: usize) -> Array<f32> {
    let mut row = Array::<f32>::new(BLOCK);
    #[unroll]
    for j in 0..BLOCK {
        row[j] = 0.0;
        if j < valid {
            row[j] = f32::cast_from(x[base + j * stride]);
        }
    }
    row
}

/// [`load`] from shared memory.
#[cube]
fn load_shared(x: &SharedMemory<f32>, base: usize, stride: usize, valid: usize) -> Array<f32> {
    let mut row = Array::<f32>::new(BLOCK);
    #[unroll]
    for j in 0..BLOCK {
        row[j] = 0.0;
        if j < valid {
            row[j] = x[base + j * stride];
        }
    }
    row
}

/// `acc += a ⊗ x` (the outer product of two `BLOCK` rows).
#[cube]
fn add_outer(acc: &mut Array<f32>, a: &Array<f32>, x: &Array<f32>) {
    #[unroll]
    for r in 0..BLOCK {
        #[unroll]
        for j in 0..BLOCK {
            acc[r * BLOCK + j] += a[r] * x[j];
        }
    }
}

/// `acc += part`, column `j` scaled by `exp(gc[first + j] − gc[last + j])` with decay: the
/// link between two blocks of rows (see [`chunk_scores`]); columns from `valid` on are unread.
#[cube]
fn add_linked(
    acc: &mut Array<f32>,
    part: &Array<f32>,
    gc: &Tensor<f32>,
    first: usize,
    last: usize,
    valid: usize,
    #[comptime] decay: bool,
) {
    #[unroll]
    for j in 0..BLOCK {
        let mut link = 1.0f32;
        if decay && j < valid {
            link = (gc[first + j] - gc[last + j]).exp();
        }
        #[unroll]
        for r in 0..BLOCK {
            acc[r * BLOCK + j] += part[r * BLOCK + j] * link;
        }
    }
}

/// Writes `factor · acc` at `base + r·stride + j` for the `rows × cols` valid corner.
#[cube]
fn store_block(out: &mut Tensor<f32>, acc: &Array<f32>, base: usize, stride: usize, rows: usize, cols: usize, factor: f32) {
    #[unroll]
    for r in 0..BLOCK {
        #[unroll]
        for j in 0..BLOCK {
            if r < rows && j < cols {
                out[base + r * stride + j] = acc[r * BLOCK + j] * factor;
            }
        }
    }
}

/// Per (chunk, channel) of a head: the within-chunk cumulative log decay `gc`, and `q` and `k`
/// in f32 with their decays applied: `q_in = q ⊙ exp(G_t)` reads the state entering the chunk,
/// `k_out = k ⊙ exp(G_end − G_t)` writes into the state leaving it. One exp per element here
/// instead of one per product in the kernels that use them.
///
/// With decay, also the same within each `BLOCK` of rows (see [`chunk_scores`]):
/// `q_blk = q ⊙ exp(G_t − G_first)` and `k_blk = k ⊙ exp(G_last − G_t)`, `first` and `last`
/// being the block's first and last rows (the chunk's end bounds a short last block); not with
/// `blocks` off (the tensor-core kernels factor their decays themselves).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn prepare<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    g: &Tensor<f32>,
    gc: &mut Tensor<f32>,
    q_in: &mut Tensor<f32>,
    k_out: &mut Tensor<f32>,
    q_blk: &mut Tensor<f32>,
    k_blk: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    chunk: u32,
    #[comptime] decay: bool,
    #[comptime] blocks: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, chunk) = (seq as usize, heads as usize, dk as usize, chunk as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let i = ABSOLUTE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    if i < n_chunks * dk {
        let (n, c) = (i / dk, i % dk);
        let end = chunk_end(n, chunk, seq);
        let mut acc = 0.0f32;
        if decay {
            for t in n * chunk..end {
                let j = at(b, t, h, c, seq, heads, dk);
                acc += g[j];
                gc[j] = acc;
            }
        }
        for t in n * chunk..end {
            let j = at(b, t, h, c, seq, heads, dk);
            let (mut qj, mut kj) = (f32::cast_from(q[j]), f32::cast_from(k[j]));
            if decay {
                let g_t = gc[j];
                if blocks {
                    let first = n * chunk + (t - n * chunk) / BLOCK * BLOCK;
                    let mut last = first + BLOCK - 1;
                    if last >= end {
                        last = end - 1;
                    }
                    q_blk[j] = qj * (g_t - gc[at(b, first, h, c, seq, heads, dk)]).exp();
                    k_blk[j] = kj * (gc[at(b, last, h, c, seq, heads, dk)] - g_t).exp();
                }
                qj *= g_t.exp();
                kj *= (acc - g_t).exp();
            }
            q_in[j] = qj;
            k_out[j] = kj;
        }
    }
}

/// Each chunk's own contribution to the state, `U_n = k_outᵀ v` over its tokens, into
/// `states: [B, H, N, K, V]`: one cube per (chunk, head), each unit a `BLOCK × BLOCK` block of
/// the `K×V` entries at a time.
#[cube(launch)]
pub fn chunk_keys_values<F: Float>(
    k_out: &Tensor<f32>,
    v: &Tensor<F>,
    states: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    chunk: u32,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv, chunk) = (seq as usize, heads as usize, dk as usize, dv as usize, chunk as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let end = chunk_end(n, chunk, seq);
    let (rows, cols) = ((dk + BLOCK - 1) / BLOCK, (dv + BLOCK - 1) / BLOCK);
    let mut i = UNIT_POS_X as usize;
    while i < rows * cols {
        let (c0, e0) = (i / cols * BLOCK, i % cols * BLOCK);
        let mut acc = zeros();
        for t in n * chunk..end {
            let a = load(k_out, at(b, t, h, c0, seq, heads, dk), 1, dk - c0);
            let x = load(v, at(b, t, h, e0, seq, heads, dv), 1, dv - e0);
            add_outer(&mut acc, &a, &x);
        }
        store_block(states, &acc, (bh * n_chunks + n) * dk * dv + c0 * dv + e0, dv, dk - c0, dv - e0, 1.0);
        i += CUBE_DIM_X as usize;
    }
}

/// Each chunk's read of the output gradient, `scale · q_inᵀ do` over its tokens, into
/// `d_states: [B, H, N, K, V]` (the backward twin of [`chunk_keys_values`]).
#[cube(launch)]
pub fn chunk_queries_grads(
    q_in: &Tensor<f32>,
    d_out: &Tensor<f32>,
    d_states: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    chunk: u32,
    scale: f32,
) {
    let (seq, heads, dk, dv, chunk) = (seq as usize, heads as usize, dk as usize, dv as usize, chunk as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let end = chunk_end(n, chunk, seq);
    let row = b * (seq * heads * dv + heads * dk * dv);
    let (rows, cols) = ((dk + BLOCK - 1) / BLOCK, (dv + BLOCK - 1) / BLOCK);
    let mut i = UNIT_POS_X as usize;
    while i < rows * cols {
        let (c0, e0) = (i / cols * BLOCK, i % cols * BLOCK);
        let mut acc = zeros();
        for t in n * chunk..end {
            let a = load(q_in, at(b, t, h, c0, seq, heads, dk), 1, dk - c0);
            let x = load(d_out, row + (t * heads + h) * dv + e0, 1, dv - e0);
            add_outer(&mut acc, &a, &x);
        }
        store_block(d_states, &acc, (bh * n_chunks + n) * dk * dv + c0 * dv + e0, dv, dk - c0, dv - e0, scale);
        i += CUBE_DIM_X as usize;
    }
}

/// The scan over chunks, in place: on entry `states[n]` holds chunk `n`'s own term `U_n`; on
/// exit the state before it (forward: `S_{n+1} = exp(G_end,n) ⊙ S_n + U_n` from `S_0 = init`),
/// or with `reverse` the gradient of the state after it (from the final state's gradient
/// `init`, carried back to chunk `n` as `exp(G_end,n) ⊙ d + U_n`). The value after the last
/// step goes to `last` (the final state, or the initial state's gradient). `init` and `last`
/// are read and written at `b·row + base + (h·K + k)·V + v`, which covers both plain
/// `[B, H, K, V]` tensors and the packed output. One unit per state entry of a head.
#[cube(launch)]
pub fn scan_chunks(
    states: &mut Tensor<f32>,
    gc: &Tensor<f32>,
    init: &Tensor<f32>,
    last: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    chunk: u32,
    init_row: u32,
    init_base: u32,
    last_row: u32,
    last_base: u32,
    #[comptime] decay: bool,
    #[comptime] reverse: bool,
) {
    let (seq, heads, dk, dv, chunk) = (
        seq as usize,
        heads as usize,
        dk as usize,
        dv as usize,
        chunk as usize,
    );
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let i = ABSOLUTE_POS_X as usize;
    if i < dk * dv {
        let c = i / dv;
        let n_chunks = (seq + chunk - 1) / chunk;
        let mut s = init[b * init_row as usize + init_base as usize + h * dk * dv + i];
        for r in 0..n_chunks {
            let mut n = r;
            if reverse {
                n = n_chunks - 1 - r;
            }
            let j = (bh * n_chunks + n) * dk * dv + i;
            let own = states[j];
            states[j] = s;
            if decay {
                s *= gc[at(b, chunk_end(n, chunk, seq) - 1, h, c, seq, heads, dk)].exp();
            }
            s += own;
        }
        last[b * last_row as usize + last_base as usize + h * dk * dv + i] = s;
    }
}

/// `scale · Σ_c q_tc k_sc exp(G_tc − G_sc)` for `s ≤ t` (0 above the diagonal, and on rows past
/// the chunk's `len`) into `scores` (`chunk × chunk`, shared), a `BLOCK × BLOCK` block per unit.
///
/// Below the diagonal blocks every pair has `s ≤ last < first ≤ t` (the two blocks' rows), so
/// `exp(G_t − G_s) = exp(G_t − G_first) · exp(G_first − G_last) · exp(G_last − G_s)`: the outer
/// factors are in `q_blk` and `k_blk` (see [`prepare`]) and the middle one is one exp per
/// channel for 16 products. Every factor is at most 1, so this is as safe as the direct form.
/// Diagonal blocks take one exp per product. Without decay `q_blk, k_blk` are `q, k` in f32.
#[cube]
fn chunk_scores<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    gc: &Tensor<f32>,
    q_blk: &Tensor<f32>,
    k_blk: &Tensor<f32>,
    scores: &mut SharedMemory<f32>,
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
) {
    let blocks = (chunk + BLOCK - 1) / BLOCK;
    let mut i = UNIT_POS_X as usize;
    while i < blocks * blocks {
        let (t0, s0) = (i / blocks * BLOCK, i % blocks * BLOCK);
        let mut acc = zeros();
        if s0 < t0 && t0 < len {
            for c in 0..dk {
                let mut link = 1.0f32;
                if decay {
                    link = (gc[at(b, start + t0, h, c, seq, heads, dk)]
                        - gc[at(b, start + s0 + BLOCK - 1, h, c, seq, heads, dk)])
                        .exp();
                }
                let a = load(q_blk, at(b, start + t0, h, c, seq, heads, dk), heads * dk, len - t0);
                let mut x = load(k_blk, at(b, start + s0, h, c, seq, heads, dk), heads * dk, BLOCK);
                #[unroll]
                for j in 0..BLOCK {
                    x[j] *= link;
                }
                add_outer(&mut acc, &a, &x);
            }
        } else if s0 == t0 && t0 < len {
            for c in 0..dk {
                #[unroll]
                for r in 0..BLOCK {
                    #[unroll]
                    for j in 0..BLOCK {
                        if j <= r && t0 + r < len {
                            let (t, s) = (start + t0 + r, start + t0 + j);
                            let mut p = f32::cast_from(q[at(b, t, h, c, seq, heads, dk)])
                                * f32::cast_from(k[at(b, s, h, c, seq, heads, dk)]);
                            if decay {
                                p *= (gc[at(b, t, h, c, seq, heads, dk)] - gc[at(b, s, h, c, seq, heads, dk)]).exp();
                            }
                            acc[r * BLOCK + j] += p;
                        }
                    }
                }
            }
        }
        #[unroll]
        for r in 0..BLOCK {
            #[unroll]
            for j in 0..BLOCK {
                if t0 + r < chunk && s0 + j < chunk {
                    scores[(t0 + r) * chunk + s0 + j] = acc[r * BLOCK + j] * scale;
                }
            }
        }
        i += CUBE_DIM_X as usize;
    }
}

/// The output of chunk `CUBE_POS_X`: intra-chunk `(scores) V` plus the state entering the chunk
/// read by `q_in`. One cube per (chunk, head); the scores live in shared memory, and each unit
/// computes `BLOCK × BLOCK` blocks of the output.
#[cube(launch)]
pub fn forward_output<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    gc: &Tensor<f32>,
    q_blk: &Tensor<f32>,
    k_blk: &Tensor<f32>,
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
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let start = n * chunk;
    let len = chunk_end(n, chunk, seq) - start;
    let mut scores = SharedMemory::<f32>::new(chunk * chunk);
    chunk_scores::<F>(q, k, gc, q_blk, k_blk, &mut scores, b, h, start, len, seq, heads, dk, scale, chunk, decay);
    sync_cube();

    let state = (bh * n_chunks + n) * dk * dv;
    let row = b * (seq * heads * dv + heads * dk * dv);
    let (rows, cols) = ((len + BLOCK - 1) / BLOCK, (dv + BLOCK - 1) / BLOCK);
    let mut i = UNIT_POS_X as usize;
    while i < rows * cols {
        let (t0, e0) = (i / cols * BLOCK, i % cols * BLOCK);
        let mut acc = zeros();
        // Scores are 0 above the diagonal, so the block's rows share one range of `s`.
        let mut s_end = t0 + BLOCK;
        if s_end > len {
            s_end = len;
        }
        for s in 0..s_end {
            let a = load_shared(&scores, t0 * chunk + s, chunk, len - t0);
            let x = load(v, at(b, start + s, h, e0, seq, heads, dv), 1, dv - e0);
            add_outer(&mut acc, &a, &x);
        }
        let mut inter = zeros();
        for c in 0..dk {
            let a = load(q_in, at(b, start + t0, h, c, seq, heads, dk), heads * dk, len - t0);
            let x = load(states, state + c * dv + e0, 1, dv - e0);
            add_outer(&mut inter, &a, &x);
        }
        #[unroll]
        for r in 0..BLOCK {
            #[unroll]
            for j in 0..BLOCK {
                if t0 + r < len && e0 + j < dv {
                    let o = acc[r * BLOCK + j] + inter[r * BLOCK + j] * scale;
                    out[row + ((start + t0 + r) * heads + h) * dv + e0 + j] = o;
                }
            }
        }
        i += CUBE_DIM_X as usize;
    }
}

/// `dq, dk, dv` of chunk `CUBE_POS_X` (f32, `[B, T, H, *]`), from the output gradient, the state
/// entering the chunk (`states`) and the gradient of the state leaving it (`d_states`). Shared
/// memory holds first `scale · do_t · v_s`, then the forward scores. Each unit computes
/// `BLOCK × BLOCK` blocks; the decays below the diagonal blocks factor as in [`chunk_scores`].
#[cube(launch)]
pub fn backward_inputs<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    gc: &Tensor<f32>,
    q_blk: &Tensor<f32>,
    k_blk: &Tensor<f32>,
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
    let at_k = (b * seq + start) * step_k + h * dk;
    let at_v = (b * seq + start) * step_v + h * dv;
    let at_do = row + start * step_v + h * dv;
    let mut shared = SharedMemory::<f32>::new(chunk * chunk);
    let blocks = (chunk + BLOCK - 1) / BLOCK;

    // dP_ts = scale · do_t · v_s (s ≤ t): the gradient of the scores before their decay.
    let mut i = UNIT_POS_X as usize;
    while i < blocks * blocks {
        let (t0, s0) = (i / blocks * BLOCK, i % blocks * BLOCK);
        let mut acc = zeros();
        if s0 <= t0 && t0 < len {
            for e in 0..dv {
                let a = load(d_out, at_do + t0 * step_v + e, step_v, len - t0);
                let x = load(v, at_v + s0 * step_v + e, step_v, len - s0);
                add_outer(&mut acc, &a, &x);
            }
        }
        #[unroll]
        for r in 0..BLOCK {
            #[unroll]
            for j in 0..BLOCK {
                if t0 + r < chunk && s0 + j < chunk {
                    let mut p = 0.0f32;
                    if s0 + j <= t0 + r {
                        p = acc[r * BLOCK + j] * scale;
                    }
                    shared[(t0 + r) * chunk + s0 + j] = p;
                }
            }
        }
        i += CUBE_DIM_X as usize;
    }
    sync_cube();

    let (rows, cols) = ((len + BLOCK - 1) / BLOCK, (dk + BLOCK - 1) / BLOCK);
    // dq_t = Σ_{s≤t} dP_ts k_s ⊙ exp(G_t − G_s) + scale · exp(G_t) ⊙ (S_in do_tᵀ).
    i = UNIT_POS_X as usize;
    while i < rows * cols {
        let (t0, c0) = (i / cols * BLOCK, i % cols * BLOCK);
        // Earlier blocks of s: `exp(G_t − G_first) · Σ exp(G_first − G_last) · dP k_blk`.
        let mut off = zeros();
        let mut s0 = 0;
        while s0 < t0 {
            let mut part = zeros();
            for s in s0..s0 + BLOCK {
                let a = load_shared(&shared, t0 * chunk + s, chunk, len - t0);
                let x = load(k_blk, at_k + s * step_k + c0, 1, dk - c0);
                add_outer(&mut part, &a, &x);
            }
            add_linked(&mut off, &part, gc, at_k + t0 * step_k + c0, at_k + (s0 + BLOCK - 1) * step_k + c0, dk - c0, decay);
            s0 += BLOCK;
        }
        let mut inter = zeros();
        for e in 0..dv {
            let a = load(d_out, at_do + t0 * step_v + e, step_v, len - t0);
            let x = load(states, state + c0 * dv + e, dv, dk - c0);
            add_outer(&mut inter, &a, &x);
        }
        #[unroll]
        for r in 0..BLOCK {
            #[unroll]
            for j in 0..BLOCK {
                if t0 + r < len && c0 + j < dk {
                    let t = t0 + r;
                    let jt = at_k + t * step_k + c0 + j;
                    let mut g_t = 0.0f32;
                    if decay {
                        g_t = gc[jt];
                    }
                    // The diagonal block, one exp per product.
                    let mut diag = 0.0f32;
                    #[unroll]
                    for x in 0..BLOCK {
                        if x <= r {
                            let js = at_k + (t0 + x) * step_k + c0 + j;
                            let mut w = shared[t * chunk + t0 + x] * f32::cast_from(k[js]);
                            if decay {
                                w *= (g_t - gc[js]).exp();
                            }
                            diag += w;
                        }
                    }
                    let mut read = scale;
                    let mut first = 1.0f32;
                    if decay {
                        read *= g_t.exp();
                        first = (g_t - gc[at_k + t0 * step_k + c0 + j]).exp();
                    }
                    dq[jt] = off[r * BLOCK + j] * first + diag + read * inter[r * BLOCK + j];
                }
            }
        }
        i += CUBE_DIM_X as usize;
    }

    // dk_s = Σ_{t≥s} dP_ts q_t ⊙ exp(G_t − G_s) + exp(G_end − G_s) ⊙ (dS_out v_sᵀ).
    i = UNIT_POS_X as usize;
    while i < rows * cols {
        let (s0, c0) = (i / cols * BLOCK, i % cols * BLOCK);
        // Later blocks of t: `exp(G_last − G_s) · Σ exp(G_first − G_last) · dP q_blk`.
        let mut off = zeros();
        let mut t0 = s0 + BLOCK;
        while t0 < len {
            let mut part = zeros();
            let mut t_end = t0 + BLOCK;
            if t_end > len {
                t_end = len;
            }
            for t in t0..t_end {
                let a = load_shared(&shared, t * chunk + s0, 1, len - s0);
                let x = load(q_blk, at_k + t * step_k + c0, 1, dk - c0);
                add_outer(&mut part, &a, &x);
            }
            add_linked(&mut off, &part, gc, at_k + t0 * step_k + c0, at_k + (s0 + BLOCK - 1) * step_k + c0, dk - c0, decay);
            t0 += BLOCK;
        }
        let mut inter = zeros();
        for e in 0..dv {
            let a = load(v, at_v + s0 * step_v + e, step_v, len - s0);
            let x = load(d_states, state + c0 * dv + e, dv, dk - c0);
            add_outer(&mut inter, &a, &x);
        }
        #[unroll]
        for r in 0..BLOCK {
            #[unroll]
            for j in 0..BLOCK {
                if s0 + r < len && c0 + j < dk {
                    let s = s0 + r;
                    let js = at_k + s * step_k + c0 + j;
                    let mut g_s = 0.0f32;
                    if decay {
                        g_s = gc[js];
                    }
                    let mut diag = 0.0f32;
                    #[unroll]
                    for x in 0..BLOCK {
                        if x >= r && s0 + x < len {
                            let jt = at_k + (s0 + x) * step_k + c0 + j;
                            let mut w = shared[(s0 + x) * chunk + s] * f32::cast_from(q[jt]);
                            if decay {
                                w *= (gc[jt] - g_s).exp();
                            }
                            diag += w;
                        }
                    }
                    let mut last = 1.0f32;
                    let mut leave = 1.0f32;
                    if decay {
                        // Off-diagonal terms exist only for whole blocks, whose last row is `s0 + BLOCK − 1`.
                        let mut last_row = s0 + BLOCK - 1;
                        if last_row >= len {
                            last_row = len - 1;
                        }
                        last = (gc[at_k + last_row * step_k + c0 + j] - g_s).exp();
                        leave = (gc[at_k + (len - 1) * step_k + c0 + j] - g_s).exp();
                    }
                    dkey[js] = off[r * BLOCK + j] * last + diag + leave * inter[r * BLOCK + j];
                }
            }
        }
        i += CUBE_DIM_X as usize;
    }
    sync_cube();

    chunk_scores::<F>(q, k, gc, q_blk, k_blk, &mut shared, b, h, start, len, seq, heads, dk, scale, chunk, decay);
    sync_cube();

    // dv_s = Σ_{t≥s} A_ts do_t + (k_s ⊙ exp(G_end − G_s)) dS_out.
    let cols = (dv + BLOCK - 1) / BLOCK;
    i = UNIT_POS_X as usize;
    while i < rows * cols {
        let (s0, e0) = (i / cols * BLOCK, i % cols * BLOCK);
        let mut acc = zeros();
        for t in s0..len {
            let a = load_shared(&shared, t * chunk + s0, 1, len - s0);
            let x = load(d_out, at_do + t * step_v + e0, 1, dv - e0);
            add_outer(&mut acc, &a, &x);
        }
        for c in 0..dk {
            let a = load(k_out, at_k + s0 * step_k + c, step_k, len - s0);
            let x = load(d_states, state + c * dv + e0, 1, dv - e0);
            add_outer(&mut acc, &a, &x);
        }
        store_block(dval, &acc, at_v + s0 * step_v + e0, step_v, len - s0, dv - e0, 1.0);
        i += CUBE_DIM_X as usize;
    }
}

/// Gradient of the log decays: `dg_s = Σ_{t≥s} (q_t ⊙ dq_t − k_t ⊙ dk_t) + Σ_v dS_T ⊙ S_T`.
/// Every term of the op carries `exp(+G_t)` beside `q_t` and `exp(−G_s)` beside `k_s`, with `G`
/// the cumulative log decay, and the final state `exp(+G_T)`; `g_s` enters every `G_t`, `t ≥ s`.
/// One unit per channel of a head, scanning time backwards.
#[cube(launch)]
pub fn backward_decay<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    dq: &Tensor<f32>,
    dkey: &Tensor<f32>,
    out: &Tensor<f32>,
    d_out: &Tensor<f32>,
    dg: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    dv: u32,
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let c = ABSOLUTE_POS_X as usize;
    if c < dk {
        let last = b * (seq * heads * dv + heads * dk * dv) + seq * heads * dv + (h * dk + c) * dv;
        let mut acc = 0.0f32;
        for e in 0..dv {
            acc += d_out[last + e] * out[last + e];
        }
        for r in 0..seq {
            let j = at(b, seq - 1 - r, h, c, seq, heads, dk);
            acc += f32::cast_from(q[j]) * dq[j] - f32::cast_from(k[j]) * dkey[j];
            dg[j] = acc;
        }
    }
}
