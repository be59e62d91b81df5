"""Golden-case parity: jaxce against torch 2.13.0 (CPU) results stored in ``tests/golden/``.

The cases come from ``tests/golden/generate.py`` (``make golden``); torch is not needed
to run this file. Every case id names the function, the situation and the dtype, so a
failure reads like ``cross_entropy/2d/weight/mean/f32``. Case kinds:

* ``value``: jaxce's result (and its VJP with the stored cotangent, for ``x`` and, where
  recorded, the probability target and the weight) must match the reference;
* ``nan``: a non-ignored target outside ``[0, C)``: NaN at that position, torch's values
  elsewhere (spec 9.3), and :func:`jaxce.checked` raises an error naming the target;
* ``error``: jaxce raises one of the recorded exception types, eagerly and while tracing
  under :func:`jax.jit` (nothing is executed).

Tolerances, ``|jaxce - ref| <= atol + rtol * |ref| + 2 * err``, with NaN and ±inf required
to match exactly, and the gradient on ignored positions exactly 0 (spec 4, 9.6). ``err`` is
torch's own float32 error on that entry, ``|torch_f32 - torch_f64|`` on the same inputs (0 for
float64 cases): an ill-conditioned entry (a difference of nearly equal terms) may be off by
as much as torch itself is (when written, two float32 gradient entries needed it, about 5e-6
relative: ``softmax/3d/axis0/f32`` and the weight gradient of ``ls/0.05/weight-ignore/mean/f32``).

* float64 (under ``jax.enable_x64``): ``rtol = 1e-12``, ``atol = 1e-14 * max(1, max|ref|)``.
  Both libraries compute the same formulas; the slack covers summation order.
* float32 (x64 off): ``rtol = 1e-6``, ``atol = 1e-7 * max(1, max|ref|)`` (spec 7.2: jaxce and
  torch agree to about 3 ulp). Cases that mix float32 and float64 inputs use these too.
* the notebook values (spec 3.1/7.2) must be bit-for-bit equal in float32, on jaxce's
  ordinary eager call.
* float16 / bfloat16: torch's CPU kernels keep low-precision intermediates (spec 1.5, 2.4),
  while jaxce computes in float32 and rounds once (spec 9.5). So the reference is torch's
  float32 result on the up-cast input (and the up-cast cotangent), and jaxce must lie within
  half an ulp of the low dtype of it (the one rounding), plus ``8 * eps_f32 * max(1, max|ref|)``
  for float32 noise (or equal it rounded, which covers overflow to inf). This is tight enough
  to reject torch's own CPU results where they differ (e.g. bf16 0.37890625 for the notebook
  example, fp16 ``inf`` for a 20000-row mean); those are kept in ``cases.json`` for the record.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxce

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
INDEX = json.loads((GOLDEN / "cases.json").read_text())
CASES = INDEX["cases"]
with np.load(GOLDEN / "cases.npz", allow_pickle=False) as _npz:
    ARRAYS = {k: _npz[k] for k in _npz.files}

TOL = {"f64": (1e-12, 1e-14), "f32": (1e-6, 1e-7)}
LOW = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
NOTEBOOK = {0.3774033188819885, 1.8615424633026123}
LOSSES = ("nll_loss", "cross_entropy", "nll_log_softmax")


# ---------------------------------------------------------------------------------
# decoding a case


def _opt(v):
    if isinstance(v, dict) and "$float" in v:
        return float(v["$float"])
    return v


def options(case) -> dict:
    """jaxce keyword options; a label_smoothing array is returned under ``ls_array``."""
    out = {}
    for k, v in case["options"].items():
        if isinstance(v, dict) and "$array" in v:
            out["ls_array"] = np.asarray(v["value"], np.dtype(v["$array"]))
        elif isinstance(v, dict) and "$list" in v:
            out[k] = list(v["$list"])
        else:
            out[k] = _opt(v)
    return out


def load_input(spec, x64: bool) -> np.ndarray:
    a = ARRAYS[spec["key"]]
    dtype = spec["dtype"]
    if dtype in LOW:
        return np.asarray(a, np.float32).astype(LOW[dtype])
    if dtype == "int64" and not x64:
        # without x64 JAX's integers are 32-bit; the generator keeps such values in range
        assert np.all(np.abs(a) < 2**31), spec
        return a.astype(np.int32)
    return np.asarray(a, np.dtype(dtype))


def inputs(case, layout="torch"):
    x64 = case["x64"]
    arrs = {k: load_input(v, x64) for k, v in case["inputs"].items()}
    if layout == "last":
        arrs["x"] = np.moveaxis(arrs["x"], 1, -1)
        if "target" in arrs and not is_int(arrs["target"]):
            arrs["target"] = np.moveaxis(arrs["target"], 1, -1)
    return arrs


def is_int(a) -> bool:
    return np.issubdtype(a.dtype, np.integer)


def x64_mode(case):
    return jax.enable_x64(True) if case["x64"] else contextlib.nullcontext()


def call_jaxce(fn, x, target, weight, opts):
    """The jaxce public call a case stands for."""
    opts = dict(opts)
    if weight is not None:
        opts["weight"] = weight
    if fn in ("log_softmax", "softmax", "logsumexp"):
        return getattr(jaxce, fn)(x, axis=opts["axis"])
    if fn == "nll_log_softmax":
        lp = jaxce.log_softmax(x, axis=opts.get("axis", -1))
        return jaxce.nll_loss(lp, target, **opts)
    return getattr(jaxce, fn)(x, target, **opts)


def differentiable(case) -> tuple:
    """Every floating input: the logits, a probability target, the weight (spec 9.7).

    Taking all of them, whether or not a reference gradient is stored, keeps one program
    per shape-and-options family.
    """
    ins = case["inputs"]
    names = ["x"]
    if "target" in ins and not np.issubdtype(
        np.dtype(LOW.get(ins["target"]["dtype"], ins["target"]["dtype"])), np.integer
    ):
        names.append("target")
    if "weight" in ins:
        names.append("weight")
    return tuple(names)


def _value_and_vjp(fn, static, diff, x, target, weight, ls, cot):
    """jaxce's output and its VJP with ``cot`` for the ``diff`` arguments."""
    opts = {k: _opt(v) for k, v in static.items()}
    if ls is not None:
        opts["label_smoothing"] = ls
    prim = {"x": x, "target": target, "weight": weight}

    def f(*d):
        a = dict(prim, **dict(zip(diff, d, strict=True)))
        return call_jaxce(fn, a["x"], a["target"], a["weight"], opts)

    out, vjp = jax.vjp(f, *[prim[n] for n in diff])
    return out, dict(zip(diff, vjp(cot), strict=True))


