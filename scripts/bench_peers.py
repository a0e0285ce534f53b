#!/usr/bin/env python3
"""Times the peers of `ember bench ops --level op` on the same grid, for same-run comparisons.

Peers (whichever import on this machine):
  sdpa             torch.nn.functional.scaled_dot_product_attention, causal (flash on a GPU)
  torch_chunked    causal linear attention, chunked (C=64), written in plain PyTorch ops:
                   what ember's composed form computes, as a PyTorch user would write it
  fla_simple_gla   fla.ops.simple_gla.chunk_simple_gla (per-head scalar decay, Lightning-style)
  fla_gla          fla.ops.gla.chunk_gla (per-channel data-dependent decay)
  fla_based        fla.ops.based.parallel_based (BASED's Taylor attention, feature dim 16)
  fla_linear       fla.ops.linear_attn.chunk_linear_attn (no decay)

fla's layout is [B, T, H, D] (head_first=False) in its recent releases; the call signatures
follow fla's current sources and have not been run yet (no GPU was lent when this was written).

Each point: `--warmup` untimed calls, then the median of `--reps` timed calls of the forward
alone and of forward + backward (loss = sum of the output), synchronised on CUDA. Output: a
table on stdout and, with --json, JSON lines with the fields ember's bench writes.

  python3 scripts/bench_peers.py --grid cpu --device cpu
  python3 scripts/bench_peers.py --grid fla --device cuda --dtype bf16 --json peers.jsonl
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

GRIDS = {
    # fla's benchmark shapes: 65,536 tokens per call, H=16, D=64.
    "fla": [(65536 // t, t, 16, 64) for t in (1024, 2048, 4096, 8192, 16384, 32768)],
    # Small shapes that finish in minutes on 2 CPU cores (ember's `--grid cpu`).
    "cpu": [(2, t, 4, 64) for t in (256, 512, 1024)],
}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sdpa(q, k, v):
    # [B, T, H, D] -> [B, H, T, D] for torch, and back.
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)


def torch_chunked(q, k, v, chunk=64):
    """Causal linear attention o_t = scale * q_t sum_{s<=t} k_s^T v_s, chunked, state in f32."""
    b, t, h, d = q.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    dtype = v.dtype
    q, k, v = (x.float().transpose(1, 2).reshape(b, h, n, chunk, -1) for x in (q, k, v))
    q = q * d**-0.5
    mask = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    intra = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0) @ v
    kv = k.transpose(-1, -2) @ v  # [B, H, N, D, D]
    before = torch.cumsum(kv, dim=2) - kv  # exclusive prefix sum over chunks
    o = intra + q @ before
    return o.reshape(b, h, n * chunk, -1).transpose(1, 2)[:, :t].to(dtype)


def fla_impls():
    impls = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        def simple_gla(q, k, v):
            # Lightning-style: a constant log decay per head (`g_gamma`, recent fla); older fla
            # only takes a per-token `g` [B, T, H].
            h = q.shape[2]
            gamma = -torch.exp2(-5.0 - torch.arange(h, device=q.device, dtype=torch.float32))
            try:
                return chunk_simple_gla(q, k, v, g_gamma=gamma)[0]
            except TypeError:
                return chunk_simple_gla(q, k, v, g=gamma.expand(q.shape[:3]).contiguous())[0]

        impls["fla_simple_gla"] = simple_gla
    except Exception as e:  # noqa: BLE001 - report and go on with what imports
        print(f"# fla_simple_gla unavailable: {e}", file=sys.stderr)
    try:
        from fla.ops.gla import chunk_gla

        def gla(q, k, v):
            g = F.logsigmoid(torch.randn(q.shape, device=q.device, dtype=torch.float32)) / 16
            return chunk_gla(q, k, v, g=g)[0]

        impls["fla_gla"] = gla
    except Exception as e:  # noqa: BLE001
        print(f"# fla_gla unavailable: {e}", file=sys.stderr)
    try:
        from fla.ops.based import parallel_based

        def based(q, k, v):
            # BASED projects q, k to feature dim 16.
            return parallel_based(q[..., :16].contiguous(), k[..., :16].contiguous(), v)

        impls["fla_based"] = based
    except Exception as e:  # noqa: BLE001
        print(f"# fla_based unavailable: {e}", file=sys.stderr)
    try:
        from fla.ops.linear_attn import chunk_linear_attn

        impls["fla_linear"] = lambda q, k, v: chunk_linear_attn(q, k, v, normalize=False)[0]
    except Exception as e:  # noqa: BLE001
        print(f"# fla_linear unavailable: {e}", file=sys.stderr)
    return impls


def time_call(fn, device, warmup, reps):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="cpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--impls", default="", help="comma-separated subset (default: all that import)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-mem-gb", type=float, default=16.0, help="skip points whose T x T scores would exceed this")
    ap.add_argument("--json", help="append JSON lines here")
    args = ap.parse_args()

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    impls = {"sdpa": sdpa, "torch_chunked": torch_chunked}
    if args.device.startswith("cuda"):
        impls.update(fla_impls())
    if args.impls:
        wanted = args.impls.split(",")
        impls = {k: v for k, v in impls.items() if k in wanted}
    torch.manual_seed(0)
    rows = []
    print(f"# torch {torch.__version__} on {args.device}, {args.dtype}, threads {torch.get_num_threads()}")
    print(f"{'impl':<16} {'B':>4} {'T':>6} {'H':>3} {'D':>3} {'fwd ms':>10} {'fwd+bwd ms':>11} {'tokens/s':>12}")
    for b, t, h, d in GRIDS[args.grid]:
        for name, fn in impls.items():
            # Materialised T x T scores (sdpa's math path on CPU) in f32.
            scores_gb = b * h * t * t * 4 / 2**30 if (name == "sdpa" and not args.device.startswith("cuda")) else 0
            if scores_gb > args.max_mem_gb:
                print(f"{name:<16} {b:>4} {t:>6} {h:>3} {d:>3}  skipped: needs ~{scores_gb:.0f} GiB")
                continue
            q, k, v = (torch.randn(b, t, h, d, device=args.device, dtype=dtype) * 0.5 for _ in range(3))
            try:
                with torch.no_grad():
                    fwd = time_call(lambda: fn(q, k, v), args.device, args.warmup, args.reps)
                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

                def step():
                    fn(qg, kg, vg).float().sum().backward()

                both = time_call(step, args.device, args.warmup, args.reps)
            except Exception as e:  # noqa: BLE001 - a peer failing on one shape is a result too
                print(f"{name:<16} {b:>4} {t:>6} {h:>3} {d:>3}  failed: {e}")
                continue
            tok_s = b * t / (both / 1e3)
            print(f"{name:<16} {b:>4} {t:>6} {h:>3} {d:>3} {fwd:>10.2f} {both:>11.2f} {tok_s:>12.0f}")
            rows.append(dict(impl=name, batch=b, seq_len=t, heads=h, head_dim=d, dtype=args.dtype,
                             device=args.device, fwd_ms=fwd, fwd_bwd_ms=both, tokens_per_sec=tok_s))
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
