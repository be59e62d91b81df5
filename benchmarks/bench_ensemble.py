"""Cost of training (and evaluating) K SmallNets together against one SmallNet, per step.

Usage::

    .venv/bin/python benchmarks/bench_ensemble.py [--members 1 8 32] [--batch-size 32]
        [--steps 200] [--repeats 7] [--json out.json]

For each K the jitted step is compiled and warmed up first, then timed over
``--steps`` consecutive calls (with one ``block_until_ready`` at the end), and
that is repeated ``--repeats`` times; the reported per-step time is the median.
The baseline is the plain single-model step (a SmallNet, no vmap); an
``Ensemble`` of K members runs the same step under ``jax.vmap`` over stacked
parameters, every member seeing the same batch. The target from the issue is
``K=32`` costing at most 3x the single model per step on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from jaxce.data import load_dataset
from jaxce.evaluation import _eval_batch, _split_model
from jaxce.models import Ensemble, SmallNet
from jaxce.train import default_optimizer, make_train_step


def _measure(fn, steps: int) -> float:
    """Mean seconds per call over ``steps`` consecutive calls (one sync at the end)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps


def train_runner(model, x, y):
    """A zero-argument function running one jitted train step (compiled and warmed up)."""
    ensemble = isinstance(model, Ensemble)
    graphdef, params = nnx.split(model.members if ensemble else model)
    tx = default_optimizer(1e-2)
    opt_state = jax.vmap(tx.init)(params) if ensemble else tx.init(params)
    step = make_train_step(graphdef, tx, ensemble=ensemble)
    x, y = jax.device_put(x), jax.device_put(y)
    state = {"params": params, "opt_state": opt_state}

    def one():
        state["params"], state["opt_state"], metrics = step(
            state["params"], state["opt_state"], x, y
        )
        return metrics

    jax.block_until_ready(one())
    return one


def eval_runner(model, x, y):
    """A zero-argument function running one jitted evaluation batch (compiled, warmed up)."""
    graphdef, params, ensemble = _split_model("bench", model)
    x, y = jax.device_put(x), jax.device_put(y)

    def one():
        return _eval_batch(
            params,
            x,
            y,
            None,
            graphdef=graphdef,
            ensemble=ensemble,
            num_classes=3,
            num_bins=15,
            ignore_index=-100,
            eps=0.0,
        )

    jax.block_until_ready(one())
    return one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    ds = load_dataset("blobs")
    x = ds.x_train[: args.batch_size]
    y = ds.y_train[: args.batch_size]
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch_size}, "
        f"{args.steps} steps x {args.repeats} repeats, configurations interleaved "
        "(medians; ratios are medians of per-repeat ratios)"
    )
    models = {"single": SmallNet(rngs=nnx.Rngs(0))}
    models.update({k: Ensemble(k, seed=0) for k in args.members})
    runners = {
        name: {"train": train_runner(m, x, y), "eval": eval_runner(m, x, y)}
        for name, m in models.items()
    }
    times = {name: {"train": [], "eval": []} for name in runners}
    # Round-robin: every repeat times each configuration once, so slow phases of a
    # shared machine hit all of them alike; ratios are taken within a repeat.
    for _ in range(args.repeats):
        for name, rs in runners.items():
            for kind, fn in rs.items():
                times[name][kind].append(_measure(fn, args.steps))
    rows = []
    for name, t in times.items():
        row = {"members": name}
        for kind in ("train", "eval"):
            ratios = [a / b for a, b in zip(t[kind], times["single"][kind], strict=True)]
            row[f"{kind}_us"] = statistics.median(t[kind]) * 1e6
            row[f"{kind}_ratio"] = statistics.median(ratios)
        rows.append(row)
    print(f"{'model':>10} {'train step':>12} {'x single':>9} {'eval batch':>12} {'x single':>9}")
    for r in rows:
        name = "SmallNet" if r["members"] == "single" else f"K={r['members']}"
        print(
            f"{name:>10} {r['train_us']:>10.1f}us {r['train_ratio']:>8.2f}x "
            f"{r['eval_us']:>10.1f}us {r['eval_ratio']:>8.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "rows": rows,
                },
                f,
                indent=2,
            )
    worst = max(
        (r for r in rows if r["members"] == 32), key=lambda r: r["train_ratio"], default=None
    )
    if worst is not None:
        verdict = "meets" if worst["train_ratio"] <= 3.0 else "misses"
        print(
            f"K=32 train step: {worst['train_ratio']:.2f}x a single model ({verdict} the 3x target)"
        )
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
