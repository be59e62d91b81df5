"""The loss curves of ``train.py``'s runs, and their differences, as a PNG."""

from __future__ import annotations

import numpy as np


def plot(hist, path: str, *, title: str = "") -> None:
    """Train loss per step (lines) and held-out loss (markers) of every run; below,
    each fused run's loss minus the materialised run's with the same tying."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    styles = {"materialised": dict(lw=3.0, alpha=0.45), "fused": dict(lw=1.0, ls="--")}
    colors = {"tied": "tab:blue", "untied": "tab:orange"}
    for name, h in hist.items():
        head, tying = name.split("-")
        steps = np.arange(1, len(h.loss) + 1)
        top.plot(steps, h.loss, color=colors[tying], label=f"{name} (train)", **styles[head])
        if h.heldout:
            s, v = zip(*h.heldout, strict=True)
            marker = "o" if head == "materialised" else "x"
            top.plot(s, v, marker, color=colors[tying], ms=8 if marker == "o" else 7,
                     mfc="none", label=f"{name} (held-out)")  # fmt: skip
        ref = hist.get(f"materialised-{tying}")
        if head == "fused" and ref is not None:
            diff = np.asarray(h.loss) - np.asarray(ref.loss)
            bottom.plot(steps, diff, color=colors[tying], lw=1, label=f"{tying}: fused − mat.")
    top.set_ylabel("loss (nats/token; train incl. smoothing + z-loss)")
    top.set_title(f"materialised vs fused LM head{': ' + title if title else ''}")
    top.legend(fontsize=8, ncol=2)
    top.grid(alpha=0.3)
    bottom.set_xlabel("step")
    bottom.set_ylabel("Δ loss")
    bottom.axhline(0, color="k", lw=0.5)
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
