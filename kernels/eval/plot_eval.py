#!/usr/bin/python3
"""Plots a ropekv-eval JSON report: per-layer RoPE logit MAE and
attention-output error, one column per budget, one line per method; and,
when the report has a rate-distortion sweep (ropekv-eval --sweep), both
errors against packed bytes per token, one curve per method.

    /usr/bin/python3 kernels/eval/plot_eval.py eval.json eval.png [rate-distortion.png]

Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    report = json.load(open(src))
    budgets = []
    for r in report["results"]:
        b = (r["key_bits"], r["value_bits"])
        if b not in budgets:
            budgets.append(b)
    fig, axes = plt.subplots(2, len(budgets), figsize=(4.2 * len(budgets), 6.5), squeeze=False)
    styles = {"uniform": ("tab:gray", "o"), "energy": ("tab:blue", "s"), "logit": ("tab:red", "^"),
              "logit-same-bytes": ("tab:orange", "v")}
    for col, (kb, vb) in enumerate(budgets):
        for r in report["results"]:
            if (r["key_bits"], r["value_bits"]) != (kb, vb):
                continue
            color, marker = styles.get(r["method"], ("black", "x"))
            layers = range(len(r["layers"]))
            label = f'{r["method"]} ({r["compression"]:.2f}x)'
            axes[0][col].plot(layers, [l["logit_mae"] for l in r["layers"]], marker=marker, color=color, label=label)
            axes[1][col].plot(layers, [l["attention_error"] for l in r["layers"]], marker=marker, color=color,
                              label=label)
        axes[0][col].set_title(f"K{kb} V{vb}")
        axes[0][col].set_ylabel("RoPE logit MAE")
        axes[1][col].set_ylabel("attention-output rel. error")
        axes[1][col].set_xlabel("layer")
        axes[0][col].legend(fontsize=8)
        for row in axes:
            row[col].grid(alpha=0.3)
    fig.suptitle(f'calibrated on {report["calibrate"]} sequences, tested on {report["test"]} '
                 f'({report["test_tokens"]} tokens)')
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


def rate_distortion(report, dst):
    styles = {"uniform": ("tab:gray", "o"), "logit-bytes": ("tab:red", "^"),
              "key-variance-bytes": ("tab:green", "s")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    methods = []
    for r in report["sweep"]:
        if r["method"] not in methods:
            methods.append(r["method"])
    for m in methods:
        rows = sorted((r for r in report["sweep"] if r["method"] == m), key=lambda r: r["packed_bytes_per_token"])
        color, marker = styles.get(m, ("black", "x"))
        x = [r["packed_bytes_per_token"] for r in rows]
        axes[0].plot(x, [r["mean_logit_mae"] for r in rows], marker=marker, color=color, label=m)
        axes[1].plot(x, [r["mean_attention_error"] for r in rows], marker=marker, color=color, label=m)
    for ax, name in zip(axes, ["mean RoPE logit MAE", "mean attention-output rel. error"]):
        ax.set_xlabel("packed bytes per token, all layers (norms included)")
        ax.set_ylabel(name)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    vb = report["sweep"][0]["value_bits"]
    fig.suptitle(f'rate-distortion at V{vb}: calibrated on {report["calibrate"]}, tested on {report["test"]}')
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    if len(sys.argv) > 3 and json.load(open(sys.argv[1])).get("sweep"):
        rate_distortion(json.load(open(sys.argv[1])), sys.argv[3])
