"""The opt-in checked path (spec section 9.3): by default an out-of-range, non-ignored
target gives NaN; ``jaxce.checked(fn)`` raises an error naming the bad value and its
position, from jitted code; ``jaxce.check_targets`` composes with checkify by hand."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxce

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
W = jnp.array([0.5, 2.0, 1.0], jnp.float32)

checked_ce = jaxce.checked(jaxce.cross_entropy)
checked_nll = jaxce.checked(jaxce.nll_loss)


def bad_target(value, position, fn="cross_entropy"):
    return rf"{fn}.*target value {re.escape(str(value))} at flattened position {position}\b"


# --- bad targets raise, naming value and position -----------------------------------


@pytest.mark.parametrize(
    "target, value, position",
    [
        ([0, 1, 2, 3], 3, 3),  # == C
        ([0, 7, 1, 2], 7, 1),
        ([-1, 0, 1, 2], -1, 0),  # -1 is not wrapped to the last class
        ([0, 1, -2, 2], -2, 2),
        ([0, 5, 1, -3], 5, 1),  # the first bad one is reported
        ([0, 1, 2, 255], 255, 3),
    ],
)
def test_bad_target_raises_value_error_naming_value_and_position(target, value, position):
    t = jnp.array(target, jnp.int32)
    with pytest.raises(ValueError, match=bad_target(value, position)):
        checked_ce(X, t)
    # The unchecked call is NaN instead (it cannot raise under jit).
    assert np.isnan(float(jaxce.cross_entropy(X, t)))


def test_error_is_checkify_runtime_error_and_a_value_error():
    with pytest.raises(checkify.JaxRuntimeError) as info:
        checked_ce(X, jnp.array([0, 1, 2, 9]))
    assert isinstance(info.value, ValueError)
    assert "9" in str(info.value) and "3 classes" in str(info.value)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8, jnp.int16, jnp.uint32])
def test_bad_target_of_any_integer_dtype(dtype):
    with pytest.raises(ValueError, match=bad_target(4, 2)):
        checked_ce(X, jnp.array([0, 1, 4, 2], dtype))


def test_unsigned_target_that_aliases_ignore_index_after_a_cast_still_raises():
    """uint32 2**32 - 100 is not -100: it is an out-of-range class, so the checked path
    must raise (the unchecked path gives NaN there)."""
    t = jnp.array([0, 2**32 - 100, 1, 2], jnp.uint32)
    assert np.isnan(float(jaxce.cross_entropy(X, t)))
    with pytest.raises(ValueError, match=bad_target(2**32 - 100, 1)):
        checked_ce(X, t)


def test_large_target_under_x64_is_not_wrapped(x64):
    x = jnp.zeros((2, 3))
    t = jnp.array([1, 2**40], jnp.int64)
    with pytest.raises(ValueError, match=bad_target(2**40, 1)):
        checked_ce(x, t)


def test_kdim_position_is_flattened_row_major():
    x = jnp.zeros((2, 3, 2, 2))
    t = jnp.array([[[0, 1], [2, 0]], [[1, 1], [3, 0]]])
    with pytest.raises(ValueError, match=bad_target(3, 6)):
        jaxce.checked(lambda x, t: jaxce.cross_entropy(x, t, axis=1))(x, t)


def test_unbatched_input():
    with pytest.raises(ValueError, match=bad_target(3, 0)):
        checked_ce(X[0], jnp.array(3))


# --- good targets: the same value as the unchecked call -------------------------------


@pytest.mark.parametrize(
    "target, kwargs",
    [
        ([0, 1, 2, 0], {}),
        ([0, -100, 2, 1], {"weight": W, "label_smoothing": 0.1}),
        ([0, -1, 2, -1], {"ignore_index": -1, "weight": W}),
        ([7, 1, 7, 0], {"ignore_index": 7, "reduction": "none"}),
        ([2, 1, 2, 0], {"ignore_index": 2, "reduction": "sum", "label_smoothing": 0.2}),
    ],
    ids=["plain", "weight-ls", "ignore-minus-1", "ignore-out-of-range", "ignore-real-class"],
)
def test_good_targets_give_the_unchecked_value(target, kwargs):
    t = jnp.array(target)
    np.testing.assert_array_equal(checked_ce(X, t, **kwargs), jaxce.cross_entropy(X, t, **kwargs))


def test_ignore_index_and_weight_passed_as_keywords():
    t = jnp.array([5, 0, 5, 2])
    # 5 is ignored: no error, and it is excluded from the weighted mean.
    out = checked_ce(X, t, weight=W, ignore_index=5)
    np.testing.assert_array_equal(out, jaxce.cross_entropy(X, t, weight=W, ignore_index=5))
    # With another ignore_index, 5 is a bad target again; the message names the option.
    with pytest.raises(ValueError, match=bad_target(5, 0)) as info:
        checked_ce(X, t, weight=W, ignore_index=-100)
    assert "ignore_index=-100" in str(info.value)


def test_ignore_index_outside_the_target_dtype_range():
    # Unchecked, an ignore_index no int32 can equal is fine; checked must be too.
    t = jnp.array([0, 1, 2, 0], jnp.int32)
    np.testing.assert_array_equal(
        checked_ce(X, t, ignore_index=2**40), jaxce.cross_entropy(X, t, ignore_index=2**40)
    )


def test_traced_label_smoothing_keyword():
    t = jnp.array([0, 1, 2, 0])
    np.testing.assert_allclose(
        checked_ce(X, t, label_smoothing=jnp.float32(0.3)),
        jaxce.cross_entropy(X, t, label_smoothing=0.3),
        rtol=1e-6,
    )


def test_probability_targets_pass_through():
    probs = jax.nn.softmax(X[::-1])
    np.testing.assert_array_equal(checked_ce(X, probs), jaxce.cross_entropy(X, probs))


def test_trace_time_errors_still_raise_their_own_error():
    with pytest.raises(ValueError, match="cross_entropy.*`reduction`.*'avg'"):
        checked_ce(X, jnp.array([0, 1, 2, 0]), reduction="avg")


# --- nll_loss, criteria and user functions ----------------------------------------------


def test_nll_loss():
    lp = jaxce.log_softmax(X)
    with pytest.raises(ValueError, match=bad_target(3, 2, fn="nll_loss")):
        checked_nll(lp, jnp.array([0, 1, 3, 0]), weight=W)
    t = jnp.array([0, -100, 2, 0])
    np.testing.assert_array_equal(checked_nll(lp, t, weight=W), jaxce.nll_loss(lp, t, weight=W))


def test_criterion():
    criterion = jaxce.CrossEntropyLoss(ignore_index=1, label_smoothing=0.1)
    with pytest.raises(ValueError, match=bad_target(-1, 3)):
        jaxce.checked(criterion)(X, jnp.array([0, 1, 2, -1]))
    t = jnp.array([0, 1, 2, 1])
    np.testing.assert_array_equal(jaxce.checked(criterion)(X, t), criterion(X, t))


def _model_loss(params, inputs, labels, aux_labels):
    logits = inputs @ params
    main = jaxce.cross_entropy(logits, labels, label_smoothing=0.1)
    aux = jaxce.nll_loss(jaxce.log_softmax(logits), aux_labels, reduction="sum")
    return main + 0.5 * aux


def test_user_function_calling_several_losses():
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    inputs = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    good, bad = jnp.array([0, 1, 2, 1]), jnp.array([0, 1, 2, 6])
    checked_loss = jaxce.checked(_model_loss)
    np.testing.assert_array_equal(
        checked_loss(params, inputs, good, good), _model_loss(params, inputs, good, good)
    )
    with pytest.raises(ValueError, match=bad_target(6, 3, fn="cross_entropy")):
        checked_loss(params, inputs, bad, good)
    with pytest.raises(ValueError, match=bad_target(6, 3, fn="nll_loss")):
        checked_loss(params, inputs, good, bad)
    # Through value_and_grad as well.
    checked_vg = jaxce.checked(jax.value_and_grad(_model_loss))
    value, grad = checked_vg(params, inputs, good, good)
    assert grad.shape == params.shape and np.isfinite(float(value))
    with pytest.raises(ValueError, match=bad_target(6, 3)):
        checked_vg(params, inputs, bad, good)


def test_vmap_inside_checked():
    stack = jnp.array([[0, 1, 2, 0], [1, 1, 9, 0]])
    f = jaxce.checked(jax.vmap(jaxce.cross_entropy, in_axes=(None, 0)))
    with pytest.raises(ValueError, match="target value 9"):
        f(X, stack)
    np.testing.assert_allclose(f(X, stack[:1]), jaxce.cross_entropy(X, stack[0])[None], rtol=1e-6)


def test_checked_traces_once_and_keeps_the_name():
    traces = []

    def loss(x, t):
        traces.append(1)
        return jaxce.cross_entropy(x, t)

    f = jaxce.checked(loss)
    f(X, jnp.array([0, 1, 2, 0]))
    f(X * 2, jnp.array([2, 2, 1, 0]))
    with pytest.raises(ValueError):
        f(X, jnp.array([0, 1, 2, 3]))
    assert len(traces) == 1
    assert checked_ce.__name__ == "cross_entropy"


def test_checked_does_not_leak_into_unchecked_calls():
    t = jnp.array([0, 1, 2, 3])
    with pytest.raises(ValueError):
        checked_ce(X, t)
    # Same shapes and options, unchecked, afterwards: NaN, no error.
    assert np.isnan(float(jaxce.cross_entropy(X, t)))
    assert np.isnan(float(jax.jit(jaxce.cross_entropy)(X, t)))
    # And the other way round: an unchecked trace is not reused by the checked path.
    t2 = jnp.array([0, 1, 2, 4, 0])
    x2 = jnp.zeros((5, 3))
    assert np.isnan(float(jaxce.cross_entropy(x2, t2)))
    with pytest.raises(ValueError, match=bad_target(4, 3)):
        checked_ce(x2, t2)


# --- checkify by hand ---------------------------------------------------------------


def _loss_with_check(x, t):
    jaxce.check_targets(t, x.shape[-1], ignore_index=-100, fn="my_loss")
    return jaxce.cross_entropy(x, t)


def test_check_targets_with_checkify_and_jit_by_hand():
    f = jax.jit(checkify.checkify(_loss_with_check))
    err, out = f(X, jnp.array([0, -100, 2, 1]))
    assert err.get() is None
    err.throw()  # nothing to raise
    np.testing.assert_array_equal(out, jaxce.cross_entropy(X, jnp.array([0, -100, 2, 1])))
    err, out = f(X, jnp.array([0, -100, 3, 1]))
    assert np.isnan(float(out))
    assert re.search(r"my_loss.*target value 3 at flattened position 2", err.get())
    with pytest.raises(ValueError, match=bad_target(3, 2, fn="my_loss")):
        err.throw()


def test_check_targets_default_name_and_ignore_index():
    def f(t):
        jaxce.check_targets(t, 4, ignore_index=9)
        return t

    checked_f = jax.jit(checkify.checkify(f))
    assert checked_f(jnp.array([0, 9, 3]))[0].get() is None
    msg = checked_f(jnp.array([0, 9, 4]))[0].get()
    assert re.search(r"check_targets.*target value 4 at flattened position 2", msg)
    assert "4 classes" in msg and "ignore_index=9" in msg


def test_check_targets_inside_checkified_vmap():
    f = jax.jit(checkify.checkify(jax.vmap(_loss_with_check, in_axes=(None, 0))))
    err, out = f(X, jnp.array([[0, 1, 2, 0], [0, 1, 2, 0]]))
    assert err.get() is None and out.shape == (2,)
    err, _ = f(X, jnp.array([[0, 1, 2, 0], [0, -5, 2, 0]]))
    assert "target value -5" in err.get()


# --- where= ---------------------------------------------------------------------------


def test_where_left_out_positions_are_not_checked_and_left_out_classes_are():
    """A bad target at a position that ``where`` leaves out is not reported (the unchecked
    loss is 0 there, as for an ignored one); a target whose own class ``where`` leaves out
    is (the unchecked loss is NaN there)."""
    t = jnp.array([0, 9, 1, 2])
    positions = jnp.array([True, False, True, True])
    assert float(checked_ce(X, t, where=positions, reduction="none")[1]) == 0.0
    np.testing.assert_allclose(
        checked_nll(jax.nn.log_softmax(X), t, where=positions),
        jaxce.nll_loss(jax.nn.log_softmax(X), t, where=positions),
    )
    classes = jnp.ones((4, 3), bool).at[2, 1].set(False)
    t = jnp.array([0, 1, 1, 2])
    assert np.isnan(float(jaxce.cross_entropy(X, t, where=classes, reduction="none")[2]))
    for safe in (checked_ce, lambda x, t, **kw: checked_nll(jax.nn.log_softmax(x), t, **kw)):
        with pytest.raises(ValueError, match=r"target value 1 at flattened position 2 .*`where`"):
            safe(X, t, where=classes)
    # A row with nothing in it is left out, whatever its target.
    empty_row = classes.at[2].set(False)
    assert float(checked_ce(X, jnp.array([0, 1, 7, 2]), where=empty_row, reduction="none")[2]) == 0
