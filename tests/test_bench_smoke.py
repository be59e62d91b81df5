"""Smoke test of the benchmark harness: it runs, and its outputs have the right shape.

Timings are not checked (benchmarks are programs, not timed tests); this only
guards ``benchmarks/harness.py`` and ``benchmarks/bench_ce.py`` against rot.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_ce
        import harness
    finally:
        sys.path.remove(str(BENCH_DIR))
    return harness, bench_ce


def test_time_side_by_side_mixes_jax_and_python_cases(bench):
    harness, _ = bench
    x = harness.to_device(jnp.ones((8, 4), jnp.float32))
    calls = []

    def python_fn():
        calls.append(1)
        return 0

    def broken(a):
        raise RuntimeError("boom")

    cases = [
        harness.Case("jax/sum", jax.jit(lambda a: jnp.sum(a * a)), (x,), meta={"k": 1}),
        harness.Case("py", python_fn, (), is_jax=False, sync=lambda _: None),
        harness.Case("jax/broken", broken, (x,)),
        *harness.floor_cases(x),
    ]
    timings = harness.time_side_by_side(cases, repeats=3, warmup=1, min_sample_s=0.0)
    assert [t.name for t in timings] == [c.name for c in cases]
    ok = {t.name: t for t in timings if t.ok}
    assert set(ok) == {"jax/sum", "py", "floor/read", "floor/exp-sum", "floor/read+write"}
    for t in ok.values():
        assert len(t.samples_ms) == 3
        assert t.q1_ms <= t.median_ms <= t.q3_ms and t.iqr_ms >= 0
    assert ok["jax/sum"].meta == {"k": 1}
    assert ok["jax/sum"].compile_s is not None and ok["py"].compile_s is None
    assert ok["py"].memory is None and len(calls) >= 4
    mem = ok["jax/sum"].memory
    assert mem is None or {"temp", "argument", "output"} <= set(mem)
    err = timings[2]
    assert not err.ok and "boom" in err.error
    assert harness.ratio(ok["jax/sum"], err) is None
    lo, hi = harness.ratio_range(ok["jax/sum"], ok["py"])
    assert lo <= harness.ratio(ok["jax/sum"], ok["py"]) <= hi


def test_bench_ce_writes_markdown_json_png(bench, tmp_path):
    _, bench_ce = bench
    argv = [
        "--shapes", "64x10",
        "--dtypes", "float32",
        "--repeats", "2",
        "--warmup", "1",
        "--min-sample-ms", "0",
        "--variants", "plain,all_options",
        "--torch-variants", "plain,all_options",
        "--out", str(tmp_path),
        "--name", "smoke",
    ]  # fmt: skip
    has_torch = importlib.util.find_spec("torch") is not None
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    out = bench_ce.main(argv)

    data = json.loads((tmp_path / "smoke.json").read_text())
    assert {"environment", "config", "results", "targets", "elapsed_s"} <= set(data)
    assert data["environment"]["backend"] == jax.default_backend()
    rows = data["results"]
    keys = {(r["meta"]["impl"], r["meta"]["variant"], r["meta"]["mode"]) for r in rows}
    expected = {("floor", v, "pass") for v in ("read", "exp-sum", "read+write")}
    for mode in ("fwd", "fwd+bwd"):
        expected |= {("jaxce", "plain", mode), ("jaxce", "all_options", mode)}
        expected |= {("optax", "plain", mode), ("naive", "plain", mode)}
        if has_torch:
            expected |= {("torch", "plain", mode), ("torch", "all_options", mode)}
    assert keys == expected
    for r in rows:
        assert r["error"] is None, r
        assert r["meta"]["shape"] == [64, 10] and r["meta"]["dtype"] == "float32"
        assert len(r["samples_ms"]) == 2 and r["median_ms"] > 0
        refs = {"read"} if r["meta"]["impl"] == "floor" else {"read", "optax", "torch"}
        assert refs <= set(r["meta"]["ratios"])
        if r["meta"]["impl"] != "torch":
            assert r["compile_s"] is not None
    jaxce_plain = next(
        r for r in rows if r["meta"]["impl"] == "jaxce" and r["meta"]["variant"] == "plain"
    )
    ratios = jaxce_plain["meta"]["ratios"]
    assert ratios["optax"] is not None and math.isfinite(ratios["optax"])
    assert (ratios["torch"] is not None) == has_torch
    targets = {t["target"] for t in data["targets"]}
    assert "jaxce/optax ≤ 1" in targets and "all_options/plain ≤ 1.3" in targets

    md = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in md and "## Results" in md
    header = "| shape | dtype | mode | impl | variant | median ms | IQR ms | ×optax |"
    assert header in md
    result_lines = [ln for ln in md.splitlines() if ln.startswith("| 64×10 | float32 |")]
    assert len(result_lines) == len(rows)

    assert (tmp_path / "smoke.png").exists() == has_mpl
    assert out["json"] == tmp_path / "smoke.json"
    assert not list(tmp_path.glob("*.tmp"))


def test_device_check_script_runs_on_tiny_shapes(tmp_path):
    """``benchmarks/device_check.sh`` (the prepared GPU check) as a dry run on this backend:
    both benchmarks run and write their tables."""
    import os
    import subprocess

    env = dict(os.environ, CE_SHAPES="64x512", LINEAR_SHAPES="64x32x512", REPEATS="2")
    env.update(OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(BENCH_DIR / "device_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for stem in ("ce-device", "linear-device"):
        table = (tmp_path / f"{stem}.md").read_text()
        assert "jaxce" in table or "fused" in table, table[:500]
        json.loads((tmp_path / f"{stem}.json").read_text())
