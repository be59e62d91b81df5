"""Writes the Performance page's tables and plots from ``benchmarks/results/*.json``.

Run by ``docs/conf.py`` before every build (and by hand:
``python docs/gen_performance.py [RESULTS_DIR] [OUT_DIR]``). It reads the JSON files that
``benchmarks/bench_ce.py`` (keys ``results`` and ``targets``) and
``benchmarks/bench_linear.py`` (key ``rows``) write, newest run first, and writes
``OUT_DIR/performance_results.md`` (included by ``docs/performance.md``) and one PNG plot
per run beside it. Nothing on the page is typed by hand: a new run in
``benchmarks/results`` (a GPU run of ``benchmarks/device_check.sh`` included) appears on
the next build. Output files are replaced atomically, and only when their content changed.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import sys
import tempfile

PAGE = "performance_results.md"
CE_SHAPES_NOTE = "ratios below 1 are faster than the reference"


def _write_if_changed(path: pathlib.Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return  # unchanged: Sphinx sees no new file and keeps its cache
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _num(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _shape(shape) -> str:
    return "×".join(str(s) for s in shape) if isinstance(shape, (list, tuple)) else str(shape)


def _env_line(env: dict) -> str:
    parts = [
        f"{env.get('date', '?').replace('T', ' ')}",
        f"backend {env.get('backend', '?')} ({env.get('device_kind', '?')}, "
        f"{env.get('device_count', '?')} device(s), {env.get('cores', '?')} cores)",
        f"jax {env.get('jax', '?')}",
    ]
    if env.get("optax"):
        parts.append(f"optax {env['optax']}")
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    parts.append(f"git {env.get('git', '?')}")
    return ", ".join(parts)


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# --- bench_ce.py ----------------------------------------------------------------------


def _ce_index(results: list[dict]) -> dict:
    index = {}
    for r in results:
        m = r["meta"]
        index[(tuple(m["shape"]), m["dtype"], m["impl"], m["mode"], m["variant"])] = r
    return index


def _ce_summary(data: dict) -> tuple[str, list[dict]]:
    """The summary table (one row per shape × dtype) and the numbers the plot needs."""
    index = _ce_index(data["results"])
    keys = list({(k[0], k[1]) for k in index if k[2] == "jaxce"})
    # float32 first, then the shapes in the order the run measured them.
    order = [tuple(s) for s in data.get("config", {}).get("shapes", [])]
    keys.sort(key=lambda k: (k[1] != "float32", k[1], order.index(k[0]) if k[0] in order else 99))
    rows, plot = [], []
    for shape, dtype in keys:

        def get(mode, variant="plain", impl="jaxce", shape=shape, dtype=dtype):
            return index.get((shape, dtype, impl, mode, variant))

        fwd, bwd = get("fwd"), get("fwd+bwd")
        if fwd is None or bwd is None:
            continue
        opts_f, opts_b = get("fwd", "all_options"), get("fwd+bwd", "all_options")

        def temp(r):
            mem, gb = r.get("memory"), r["meta"].get("grad_bytes")
            return mem["temp"] / gb if mem and gb else None

        variants = [
            r for k, r in index.items() if k[:4] == (shape, dtype, "jaxce", "fwd+bwd")
        ]
        temps = [t for t in (temp(r) for r in variants) if t is not None]
        rf, rb = fwd["meta"]["ratios"], bwd["meta"]["ratios"]
        rows.append(
            [
                _shape(shape),
                dtype,
                _num(fwd["median_ms"]),
                _num(rf.get("optax")),
                _num(rf.get("torch")),
                _num(bwd["median_ms"]),
                _num(rb.get("optax")),
                _num(rb.get("torch")),
                f"{_num(opts_f and opts_f['meta']['ratios'].get('plain'))} / "
                f"{_num(opts_b and opts_b['meta']['ratios'].get('plain'))}",
                f"{_num(temp(bwd), 1)} / {_num(max(temps) if temps else None, 1)}",
            ]
        )
        plot.append(
            {
                "label": f"{_shape(shape)}\n{dtype}",
                "fwd": rf.get("optax"),
                "fwd+bwd": rb.get("optax"),
                "fwd band": fwd["meta"].get("ratio_bands", {}).get("optax"),
                "fwd+bwd band": bwd["meta"].get("ratio_bands", {}).get("optax"),
            }
        )
    header = [
        "shape (N×C)", "dtype", "fwd ms", "×optax", "×torch", "fwd+bwd ms", "×optax",
        "×torch", "opts ×plain fwd / fwd+bwd", "temp plain / worst",
    ]  # fmt: skip
    align = [":---", ":---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]
    return _table(header, align, rows), plot


def _ce_targets(data: dict) -> str:
    rows = []
    for t in data.get("targets", []):
        band = t.get("band")
        rows.append(
            [
                t["target"],
                _shape(t["shape"]),
                t["dtype"],
                t["mode"],
                _num(t.get("value"), 3),
                f"{_num(band[0])}–{_num(band[1])}" if band else "—",
                _num(t.get("min_value"), 3),
                t.get("status", ""),
            ]
        )
    header = ["target", "shape", "dtype", "mode", "value", "IQR band", "of minima", "status"]
    align = [":---", ":---", ":---", ":---", "---:", "---:", "---:", ":---"]
    return _table(header, align, rows)


def _ce_plot(plot: list[dict], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(plot)), 3.6), dpi=110)
    width = 0.38
    for i, (mode, color) in enumerate((("fwd", "#4c72b0"), ("fwd+bwd", "#dd8452"))):
        xs = [j + (i - 0.5) * width for j in range(len(plot))]
        ys = [p[mode] if p[mode] is not None else float("nan") for p in plot]
        lo = [y - (p[f"{mode} band"] or (y, y))[0] for y, p in zip(ys, plot, strict=True)]
        hi = [(p[f"{mode} band"] or (y, y))[1] - y for y, p in zip(ys, plot, strict=True)]
        ax.bar(xs, ys, width, label=mode, color=color, yerr=[lo, hi], capsize=2)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylabel("time ÷ optax (log)")
    ax.set_xticks(range(len(plot)), [p["label"] for p in plot], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# --- bench_linear.py ------------------------------------------------------------------


def _linear_schedule(rows: list[dict], shape: str, dtype: str) -> str:
    """Which schedule ``auto`` compiled to: the one with the same temporary memory."""
    by_impl = {r["impl"]: r for r in rows if r["shape"] == shape and r["dtype"] == dtype}
    auto = by_impl.get("fused/auto")
    if auto is None or auto.get("temp_mib") is None:
        return "?"
    same = [
        name.split("/")[1]
        for name in ("fused/forward", "fused/recompute")
        if name in by_impl and by_impl[name].get("temp_mib") == auto["temp_mib"]
    ]
    return same[0] if len(same) == 1 else "?"


def _linear_grid(rows: list[dict]) -> str | None:
    """``auto``'s time and memory ratios on the N × D grid (one table per V and dtype)."""
    autos = [r for r in rows if r["impl"] == "fused/auto" and not r.get("error")]
    shapes = {tuple(int(s) for s in r["shape"].split("x")) for r in autos}
    ns = sorted({s[0] for s in shapes})
    ds = sorted({s[1] for s in shapes})
    if len(ns) < 2 or len(ds) < 2:
        return None
    out = []
    for v in sorted({s[2] for s in shapes}):
        for dtype in sorted({r["dtype"] for r in autos}):
            body = []
            for n in ns:
                cells = [str(n)]
                for d in ds:
                    key = f"{n}x{d}x{v}"
                    r = next((r for r in autos if r["shape"] == key and r["dtype"] == dtype), None)
                    if r is None:
                        cells.append("—")
                        continue
                    sched = _linear_schedule(rows, key, dtype)
                    cells.append(
                        f"**{_num(r['time_ratio'])}**, {r['temp_ratio']:.3f} ({sched})"
                    )
                body.append(cells)
            header = [f"N \\ D (V = {v}, {dtype})"] + [str(d) for d in ds]
            out.append(_table(header, [":---"] + ["---:"] * len(ds), body))
    return "\n\n".join(out)


