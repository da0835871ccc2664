"""Joins ropekv_cuda_bench JSON and sdpa_baseline.py JSON into a markdown
table: time, the plan's key groups, packed bytes, bandwidth as a fraction of
the copy bandwidth, and speed-up over SDPA measured in the same run, against
SDPA's GPU time (CUDA graph replay) and, as an extra column, SDPA as called
from Python.

    python3 report.py cuda_bench.json sdpa.json > table.md
"""
import json
import sys


def main(bench_path, sdpa_path):
    bench = json.load(open(bench_path))
    sdpa = json.load(open(sdpa_path))
    copy = sdpa["copy_GBps"]
    graph = {(r["q_heads"], r["kv_heads"], r["tokens"]): r.get("graph_us", r["us"]) for r in sdpa["sdpa"]}
    called = {(r["q_heads"], r["kv_heads"], r["tokens"]): r["us"] for r in sdpa["sdpa"]}
    shapes = {0: "lognormal", 1: "RoPE-like, bytes", 2: "most groups"}
    print(f"GPU: {sdpa['device']}; copy bandwidth {copy:.0f} GB/s (read + write); torch {sdpa['torch']}\n")
    print("| heads q/kv | K/V bits | plan (key groups) | tokens | ropekv us | SDPA graph us | speed-up | "
          "SDPA as called us | packed MB | GB/s | of copy BW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for b in bench["benchmarks"]:
        if not b["name"].startswith("BM_Attend/"):
            continue
        fields = b["name"].split("/")
        qh, kvh, bits, tokens = (int(x) for x in fields[1:5])
        shape = int(b.get("plan_shape", 0))
        us = b["us"]
        g, c = graph.get((qh, kvh, tokens)), called.get((qh, kvh, tokens))
        print(f"| {qh}/{kvh} | K{bits}V{bits} | {shapes.get(shape, shape)} ({int(b.get('key_groups', 0))}) | "
              f"{tokens} | {us:.1f} | {g:.1f} | {g / us:.2f}x | {c:.1f} | "
              f"{b['packed_bytes'] / 1e6:.1f} | {b['GBps']:.0f} | {b['GBps'] / copy:.0%} |")
    print("\n| encode | tokens | us | bytes (fp16 in + packed out) | GB/s | of copy BW |")
    print("|---|---|---|---|---|---|")
    for b in bench["benchmarks"]:
        if not b["name"].startswith("BM_Encode/"):
            continue
        kvh, bits, tokens = (int(x) for x in b["name"].split("/")[1:4])
        print(f"| {kvh} KV heads K{bits}V{bits} | {tokens} | {b['us']:.1f} | {b['bytes'] / 1e6:.1f} MB | "
              f"{b['GBps']:.0f} | {b['GBps'] / copy:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
