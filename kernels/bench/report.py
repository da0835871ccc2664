"""Joins ropekv_cuda_bench JSON and sdpa_baseline.py JSON into a markdown
table: time, packed bytes, bandwidth as a fraction of the copy bandwidth,
and speed-up over SDPA measured in the same run.

    python3 report.py cuda_bench.json sdpa.json > table.md
"""
import json
import sys


def main(bench_path, sdpa_path):
    bench = json.load(open(bench_path))
    sdpa = json.load(open(sdpa_path))
    copy = sdpa["copy_GBps"]
    base = {(r["q_heads"], r["kv_heads"], r["tokens"]): r["us"] for r in sdpa["sdpa"]}
    print(f"GPU: {sdpa['device']}; copy bandwidth {copy:.0f} GB/s (read + write); torch {sdpa['torch']}\n")
    print("| heads q/kv | K/V bits | tokens | ropekv us | SDPA fp16 us | speed-up | packed MB | GB/s | of copy BW |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b in bench["benchmarks"]:
        if not b["name"].startswith("BM_Attend/"):
            continue
        qh, kvh, bits, tokens = (int(x) for x in b["name"].split("/")[1:5])
        us = b["us"]
        s = base.get((qh, kvh, tokens))
        print(f"| {qh}/{kvh} | K{bits}V{bits} | {tokens} | {us:.1f} | {s:.1f} | {s / us:.2f}x | "
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
