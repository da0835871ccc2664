#!/usr/bin/python3
"""Writes synthetic q/k/v activations of a head_dim-128 RoPE model in the
layout ropekv-eval reads (README "Evaluating on your model"), for checking
allocations where no real head_dim-128 activations are at hand.

    /usr/bin/python3 kernels/eval/make_synthetic_rope.py out.safetensors [--seed=1]

Needs numpy (Debian: python3-numpy).

What it imitates, and why (published measurements of Llama- and Qwen-family
attention, e.g. KIVI and KVQuant's channel statistics, and RoPE's own
frequency structure):
- Split-half RoPE over all 128 dims, theta 10000; block i turns by
  position x 10000^(-2i/128), so high blocks are the low frequencies.
- Pre-RoPE key energy grows towards the low-frequency blocks (they carry
  the position-robust semantic part of attention), by about 30x across the
  head, with lognormal jitter per block and head; 2 of the 64 blocks per
  head are outlier channels with 10-30x the energy of their neighbours and a
  non-zero mean (the "massive" key channels reported for these models).
- Queries follow a related but not identical spectrum (their own jitter,
  and a slope of their own), so query x key energy and key energy alone
  rank blocks differently, as in real models.
- Values are near-isotropic (a mild per-dimension jitter): RoPE does not
  touch them.
- Tokens within a sequence share a slowly drifting direction (an AR(1)
  process), so attention is not uniform; sequences are independent.
Everything is random per (layer, KV head); nothing is fitted to a model or
to ropekv's results. It checks an allocation on a realistic shape; it plays
no part in choosing defaults.
"""
import json
import struct
import sys

import numpy as np

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM = 2, 16, 2, 128
SEQUENCES, TOKENS_PER_SEQ = 8, 128
THETA = 10000.0


def spectrum(rng, blocks, slope, outliers):
    i = np.arange(blocks)
    base = np.exp(slope * i / (blocks - 1)) * rng.lognormal(0.0, 0.35, blocks)
    out = rng.choice(blocks, size=outliers, replace=False)
    base[out] *= rng.uniform(10, 30, outliers)
    return base / base.mean(), out


def rope(x, positions):
    """Split-half RoPE: block i = dims (i, i + 64)."""
    half = HEAD_DIM // 2
    inv = THETA ** (-2.0 * np.arange(half) / HEAD_DIM)
    ang = positions[:, None] * inv[None, :]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def drifting(rng, n, d, scale, rho=0.9):
    z = np.empty((n, d))
    z[0] = rng.standard_normal(d)
    for t in range(1, n):
        z[t] = rho * z[t - 1] + np.sqrt(1 - rho * rho) * rng.standard_normal(d)
    return z * scale


def main(path, seed):
    rng = np.random.default_rng(seed)
    blocks = HEAD_DIM // 2
    group = Q_HEADS // KV_HEADS
    tokens = SEQUENCES * TOKENS_PER_SEQ
    q = np.zeros((LAYERS, Q_HEADS, tokens, HEAD_DIM))
    k = np.zeros((LAYERS, KV_HEADS, tokens, HEAD_DIM))
    v = np.zeros((LAYERS, KV_HEADS, tokens, HEAD_DIM))
    positions = np.tile(np.arange(TOKENS_PER_SEQ, dtype=np.float64), SEQUENCES)
    for layer in range(LAYERS):
        for h in range(KV_HEADS):
            ek, outliers = spectrum(rng, blocks, np.log(30.0), 2)
            # Per dimension: a block's energy split over its two dims.
            kstd = np.sqrt(np.concatenate([ek, ek]) / 2)
            kmean = np.zeros(HEAD_DIM)
            kmean[outliers] = 2.0 * kstd[outliers]
            vstd = rng.lognormal(0.0, 0.2, HEAD_DIM)
            for s in range(SEQUENCES):
                sl = slice(s * TOKENS_PER_SEQ, (s + 1) * TOKENS_PER_SEQ)
                k[layer, h, sl] = kmean + drifting(rng, TOKENS_PER_SEQ, HEAD_DIM, kstd)
                v[layer, h, sl] = drifting(rng, TOKENS_PER_SEQ, HEAD_DIM, vstd, rho=0.5)
            for g in range(group):
                eq, _ = spectrum(rng, blocks, rng.uniform(np.log(5.0), np.log(40.0)), 1)
                qstd = np.sqrt(np.concatenate([eq, eq]) / 2) * 2.0
                for s in range(SEQUENCES):
                    sl = slice(s * TOKENS_PER_SEQ, (s + 1) * TOKENS_PER_SEQ)
                    q[layer, h * group + g, sl] = drifting(rng, TOKENS_PER_SEQ, HEAD_DIM, qstd, rho=0.7)
            k[layer, h] = rope(k[layer, h], positions)
            q[layer, h * group:(h + 1) * group] = rope(q[layer, h * group:(h + 1) * group], positions)

    tensors = {"q": q.astype(np.float16), "k": k.astype(np.float16), "v": v.astype(np.float16),
               "seq_offsets": np.arange(0, tokens + 1, TOKENS_PER_SEQ, dtype=np.int64)}
    metadata = {"model": "synthetic-rope-128", "source": f"kernels/eval/make_synthetic_rope.py --seed={seed}",
                "layers": str(LAYERS), "q_heads": str(Q_HEADS), "kv_heads": str(KV_HEADS),
                "head_dim": str(HEAD_DIM), "rope_layout": "split-half", "rotary_dim": str(HEAD_DIM),
                "rope_theta": str(THETA)}
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        dtype = {"float16": "F16", "int64": "I64"}[str(arr.dtype)]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--seed=")]
    seeds = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--seed=")]
    if len(args) != 1:
        sys.exit(__doc__)
    main(args[0], seeds[0] if seeds else 1)
