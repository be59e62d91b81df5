"""``linear_cross_entropy`` fed bad or extreme input, eagerly, under ``jit`` and under ``grad``.

One table of cases. Each case either expects a clear error (the right exception type,
a message that names the function, the argument and the value) or a value (a check
on the loss, or on the gradients). Every case runs in the three modes; the outcomes
are counted, and the test fails on any obscure error (another exception, or one that
does not name what is wrong) or silent result (no error where one belongs, or a wrong
value), listing them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxce
from jaxce.linear import linear_cross_entropy as LCE

FN = "linear_cross_entropy"
N, D, V = 6, 8, 37  # N ≤ D: "forward" keeps every token's logits in the kernel gradient
IGNORE = -100


def _arrays(n=N, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.standard_normal((n, D)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((D, V)) * 0.3, jnp.float32)
    target = jnp.asarray(rng.integers(0, V, n), jnp.int32)
    return hidden, kernel, target


H, K, T = _arrays()
MESH = Mesh(np.array(jax.devices()[:1]), ("x",))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[], dict]  # the keyword arguments of the call
    raises: type | None = None  # the expected exception type, or None for a value
    pieces: tuple[str, ...] = ()  # what its message must name besides the function
    check: Callable[[str, Any], bool] | None = None  # (mode, result) -> right?


def _call(**overrides):
    def args():
        a = dict(hidden=H, kernel=K, target=T)
        a.update(overrides)
        return a

    return args


def _error(name, exc, *pieces, **overrides):
    return Case(name, _call(**overrides), raises=exc, pieces=pieces)


def _strs(shape):
    return np.full(shape, "a")


def _objects(shape):
    return np.ones(shape, dtype=object)


ERROR_CASES = [
    # mesh and axis names
    _error("mesh str", TypeError, "`mesh`", "'junk'", mesh="junk", data_axis="d"),
    _error("mesh int", TypeError, "`mesh`", "3", mesh=3, vocab_axis="x"),
    _error("mesh dict", TypeError, "`mesh`", "dict", mesh={"x": 1}, data_axis="x"),
    _error("mesh junk, no axes", TypeError, "`mesh`", "'junk'", mesh="junk"),
    _error("data_axis not in mesh", ValueError, "`data_axis`", "'d'", mesh=MESH, data_axis="d"),
    _error("vocab_axis not in mesh", ValueError, "`vocab_axis`", "'v'", mesh=MESH, vocab_axis="v"),
    _error("data_axis pair, one absent", ValueError, "`data_axis`", mesh=MESH,
           data_axis=("x", "y")),
    _error("data_axis list", TypeError, "`data_axis`", "['x']", mesh=MESH, data_axis=["x"]),
    _error("data_axis int in tuple", TypeError, "`data_axis`", mesh=MESH, data_axis=("x", 1)),
    _error("vocab_axis int", TypeError, "`vocab_axis`", "0", mesh=MESH, vocab_axis=0),
    _error("same axis twice", ValueError, "`data_axis`", "`vocab_axis`", mesh=MESH, data_axis="x",
           vocab_axis="x"),
    _error("mesh without axes", ValueError, "`mesh`", mesh=MESH),
    _error("axis without mesh", ValueError, "`data_axis`", "'x'", data_axis="x"),
    # dtypes JAX cannot hold, and the wrong kinds
    _error("hidden str", TypeError, "`hidden`", "str", hidden=_strs((N, D))),
    _error("hidden object", TypeError, "`hidden`", "object", hidden=_objects((N, D))),
    _error("hidden int", TypeError, "`hidden`", "int32", hidden=jnp.ones((N, D), jnp.int32)),
    _error("hidden list", TypeError, "`hidden`", "list", hidden=[[1.0] * D] * N),
    _error("kernel str", TypeError, "`kernel`", "str", kernel=_strs((D, V))),
    _error("kernel object", TypeError, "`kernel`", "object", kernel=_objects((D, V))),
    _error("kernel bool", TypeError, "`kernel`", "bool", kernel=jnp.ones((D, V), bool)),
    _error("target str", TypeError, "`target`", "str", target=_strs((N,))),
    _error("target object", TypeError, "`target`", "object", target=_objects((N,))),
    _error("target bytes", TypeError, "`target`", "bytes", target=np.full((N,), b"a")),
    _error("target float", TypeError, "`target`", "float32", target=jnp.zeros((N,))),
    _error("target bool", TypeError, "`target`", "bool", target=jnp.zeros((N,), bool)),
    _error("bias str", TypeError, "`bias`", "str", bias=_strs((V,))),
    _error("bias object", TypeError, "`bias`", "object", bias=_objects((V,))),
    _error("weight str", TypeError, "`weight`", "str", weight=_strs((V,))),
    _error("weight object", TypeError, "`weight`", "object", weight=_objects((V,))),
    # options
    _error("grad_mode junk", ValueError, "`grad_mode`", "'junk'", grad_mode="junk"),
    _error("forward per row", ValueError, "`grad_mode`", "'none'", grad_mode="forward",
           reduction="none"),
    _error("token_block 0", ValueError, "`token_block`", "0", token_block=0),
    _error("vocab_block float", TypeError, "`vocab_block`", "1.5", vocab_block=1.5),
    _error("kernel (V, D)", ValueError, "`kernel`", "kernel_layout='vd'", kernel=K.T),
]


# --------------------------------------------------------------------------- values

# Every schedule: "recompute"; "forward" with every token's logits in the kernel
# gradient (N ≤ D); "forward" with the head block then token blocks (N > D); "forward"
# in token blocks only (a token block is given); "auto"; and each of them without a
# kernel gradient in "grad" mode (see `_diff_names`).
SCHEDULES = {
    "recompute": dict(grad_mode="recompute", vocab_block=16),
    "forward head": dict(grad_mode="forward", vocab_block=16),
    "forward head+blocks": dict(grad_mode="forward", vocab_block=16, n=20),
    "forward token blocks": dict(grad_mode="forward", token_block=4, vocab_block=16, n=20),
    "auto": dict(vocab_block=16),
}


def _all_ignored_nan_row(opts, reduction):
    """Every target ignored and a NaN row in ``hidden``: the loss is torch's (0 for sum,
    zeros for none, 0/0 = NaN for mean) and every gradient is exactly zero."""
    opts = dict(opts)
    n = opts.pop("n", N)
    hidden, kernel, _ = _arrays(n)
    hidden = hidden.at[1].set(jnp.nan).at[n - 1, 0].set(jnp.inf)
    target = jnp.full((n,), IGNORE, jnp.int32)

    def check(mode, out):
        if mode == "grad":
            return all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(out))
        if reduction == "mean":
            return bool(jnp.isnan(out))
        return bool(jnp.all(out == 0))

    args = lambda: dict(hidden=hidden, kernel=kernel, target=target, reduction=reduction, **opts)  # noqa: E731
    return args, check


def _ignored_nan_row_among_valid(opts, reduction):
    """One ignored position whose hidden row is NaN among counted ones: the loss and
    every gradient are those of the call without that position (it contributes 0)."""
    opts = dict(opts)
    n = opts.pop("n", N)
    hidden, kernel, target = _arrays(n, seed=1)
    hidden = hidden.at[2].set(jnp.nan)
    target = target.at[2].set(IGNORE)
    keep = np.arange(n) != 2

    def ref(h, k):
        out = jaxce.cross_entropy(h[keep] @ k, target[keep], reduction=reduction)
        return out if reduction != "none" else jnp.zeros((n,)).at[keep].set(out)

    def check(mode, out):
        if mode == "grad":
            dh, dk = jax.grad(lambda h, k: jnp.sum(ref(h, k)), argnums=(0, 1))(hidden, kernel)
            close = functools.partial(jnp.allclose, rtol=1e-5, atol=1e-6)
            good = "kernel" not in out or close(out["kernel"], dk)
            good = good and close(out["hidden"][keep], dh[keep])
            return bool(good) and bool(jnp.all(out["hidden"][2] == 0))
        return bool(jnp.allclose(out, ref(hidden, kernel), rtol=1e-5, atol=1e-6))

    args = lambda: dict(hidden=hidden, kernel=kernel, target=target, reduction=reduction, **opts)  # noqa: E731
    return args, check


def _value_cases():
    cases = []
    for label, opts in SCHEDULES.items():
        reductions = ("mean", "sum") if "forward" in label else ("mean", "sum", "none")
        for reduction in reductions:
            args, check = _all_ignored_nan_row(opts, reduction)
            cases.append(Case(f"all ignored, NaN row: {label}, {reduction}", args, check=check))
        # One reduction per schedule suffices here (the row cotangent is what differs).
        args, check = _ignored_nan_row_among_valid(opts, reductions[-1])
        cases.append(Case(f"ignored NaN row among valid: {label}", args, check=check))
    return cases


VALUE_CASES = _value_cases()
CASES = ERROR_CASES + VALUE_CASES


# --------------------------------------------------------------------------- running


def _diff_names(case: Case, args: dict, frozen_kernel: bool) -> list[str]:
    """The arguments that are traced under jit / differentiated: the floating JAX arrays
    among ``hidden`` and ``kernel``; everything else is closed over, as a user's
    static configuration or bad constant would be."""
    names = [
        k
        for k in ("hidden", "kernel")
        if isinstance(args[k], jax.Array) and jnp.issubdtype(args[k].dtype, jnp.floating)
    ]
    if frozen_kernel and "kernel" in names:
        names.remove("kernel")
    return names


def _run(case: Case, mode: str, frozen_kernel: bool = False):
    args = case.args()
    names = _diff_names(case, args, frozen_kernel)
    traced = {k: args[k] for k in names}

    def f(tr):
        return LCE(**{**args, **tr})

    if mode == "eager":
        return LCE(**args)
    if mode == "jit":
        return jax.jit(f)(traced)
    return jax.grad(lambda tr: jnp.sum(f(tr)))(traced)


def _outcome(case: Case, mode: str, frozen_kernel: bool = False) -> tuple[str, str]:
    """``(outcome, detail)``: 'clear' (the expected error, well named), 'right' (the
    expected value), 'obscure' or 'silent'."""
    try:
        out = _run(case, mode, frozen_kernel)
    except Exception as e:  # noqa: BLE001 - every exception is classified
        msg = str(e)
        if case.raises is None:
            return "obscure", f"{type(e).__name__}: {msg[:200]}"
        named = msg.startswith(f"{FN}: ") and all(p in msg for p in case.pieces)
        if isinstance(e, case.raises) and named:
            return "clear", ""
        return "obscure", f"{type(e).__name__}: {msg[:200]}"
    if case.raises is not None:
        return "silent", f"no {case.raises.__name__}"
    if not case.check(mode, out):
        return "silent", f"wrong value {jax.tree.map(np.asarray, out)!r:.300}"
    return "right", ""


def test_bad_and_extreme_inputs_answer_clearly():
    counts: Counter = Counter()
    failures = []
    for case in CASES:
        runs = [("eager", False), ("jit", False), ("grad", False)]
        if case.raises is None:
            runs.append(("grad", True))  # a frozen kernel: the schedules' fallbacks
        for mode, frozen in runs:
            outcome, detail = _outcome(case, mode, frozen)
            counts[outcome] += 1
            if outcome in ("obscure", "silent"):
                label = mode + (" (frozen kernel)" if frozen else "")
                failures.append(f"{case.name} [{label}]: {outcome}: {detail}")
    print(f"\nlinear_cross_entropy robustness: {dict(counts)} over {len(CASES)} cases")
    assert not failures, "\n".join(failures)
    assert counts["clear"] == 3 * len(ERROR_CASES)
    assert counts["right"] == 4 * len(VALUE_CASES)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_the_table_can_fail(mode):
    """The classifier itself: a wrong expectation, a missing name and a wrong value are
    each counted as a failure, not as a pass."""
    wrong_type = _error("wrong type", ValueError, "`mesh`", mesh="junk", data_axis="d")
    unnamed = _error("unnamed", TypeError, "`kernel`", mesh="junk", data_axis="d")
    no_error = _error("no error", ValueError, "`hidden`")
    wrong_value = Case("wrong value", _call(), check=lambda mode, out: bool(out == 0))
    assert _outcome(wrong_type, mode)[0] == "obscure"
    assert _outcome(unnamed, mode)[0] == "obscure"
    assert _outcome(no_error, mode)[0] == "silent"
    assert _outcome(wrong_value, mode)[0] == "silent"
