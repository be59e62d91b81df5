"""A small, reusable timing harness for JAX (and torch) kernels.

Benchmarks are programs, not timed unit tests: this module only measures and
formats; the suites (``bench_ce.py``, later a fused linear-cross-entropy one)
decide what to run and what to compare.

The main entry point is :func:`time_side_by_side`. It takes a list of
:class:`Case` (a name, a function, its arguments) and

* for a JAX function, lowers and compiles it ahead of time, reporting the
  trace/lower and compile times apart from the run time, and the compiled
  memory (``.lower(...).compile().memory_analysis()``, temporaries included);
  the compiled executable is what gets timed, so no run ever includes a
  compilation;
* warms every case up, then picks a number of inner calls per sample so one
  sample lasts at least ``min_sample_s`` (timer resolution and dispatch
  jitter stay small);
* times the cases *interleaved*: ``repeats`` rounds, each round taking one
  sample of every case in a shuffled order. Slow drifts of a shared, noisy
  machine then hit all cases alike, so ratios measured in one run are more
  trustworthy than the absolute times;
* every call is followed by ``block_until_ready`` (or the case's own ``sync``),
  and the Python garbage collector is off while a sample runs.

Each case gives a :class:`Timing` with the median, quartiles, IQR and minimum
of the per-call times in milliseconds.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Case",
    "Timing",
    "available_cores",
    "dump_json",
    "environment",
    "floor_cases",
    "markdown_table",
    "memory_stats",
    "ratio",
    "ratio_range",
    "time_side_by_side",
    "to_device",
    "torch_setup",
    "torch_sync",
    "write_atomic",
]


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    """One thing to time.

    ``fn(*args)`` is called as is. With ``is_jax=True`` (the default) ``fn``
    is a JAX function, ``jax.jit``-ed here when it is not already, and
    compiled ahead of time; its result is waited for with
    ``jax.block_until_ready``. With ``is_jax=False`` (torch, NumPy, anything)
    ``sync(result)`` is called after each call when given, and no compile
    time or memory is reported.

    ``meta`` is copied into the :class:`Timing` (impl, variant, mode, ...).
    """

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    is_jax: bool = True
    sync: Callable[[Any], Any] | None = None
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Timing:
    """The measurements of one :class:`Case`; times are per call, in ms."""

    name: str
    meta: dict
    median_ms: float = math.nan
    q1_ms: float = math.nan
    q3_ms: float = math.nan
    iqr_ms: float = math.nan
    min_ms: float = math.nan
    samples_ms: list = dataclasses.field(default_factory=list)
    inner: int = 0
    lower_s: float | None = None
    compile_s: float | None = None
    memory: dict | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not math.isnan(self.median_ms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def to_device(*arrays, device=None):
    """``jax.device_put`` each array and wait, so no timing includes a transfer."""
    out = tuple(jax.device_put(a, device) for a in arrays)
    jax.block_until_ready(out)
    return out if len(out) != 1 else out[0]


def memory_stats(compiled) -> dict | None:
    """The byte counts of ``compiled.memory_analysis()`` as a dict (None if unsupported)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # backends without memory analysis
        return None
    if ma is None:
        return None
    keys = (
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {k.removesuffix("_size_in_bytes"): int(getattr(ma, k, 0) or 0) for k in keys}


# --------------------------------------------------------------------------- floors


def floor_cases(x, *, prefix: str = "floor", meta: dict | None = None) -> list[Case]:
    """The memory/compute floors for an input ``x`` (any shape, class axis last).

    * ``read``: one read pass, a jitted ``max`` over all of ``x``;
    * ``exp-sum``: one read pass doing an ``exp`` per element and summing all of
      them in float32 (the arithmetic of a logsumexp without its max pass; one sum
      over everything, because XLA:CPU sums rows longer than 32768 about 9x slower);
    * ``read+write``: one read and one write of ``x``'s size (``2·x``), the
      traffic any gradient of ``x`` needs at least.
    """
    meta = dict(meta or {})

    def read(a):
        return jnp.max(a)

    def expsum(a):
        return jnp.sum(jnp.exp(a.astype(jnp.float32)))

    def readwrite(a):
        return a * 2

    return [
        Case(f"{prefix}/read", jax.jit(read), (x,), meta={**meta, "variant": "read"}),
        Case(f"{prefix}/exp-sum", jax.jit(expsum), (x,), meta={**meta, "variant": "exp-sum"}),
        Case(
            f"{prefix}/read+write",
            jax.jit(readwrite),
            (x,),
            meta={**meta, "variant": "read+write"},
        ),
    ]


# --------------------------------------------------------------------------- torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def torch_setup(threads: int | None = None):
    """Imports torch and sets its intra-op threads to the usable cores; None if absent."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads or available_cores())
    return torch


def torch_sync(torch, device) -> Callable[[Any], None]:
    """A ``sync`` for :class:`Case`: waits for CUDA work, nothing on CPU."""
    if str(device).startswith("cuda"):
        return lambda _: torch.cuda.synchronize()
    return lambda _: None


# --------------------------------------------------------------------------- timing


def _prepare(case: Case, timing: Timing, log) -> Callable[..., Any] | None:
    """The callable to time (compiled ahead of time for JAX), or None after an error."""
    if not case.is_jax:
        return case.fn
    fn = case.fn if hasattr(case.fn, "lower") else jax.jit(case.fn)
    try:
        t0 = time.perf_counter()
        lowered = fn.lower(*case.args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    except Exception as e:  # a case that cannot compile is reported, not fatal
        timing.error = f"{type(e).__name__}: {e}"[:500]
        log(f"  ! {case.name}: {timing.error}")
        return None
    timing.lower_s = t1 - t0
    timing.compile_s = t2 - t1
    timing.memory = memory_stats(compiled)
    return compiled


def _waiter(case: Case) -> Callable[[Any], Any]:
    if case.is_jax:
        return jax.block_until_ready
    return case.sync or (lambda _: None)


def _sample(fn, args, wait, inner: int) -> float:
    """Seconds per call, averaged over ``inner`` calls each waited for."""
    t0 = time.perf_counter()
    for _ in range(inner):
        wait(fn(*args))
    return (time.perf_counter() - t0) / inner


def _quantiles(samples: Sequence[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return float(q1), float(med), float(q3)


def time_side_by_side(
    cases: Sequence[Case],
    *,
    repeats: int = 10,
    warmup: int = 2,
    warmup_budget_s: float = 1.0,
    min_sample_s: float = 0.005,
    max_inner: int = 1000,
    shuffle: bool = True,
    seed: int = 0,
    settle_s: float = 0.0005,
    log: Callable[[str], Any] | None = None,
) -> list[Timing]:
    """Times ``cases`` interleaved; returns one :class:`Timing` per case, in order.

    Args:
      cases: the cases; their arguments should already be on the device (see
        :func:`to_device`).
      repeats: samples per case (rounds); the median and IQR are over these.
      warmup: untimed calls per case after compilation; fewer (at least one)
        once they have taken ``warmup_budget_s`` in all.
      min_sample_s: a sample repeats the call until it lasts at least this long
        (judged by the fastest warm-up call), at most ``max_inner`` times.
      shuffle: shuffle the order of the cases in each round (seeded).
      settle_s: untimed pause between samples, so that one library's spinning
        worker threads do not eat into the next case.
      log: called with progress lines (e.g. ``print``); silent when None.

    A case that raises is reported with ``error`` set and skipped; the
    others still run.
    """
    log = log or (lambda _msg: None)
    timings = [Timing(c.name, dict(c.meta)) for c in cases]
    runnable = []  # (index, fn, wait, inner)
    for i, case in enumerate(cases):
        t = timings[i]
        fn = _prepare(case, t, log)
        if fn is None:
            continue
        wait = _waiter(case)
        try:
            last, spent = math.inf, 0.0
            for _ in range(max(1, warmup)):
                s = _sample(fn, case.args, wait, 1)
                last, spent = min(last, s), spent + s
                if spent >= warmup_budget_s:
                    break
        except Exception as e:
            t.error = f"{type(e).__name__}: {e}"[:500]
            log(f"  ! {case.name}: {t.error}")
            continue
        inner = 1 if last <= 0 else int(min(max_inner, max(1, math.ceil(min_sample_s / last))))
        t.inner = inner
        runnable.append((i, fn, wait, inner))
        compile_note = "" if t.compile_s is None else f", compile {t.compile_s:.2f}s"
        log(f"  ready {case.name}: ~{last * 1e3:.3f} ms/call, inner {inner}{compile_note}")

    rng = random.Random(seed)
    samples: dict[int, list[float]] = {i: [] for i, *_ in runnable}
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            gc.collect()
            order = list(runnable)
            if shuffle:
                rng.shuffle(order)
            for i, fn, wait, inner in order:
                if timings[i].error is not None:
                    continue
                gc.disable()
                try:
                    samples[i].append(_sample(fn, cases[i].args, wait, inner))
                except Exception as e:
                    timings[i].error = f"{type(e).__name__}: {e}"[:500]
                    log(f"  ! {cases[i].name}: {timings[i].error}")
                finally:
                    if gc_was_enabled:
                        gc.enable()
                if settle_s:
                    time.sleep(settle_s)
    finally:
        if gc_was_enabled:
            gc.enable()

    for i, s in samples.items():
        t = timings[i]
        if not s or t.error is not None:
            continue
        ms = [v * 1e3 for v in s]
        q1, med, q3 = _quantiles(ms)
        t.samples_ms = ms
        t.median_ms, t.q1_ms, t.q3_ms = med, q1, q3
        t.iqr_ms = q3 - q1
        t.min_ms = min(ms)
    return timings


# --------------------------------------------------------------------------- ratios


def ratio(a: Timing | None, b: Timing | None) -> float | None:
    """``a.median / b.median``, or None when either is missing or failed."""
    if a is None or b is None or not a.ok or not b.ok or b.median_ms <= 0:
        return None
    return a.median_ms / b.median_ms


def ratio_range(a: Timing | None, b: Timing | None) -> tuple[float, float] | None:
    """A noise band for ``a/b``: ``(a.q1 / b.q3, a.q3 / b.q1)``."""
    if a is None or b is None or not a.ok or not b.ok or b.q1_ms <= 0 or b.q3_ms <= 0:
        return None
    return a.q1_ms / b.q3_ms, a.q3_ms / b.q1_ms


# --------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align=None) -> str:
    """A GitHub markdown table; ``align`` is a string of 'l'/'r' per column."""
    align = align or "l" * len(headers)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes through ``<path>.tmp`` and renames, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return run.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "jaxce")
    except Exception:
        return None
    return rev + ("+dirty(jaxce)" if dirty else "")


def environment(torch=None) -> dict:
    """Where the numbers come from: backend, devices, versions, cores, date, git revision."""
    import jaxlib

    dev = jax.devices()[0]
    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device_kind": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cores": available_cores(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "git": _git_revision(),
    }
    try:
        import optax

        env["optax"] = optax.__version__
    except ImportError:
        env["optax"] = None
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cuda"] = bool(torch.cuda.is_available())
    else:
        env["torch"] = None
    return env


def dump_json(obj: Any) -> str:
    """JSON with NaN/inf written as null (strict JSON readers accept it)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating,)):
            return clean(float(v))
        return v

    return json.dumps(clean(obj), indent=1, sort_keys=False) + "\n"
