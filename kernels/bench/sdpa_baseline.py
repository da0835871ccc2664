"""Baselines on the same GPU as ropekv_cuda_bench: torch SDPA fp16 decode
attention (enable_gqa=True, batch 1, one query token) and a device-to-device
copy-bandwidth probe. Prints JSON: {"sdpa": [...], "copy_GBps": x}.

Each SDPA row has two timings: `us`, calls back to back as Python makes them
(at short contexts that is torch's launch path), and `graph_us`, the same
call captured in a CUDA graph and replayed (GPU time only), the best of
`graph_reps` repetitions with all of them in `graph_us_reps`.

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


def graph_time_us(fn, iters=200, reps=5):
    """Best and all of `reps` timings of `fn` replayed from a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        graph.replay()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) * 1000.0 / iters)
    return min(times), times


def main():
    dev = torch.device("cuda")
    rows = []
    for qh, kvh in ((16, 2), (32, 8)):
        for tokens in (4096, 32768, 131072, 524288):
            q = torch.randn(1, qh, 1, 128, device=dev, dtype=torch.float16)
            k = torch.randn(1, kvh, tokens, 128, device=dev, dtype=torch.float16)
            v = torch.randn(1, kvh, tokens, 128, device=dev, dtype=torch.float16)
            call = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            us = time_us(call)
            graph_us, graph_reps = graph_time_us(call)
            rows.append({"q_heads": qh, "kv_heads": kvh, "tokens": tokens, "us": us,
                         "graph_us": graph_us, "graph_us_reps": graph_reps,
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
