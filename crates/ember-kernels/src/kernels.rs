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
fn at(b: usize, t: usize, h: usize, d: usize, seq: usize, heads: usize, dim: usize) -> usize {
    ((b * seq + t) * heads + h) * dim + d
}

/// Last token (exclusive) of chunk `n`.
#[cube]
fn chunk_end(n: usize, chunk: usize, seq: usize) -> usize {
    let end = (n + 1) * chunk;
    if end < seq {
        end
    } else {
        seq
    }
}

/// Per (chunk, channel) of a head: the within-chunk cumulative log decay `gc`, and `q` and `k`
/// in f32 with their decays applied: `q_in = q ⊙ exp(G_t)` reads the state entering the chunk,
/// `k_out = k ⊙ exp(G_end − G_t)` writes into the state leaving it. One exp per element here
/// instead of one per product in the kernels that use them.
#[cube(launch)]
pub fn prepare<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    g: &Tensor<f32>,
    gc: &mut Tensor<f32>,
    q_in: &mut Tensor<f32>,
    k_out: &mut Tensor<f32>,
    seq: u32,
    heads: u32,
    dk: u32,
    chunk: u32,
    #[comptime] decay: bool,
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
                qj *= gc[j].exp();
                kj *= (acc - gc[j]).exp();
            }
            q_in[j] = qj;
            k_out[j] = kj;
        }
    }
}

/// Each chunk's own contribution to the state, `U_n = k_outᵀ v` over its tokens, into
/// `states: [B, H, N, K, V]`: one cube per (chunk, head), units over the `K×V` entries.
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
    let (seq, heads, dk, dv, chunk) = (
        seq as usize,
        heads as usize,
        dk as usize,
        dv as usize,
        chunk as usize,
    );
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let end = chunk_end(n, chunk, seq);
    let mut i = UNIT_POS_X as usize;
    while i < dk * dv {
        let (c, e) = (i / dv, i % dv);
        let mut acc = 0.0f32;
        for t in n * chunk..end {
            acc += k_out[at(b, t, h, c, seq, heads, dk)]
                * f32::cast_from(v[at(b, t, h, e, seq, heads, dv)]);
        }
        states[(bh * n_chunks + n) * dk * dv + i] = acc;
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
    let (seq, heads, dk, dv, chunk) = (
        seq as usize,
        heads as usize,
        dk as usize,
        dv as usize,
        chunk as usize,
    );
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let end = chunk_end(n, chunk, seq);
    let row = b * (seq * heads * dv + heads * dk * dv);
    let mut i = UNIT_POS_X as usize;
    while i < dk * dv {
        let (c, e) = (i / dv, i % dv);
        let mut acc = 0.0f32;
        for t in n * chunk..end {
            acc += q_in[at(b, t, h, c, seq, heads, dk)] * d_out[row + (t * heads + h) * dv + e];
        }
        d_states[(bh * n_chunks + n) * dk * dv + i] = acc * scale;
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

/// `scale · Σ_c q_tc k_sc exp(G_tc − G_sc)` for `s ≤ t` (0 above the diagonal) into `scores`
/// (`chunk × chunk`, shared): every unit of the cube takes a strided share.
#[cube]
fn chunk_scores<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    gc: &Tensor<f32>,
    scores: &mut SharedMemory<f32>,
    b: usize,
    h: usize,
    start: usize,
    seq: usize,
    heads: usize,
    dk: usize,
    scale: f32,
    #[comptime] chunk: usize,
    #[comptime] decay: bool,
) {
    let mut i = UNIT_POS_X as usize;
    while i < chunk * chunk {
        let (tl, sl) = (i / chunk, i % chunk);
        let (t, s) = (start + tl, start + sl);
        let mut acc = 0.0f32;
        if sl <= tl && t < seq {
            for c in 0..dk {
                let mut p = f32::cast_from(q[at(b, t, h, c, seq, heads, dk)])
                    * f32::cast_from(k[at(b, s, h, c, seq, heads, dk)]);
                if decay {
                    p *= (gc[at(b, t, h, c, seq, heads, dk)] - gc[at(b, s, h, c, seq, heads, dk)])
                        .exp();
                }
                acc += p;
            }
        }
        scores[i] = acc * scale;
        i += CUBE_DIM_X as usize;
    }
}

/// The output of chunk `CUBE_POS_X`: intra-chunk `(scores) V` plus the state entering the chunk
/// read by `q_in`. One cube per (chunk, head); the scores live in shared memory.
#[cube(launch)]
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
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let start = n * chunk;
    let mut scores = SharedMemory::<f32>::new(chunk * chunk);
    chunk_scores::<F>(
        q,
        k,
        gc,
        &mut scores,
        b,
        h,
        start,
        seq,
        heads,
        dk,
        scale,
        chunk,
        decay,
    );
    sync_cube();

    let state = (bh * n_chunks + n) * dk * dv;
    let row = seq * heads * dv + heads * dk * dv;
    let mut i = UNIT_POS_X as usize;
    while i < chunk * dv {
        let (tl, e) = (i / dv, i % dv);
        let t = start + tl;
        if t < seq {
            let mut acc = 0.0f32;
            for sl in 0..tl + 1 {
                acc += scores[tl * chunk + sl]
                    * f32::cast_from(v[at(b, start + sl, h, e, seq, heads, dv)]);
            }
            let mut inter = 0.0f32;
            for c in 0..dk {
                inter += q_in[at(b, t, h, c, seq, heads, dk)] * states[state + c * dv + e];
            }
            out[b * row + (t * heads + h) * dv + e] = acc + inter * scale;
        }
        i += CUBE_DIM_X as usize;
    }
}

