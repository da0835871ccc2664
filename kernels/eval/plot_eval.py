#!/usr/bin/python3
"""Plots a ropekv-eval JSON report: per-layer RoPE logit MAE and
attention-output error, one column per budget, one line per method.

    /usr/bin/python3 kernels/eval/plot_eval.py eval.json eval.png

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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