# Compiling is what costs time here (about 0.1 s of CPU per program), so cases are run in
# batches: cases with the same function, options, shapes and dtypes form a family, up to
# CHUNK families are traced into one jitted program (XLA compiles a batch about twice as fast
# as its parts one by one), and that program is re-run with the next case of each family
# until all are done. A family whose trace raises records the error for its cases. The
# batches a session needs are traced up front and compiled on two threads (XLA releases
# the GIL), so compiling overlaps tracing when the machine has a free core.
CHUNK = 32


def _args(case, layout):
    opts = options(case)
    ls = opts.get("ls_array")
    a = inputs(case, layout)
    cot = load_input({"key": case["cot"], "dtype": case["result"]["dtype"]}, case["x64"])
    return (a["x"], a.get("target"), a.get("weight"), ls, cot)


def _family(case, layout):
    static = {
        k: v for k, v in case["options"].items() if not (isinstance(v, dict) and "$array" in v)
    }
    if layout == "last":
        static["axis"] = -1
    with x64_mode(case):
        args = _args(case, layout)
    shapes = tuple(None if v is None else (v.shape, str(v.dtype)) for v in args)
    return (
        case["x64"],
        case["fn"],
        json.dumps(static, sort_keys=True),
        differentiable(case),
        shapes,
    )


@functools.cache
def _plan():
    families: dict[tuple, list] = {}
    for c in CASES:
        if c["expect"] not in ("value", "nan"):
            continue
        for layout in c.get("layouts", ["torch"]):
            families.setdefault(_family(c, layout), []).append((c, layout))
    chunks, where = [], {}
    for x64 in (False, True):
        fams = [(k, v) for k, v in families.items() if k[0] == x64]
        for i in range(0, len(fams), CHUNK):
            for _, members in fams[i : i + CHUNK]:
                for c, layout in members:
                    where[(c["id"], layout)] = len(chunks)
            chunks.append(fams[i : i + CHUNK])
    return chunks, where


_RESULTS: dict[tuple, object] = {}
_COMPILED: dict[int, tuple] = {}


def _chunk_mode(index):
    x64 = _plan()[0][index][0][0][0]
    return jax.enable_x64(True) if x64 else contextlib.nullcontext()


