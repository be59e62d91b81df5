"""Fused linear cross-entropy benchmark: ``jaxce.linear_cross_entropy`` against the
materialised ``cross_entropy(hidden @ kernel + bias, target)``.

Run ``python benchmarks/bench_linear.py --help``. For every ``N×D×V`` shape and dtype
and head it compiles ``jax.value_and_grad`` (gradients for ``hidden``, ``kernel`` and,
for a head with a bias, ``bias``) of:

* ``materialised``: ``jaxce.cross_entropy`` on ``hidden @ kernel + bias`` (or
  ``hidden @ kernel`` for the no-bias head, as most language-model heads are: the
  materialised side then has no ``[N, V]`` bias pass and no bias gradient to pay);
* ``fused/forward``: ``linear_cross_entropy(grad_mode="forward")``, gradients during
  the forward pass, each ``[token_block, V]`` logits block computed once (about
  ``6·N·D·V`` flops, as the materialised version);
* ``fused/recompute``: ``grad_mode="recompute"``, the backward pass recomputes
  ``[token_block, vocab_block]`` blocks (about ``8·N·D·V`` flops);
* ``fused/auto``: the defaults;

and reports for each the compiled temporary memory (``memory_analysis()``; the
inputs and the gradients themselves are not temporaries), the median time per call
over interleaved samples (``harness.time_side_by_side``), and both as ratios to the
materialised version. The issue's CPU targets (float32, ``N`` = 1024–4096,
``D`` = 256–1024, ``V`` = 32768): temporary memory ≤ 1/16 and time ≤ 1.0× of the
materialised version's.

It writes ``<out>/linear-<backend>-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxce  # noqa: E402

# The CPU range, N = 1024–4096 × D = 256–1024 at V = 32768, corners and interior.
DEFAULT_SHAPES = [(n, d, 32768) for n in (1024, 2048, 4096) for d in (256, 512, 1024)]
QUICK_SHAPES = [(1024, 256, 32768)]
VARIANTS = {
    "forward": {"grad_mode": "forward"},
    "recompute": {"grad_mode": "recompute"},
    "auto": {},
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MEMORY_TARGET, TIME_TARGET = 1 / 16, 1.0
# "bias": logits = hidden @ kernel + bias, gradients for all three; "nobias": bias=None.
HEADS = ("bias", "nobias")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise SystemExit(f"--shapes: expected NxDxV items like 1024x256x32768, got {item!r}")
        out.append(tuple(int(p) for p in parts))
    return out


def make_inputs(shape, dtype, seed: int = 0) -> dict:
    n, d, v = shape
    kh, kk, kb, kt = jax.random.split(jax.random.PRNGKey(seed), 4)

    @jax.jit
    def build():
        return {
            "hidden": jax.random.normal(kh, (n, d), jnp.float32).astype(dtype),
            "kernel": (jax.random.normal(kk, (d, v), jnp.float32) / np.sqrt(d)).astype(dtype),
            "bias": (0.1 * jax.random.normal(kb, (v,), jnp.float32)).astype(dtype),
            "target": jax.random.randint(kt, (n,), 0, v, jnp.int32),
        }

    out = build()
    jax.block_until_ready(out)
    return out


def build_cases(shape, dtype, inputs, variants, blocks, head="bias") -> list[harness.Case]:
    """The materialised reference and one fused case per variant (``blocks``: the
    ``token_block`` / ``vocab_block`` options, for the fused cases only), for a head
    with a bias (``head="bias"``) or without (``"nobias"``)."""
    t = inputs["target"]
    args = (inputs["hidden"], inputs["kernel"])
    if head == "bias":
        args += (inputs["bias"],)
    argnums = tuple(range(len(args)))
    meta = {"shape": "x".join(map(str, shape)), "dtype": dtype, "head": head}
    prefix = f"{meta['shape']}/{dtype}/{head}"

    def materialised(h, k, b=None):
        return jaxce.cross_entropy(h @ k if b is None else h @ k + b, t)

    cases = [
        harness.Case(
            f"{prefix}/materialised",
            jax.jit(jax.value_and_grad(materialised, argnums=argnums)),
            args,
            meta={**meta, "impl": "materialised"},
        )
    ]
    for name in variants:
        opts = {**VARIANTS[name], **blocks}

        def fused(h, k, b=None, opts=opts):
            return jaxce.linear_cross_entropy(h, k, t, bias=b, **opts)

        cases.append(
            harness.Case(
                f"{prefix}/fused-{name}",
                jax.jit(jax.value_and_grad(fused, argnums=argnums)),
                args,
                meta={**meta, "impl": f"fused/{name}"},
            )
        )
    return cases


def check_agreement(cases) -> float:
    """Largest relative deviation of a fused case's value/gradients from the reference."""
    outs = [c.fn(*c.args) for c in cases]
    ref = jax.tree.leaves(outs[0])
    worst = 0.0
    for out in outs[1:]:
        for a, r in zip(jax.tree.leaves(out), ref, strict=True):
            a32, r32 = np.asarray(a, np.float32), np.asarray(r, np.float32)
            scale = max(float(np.max(np.abs(r32))), 1e-30)
            worst = max(worst, float(np.max(np.abs(a32 - r32))) / scale)
    return worst


