"""The fused runs of ``train.py`` on a simulated ``data × vocab`` CPU mesh.

Run in its own process: ``--mesh AxB`` asks XLA for ``A·B`` host devices, which must
happen before jax is imported. Parameters with a vocabulary axis (the tied embedding
``(V, D)``, the untied head ``(D, V)``) are sharded over ``vocab``, the batch over
``data``, and the fused loss is told both (``data_axis``, ``vocab_axis``, ``mesh``).
Writes ``{run name: [loss per step]}`` as JSON to ``--json`` (or stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", default="2x4", help="data×vocab, e.g. 2x4")
    p.add_argument("--json", default=None)
    known, _ = p.parse_known_args(argv)
    try:
        shape = tuple(int(n) for n in known.mesh.lower().split("x"))
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--mesh must be like 2x4, got {known.mesh!r}")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={shape[0] * shape[1]}"
    )

    import jax
    import train

    train.add_args(p)
    args = p.parse_args(argv)
    if any(r.head != "fused" for r in args.runs):
        p.error("--runs: only fused runs are sharded here (the materialised head needs no axes)")
    mesh = jax.make_mesh(shape, ("data", "vocab"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    axes = {"data_axis": "data", "vocab_axis": "vocab", "mesh": mesh}
    data, train_packed, held_packed = train.load_data(args)
    hist = train.train(
        args.runs,
        args,
        train_packed,
        held_packed,
        data.vocab_size,
        mesh=mesh,
        axes=axes,
        log=lambda *a: None,
    )
    text = json.dumps({name: h.loss for name, h in hist.items()})
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