def _linear_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        band = r.get("time_ratio_band")
        body.append(
            [
                r["shape"].replace("x", "×"),
                r["dtype"],
                r["impl"],
                _num(r.get("median_ms")),
                _num(r.get("temp_mib")),
                "—" if r.get("temp_ratio") is None else f"{r['temp_ratio']:.4f}",
                _num(r.get("time_ratio"))
                + (f" ({_num(band[0])}–{_num(band[1])})" if band else ""),
                "error: " + str(r["error"]).splitlines()[0] if r.get("error") else "",
            ]
        )
    header = [
        "N×D×V", "dtype", "impl", "median ms", "temp MiB", "temp ratio",
        "time ratio (IQR band)", "",
    ]  # fmt: skip
    return _table(header, [":---", ":---", ":---", "---:", "---:", "---:", "---:", ":---"], body)


def _linear_plot(rows: list[dict], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(f"{r['shape']}\n{r['dtype']}" for r in rows))
    impls = [i for i in ("fused/forward", "fused/recompute", "fused/auto")
             if any(r["impl"] == i for r in rows)]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.0 * len(shapes) + 3), 3.6), dpi=110)
    width = 0.8 / max(1, len(impls))
    for metric, ax, label in (
        ("time_ratio", axes[0], "time ÷ materialised"),
        ("temp_ratio", axes[1], "temporaries ÷ materialised (log)"),
    ):
        for i, impl in enumerate(impls):
            ys = []
            for key in shapes:
                r = next(
                    (r for r in rows if f"{r['shape']}\n{r['dtype']}" == key and r["impl"] == impl),
                    None,
                )
                ys.append(float("nan") if r is None or r.get(metric) is None else r[metric])
            xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(shapes))]
            ax.bar(xs, ys, width, label=impl.split("/")[1])
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        if metric == "temp_ratio":
            ax.set_yscale("log")
            ax.axhline(1 / 16, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(range(len(shapes)), shapes, fontsize=6, rotation=90)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# --- the page -------------------------------------------------------------------------


def _sections(results_dir: pathlib.Path, out_dir: pathlib.Path) -> list[str]:
    runs = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        runs.append((data.get("environment", {}).get("date", ""), path, data))
    runs.sort(key=lambda r: (r[0], r[1].name), reverse=True)
    ce, linear = [], []
    for _, path, data in runs:
        env = data.get("environment", {})
        stem = path.stem
        source = f"`benchmarks/results/{path.name}`"
        if "results" in data:
            summary, plot = _ce_summary(data)
            png = f"{stem}.png"
            _write_if_changed(out_dir / png, _ce_plot(plot, f"{stem}: jaxce (plain) ÷ optax"))
            elapsed = data.get("elapsed_s")
            ce.append(
                "\n\n".join(
                    [
                        f"#### {stem}",
                        f"{_env_line(env)}; from {source}"
                        + (f", {elapsed:.0f} s in all." if elapsed else "."),
                        summary,
                        f"![jaxce time relative to optax, {stem}]({png})",
                        f"Targets of this run ({CE_SHAPES_NOTE}):",
                        _ce_targets(data),
                    ]
                )
            )
        elif "rows" in data:
            rows = data["rows"]
            grid = _linear_grid(rows)
            png = f"{stem}.png"
            _write_if_changed(out_dir / png, _linear_plot(rows, f"{stem}: fused ÷ materialised"))
            parts = [f"#### {stem}", f"{_env_line(env)}; from {source}."]
            if grid:
                parts += [
                    "`auto`'s time ratio (bold), its temporary-memory ratio, and the schedule "
                    "it compiled to (the one with the same temporary memory):",
                    grid,
                ]
            parts += [
                f"![fused linear cross-entropy relative to the materialised logits, {stem}]"
                f"({png})",
                "All rows:",
                _linear_table(rows),
            ]
            linear.append("\n\n".join(parts))
        else:
            raise ValueError(
                f"gen_performance: {path} is neither a bench_ce.py nor a bench_linear.py result"
            )
    return ce, linear


def render(results_dir: pathlib.Path, out_dir: pathlib.Path) -> str:
    ce, linear = _sections(results_dir, out_dir)
    head = (
        "<!-- Generated by docs/gen_performance.py from benchmarks/results/*.json; "
        "do not edit. -->"
    )
    parts = [head, "### Cross-entropy runs (`bench_ce.py`)"]
    parts += ce or ["No `bench_ce.py` results in `benchmarks/results/`."]
    parts += ["### Fused linear cross-entropy runs (`bench_linear.py`)"]
    parts += linear or ["No `bench_linear.py` results in `benchmarks/results/`."]
    return "\n\n".join(parts) + "\n"


def main(results_dir, out_dir) -> pathlib.Path:
    results_dir, out_dir = pathlib.Path(results_dir), pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / PAGE
    _write_if_changed(page, render(results_dir, out_dir).encode())
    return page


if __name__ == "__main__":
    here = pathlib.Path(__file__).resolve().parent
    args = sys.argv[1:]
    results = args[0] if args else here.parent / "benchmarks" / "results"
    out = args[1] if len(args) > 1 else here / "_generated"
    print(main(results, out))