def summarize(timings, agreement) -> list[dict]:
    rows = []
    by_group: dict[tuple, dict] = {}
    for t in timings:
        key = (t.meta["shape"], t.meta["dtype"], t.meta.get("head", "bias"))
        by_group.setdefault(key, {})[t.meta["impl"]] = t
    for (shape, dtype, head), group in by_group.items():
        ref = group.get("materialised")
        dev = agreement.get((shape, dtype, head))
        for impl, t in group.items():
            temp = (t.memory or {}).get("temp")
            ref_temp = (ref.memory or {}).get("temp") if ref else None
            mem_ratio = temp / ref_temp if temp is not None and ref_temp else None
            rows.append(
                {
                    "shape": shape,
                    "dtype": dtype,
                    "head": head,
                    "impl": impl,
                    "median_ms": t.median_ms,
                    "iqr_ms": t.iqr_ms,
                    "temp_mib": None if temp is None else temp / 2**20,
                    "temp_ratio": mem_ratio,
                    "time_ratio": harness.ratio(t, ref),
                    "time_ratio_band": harness.ratio_range(t, ref),
                    "compile_s": t.compile_s,
                    "max_rel_dev": dev if impl != "materialised" else 0,
                    "error": t.error,
                }
            )
    return rows


def markdown(rows, env) -> str:
    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    table = harness.markdown_table(
        [
            "N×D×V",
            "dtype",
            "head",
            "impl",
            "median ms",
            "IQR ms",
            "temp MiB",
            "temp ratio",
            "time ratio (band)",
            "targets",
        ],
        [
            [
                r["shape"],
                r["dtype"],
                r["head"],
                r["impl"],
                f(r["median_ms"], ".1f"),
                f(r["iqr_ms"], ".1f"),
                f(r["temp_mib"], ".2f"),
                f(r["temp_ratio"], ".4f"),
                (
                    f(r["time_ratio"], ".2f")
                    + (
                        f" ({r['time_ratio_band'][0]:.2f}–{r['time_ratio_band'][1]:.2f})"
                        if r["time_ratio_band"]
                        else ""
                    )
                ),
                _verdict(r),
            ]
            for r in rows
        ],
        align="llllrrrrrl",
    )
    head = (
        "# linear_cross_entropy vs materialised logits\n\n"
        f"{env['date']}, backend {env['backend']} ({env['device_kind']}), {env['cores']} cores, "
        f"jax {env['jax']}, git {env['git']}.\n\n"
        "`value_and_grad` w.r.t. hidden, kernel and (head `bias`) bias; head `nobias`: "
        "`bias=None`, logits `hidden @ kernel`. temp = compiled temporary memory; "
        "ratios are fused / materialised (medians; the band is q1/q3 against q3/q1). "
        f"Targets: temp ≤ {MEMORY_TARGET:.4f}, time ≤ {TIME_TARGET:.1f}×.\n\n"
    )
    return head + table


def _verdict(r) -> str:
    if r["impl"] == "materialised" or r["temp_ratio"] is None or r["time_ratio"] is None:
        return ""
    mem = "mem ok" if r["temp_ratio"] <= MEMORY_TARGET else "mem MISS"
    tim = "time ok" if r["time_ratio"] <= TIME_TARGET else "time MISS"
    return f"{mem}, {tim}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one shape, 3 repeats")
    p.add_argument("--shapes", help="comma list of NxDxV (default: the issue's CPU range)")
    p.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
    p.add_argument(
        "--heads", default="bias,nobias", help=f"comma list from {list(HEADS)} (default both)"
    )
    p.add_argument("--variants", default="forward,recompute,auto", help=f"from {list(VARIANTS)}")
    p.add_argument("--repeats", type=int, help="samples per case (default 5; 3 with --quick)")
    p.add_argument("--token-block", type=int, help="token_block for the fused cases")
    p.add_argument("--vocab-block", type=int, help="vocab_block for the fused cases")
    p.add_argument("--out", help=f"output folder (default {RESULTS_DIR})")
    p.add_argument("--name", help="file stem (default linear-<backend>-<date>[-quick])")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    shapes = (
        parse_shapes(args.shapes)
        if args.shapes
        else (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    )
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown {v!r}; expected some of {list(VARIANTS)}")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    for h in heads:
        if h not in HEADS:
            raise SystemExit(f"--heads: unknown {h!r}; expected some of {list(HEADS)}")
    repeats = args.repeats or (3 if args.quick else 5)
    blocks = {}
    if args.token_block:
        blocks["token_block"] = args.token_block
    if args.vocab_block:
        blocks["vocab_block"] = args.vocab_block
    env = harness.environment()
    log(f"backend {env['backend']}, {env['cores']} cores; shapes {shapes}, dtypes {dtypes}")

    agreement, all_cases = {}, []
    for shape in shapes:
        for dtype in dtypes:
            inputs = make_inputs(shape, jnp.dtype(dtype))
            for head in heads:
                cases = build_cases(shape, dtype, inputs, variants, blocks, head)
                key = ("x".join(map(str, shape)), dtype, head)
                agreement[key] = check_agreement(cases)
                log(f"{key}: max relative deviation from materialised {agreement[key]:.2e}")
                all_cases += cases
    # Every shape's cases in one interleaved loop: a slow minute on a shared machine then
    # spreads over all shapes instead of skewing one shape's ratios. Large programs: one
    # call per sample, no warm-up beyond the first call.
    timings = harness.time_side_by_side(
        all_cases, repeats=repeats, warmup=1, min_sample_s=0.0, log=log
    )

    rows = summarize(timings, agreement)
    text = markdown(rows, env)
    out_dir = Path(args.out) if args.out else RESULTS_DIR
    date = _dt.date.today().isoformat()
    stem = args.name or f"linear-{env['backend']}-{date}" + ("-quick" if args.quick else "")
    harness.write_atomic(out_dir / f"{stem}.md", text)
    harness.write_atomic(
        out_dir / f"{stem}.json",
        harness.dump_json(
            {"environment": env, "rows": rows, "timings": [t.to_dict() for t in timings]}
        ),
    )
    print(text)
    return {"rows": rows, "environment": env}


if __name__ == "__main__":
    main()
