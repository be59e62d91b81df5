"""How to hand a tied ``(V, D)`` embedding to ``linear_cross_entropy``: measured.

``linear_cross_entropy`` takes the head as a ``(D, V)`` kernel. A tied table stored
the usual way, ``(V, D)`` (``nnx.Embed``), is passed as ``embedding.T``; the
alternative stores the table ``(D, V)`` and looks tokens up as columns
(``jnp.take(table, tokens, axis=1)``). Both give the same numbers (the same initial
table, transposed); this compiles the train step of each (fused and materialised
head), counts the HLO instructions that copy or transpose the whole table, reads the
compiled temporary memory, and times the steps interleaved (paired, same batches).

    python examples/lm/tied_layout.py [train.py options] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    train.add_args(p)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    data, packed, _ = train.load_data(args)
    batches = [
        {k: jnp.asarray(v) for k, v in b.items()}
        for b, _ in zip(
            corpus.batches(packed, args.batch, args.seed), range(args.rounds), strict=False
        )
    ]
    optimizer = train.make_optimizer(args)
    cases = {}
    for head in ("materialised", "fused"):
        for layout in ("vd", "dv"):
            a = args
            cfg = train.config_of(a, data.vocab_size, True, layout)
            graphdef, params = train.init(cfg, args.seed)
            opt_state = optimizer.init(params)
            run = train.RunSpec(head, True, layout)
            step = jax.jit(train.make_step(graphdef, run, optimizer, a), donate_argnums=(0, 1))
            compiled = step.lower(params, opt_state, batches[0]).compile()
            cases[(head, layout)] = dict(
                step=compiled,
                state=(params, opt_state),
                temp=compiled.memory_analysis().temp_size_in_bytes,
                copies=train.table_transposes(compiled.as_text(), cfg),
                seconds=[],
                losses=[],
            )
    for batch in batches:
        for c in cases.values():
            t0 = time.perf_counter()
            params, opt_state, loss = c["step"](*c["state"], batch)
            c["losses"].append(float(loss))
            c["seconds"].append(time.perf_counter() - t0)
            c["state"] = (params, opt_state)
    print(f"V={data.vocab_size} D={args.d_model} tokens/step={args.batch * args.seq_len}, "
          f"{args.rounds} interleaved steps (median of the last {args.rounds - 1})")  # fmt: skip
    print("| head | tied table | whole-table copies in HLO | temp MiB | ms/step | vs vd | "
          "max loss diff vs vd |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (head, layout), c in cases.items():
        ref = cases[(head, "vd")]
        ratio = statistics.median(
            x / y for x, y in zip(c["seconds"][1:], ref["seconds"][1:], strict=True)
        )
        diff = max(abs(x - y) for x, y in zip(c["losses"], ref["losses"], strict=True))
        shape = "(V, D), head gets .T" if layout == "vd" else "(D, V), lookup by column"
        ms = 1e3 * statistics.median(c["seconds"][1:])
        print(f"| {head} | {shape} | {len(c['copies'])} | {c['temp'] / 2**20:.1f} | "
              f"{ms:.0f} | {ratio:.2f} | {diff:.1e} |")  # fmt: skip
    for (head, layout), c in cases.items():
        for line in c["copies"]:
            print(f"  {head}/{layout}: {line[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
