"""Baselines on the same GPU as ropekv_cuda_bench: torch SDPA fp16 decode
attention (enable_gqa=True, batch 1, one query token) and a device-to-device
copy-bandwidth probe. Prints JSON: {"sdpa": [...], "copy_GBps": x}.

    python3 sdpa_baseline.py > sdpa.json
"""
import json

import torch
import torch.nn.functional as F


def time_us(fn, iters=200):
    for _ in range(10):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1000.0 / iters


def main():
    dev = torch.device("cuda")
    rows = []
    for qh, kvh in ((16, 2), (32, 8)):
        for tokens in (4096, 32768, 131072, 524288):
            q = torch.randn(1, qh, 1, 128, device=dev, dtype=torch.float16)
            k = torch.randn(1, kvh, tokens, 128, device=dev, dtype=torch.float16)
            v = torch.randn(1, kvh, tokens, 128, device=dev, dtype=torch.float16)
            us = time_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            rows.append({"q_heads": qh, "kv_heads": kvh, "tokens": tokens, "us": us,
                         "bytes": 2 * kvh * tokens * 128 * 2})
            del q, k, v
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), iters=50)
    copy_gbps = 2 * src.numel() / us / 1e3  # bytes read + written
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "sdpa": rows, "copy_GBps": copy_gbps}, indent=1))


if __name__ == "__main__":
    main()
