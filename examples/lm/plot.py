"""The loss curves of ``train.py``'s runs, and their differences, as a PNG."""

from __future__ import annotations

import numpy as np


def plot(hist, path: str, *, title: str = "") -> None:
    """Train loss per step (lines) and held-out loss (markers) of every run; below,
    each run's loss minus its reference's (the materialised run with the same tying).
    The ``-dv`` runs (the same models, the tied table stored transposed) appear only
    below, in grey: the materialised one is a rounding-only control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    styles = {"materialised": dict(lw=3.0, alpha=0.45), "fused": dict(lw=1.0, ls="--")}
    colors = {"tied": "tab:blue", "untied": "tab:orange"}
    for name, h in hist.items():
        head, tying = name.split("-")[:2]
        control = name.endswith("-dv")
        steps = np.arange(1, len(h.loss) + 1)
        ref = hist.get(h.run.reference)
        if ref is not None and ref is not h:
            diff = np.asarray(h.loss) - np.asarray(ref.loss)
            style = dict(color="0.5", lw=0.8, ls=":" if head == "fused" else "-") if control else (
                dict(color=colors[tying], lw=1))
            bottom.plot(steps, diff, label=f"{name} − {ref.run.name}", **style)
        if control:
            continue  # on top of its reference's curve: only in the difference panel
        top.plot(steps, h.loss, color=colors[tying], label=f"{name} (train)", **styles[head])
        if h.heldout:
            s, v = zip(*h.heldout, strict=True)
            marker = "o" if head == "materialised" else "x"
            top.plot(s, v, marker, color=colors[tying], ms=8 if marker == "o" else 7,
                     mfc="none", label=f"{name} (held-out)")  # fmt: skip
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
