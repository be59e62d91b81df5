"""Cross-entropy benchmark: jaxce against optax, naive JAX, torch and the memory floors.

Run ``make bench`` or ``python benchmarks/bench_ce.py --help``. For every
shape and dtype it times, interleaved in one run (see ``harness.py``):

* ``jaxce.cross_entropy`` forward (``fwd``) and ``jax.value_and_grad``
  (``fwd+bwd``), plain and with options: class weights, ``ignore_index`` (10%
  of the targets ignored), label smoothing 0.1, all three together, and
  probability targets;
* optax's ``softmax_cross_entropy_with_integer_labels`` (and
  ``softmax_cross_entropy`` for probability targets), with ``.mean()``;
* naive JAX: ``jax.nn.log_softmax`` then a gather;
* torch's ``F.cross_entropy`` (autograd for fwd+bwd), when torch is installed
  and runs on the same kind of device;
* the floors: one read pass, one exp-sum pass, one read+write pass.

It writes ``<out>/<backend>-<date>.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxce  # noqa: E402

DEFAULT_SHAPES = [(65536, 10), (8192, 1000), (4096, 32768), (512, 131072)]
GPU_EXTRA_SHAPES = [(8192, 131072)]
QUICK_SHAPES = [(2048, 1000), (128, 32768)]
DEFAULT_DTYPES = ["float32", "bfloat16"]
QUICK_DTYPES = ["float32"]

JAXCE_VARIANTS = ["plain", "weight", "ignore_index", "label_smoothing", "all_options", "probs"]
EXTRA_VARIANTS = ["z_loss", "softcap"]  # jaxce-only options, on request (--variants)
# Single options: by default only on shapes below LARGE_ELEMENTS (all of them on request).
SINGLE_OPTIONS = ["weight", "ignore_index", "label_smoothing"]
TORCH_VARIANTS = ["plain"]
MODES = ["fwd", "fwd+bwd"]
IGNORE_INDEX = -100
IGNORE_FRACTION = 0.1
SMOOTHING = 0.1
Z_LOSS = 1e-4
SOFTCAP = 30.0

# Default samples per row: at least 10; more where a round is cheap.
LARGE_ELEMENTS = 1 << 24
REPEATS_LARGE, REPEATS_SMALL, REPEATS_QUICK = 10, 20, 5

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The targets, checked on every run (see README.md).
LONG_ROWS = (512, 131072)
GPU_SHAPE = (8192, 131072)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        part = part.strip().lower().replace("×", "x")
        if not part:
            continue
        n, c = part.split("x")
        shapes.append((int(n), int(c)))
    return shapes


def parse_list(text: str, allowed: list[str], what: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {allowed}")
    return items


# --------------------------------------------------------------------------- inputs


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "probs"))
def _make_inputs(key, *, shape, dtype, probs):
    n, c = shape
    k = jax.random.split(key, 5)
    x = (jax.random.normal(k[0], shape, jnp.float32) * 2.0).astype(dtype)
    t = jax.random.randint(k[1], (n,), 0, c, jnp.int32)
    drop = jax.random.uniform(k[2], (n,)) < IGNORE_FRACTION
    t_ign = jnp.where(drop, jnp.asarray(IGNORE_INDEX, jnp.int32), t)
    w = jax.random.uniform(k[3], (c,), jnp.float32, 0.5, 1.5).astype(dtype)
    inputs = {"x": x, "t": t, "t_ign": t_ign, "w": w}
    if probs:
        inputs["p"] = jax.nn.softmax(jax.random.normal(k[4], shape, jnp.float32)).astype(dtype)
    return inputs


def make_inputs(shape, dtype, *, probs: bool, seed: int = 0) -> dict:
    """Random inputs, generated on the default device by one jitted call (no host copy)."""
    key = jax.random.PRNGKey(seed)
    inputs = _make_inputs(key, shape=tuple(shape), dtype=jnp.dtype(dtype), probs=probs)
    return jax.block_until_ready(inputs)


# --------------------------------------------------------------------------- cases


def jaxce_loss(variant: str):
    """``(loss_fn(x, *rest), names of rest)`` for a jaxce variant."""
    ce = jaxce.cross_entropy
    if variant == "plain":
        return (lambda x, t: ce(x, t)), ("t",)
    if variant == "weight":
        return (lambda x, t, w: ce(x, t, weight=w)), ("t", "w")
    if variant == "ignore_index":
        return (lambda x, t: ce(x, t, ignore_index=IGNORE_INDEX)), ("t_ign",)
    if variant == "label_smoothing":
        return (lambda x, t: ce(x, t, label_smoothing=SMOOTHING)), ("t",)
    if variant == "all_options":
        return (
            lambda x, t, w: ce(x, t, weight=w, ignore_index=IGNORE_INDEX, label_smoothing=SMOOTHING)
        ), ("t_ign", "w")
    if variant == "probs":
        return (lambda x, p: ce(x, p)), ("p",)
    if variant == "z_loss":
        return (lambda x, t: ce(x, t, z_loss=Z_LOSS)), ("t",)
    if variant == "softcap":
        return (lambda x, t: ce(x, t, softcap=SOFTCAP)), ("t",)
    raise ValueError(variant)


def optax_loss(variant: str):
    if variant == "probs":
        return (lambda x, p: optax.softmax_cross_entropy(x, p).mean()), ("p",)
    return (lambda x, t: optax.softmax_cross_entropy_with_integer_labels(x, t).mean()), ("t",)


def naive_loss(x, t):
    lp = jax.nn.log_softmax(x, axis=-1)
    return -jnp.mean(jnp.take_along_axis(lp, t[:, None], axis=-1))


def jax_case(impl, variant, mode, loss, names, inputs, meta) -> harness.Case:
    fn = jax.jit(loss if mode == "fwd" else jax.value_and_grad(loss))
    args = (inputs["x"], *(inputs[k] for k in names))
    meta = {**meta, "impl": impl, "variant": variant, "mode": mode}
    return harness.Case(f"{impl}/{variant}/{mode}", fn, args, meta=meta)


def torch_inputs(torch, inputs, device):
    """torch views of the JAX inputs (DLPack, no copy where possible); targets as int64."""

    def conv(a):
        try:
            ta = torch.from_dlpack(a)
        except Exception:  # pragma: no cover - old torch / unsupported dtype
            import numpy as np

            ta = torch.from_numpy(np.asarray(a.astype(jnp.float32))).to(
                getattr(torch, str(a.dtype))
            )
        return ta.to(device)

    out = {k: conv(v) for k, v in inputs.items()}
    out["t"] = out["t"].long()
    out["t_ign"] = out["t_ign"].long()
    return out


def torch_case(torch, variant, mode, tin, sync, meta) -> harness.Case:
    F = torch.nn.functional
    kw = {}
    target = tin["t"]
    if variant == "all_options":
        kw = {"weight": tin["w"], "ignore_index": IGNORE_INDEX, "label_smoothing": SMOOTHING}
        target = tin["t_ign"]
    elif variant == "weight":
        kw = {"weight": tin["w"]}
    elif variant == "ignore_index":
        kw = {"ignore_index": IGNORE_INDEX}
        target = tin["t_ign"]
    elif variant == "label_smoothing":
        kw = {"label_smoothing": SMOOTHING}
    elif variant == "probs":
        target = tin["p"]

    if mode == "fwd":
        x = tin["x"]

        def fn():
            with torch.inference_mode():
                return F.cross_entropy(x, target, **kw)

    else:
        xr = tin["x"].detach().requires_grad_(True)

        def fn():
            loss = F.cross_entropy(xr, target, **kw)
            (g,) = torch.autograd.grad(loss, xr)
            return loss, g

    meta = {**meta, "impl": "torch", "variant": variant, "mode": mode}
    return harness.Case(f"torch/{variant}/{mode}", fn, (), is_jax=False, sync=sync, meta=meta)


def build_cases(shape, dtype, inputs, *, variants, modes, torch, torch_device, torch_variants):
    meta = {"shape": list(shape), "dtype": dtype}
    cases = harness.floor_cases(inputs["x"], meta={**meta, "impl": "floor", "mode": "pass"})
    for mode in modes:
        for v in variants:
            loss, names = jaxce_loss(v)
            cases.append(jax_case("jaxce", v, mode, loss, names, inputs, meta))
        cases.append(jax_case("optax", "plain", mode, *optax_loss("plain"), inputs, meta))
        if "probs" in variants:
            cases.append(jax_case("optax", "probs", mode, *optax_loss("probs"), inputs, meta))
        cases.append(jax_case("naive", "plain", mode, naive_loss, ("t",), inputs, meta))
    if torch is not None:
        tin = torch_inputs(torch, inputs, torch_device)
        sync = harness.torch_sync(torch, torch_device)
        for mode in modes:
            for v in torch_variants:
                cases.append(torch_case(torch, v, mode, tin, sync, meta))
    return cases


# --------------------------------------------------------------------------- rows


IMPL_ORDER = {"floor": 0, "jaxce": 1, "optax": 2, "naive": 3, "torch": 4}
VARIANT_ORDER = {
    v: i for i, v in enumerate([*JAXCE_VARIANTS, *EXTRA_VARIANTS, "read", "exp-sum", "read+write"])
}
MODE_ORDER = {"pass": 0, "fwd": 1, "fwd+bwd": 2}


def key_of(t: harness.Timing) -> tuple:
    m = t.meta
    return (tuple(m["shape"]), m["dtype"], m["impl"], m["variant"], m["mode"])


def add_ratios(timings: list[harness.Timing]) -> None:
    """Stores ``meta['ratios']`` (median ratios) and ``meta['ratio_bands']`` (IQR bands)."""
    by_key = {key_of(t): t for t in timings}
    for t in timings:
        shape, dtype, impl, variant, mode = key_of(t)
        refs = {"read": by_key.get((shape, dtype, "floor", "read", "pass"))}
        if impl != "floor":
            opt_variant = "probs" if variant == "probs" else "plain"
            refs["optax"] = by_key.get((shape, dtype, "optax", opt_variant, mode))
            refs["torch"] = by_key.get((shape, dtype, "torch", variant, mode))
            if variant != "plain":
                refs["plain"] = by_key.get((shape, dtype, impl, "plain", mode))
        t.meta["ratios"] = {k: harness.ratio(t, r) for k, r in refs.items()}
        t.meta["ratio_bands"] = {k: harness.ratio_range(t, r) for k, r in refs.items()}
        nbytes = math.prod(shape) * jnp.dtype(dtype).itemsize
        t.meta["grad_bytes"] = nbytes


def group_order(timings) -> list[tuple]:
    """The (shape, dtype) groups in the order they first appear (the run order)."""
    seen = {}
    for t in timings:
        seen.setdefault(key_of(t)[:2], len(seen))
    return list(seen)


def sort_timings(timings):
    """Run order of the groups; within a group floors, fwd, fwd+bwd; impls and variants fixed."""
    rank = {g: i for i, g in enumerate(group_order(timings))}

    def k(t):
        shape, dtype, impl, variant, mode = key_of(t)
        return (
            rank[(shape, dtype)],
            MODE_ORDER[mode],
            IMPL_ORDER[impl],
            VARIANT_ORDER.get(variant, 99),
        )

    return sorted(timings, key=k)


def fmt_ratio(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def fmt_ms(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def results_table(timings) -> str:
    headers = [
        "shape",
        "dtype",
        "mode",
        "impl",
        "variant",
        "median ms",
        "IQR ms",
        "×optax",
        "×torch",
        "×read",
        "×plain",
        "temp MiB",
        "compile s",
    ]
    rows = []
    for t in timings:
        shape, dtype, impl, variant, mode = key_of(t)
        r = t.meta.get("ratios", {})
        temp = None if not t.memory else f"{t.memory['temp'] / 2**20:.1f}"
        comp = None if t.compile_s is None else f"{(t.lower_s or 0) + t.compile_s:.2f}"
        ident = [f"{shape[0]}×{shape[1]}", dtype, mode, impl, variant]
        if not t.ok:
            rows.append(ident + ["error", "", "", "", "", "", temp, comp])
            continue
        ratios = [fmt_ratio(r.get(k)) for k in ("optax", "torch", "read", "plain")]
        timing = [fmt_ms(t.median_ms), fmt_ms(t.iqr_ms)]
        rows.append(ident + timing + ratios + [temp or "—", comp or "—"])
    return harness.markdown_table(headers, rows, align="lllllrrrrrrrr")


# --------------------------------------------------------------------------- targets


def _status(value, band, limit) -> str:
    if value is None:
        return "n/a"
    ok = value <= limit
    noisy = band is not None and band[0] <= limit <= band[1]
    return ("pass" if ok else "FAIL") + (" (within noise)" if noisy else "")


def check_targets(timings, backend: str) -> list[dict]:
    """The issue's acceptance targets, evaluated on this run.

    ``value`` is the ratio of medians (or a median in ms), ``band`` its IQR band,
    ``min_value`` the ratio of the minimums (less sensitive to other load).
    """
    by_key = {key_of(t): t for t in timings}
    out = []

    def add(name, shape, dtype, mode, a, b, limit, absolute=False):
        """Target ``a/b ≤ limit`` (or ``a``'s time in ms ≤ limit when ``absolute``)."""
        if a is None or (b is None and not absolute):
            return
        if absolute:
            value = a.median_ms if a.ok else None
            band = (a.q1_ms, a.q3_ms) if a.ok else None
            min_value, unit = (a.min_ms if a.ok else None), "ms"
        else:
            value, band = harness.ratio(a, b), harness.ratio_range(a, b)
            ok = a.ok and b.ok and b.min_ms > 0
            min_value, unit = (a.min_ms / b.min_ms if ok else None), "×"
        out.append(
            {
                "target": name,
                "shape": list(shape),
                "dtype": dtype,
                "mode": mode,
                "value": value,
                "band": list(band) if band else None,
                "min_value": min_value,
                "limit": limit,
                "unit": unit,
                "status": _status(value, band, limit),
            }
        )

    gpu_limits = {
        ("float32", "fwd"): 1.3,
        ("float32", "fwd+bwd"): 3.3,
        ("bfloat16", "fwd+bwd"): 2.1,
    }
    for shape, dtype in group_order(timings):
        for mode in MODES:
            plain = by_key.get((shape, dtype, "jaxce", "plain", mode))
            if plain is None:
                continue
            optax_ = by_key.get((shape, dtype, "optax", "plain", mode))
            if backend == "cpu" and shape == LONG_ROWS:
                limit = 0.5 if mode == "fwd" else 0.75
                add(f"long rows: jaxce/optax ≤ {limit}", shape, dtype, mode, plain, optax_, limit)
            else:
                add("jaxce/optax ≤ 1", shape, dtype, mode, plain, optax_, 1.0)
            torch_ = by_key.get((shape, dtype, "torch", "plain", mode))
            add("jaxce/torch ≤ 1", shape, dtype, mode, plain, torch_, 1.0)
            allopt = by_key.get((shape, dtype, "jaxce", "all_options", mode))
            add("all_options/plain ≤ 1.3", shape, dtype, mode, allopt, plain, 1.3)
            if backend == "gpu" and shape == GPU_SHAPE and (dtype, mode) in gpu_limits:
                limit = gpu_limits[(dtype, mode)]
                add("GPU time (ms)", shape, dtype, mode, plain, None, limit, absolute=True)
        # fwd+bwd temporaries no bigger than the gradient: plain, and the worst variant
        fracs = {}
        for (s, d, impl, variant, mode), t in by_key.items():
            if (s, d, impl, mode) == (shape, dtype, "jaxce", "fwd+bwd") and t.memory:
                fracs[variant] = t.memory["temp"] / t.meta["grad_bytes"]
        picks = ["plain"] if "plain" in fracs else []
        if fracs:
            worst = max(fracs, key=fracs.get)
            if worst not in picks:
                picks.append(worst)
        for v in picks:
            label = "plain" if v == "plain" else f"worst: {v}"
            out.append(
                {
                    "target": f"fwd+bwd temp/grad ≤ 1 ({label})",
                    "shape": list(shape),
                    "dtype": dtype,
                    "mode": "fwd+bwd",
                    "value": fracs[v],
                    "band": None,
                    "min_value": None,
                    "limit": 1.0,
                    "unit": "×",
                    "status": _status(fracs[v], None, 1.0),
                }
            )
    return out


def targets_table(targets) -> str:
    def num(v, unit):
        if v is None:
            return "—"
        return f"{v:.3f} ms" if unit == "ms" else f"{v:.3f}"

    rows = []
    for t in targets:
        band = "" if not t["band"] else f"{t['band'][0]:.2f}–{t['band'][1]:.2f}"
        rows.append(
            [
                t["target"],
                f"{t['shape'][0]}×{t['shape'][1]}",
                t["dtype"],
                t["mode"],
                num(t["value"], t["unit"]),
                band,
                num(t["min_value"], t["unit"]),
                t["limit"],
                t["status"],
            ]
        )
    headers = [
        "target",
        "shape",
        "dtype",
        "mode",
        "value",
        "IQR band",
        "of minima",
        "limit",
        "status",
    ]
    return harness.markdown_table(headers, rows, align="llllrrrrl")


# --------------------------------------------------------------------------- plot


PLOT_SERIES = [
    ("jaxce", "plain", "jaxce"),
    ("jaxce", "all_options", "jaxce all options"),
    ("naive", "plain", "naive log_softmax+gather"),
    ("torch", "plain", "torch"),
    ("floor", "read", "floor: read"),
    ("floor", "read+write", "floor: read+write"),
]


def plot(timings, path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'); no plot written")
        return None
    by_key = {key_of(t): t for t in timings}
    groups = group_order(timings)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 1.2 * len(groups) + 2), 8.5), sharey=True)
    width = 0.8 / len(PLOT_SERIES)
    for ax, mode in zip(axes, MODES, strict=True):
        for j, (impl, variant, label) in enumerate(PLOT_SERIES):
            xs, ys = [], []
            for gi, (shape, dtype) in enumerate(groups):
                ref = by_key.get((shape, dtype, "optax", "plain", mode))
                row_mode = "pass" if impl == "floor" else mode
                t = by_key.get((shape, dtype, impl, variant, row_mode))
                r = harness.ratio(t, ref)
                if r is not None:
                    xs.append(gi + (j - (len(PLOT_SERIES) - 1) / 2) * width)
                    ys.append(r)
            ax.bar(xs, ys, width=width, label=label)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{s[0]}×{s[1]}\n{d}" for s, d in groups], fontsize=8)
        ax.set_title(f"{mode}: time / optax time (lower is better)")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.set_ylabel("× optax (median)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small fast matrix (float32, 5 repeats)")
    p.add_argument("--shapes", help="comma list of NxC, e.g. 8192x1000,512x131072")
    p.add_argument("--dtypes", help="comma list of float32,bfloat16,float16")
    p.add_argument(
        "--repeats",
        type=int,
        help=f"timed samples per row (default {REPEATS_LARGE} for shapes of "
        f">= 2**24 elements, {REPEATS_SMALL} below; --quick {REPEATS_QUICK})",
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per case (default 2; 1 if >= 1 s)"
    )
    p.add_argument(
        "--min-sample-ms",
        type=float,
        default=5.0,
        help="short calls repeat inside a sample to last at least this long",
    )
    p.add_argument(
        "--variants",
        help=f"jaxce variants (default {JAXCE_VARIANTS}, without {SINGLE_OPTIONS} on shapes "
        f"of >= 2**24 elements; also {EXTRA_VARIANTS})",
    )
    p.add_argument("--torch-variants", help=f"torch variants (default {TORCH_VARIANTS})")
    p.add_argument("--modes", help="fwd,fwd+bwd (default both)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even when installed")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--out", help=f"output folder (default {RESULTS_DIR})")
    p.add_argument("--name", help="file stem (default <backend>-<date>[-quick])")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    backend = jax.default_backend()
    if args.shapes:
        shapes = parse_shapes(args.shapes)
    elif args.quick:
        shapes = QUICK_SHAPES
    else:
        shapes = DEFAULT_SHAPES + (GPU_EXTRA_SHAPES if backend == "gpu" else [])
    dtypes = parse_list(
        args.dtypes or ",".join(QUICK_DTYPES if args.quick else DEFAULT_DTYPES),
        ["float32", "bfloat16", "float16"],
        "dtypes",
    )
    variants = parse_list(
        args.variants or ",".join(JAXCE_VARIANTS), JAXCE_VARIANTS + EXTRA_VARIANTS, "variants"
    )
    if "plain" not in variants:
        variants = ["plain", *variants]

    def variants_for(shape) -> list[str]:
        if args.variants or math.prod(shape) < LARGE_ELEMENTS:
            return variants
        return [v for v in variants if v not in SINGLE_OPTIONS]

    torch_variants = parse_list(
        args.torch_variants or ",".join(v for v in TORCH_VARIANTS if v in variants),
        JAXCE_VARIANTS,
        "torch variants",
    )
    modes = parse_list(args.modes or ",".join(MODES), MODES, "modes")

    def repeats_for(shape) -> int:
        if args.repeats:
            return args.repeats
        if args.quick:
            return REPEATS_QUICK
        return REPEATS_LARGE if math.prod(shape) >= LARGE_ELEMENTS else REPEATS_SMALL

    repeats = sorted({repeats_for(s) for s in shapes})
    repeats_text = str(repeats[0]) if len(repeats) == 1 else f"{repeats[0]}–{repeats[-1]}"

    torch, torch_device = None, None
    if not args.no_torch:
        torch = harness.torch_setup()
        if torch is not None:
            if backend == "cpu":
                torch_device = "cpu"
            elif backend == "gpu" and torch.cuda.is_available():
                torch_device = "cuda"
            else:
                log(f"torch has no device matching the JAX backend {backend!r}; skipping torch")
                torch = None
    env = harness.environment(torch)
    log(
        f"backend {backend} ({env['device_kind']}), {env['cores']} cores, torch "
        f"{env.get('torch')}; shapes {shapes}, dtypes {dtypes}, repeats {repeats_text}"
    )

    timings: list[harness.Timing] = []
    for shape in shapes:
        for dtype in dtypes:
            t0 = time.perf_counter()
            log(f"[{shape[0]}x{shape[1]} {dtype}]")
            inputs = make_inputs(shape, jnp.dtype(dtype), probs="probs" in variants)
            cases = build_cases(
                shape,
                dtype,
                inputs,
                variants=variants_for(shape),
                modes=modes,
                torch=torch,
                torch_device=torch_device,
                torch_variants=torch_variants,
            )
            timings += harness.time_side_by_side(
                cases,
                repeats=repeats_for(shape),
                warmup=args.warmup,
                min_sample_s=args.min_sample_ms / 1e3,
                log=log,
            )
            del cases, inputs
            log(f"  group done in {time.perf_counter() - t0:.1f}s")

    add_ratios(timings)
    timings = sort_timings(timings)
    targets = check_targets(timings, backend)
    elapsed = time.perf_counter() - start

    out_dir = Path(args.out) if args.out else RESULTS_DIR
    suffix = "-quick" if args.quick else ""
    stem = args.name or f"{backend}-{_dt.date.today().isoformat()}{suffix}"
    config = {
        "shapes": [list(s) for s in shapes],
        "dtypes": dtypes,
        "variants": {f"{s[0]}x{s[1]}": variants_for(s) for s in shapes},
        "torch_variants": torch_variants if torch is not None else [],
        "modes": modes,
        "repeats": {f"{s[0]}x{s[1]}": repeats_for(s) for s in shapes},
        "warmup": args.warmup,
        "min_sample_ms": args.min_sample_ms,
        "ignore_index": IGNORE_INDEX,
        "ignore_fraction": IGNORE_FRACTION,
        "label_smoothing": SMOOTHING,
        "argv": list(sys.argv[1:] if argv is None else argv),
    }
    data = {
        "environment": env,
        "config": config,
        "elapsed_s": elapsed,
        "results": [t.to_dict() for t in timings],
        "targets": targets,
    }
    json_path = harness.write_atomic(out_dir / f"{stem}.json", harness.dump_json(data))

    title = (
        f"jaxce cross-entropy, {backend} ({env['device_kind']}, {env['cores']} cores), "
        f"{env['date'][:10]}, git {env['git']}"
    )
    md = [
        f"# {title}\n",
        f"jax {env['jax']}, optax {env['optax']}, torch {env.get('torch')} "
        f"({env.get('torch_threads', '—')} threads), {repeats_text} interleaved samples per row "
        f"after up to {args.warmup} warm-up calls; {elapsed:.0f} s in all.\n",
        "Times are per call (median, IQR = q3 − q1). Ratios divide this row's median by the "
        "median of: optax's integer-label CE (`×optax`; optax's probability CE for `probs`), "
        "torch with the same options (`×torch`), the one-read-pass floor (`×read`), and the "
        "same library without options (`×plain`). Below 1 is faster. `temp MiB` is the "
        "compiled temporary memory; `compile s` is trace+lower+compile, never part of the "
        "timings. See benchmarks/README.md.\n",
        "## Targets\n",
        targets_table(targets),
        "\n## Results\n",
        results_table(timings),
    ]
    md_path = harness.write_atomic(out_dir / f"{stem}.md", "\n".join(md))
    png_path = None if args.no_plot else plot(timings, out_dir / f"{stem}.png", title)
    log(f"wrote {md_path}, {json_path}" + (f", {png_path}" if png_path else ""))
    log(f"total {elapsed:.1f}s")
    return {"md": md_path, "json": json_path, "png": png_path, "data": data}


if __name__ == "__main__":
    main()
