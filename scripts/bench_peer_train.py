#!/usr/bin/env python3
"""PyTorch eager twin of `ember bench train --recipe attn-tiny` (the CPU-speed issue's peer).

The same model as recipes/attn-tiny.toml: vocabulary 8192, d_model 128, 4 pre-norm blocks of
RMSNorm -> causal softmax attention (4 heads of 32, RoPE base 10k, no biases) -> residual and
RMSNorm -> SwiGLU (hidden 256, no biases) -> residual, a final RMSNorm and an output head tied to
the embedding: 1,705,088 parameters, as ember counts them. One training step is what ember's is:
forward, mean next-token cross-entropy over every position, backward, global-norm clip at 1.0,
AdamW (betas 0.9, 0.95, weight decay 0.1 on the layers' matrices; none on norms and the embedding,
as ember's default `optim.no_decay`). Inputs are random token ids (the speed
does not depend on them).

  python3 scripts/bench_peer_train.py --threads 2 --steps 6 --warmup 2
  python3 scripts/bench_peer_train.py --json peer.jsonl   # one JSON line per run, appended

Prints tokens/s and step time (mean and median of the timed steps), like ember's bench.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(t, d, base=10_000.0):
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    return angles.cos(), angles.sin()


def rope(x, cos, sin):
    # x: [B, H, T, D], rotating pairs (first half, second half) as Llama does.
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(o.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate, self.value = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.out = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.out(F.silu(self.gate(x)) * self.value(x))


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.norm1, self.attn = RMSNorm(d), Attention(d, heads)
        self.norm2, self.mlp = RMSNorm(d), SwiGLU(d, hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class TinyLm(nn.Module):
    def __init__(self, vocab=8192, d=128, layers=4, heads=4, hidden=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.heads = heads

    def forward(self, ids):
        t = ids.shape[1]
        cos, sin = rope_tables(t, self.embed.weight.shape[1] // self.heads)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x) @ self.embed.weight.t()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="append one JSON line with the result to this file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = TinyLm()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=5e-3, betas=(0.9, 0.95))
    ids = torch.randint(0, 8192, (a.batch, a.seq + 1))
    times = []
    for i in range(a.warmup + a.steps):
        start = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    tokens = a.batch * a.seq
    median = statistics.median(times)
    result = {
        "peer": "pytorch-eager",
        "torch": torch.__version__,
        "threads": a.threads,
        "parameters": n_params,
        "tokens_per_step": tokens,
        "step_ms_mean": 1e3 * statistics.mean(times),
        "step_ms_median": 1e3 * median,
        "tokens_per_sec": tokens / statistics.mean(times),
    }
    print(f"pytorch eager {torch.__version__}, {a.threads} threads, {n_params} parameters")
    print(f"step          {result['step_ms_mean']:.1f} ms mean, {result['step_ms_median']:.1f} ms median ({a.steps} steps after {a.warmup} warm-up)")
    print(f"throughput    {result['tokens_per_sec']:.0f} tokens/s")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