def _lower_chunk(index):
    """Traces a batch: returns the lowered program and the families whose trace raised."""
    fams = _plan()[0][index]
    errors: dict[int, BaseException] = {}

    def batch(all_args):
        outs = []
        for j, ((_, fn, static, diff, _), _members) in enumerate(fams):
            try:
                outs.append(_value_and_vjp(fn, json.loads(static), diff, *all_args[j]))
            except Exception as e:  # noqa: BLE001 - reported by that family's tests
                errors[j] = e
                outs.append(None)
        return outs

    with _chunk_mode(index):
        lowered = jax.jit(batch).lower([_args(*members[0]) for _, members in fams])
    return lowered, errors


def _compile_chunks(indices):
    def compile_one(index, lowered):
        with _chunk_mode(index):
            return lowered.compile()

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        pending = {}
        for index in indices:
            if index not in _COMPILED:
                lowered, errors = _lower_chunk(index)
                pending[index] = (pool.submit(compile_one, index, lowered), errors)
        for index, (future, errors) in pending.items():
            _COMPILED[index] = (future.result(), errors)


def _run_chunk(index):
    _compile_chunks([index])
    program, errors = _COMPILED[index]
    fams = _plan()[0][index]
    with _chunk_mode(index):
        for r in range(max(len(m) for _, m in fams)):
            picks = [m[min(r, len(m) - 1)] for _, m in fams]
            res = jax.device_get(program([_args(c, layout) for c, layout in picks]))
            for j, (_, members) in enumerate(fams):
                if r < len(members):
                    c, layout = members[r]
                    _RESULTS[(c["id"], layout)] = errors.get(j) or res[j]


@pytest.fixture(scope="module")
def batches(request):
    """Compiles, up front, the batches holding the selected value and NaN cases."""
    keys = set()
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if spec is None or getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        if item.originalname in ("test_value_and_gradients", "test_out_of_range_target_gives_nan"):
            keys.add((spec.params["case"]["id"], spec.params["layout"]))
    where = _plan()[1]
    _compile_chunks(sorted({where[k] for k in keys}))


def run_case(case, layout="torch"):
    """jaxce's output and VJP for a case (computed with its batch), and its inputs."""
    key = (case["id"], layout)
    if key not in _RESULTS:
        _run_chunk(_plan()[1][key])
    res = _RESULTS[key]
    if isinstance(res, BaseException):
        raise res
    with x64_mode(case):
        return res[0], res[1], inputs(case, layout)


# ---------------------------------------------------------------------------------
# comparisons


def _ulp(values: np.ndarray, low) -> np.ndarray:
    fi = ml_dtypes.finfo(low)
    mag = np.abs(values.astype(np.float64))
    with np.errstate(divide="ignore"):
        exp = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    return np.maximum(np.exp2(exp) * float(fi.eps), float(fi.smallest_subnormal))


