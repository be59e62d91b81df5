"""Every bad input of spec section 6 (and jaxce's own section 9 rules) raises a clear
error at trace time: TypeError for a wrong kind of argument, ValueError for a wrong
shape or value. Each message names the function, the argument and the value received.

Each case is checked three ways: called eagerly, called through ``jax.jit`` (the same
error, raised while tracing), and through ``jax.eval_shape`` (nothing is executed, so
the error can only come from trace-time validation).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce


def all_of(*pieces: str) -> str:
    """A regex matching a message that contains every piece (literally), in any order."""
    return "(?s)^" + "".join(f"(?=.*{re.escape(p)})" for p in pieces)


class Case(NamedTuple):
    fn: Callable
    args: tuple  # arrays; traced when the case is run under jit
    kwargs: dict  # static options
    exc: type
    pieces: tuple  # substrings the message must contain: function, argument, value


X = np.zeros((4, 3), np.float32)
T = np.array([0, 1, 2, 0], np.int32)
CE, NLL = jaxce.cross_entropy, jaxce.nll_loss


def i32(*shape):
    return np.zeros(shape, np.int32)


def f32(*shape):
    return np.zeros(shape, np.float32)


LOSS_CASES = {
    # --- shapes -------------------------------------------------------------------
    "ce-batch-mismatch": Case(
        CE, (X, i32(3)), {}, ValueError, ("cross_entropy", "`target`", "(3,)", "(4, 3)")
    ),
    "nll-batch-mismatch": Case(
        NLL, (X, i32(3)), {}, ValueError, ("nll_loss", "`target`", "(3,)", "(4, 3)")
    ),
    "ce-N1-target": Case(
        CE, (X, i32(4, 1)), {}, ValueError, ("cross_entropy", "`target`", "(4, 1)", "multi-target")
    ),
    "nll-N1-target": Case(NLL, (X, i32(4, 1)), {}, ValueError, ("nll_loss", "`target`", "(4, 1)")),
    "ce-0d-target-for-NC": Case(
        CE, (X, i32()), {}, ValueError, ("cross_entropy", "`target`", "shape ()", "(4,)")
    ),
    "ce-1d-input-2-targets": Case(
        CE, (f32(3), i32(2)), {}, ValueError, ("cross_entropy", "`target`", "(2,)", "(3,)")
    ),
    "ce-spatial-mismatch": Case(
        CE,
        (f32(2, 3, 4), i32(2, 5)),
        {"axis": 1},
        ValueError,
        ("cross_entropy", "`target`", "(2, 5)", "(2, 4)"),
    ),
    "nll-spatial-mismatch": Case(
        NLL,
        (f32(2, 3, 4, 5), i32(2, 4)),
        {"axis": 1},
        ValueError,
        ("nll_loss", "`target`", "(2, 4)", "(2, 4, 5)"),
    ),
    "ce-spatial-layout-default-axis": Case(
        CE,
        (f32(2, 3, 4), i32(2, 4)),
        {},
        ValueError,
        ("cross_entropy", "`target`", "(2, 4)", "(2, 3)"),
    ),
    "ce-int-target-logits-shape": Case(
        CE, (X, i32(4, 3)), {}, ValueError, ("cross_entropy", "`target`", "(4, 3)", "integer")
    ),
    "ce-int-target-logits-shape-1d": Case(
        CE, (f32(3), i32(3)), {}, ValueError, ("cross_entropy", "`target`", "(3,)", "integer")
    ),
    "ce-float-target-wrong-shape": Case(
        CE, (X, f32(4, 2)), {}, ValueError, ("cross_entropy", "`target`", "(4, 2)", "(4, 3)")
    ),
    "ce-float-target-class-index-shape": Case(
        CE, (X, f32(4)), {}, TypeError, ("cross_entropy", "`target`", "(4,)", "float32")
    ),
    "ce-0d-logits": Case(CE, (f32(), i32()), {}, ValueError, ("cross_entropy", "0-d", "shape ()")),
    "nll-0d-log-probs": Case(NLL, (f32(), i32()), {}, ValueError, ("nll_loss", "0-d", "shape ()")),
    # --- weight -------------------------------------------------------------------
    "ce-weight-too-long": Case(
        CE,
        (X, T, np.ones(4, np.float32)),
        {},
        ValueError,
        ("cross_entropy", "`weight`", "(4,)", "(3)"),
    ),
    "ce-weight-too-short": Case(
        CE, (X, T, np.ones(2, np.float32)), {}, ValueError, ("cross_entropy", "`weight`", "(2,)")
    ),
    "nll-weight-wrong-length": Case(
        NLL, (X, T, np.ones(4, np.float32)), {}, ValueError, ("nll_loss", "`weight`", "(4,)")
    ),
    "ce-weight-2d": Case(
        CE,
        (X, T, np.ones((1, 3), np.float32)),
        {},
        ValueError,
        ("cross_entropy", "`weight`", "(1, 3)"),
    ),
    "ce-weight-wrong-length-prob-target": Case(
        CE,
        (X, f32(4, 3), np.ones(4, np.float32)),
        {},
        ValueError,
        ("cross_entropy", "`weight`", "(4,)"),
    ),
    "ce-weight-integer": Case(
        CE, (X, T, np.ones(3, np.int32)), {}, TypeError, ("cross_entropy", "`weight`", "int32")
    ),
    "nll-weight-bool": Case(
        NLL, (X, T, np.ones(3, bool)), {}, TypeError, ("nll_loss", "`weight`", "bool")
    ),
    # --- dtypes -------------------------------------------------------------------
    "ce-int-logits": Case(
        CE, (i32(4, 3), T), {}, TypeError, ("cross_entropy", "`logits`", "int32")
    ),
    "ce-bool-logits": Case(
        CE, (np.zeros((4, 3), bool), T), {}, TypeError, ("cross_entropy", "`logits`", "bool")
    ),
    "nll-int-log-probs": Case(
        NLL, (i32(4, 3), T), {}, TypeError, ("nll_loss", "`log_probs`", "int32")
    ),
    "nll-bool-log-probs": Case(
        NLL, (np.zeros((4, 3), bool), T), {}, TypeError, ("nll_loss", "`log_probs`", "bool")
    ),
    "ce-bool-target": Case(
        CE, (X, np.zeros(4, bool)), {}, TypeError, ("cross_entropy", "`target`", "bool")
    ),
    "nll-bool-target": Case(
        NLL, (X, np.zeros(4, bool)), {}, TypeError, ("nll_loss", "`target`", "bool")
    ),
    "nll-float-target": Case(NLL, (X, f32(4)), {}, TypeError, ("nll_loss", "`target`", "float32")),
    "nll-float-target-logits-shape": Case(
        NLL, (X, f32(4, 3)), {}, TypeError, ("nll_loss", "`target`", "float32")
    ),
    # --- options ------------------------------------------------------------------
    "ce-reduction-avg": Case(
        CE, (X, T), {"reduction": "avg"}, ValueError, ("cross_entropy", "`reduction`", "'avg'")
    ),
    "ce-reduction-case": Case(
        CE, (X, T), {"reduction": "Mean"}, ValueError, ("cross_entropy", "`reduction`", "'Mean'")
    ),
    "nll-reduction-avg": Case(
        NLL, (X, T), {"reduction": "avg"}, ValueError, ("nll_loss", "`reduction`", "'avg'")
    ),
    "ce-ls-above-1": Case(
        CE,
        (X, T),
        {"label_smoothing": 1.5},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "1.5"),
    ),
    "ce-ls-just-above-1": Case(
        CE,
        (X, T),
        {"label_smoothing": 1.0000001},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "1.0000001"),
    ),
    "ce-ls-negative": Case(
        CE,
        (X, T),
        {"label_smoothing": -0.1},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "-0.1"),
    ),
    "ce-ls-nan": Case(
        CE,
        (X, T),
        {"label_smoothing": float("nan")},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "nan"),
    ),
    "ce-ls-inf": Case(
        CE,
        (X, T),
        {"label_smoothing": float("inf")},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "inf"),
    ),
    "ce-ls-prob-target-above-1": Case(
        CE,
        (X, f32(4, 3)),
        {"label_smoothing": 2.0},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "2.0"),
    ),
    "ce-ls-concrete-array-above-1": Case(
        CE,
        (X, T),
        {"label_smoothing": np.float32(1.5)},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "1.5"),
    ),
    "ce-ls-concrete-array-nan": Case(
        CE,
        (X, T),
        {"label_smoothing": np.array(np.nan, np.float32)},
        ValueError,
        ("cross_entropy", "`label_smoothing`", "nan"),
    ),
    "ce-ls-string": Case(
        CE,
        (X, T),
        {"label_smoothing": "0.1"},
        TypeError,
        ("cross_entropy", "`label_smoothing`", "'0.1'"),
    ),
    "ce-ls-bool": Case(
        CE,
        (X, T),
        {"label_smoothing": True},
        TypeError,
        ("cross_entropy", "`label_smoothing`", "True"),
    ),
    "ce-ls-1d-array": Case(
        CE,
        (X, T),
        {"label_smoothing": np.full(2, 0.1, np.float32)},
        TypeError,
        ("cross_entropy", "`label_smoothing`", "(2,)"),
    ),
    "ce-ls-int-array": Case(
        CE,
        (X, T),
        {"label_smoothing": np.array(0, np.int32)},
        TypeError,
        ("cross_entropy", "`label_smoothing`", "int32"),
    ),
    "ce-z-loss-negative": Case(
        CE, (X, T), {"z_loss": -1.0}, ValueError, ("cross_entropy", "`z_loss`", "-1.0")
    ),
    "ce-z-loss-nan": Case(
        CE, (X, T), {"z_loss": float("nan")}, ValueError, ("cross_entropy", "`z_loss`", "nan")
    ),
    "ce-softcap-zero": Case(
        CE, (X, T), {"softcap": 0.0}, ValueError, ("cross_entropy", "`softcap`", "0.0")
    ),
    "ce-softcap-string": Case(
        CE, (X, T), {"softcap": "2"}, TypeError, ("cross_entropy", "`softcap`", "'2'")
    ),
    "ce-axis-out-of-range": Case(
        CE, (X, T), {"axis": 2}, ValueError, ("cross_entropy", "`axis`=2", "(4, 3)")
    ),
    "ce-axis-negative-out-of-range": Case(
        CE, (X, T), {"axis": -3}, ValueError, ("cross_entropy", "`axis`=-3", "(4, 3)")
    ),
    "nll-axis-out-of-range": Case(
        NLL, (X, T), {"axis": 5}, ValueError, ("nll_loss", "`axis`=5", "(4, 3)")
    ),
    "ce-axis-float": Case(CE, (X, T), {"axis": 1.0}, TypeError, ("cross_entropy", "`axis`", "1.0")),
    "ce-ignore-index-float": Case(
        CE, (X, T), {"ignore_index": 1.0}, TypeError, ("cross_entropy", "`ignore_index`", "1.0")
    ),
    "nll-ignore-index-none": Case(
        NLL, (X, T), {"ignore_index": None}, TypeError, ("nll_loss", "`ignore_index`", "None")
    ),
    "ce-ignore-index-0-prob-target": Case(
        CE, (X, f32(4, 3)), {"ignore_index": 0}, ValueError, ("cross_entropy", "`ignore_index`=0")
    ),
    "ce-ignore-index-2-prob-target": Case(
        CE, (X, f32(4, 3)), {"ignore_index": 2}, ValueError, ("cross_entropy", "`ignore_index`=2")
    ),
    # --- softmax family -----------------------------------------------------------
    # (integer logits are promoted to float, as in jax.nn: tests/test_jaxnn_contract.py)
    "log_softmax-bool": Case(
        jaxce.log_softmax, (np.zeros(3, bool),), {}, TypeError, ("log_softmax", "`x`", "bool")
    ),
    "log_softmax-axis": Case(
        jaxce.log_softmax, (X,), {"axis": 2}, ValueError, ("log_softmax", "`axis`=2", "(4, 3)")
    ),
    "log_softmax-0d-axis": Case(
        jaxce.log_softmax, (f32(),), {"axis": 1}, ValueError, ("log_softmax", "`axis`=1", "0-d")
    ),
    "softmax-bool": Case(
        jaxce.softmax, (np.zeros(3, bool),), {}, TypeError, ("softmax", "`x`", "bool")
    ),
    "softmax-axis": Case(
        jaxce.softmax, (X,), {"axis": -3}, ValueError, ("softmax", "`axis`=-3", "(4, 3)")
    ),
    "softmax-axis-repeated": Case(
        jaxce.softmax, (X,), {"axis": (1, -1)}, ValueError, ("softmax", "`axis`=(1, -1)", "(4, 3)")
    ),
    "softmax-axis-str": Case(
        jaxce.softmax, (X,), {"axis": "1"}, TypeError, ("softmax", "`axis`", "'1'")
    ),
    "logsumexp-return-sign-int": Case(
        jaxce.logsumexp, (X,), {"return_sign": 1}, TypeError, ("logsumexp", "`return_sign`", "1")
    ),
    "logsumexp-keepdims-none": Case(
        jaxce.logsumexp, (X,), {"keepdims": None}, TypeError, ("logsumexp", "`keepdims`", "None")
    ),
    "logsumexp-axis": Case(
        jaxce.logsumexp, (X,), {"axis": (0, 2)}, ValueError, ("logsumexp", "`axis`=2", "(4, 3)")
    ),
    "logsumexp-where-int": Case(
        jaxce.logsumexp,
        (X, np.ones((4, 3), np.int32)),
        {},
        TypeError,
        ("logsumexp", "`where`", "int32"),
    ),
    "logsumexp-where-shape": Case(
        jaxce.logsumexp,
        (X, np.ones((2, 3), bool)),
        {},
        ValueError,
        ("logsumexp", "`where`", "(2, 3)", "(4, 3)"),
    ),
    "log_softmax-where-shape": Case(
        jaxce.log_softmax,
        (X, np.ones((5,), bool)),
        {},
        ValueError,
        ("log_softmax", "`where`", "(5,)"),
    ),
    # issue 10: `where` must broadcast to the input's shape, never the other way round
    "log_softmax-0d-where": Case(
        jaxce.log_softmax,
        (f32(), np.ones(3, bool)),
        {},
        ValueError,
        ("log_softmax", "`where`", "(3,)", "`x` shape ()"),
    ),
    "softmax-where-bigger": Case(
        jaxce.softmax,
        (X, np.ones((2, 4, 3), bool)),
        {},
        ValueError,
        ("softmax", "`where`", "(2, 4, 3)", "`x` shape (4, 3)"),
    ),
    "logsumexp-0d-where": Case(
        jaxce.logsumexp,
        (f32(), np.ones(3, bool)),
        {},
        ValueError,
        ("logsumexp", "`where`", "(3,)", "`a` shape ()"),
    ),
    "softmax-where-float": Case(
        jaxce.softmax, (X, f32(4, 3)), {}, TypeError, ("softmax", "`where`", "float32")
    ),
}

# Functions whose third positional array argument is `weight` / `where` (keyword-only).
_ARRAY_KWARG = {CE: "weight", NLL: "weight"}


def call(case: Case, *args):
    """Calls the case's function; a third array (second for the softmax family) is
    passed as the keyword `weight` / `where`."""
    fn, kwargs = case.fn, dict(case.kwargs)
    n_positional = 2 if fn in _ARRAY_KWARG else 1
    positional, extra = args[:n_positional], args[n_positional:]
    if extra:
        kwargs[_ARRAY_KWARG.get(fn, "where")] = extra[0]
    return fn(*positional, **kwargs)


@pytest.mark.parametrize("case", LOSS_CASES.values(), ids=LOSS_CASES.keys())
def test_error_eager(case):
    with pytest.raises(case.exc, match=all_of(*case.pieces)):
        call(case, *case.args)


@pytest.mark.parametrize("case", LOSS_CASES.values(), ids=LOSS_CASES.keys())
def test_error_under_jit_is_raised_while_tracing(case):
    args = tuple(jnp.asarray(a) for a in case.args)
    traced = jax.jit(lambda *a: call(case, *a))
    with pytest.raises(case.exc, match=all_of(*case.pieces)):
        traced(*args)
    # eval_shape never executes anything: the error comes from trace-time checks.
    with pytest.raises(case.exc, match=all_of(*case.pieces)):
        jax.eval_shape(lambda *a: call(case, *a), *args)


# --- non-array arguments (cannot be traced, so only the eager call) ---------------

NON_ARRAY_CASES = {
    "ce-list-logits": (
        lambda: CE([[0.0, 1.0]], T[:1]),
        TypeError,
        ("cross_entropy", "`logits`", "list"),
    ),
    "ce-list-target": (
        lambda: CE(X, [0, 1, 2, 0]),
        TypeError,
        ("cross_entropy", "`target`", "list"),
    ),
    "ce-list-weight": (
        lambda: CE(X, T, weight=[1.0, 1.0, 1.0]),
        TypeError,
        ("cross_entropy", "`weight`", "list"),
    ),
    "nll-list-log-probs": (
        lambda: NLL([[0.0, 1.0]], T[:1]),
        TypeError,
        ("nll_loss", "`log_probs`", "list"),
    ),
    "log_softmax-list": (
        lambda: jaxce.log_softmax([1.0, 2.0]),
        TypeError,
        ("log_softmax", "`x`", "list"),
    ),
    "softmax-str": (lambda: jaxce.softmax("1.0"), TypeError, ("softmax", "`x`", "str")),
    "log_softmax-object-dtype": (
        lambda: jaxce.log_softmax(np.array([1.0, None], dtype=object)),
        TypeError,
        ("log_softmax", "`x`", "object"),
    ),
    "logsumexp-list": (
        lambda: jaxce.logsumexp([1.0, 2.0]),
        TypeError,
        ("logsumexp", "`a`", "list"),
    ),
    "logsumexp-b-shape": (
        lambda: jaxce.logsumexp(X, b=np.ones((2, 4, 3), np.float32)),
        ValueError,
        ("logsumexp", "`b`", "(2, 4, 3)", "`a` shape (4, 3)"),
    ),
    "logsumexp-b-list": (
        lambda: jaxce.logsumexp(X, b=[1.0, 2.0, 3.0]),
        TypeError,
        ("logsumexp", "`b`", "list"),
    ),
}


@pytest.mark.parametrize("thunk, exc, pieces", NON_ARRAY_CASES.values(), ids=NON_ARRAY_CASES.keys())
def test_error_non_array_argument(thunk, exc, pieces):
    with pytest.raises(exc, match=all_of(*pieces)):
        thunk()


def test_message_names_the_dtype_received_not_the_converted_one():
    # Without x64, JAX converts int64 NumPy arrays to int32; the message should still
    # report what the caller passed.
    with pytest.raises(TypeError, match=all_of("cross_entropy", "`logits`", "int64")):
        CE(np.zeros((4, 3), np.int64), T)
    with pytest.raises(TypeError, match=all_of("nll_loss", "`weight`", "int64")):
        NLL(X, T, weight=np.ones(3, np.int64))


# --- criteria: options are validated when the criterion is built -------------------

CRITERION_CASES: dict[str, tuple[Callable[[], Any], type, tuple]] = {
    "CE-reduction": (
        lambda: jaxce.CrossEntropyLoss(reduction="avg"),
        ValueError,
        ("CrossEntropyLoss", "`reduction`", "'avg'"),
    ),
    "NLL-reduction": (
        lambda: jaxce.NLLLoss(reduction="elementwise_mean"),
        ValueError,
        ("NLLLoss", "`reduction`", "'elementwise_mean'"),
    ),
    "CE-ls-above-1": (
        lambda: jaxce.CrossEntropyLoss(label_smoothing=1.5),
        ValueError,
        ("CrossEntropyLoss", "`label_smoothing`", "1.5"),
    ),
    "CE-ls-negative": (
        lambda: jaxce.CrossEntropyLoss(label_smoothing=-0.5),
        ValueError,
        ("CrossEntropyLoss", "`label_smoothing`", "-0.5"),
    ),
    "CE-ls-nan": (
        lambda: jaxce.CrossEntropyLoss(label_smoothing=float("nan")),
        ValueError,
        ("CrossEntropyLoss", "`label_smoothing`", "nan"),
    ),
    "CE-ls-string": (
        lambda: jaxce.CrossEntropyLoss(label_smoothing="a"),
        TypeError,
        ("CrossEntropyLoss", "`label_smoothing`", "'a'"),
    ),
    "CE-ignore-index-float": (
        lambda: jaxce.CrossEntropyLoss(ignore_index=-100.0),
        TypeError,
        ("CrossEntropyLoss", "`ignore_index`", "-100.0"),
    ),
    "NLL-ignore-index-float": (
        lambda: jaxce.NLLLoss(ignore_index=1.5),
        TypeError,
        ("NLLLoss", "`ignore_index`", "1.5"),
    ),
    "NLL-axis-str": (lambda: jaxce.NLLLoss(axis="1"), TypeError, ("NLLLoss", "`axis`", "'1'")),
    "CE-axis-float": (
        lambda: jaxce.CrossEntropyLoss(axis=1.0),
        TypeError,
        ("CrossEntropyLoss", "`axis`", "1.0"),
    ),
    "NLL-weight-int": (
        lambda: jaxce.NLLLoss(weight=np.ones(3, np.int32)),
        TypeError,
        ("NLLLoss", "`weight`", "int32"),
    ),
    "CE-weight-2d": (
        lambda: jaxce.CrossEntropyLoss(weight=np.ones((3, 1), np.float32)),
        ValueError,
        ("CrossEntropyLoss", "`weight`", "(3, 1)"),
    ),
    "CE-weight-list": (
        lambda: jaxce.CrossEntropyLoss(weight=[1.0, 2.0]),
        TypeError,
        ("CrossEntropyLoss", "`weight`", "list"),
    ),
    "CE-positional-option": (lambda: jaxce.CrossEntropyLoss(None), TypeError, ("positional",)),
}


@pytest.mark.parametrize("thunk, exc, pieces", CRITERION_CASES.values(), ids=CRITERION_CASES.keys())
def test_criterion_constructor_error(thunk, exc, pieces):
    with pytest.raises(exc, match=all_of(*pieces)):
        thunk()


def test_criterion_call_errors_name_argument_and_value():
    weighted = jaxce.CrossEntropyLoss(weight=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=all_of("`weight`", "(4,)")) as info:
        weighted(jnp.zeros((2, 3)), jnp.array([0, 1]))
    assert re.search("cross_entropy|CrossEntropyLoss", str(info.value))
    with pytest.raises(ValueError, match=all_of("nll_loss", "`target`", "(3,)")):
        criterion = jaxce.NLLLoss()
        jax.jit(lambda x, t: criterion(x, t))(jnp.zeros((2, 3)), jnp.array([0, 1, 2]))


# --- what must NOT raise (section 9): the validation is not over-eager -------------


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32])
def test_any_integer_target_dtype_is_accepted(dtype):
    logits = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
    expected = 0.3774033188819885
    assert float(CE(logits, jnp.array([0, 1], dtype))) == pytest.approx(expected, rel=1e-6)
    assert float(NLL(jaxce.log_softmax(logits), jnp.array([0, 1], dtype))) == pytest.approx(
        expected, rel=1e-6
    )


def test_negative_ignore_index_with_probability_target_is_accepted():
    logits = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
    probs = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    base = CE(logits, probs)
    for ii in (-100, -1, -5):
        assert CE(logits, probs, ignore_index=ii) == base


def test_label_smoothing_bounds_and_traced_scalar_are_accepted():
    logits, t = jnp.array([[1.2, 0.5, -1.0]]), jnp.array([0])
    for eps in (0, 0.0, 1, 1.0, np.float32(0.5)):
        assert np.isfinite(float(CE(logits, t, label_smoothing=eps)))
    # A traced scalar is not range-checked (its value is unknown at trace time).
    out = jax.jit(lambda e: CE(logits, t, label_smoothing=e))(jnp.float32(1.5))
    assert out.shape == ()