/// `dq, dk, dv` of chunk `CUBE_POS_X` (f32, `[B, T, H, *]`), from the output gradient, the state
/// entering the chunk (`states`) and the gradient of the state leaving it (`d_states`). Shared memory holds first
/// `scale · do_t · v_s`, then the forward scores.
#[cube(launch)]
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
    #[define(F)] _dtype: StorageType,
) {
    let (seq, heads, dk, dv) = (seq as usize, heads as usize, dk as usize, dv as usize);
    let bh = CUBE_POS_Y as usize;
    let (b, h) = (bh / heads, bh % heads);
    let n = CUBE_POS_X as usize;
    let n_chunks = (seq + chunk - 1) / chunk;
    let start = n * chunk;
    let end = chunk_end(n, chunk, seq);
    let len = end - start;
    let state = (bh * n_chunks + n) * dk * dv;
    let row = b * (seq * heads * dv + heads * dk * dv);
    let mut shared = SharedMemory::<f32>::new(chunk * chunk);

    // dP_ts = scale · do_t · v_s (s ≤ t): the gradient of the scores before their decay.
    let mut i = UNIT_POS_X as usize;
    while i < chunk * chunk {
        let (tl, sl) = (i / chunk, i % chunk);
        let mut acc = 0.0f32;
        if sl <= tl && tl < len {
            for e in 0..dv {
                acc += d_out[row + ((start + tl) * heads + h) * dv + e]
                    * f32::cast_from(v[at(b, start + sl, h, e, seq, heads, dv)]);
            }
        }
        shared[i] = acc * scale;
        i += CUBE_DIM_X as usize;
    }
    sync_cube();

    // dq_t = Σ_{s≤t} dP_ts k_s ⊙ exp(G_t − G_s) + scale · exp(G_t) ⊙ (S_in do_tᵀ).
    i = UNIT_POS_X as usize;
    while i < chunk * dk {
        let (tl, c) = (i / dk, i % dk);
        if tl < len {
            let t = start + tl;
            let mut g_t = 0.0f32;
            if decay {
                g_t = gc[at(b, t, h, c, seq, heads, dk)];
            }
            let mut acc = 0.0f32;
            for sl in 0..tl + 1 {
                let s = start + sl;
                let mut w =
                    shared[tl * chunk + sl] * f32::cast_from(k[at(b, s, h, c, seq, heads, dk)]);
                if decay {
                    w *= (g_t - gc[at(b, s, h, c, seq, heads, dk)]).exp();
                }
                acc += w;
            }
            let mut inter = 0.0f32;
            for e in 0..dv {
                inter += d_out[row + (t * heads + h) * dv + e] * states[state + c * dv + e];
            }
            let mut read = scale;
            if decay {
                read *= g_t.exp();
            }
            dq[at(b, t, h, c, seq, heads, dk)] = acc + read * inter;
        }
        i += CUBE_DIM_X as usize;
    }

    // dk_s = Σ_{t≥s} dP_ts q_t ⊙ exp(G_t − G_s) + exp(G_end − G_s) ⊙ (dS_out v_sᵀ).
    i = UNIT_POS_X as usize;
    while i < chunk * dk {
        let (sl, c) = (i / dk, i % dk);
        if sl < len {
            let s = start + sl;
            let mut g_s = 0.0f32;
            if decay {
                g_s = gc[at(b, s, h, c, seq, heads, dk)];
            }
            let mut acc = 0.0f32;
            for tl in sl..len {
                let t = start + tl;
                let mut w =
                    shared[tl * chunk + sl] * f32::cast_from(q[at(b, t, h, c, seq, heads, dk)]);
                if decay {
                    w *= (gc[at(b, t, h, c, seq, heads, dk)] - g_s).exp();
                }
                acc += w;
            }
            let mut inter = 0.0f32;
            for e in 0..dv {
                inter += f32::cast_from(v[at(b, s, h, e, seq, heads, dv)])
                    * d_states[state + c * dv + e];
            }
            if decay {
                inter *= (gc[at(b, end - 1, h, c, seq, heads, dk)] - g_s).exp();
            }
            dkey[at(b, s, h, c, seq, heads, dk)] = acc + inter;
        }
        i += CUBE_DIM_X as usize;
    }
    sync_cube();

    chunk_scores::<F>(
        q,
        k,
        gc,
        &mut shared,
        b,
        h,
        start,
        seq,
        heads,
        dk,
        scale,
        chunk,
        decay,
    );
    sync_cube();

    // dv_s = Σ_{t≥s} A_ts do_t + (k_s ⊙ exp(G_end − G_s)) dS_out.
    i = UNIT_POS_X as usize;
    while i < chunk * dv {
        let (sl, e) = (i / dv, i % dv);
        if sl < len {
            let s = start + sl;
            let mut acc = 0.0f32;
            for tl in sl..len {
                acc += shared[tl * chunk + sl] * d_out[row + ((start + tl) * heads + h) * dv + e];
            }
            for c in 0..dk {
                acc += k_out[at(b, s, h, c, seq, heads, dk)] * d_states[state + c * dv + e];
            }
            dval[at(b, s, h, e, seq, heads, dv)] = acc;
        }
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