def assert_close(actual, ref, case, what, *, err=None, out_dtype=None):
    """``actual`` (jaxce) against ``ref`` (torch) with the case's tolerance (see module doc).

    ``err`` is torch's own float32 error on this output (``|torch_f32 - torch_f64|`` on the
    same inputs); twice that is added to the tolerance, so an ill-conditioned entry (a
    difference of nearly equal terms) may be off by as much as torch itself is.
    """
    actual = np.asarray(actual)
    ref = np.asarray(ref)
    err = np.zeros(ref.shape) if err is None else np.asarray(err, np.float64)
    label = f"{case['id']}: {what}"
    assert actual.shape == ref.shape, f"{label}: shape {actual.shape} != torch {ref.shape}"
    a = actual.astype(np.float64)
    e = ref.astype(np.float64)
    finite = np.abs(e[np.isfinite(e)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    low = LOW.get(str(out_dtype or actual.dtype))
    if low is not None:
        # jaxce rounds its float32 result once: within half an ulp of torch's float32 value,
        # plus float32 noise (or equal to it rounded, which covers overflow to inf)
        with np.errstate(over="ignore"):
            rounded = ref.astype(np.float32).astype(low).astype(np.float64)
        tol = 0.5 * _ulp(e, low) + 8 * float(np.finfo(np.float32).eps) * scale
        e = np.where(a == rounded, a, e)
    else:
        rtol, atol = TOL[case["tol"]]
        tol = atol * scale + rtol * np.abs(e)
    tol = tol + 2 * err
    with np.errstate(invalid="ignore"):
        ok = (np.isnan(a) & np.isnan(e)) | (a == e) | (np.abs(a - e) <= tol)
    if not ok.all():
        idx = np.argwhere(~ok)[:5]
        detail = ", ".join(
            f"{tuple(int(i) for i in ix)}: jaxce {a[tuple(ix)]!r} torch {e[tuple(ix)]!r}"
            for ix in idx
        )
        pytest.fail(f"{label}: {int((~ok).sum())}/{ok.size} mismatches, e.g. {detail}")


def ignored_mask(case, a, layout):
    """Positions (broadcast over the class axis) whose target is the ignore_index."""
    if case["fn"] not in LOSSES or "target" not in a or not is_int(a["target"]):
        return None
    t = a["target"].astype(np.int64)
    ii = case["options"].get("ignore_index", -100)
    x = a["x"]
    if x.ndim == 1:
        return np.full(x.shape, bool(np.all(t == ii)))
    axis = x.ndim - 1 if layout == "last" else 1
    return np.broadcast_to(np.expand_dims(t == ii, axis), x.shape)


def moved(ref, layout):
    return np.moveaxis(ref, 1, -1) if layout == "last" and ref.ndim > 1 else ref


# ---------------------------------------------------------------------------------
# parametrisation


def _params(kind, extra=None):
    out = []
    for c in CASES:
        if c["expect"] != kind or (extra and not extra(c)):
            continue
        for layout in c.get("layouts", ["torch"]) if kind == "value" else ["torch"]:
            cid = c["id"] if layout == "torch" else c["id"] + "@last"
            out.append(pytest.param(c, layout, id=cid))
    return out


@pytest.mark.parametrize(("case", "layout"), _params("value"))
def test_value_and_gradients(case, layout, batches):
    out, grads, a = run_case(case, layout)
    res = case["result"]
    errs = {k: ARRAYS[v] for k, v in case.get("err", {}).items()}
    assert str(out.dtype) == res["dtype"], f"{case['id']}: dtype {out.dtype} != {res['dtype']}"
    ref = ARRAYS[res["loss"]]
    lerr = errs.get("loss")
    if case["fn"] in ("log_softmax", "softmax"):
        ref = moved(ref, layout)
        lerr = None if lerr is None else moved(lerr, layout)
    assert_close(out, ref, case, "value", err=lerr)
    if case.get("signed_zero"):
        assert np.signbit(out) == np.signbit(ref), f"{case['id']}: sign of zero {out} vs {ref}"
    ign = ignored_mask(case, a, layout)
    for name, key in case.get("grads", {}).items():
        g = np.asarray(grads[name])
        assert g.dtype == a[name].dtype, f"{case['id']}: grad {name} dtype {g.dtype}"
        gref = ARRAYS[key] if name == "weight" else moved(ARRAYS[key], layout)
        gerr = errs.get(name)
        if gerr is not None and name != "weight":
            gerr = moved(gerr, layout)
        assert_close(g, gref, case, f"d/d{name}", err=gerr, out_dtype=g.dtype)
        if name == "x" and ign is not None and ign.any():
            # spec 4 / 9.6: exactly zero (and finite) on ignored positions
            assert np.all(g[ign] == 0), f"{case['id']}: non-zero gradient on ignored positions"


@pytest.mark.parametrize(("case", "layout"), _params("nan"))
def test_out_of_range_target_gives_nan(case, layout, batches):
    out, _, _ = run_case(case, layout)
    res = case["result"]
    assert str(out.dtype) == res["dtype"]
    ref = ARRAYS[res["loss"]]
    assert np.isnan(ref).any()
    assert_close(out, ref, case, "value (NaN where the target is out of range)")


def _checked_case(c) -> bool:
    # checkify programs are slow to compile: float32 cases, and the int64-only one
    return bool(c.get("checked")) and (c["dtype"] == "float32" or "2pow40" in c["id"])


@pytest.mark.parametrize(("case", "layout"), _params("nan", _checked_case))
def test_out_of_range_target_checked_raises(case, layout):
    """spec 9.3: the opt-in checked path raises, naming the first bad target."""
    opts = options(case)
    fn = getattr(jaxce, case["fn"])
    with x64_mode(case):
        a = inputs(case)
        if "weight" in a:
            opts["weight"] = a["weight"]
        with pytest.raises(ValueError, match=str(case["bad_targets"][0])):
            jaxce.checked(fn)(a["x"], a["target"], **opts)


def _error_call(case, a, opts):
    fn = case["fn"]
    if fn == "CrossEntropyLoss":
        return jaxce.CrossEntropyLoss(**opts)(a["x"], a["target"])
    return call_jaxce(fn, a["x"], a.get("target"), a.get("weight"), opts)


def _expect_raises(case, types, call, how):
    try:
        out = call()
    except types:
        return
    except Exception as e:  # noqa: BLE001
        pytest.fail(
            f"{case['id']} ({how}): raised {type(e).__name__}: {e}; expected one of "
            f"{case['types']} (torch: {case['torch'].get('error')})"
        )
    pytest.fail(
        f"{case['id']} ({how}): returned {out!r}; expected one of {case['types']} "
        f"(torch: {case['torch'].get('error') or case['torch'].get('result')})"
    )


# torch rejects integer logits; jaxce.softmax and log_softmax take jax.nn's contract and
# promote them to float (issue 11; docs "Coming from jax.nn").
JAX_PROMOTES = {"log_softmax/integer-input/error", "softmax/integer-input/error"}


@pytest.mark.parametrize(("case", "layout"), _params("error", lambda c: c["category"] == "error"))
def test_error(case, layout):
    """jaxce raises the recorded TypeError/ValueError, eagerly and while tracing under jit."""
    types = tuple(getattr(builtins, t) for t in case["types"])
    opts = options(case)
    a = inputs(case)
    if case["id"] in JAX_PROMOTES:
        out = _error_call(case, a, opts)
        ref = getattr(jax.nn, case["fn"])(jnp.asarray(a["x"], jnp.float32), axis=opts["axis"])
        assert out.dtype == jnp.float32 and ref.dtype == jnp.float32
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
        return
    _expect_raises(case, types, lambda: _error_call(case, a, opts), "eager")
    if case.get("construct") or any(isinstance(v, list) for v in opts.values()):
        return  # a list weight is not a jit argument
    names = sorted(a)

    def traced(*arrs):
        return _error_call(case, dict(zip(names, arrs, strict=True)), opts)

    # .trace() only traces: an error here is raised before anything runs
    _expect_raises(case, types, lambda: jax.jit(traced).trace(*[a[n] for n in names]), "jit")


@pytest.mark.parametrize(
    ("case", "layout"), _params("error", lambda c: c["category"] == "error-or-nan")
)
def test_error_or_nan(case, layout):
    """C = 0: torch raises; jaxce may raise a ValueError/TypeError or give NaN (spec 9.3)."""
    a = inputs(case)
    try:
        out = _error_call(case, a, options(case))
    except (ValueError, TypeError):
        return
    assert np.all(np.isnan(np.asarray(out))), f"{case['id']}: {out}"


@pytest.mark.parametrize(("case", "layout"), _params("value", lambda c: "exact" in c))
def test_notebook_values_exact(case, layout):
    """spec 3.1 / 7.2: the notebook's float32 numbers, bit for bit, on the eager call."""
    assert case["exact"] in NOTEBOOK
    assert float(ARRAYS[case["result"]["loss"]]) == case["exact"]
    a = inputs(case)
    out = call_jaxce(case["fn"], a["x"], a["target"], None, options(case))
    assert out.dtype == jnp.float32
    assert float(out) == case["exact"], f"{float(out)!r} != {case['exact']!r}"


@pytest.mark.parametrize(
    ("case", "layout"), _params("value", lambda c: c.get("module") and c["dtype"] == "float32")
)
def test_criterion_modules(case, layout):
    """``CrossEntropyLoss`` / ``NLLLoss`` give the functional (= torch) value."""
    opts = options(case)
    with x64_mode(case):
        a = inputs(case)
        cls = jaxce.NLLLoss if case["fn"] == "nll_loss" else jaxce.CrossEntropyLoss
        crit = cls(weight=a.get("weight"), **opts)
        out = np.asarray(crit(a["x"], a["target"]))
    assert_close(out, ARRAYS[case["result"]["loss"]], case, "criterion value")
    if "exact" in case:
        assert float(out) == case["exact"]


def test_golden_data_covers_the_spec():
    """The data file is what the generator writes: torch 2.13.0, every category present."""
    assert INDEX["torch_version"] == "2.13.0"
    cats = {c["category"] for c in CASES}
    assert {"softmax", "nll", "ce", "ls", "prob", "half", "notebook", "error"} <= cats
    dtypes = {c.get("dtype") for c in CASES}
    assert {"float64", "float32", "float16", "bfloat16"} <= dtypes
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    exact = {c["exact"] for c in CASES if "exact" in c}
    assert exact == NOTEBOOK
