"""``jaxce.CrossEntropyLoss`` / ``jaxce.NLLLoss``: immutable, hashable callables that
hold the loss options, so a criterion can be a static argument of ``jax.jit``."""

from __future__ import annotations

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

LOGITS = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
TARGET = jnp.array([0, 1])
W = np.array([1.0, 2.0, 0.5], np.float32)


# --- construction and call ---------------------------------------------------------


def test_defaults_match_torch():
    ce, nll = jaxce.CrossEntropyLoss(), jaxce.NLLLoss()
    assert (ce.axis, ce.weight, ce.ignore_index, ce.reduction, ce.label_smoothing) == (
        -1, None, -100, "mean", 0.0,
    )  # fmt: skip
    assert (nll.axis, nll.weight, nll.ignore_index, nll.reduction) == (-1, None, -100, "mean")
    assert not hasattr(nll, "label_smoothing")


def test_call_reproduces_the_torch_notebook_values():
    assert float(jaxce.CrossEntropyLoss()(LOGITS, TARGET)) == 0.3774033188819885
    lp = jaxce.log_softmax(jnp.array([[1.2, -0.5, 0.8, 2.1]]))
    assert float(jaxce.NLLLoss()(lp, jnp.array([2]))) == 1.8615424633026123


@pytest.mark.parametrize(
    "options",
    [
        dict(weight=W, label_smoothing=0.1),
        dict(ignore_index=1, reduction="sum"),
        dict(reduction="none", label_smoothing=1.0),
        dict(weight=W, ignore_index=0, reduction="mean"),
    ],
    ids=["weight-ls", "ignore-sum", "none-ls1", "weight-ignore"],
)
def test_call_equals_functional(options):
    criterion = jaxce.CrossEntropyLoss(**options)
    np.testing.assert_array_equal(
        criterion(LOGITS, TARGET), jaxce.cross_entropy(LOGITS, TARGET, **options)
    )
    nll_options = {k: v for k, v in options.items() if k != "label_smoothing"}
    lp = jaxce.log_softmax(LOGITS)
    np.testing.assert_array_equal(
        jaxce.NLLLoss(**nll_options)(lp, TARGET), jaxce.nll_loss(lp, TARGET, **nll_options)
    )


def test_call_with_axis_and_probability_targets():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)), jnp.float32)
    t = jnp.array([[0, 1, 2, -100], [2, 2, 0, 1]])
    criterion = jaxce.CrossEntropyLoss(axis=1, weight=W)
    np.testing.assert_array_equal(criterion(x, t), jaxce.cross_entropy(x, t, axis=1, weight=W))
    probs = jax.nn.softmax(LOGITS * 2)
    np.testing.assert_array_equal(
        jaxce.CrossEntropyLoss(label_smoothing=0.2)(LOGITS, probs),
        jaxce.cross_entropy(LOGITS, probs, label_smoothing=0.2),
    )


def test_grad_through_criterion():
    criterion = jaxce.CrossEntropyLoss(weight=W, label_smoothing=0.1)
    g = jax.grad(lambda x: criterion(x, TARGET))(LOGITS)
    expected = jax.grad(lambda x: jaxce.cross_entropy(x, TARGET, weight=W, label_smoothing=0.1))(
        LOGITS
    )
    np.testing.assert_array_equal(g, expected)


# --- value semantics: equality and hash --------------------------------------------


def test_same_options_are_equal_with_equal_hash():
    a = jaxce.CrossEntropyLoss(weight=W, ignore_index=3, reduction="sum", label_smoothing=0.1)
    b = jaxce.CrossEntropyLoss(
        weight=jnp.asarray(W), ignore_index=3, reduction="sum", label_smoothing=0.1
    )
    assert a == b and hash(a) == hash(b)
    assert a is not b
    assert jaxce.NLLLoss() == jaxce.NLLLoss() and hash(jaxce.NLLLoss()) == hash(jaxce.NLLLoss())
    # An int label_smoothing means the same float.
    assert jaxce.CrossEntropyLoss(label_smoothing=1) == jaxce.CrossEntropyLoss(label_smoothing=1.0)
    assert len({a, b, jaxce.CrossEntropyLoss()}) == 2


@pytest.mark.parametrize(
    "other",
    [
        dict(weight=np.array([1.0, 2.0, 0.25], np.float32)),  # another weight array
        dict(weight=None),
        dict(weight=np.array([1.0, 2.0, 0.5, 1.0], np.float32)),
        dict(weight=W, ignore_index=0),
        dict(weight=W, reduction="sum"),
        dict(weight=W, axis=1),
        dict(weight=W, label_smoothing=0.2),
    ],
    ids=["weight-values", "no-weight", "weight-length", "ignore", "reduction", "axis", "ls"],
)
def test_different_options_are_unequal(other):
    base = jaxce.CrossEntropyLoss(weight=W)
    assert base != jaxce.CrossEntropyLoss(**other)


def test_different_kinds_are_unequal():
    assert jaxce.CrossEntropyLoss() != jaxce.NLLLoss()
    assert jaxce.NLLLoss(weight=W) != jaxce.CrossEntropyLoss(weight=W)
    assert jaxce.NLLLoss() != "NLLLoss()"
    assert jaxce.NLLLoss() != None  # noqa: E711


def test_nan_weights_compare_equal_so_jit_does_not_retrace():
    w = np.array([1.0, np.nan, 2.0], np.float32)
    a, b = jaxce.NLLLoss(weight=w), jaxce.NLLLoss(weight=w.copy())
    assert a == b and hash(a) == hash(b)


# --- immutability --------------------------------------------------------------------


def test_setattr_raises():
    criterion = jaxce.CrossEntropyLoss(weight=W)
    with pytest.raises(AttributeError, match="immutable"):
        criterion.reduction = "sum"
    with pytest.raises(AttributeError, match="immutable"):
        criterion.new_attribute = 1
    with pytest.raises(AttributeError):
        del criterion.reduction
    assert criterion.reduction == "mean"
    assert criterion == jaxce.CrossEntropyLoss(weight=W)


def test_held_weight_is_read_only():
    criterion = jaxce.CrossEntropyLoss(weight=W)
    with pytest.raises(ValueError):
        criterion.weight[0] = 100.0
    np.testing.assert_array_equal(criterion.weight, W)


def test_weight_is_stored_as_a_copy():
    w = W.copy()
    criterion = jaxce.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    before = criterion(LOGITS, TARGET)
    key = hash(criterion)
    w[:] = [100.0, -3.0, 7.0]  # mutate the caller's array afterwards
    np.testing.assert_array_equal(criterion.weight, W)
    np.testing.assert_array_equal(criterion(LOGITS, TARGET), before)
    assert hash(criterion) == key
    assert criterion == jaxce.CrossEntropyLoss(weight=W, label_smoothing=0.1)


def test_copy_and_deepcopy_give_equal_criteria():
    criterion = jaxce.CrossEntropyLoss(weight=W, reduction="sum", label_smoothing=0.1)
    for clone in (copy.copy(criterion), copy.deepcopy(criterion)):
        assert clone == criterion and hash(clone) == hash(criterion)
        np.testing.assert_array_equal(clone(LOGITS, TARGET), criterion(LOGITS, TARGET))


def test_pickle_round_trip():
    criterion = jaxce.NLLLoss(weight=W, ignore_index=1)
    clone = pickle.loads(pickle.dumps(criterion))
    assert clone == criterion and hash(clone) == hash(criterion)


# --- as a static argument of jax.jit ----------------------------------------------------


def test_static_argument_of_jit_traces_once_per_distinct_criterion():
    traces = []

    def step(criterion, x, t):
        traces.append(criterion)
        return criterion(x, t)

    jitted = jax.jit(step, static_argnums=0)
    a = jaxce.CrossEntropyLoss(weight=W, label_smoothing=0.1)
    b = jaxce.CrossEntropyLoss(weight=W.copy(), label_smoothing=0.1)  # equal, not identical
    expected = jaxce.cross_entropy(LOGITS, TARGET, weight=W, label_smoothing=0.1)
    np.testing.assert_allclose(jitted(a, LOGITS, TARGET), expected, rtol=1e-6)
    jitted(b, LOGITS * 2, TARGET)
    assert len(traces) == 1
    c = jaxce.CrossEntropyLoss(weight=W, label_smoothing=0.2)
    expected = jaxce.cross_entropy(LOGITS, TARGET, weight=W, label_smoothing=0.2)
    np.testing.assert_allclose(jitted(c, LOGITS, TARGET), expected, rtol=1e-6)
    assert len(traces) == 2
    jitted(jaxce.NLLLoss(), jaxce.log_softmax(LOGITS), TARGET)
    assert len(traces) == 3


def test_static_argnames_of_jit():
    f = jax.jit(lambda x, t, criterion: criterion(x, t), static_argnames="criterion")
    out = f(LOGITS, TARGET, criterion=jaxce.NLLLoss(reduction="none"))
    np.testing.assert_array_equal(out, jaxce.nll_loss(LOGITS, TARGET, reduction="none"))


def test_jit_of_a_criterion_itself():
    criterion = jaxce.CrossEntropyLoss(weight=W)
    np.testing.assert_allclose(
        jax.jit(criterion)(LOGITS, TARGET), criterion(LOGITS, TARGET), rtol=1e-6
    )


def test_criterion_closed_over_inside_jit_and_vmap():
    criterion = jaxce.CrossEntropyLoss(reduction="none")
    stack = jnp.array([[0, 1], [2, 2], [1, -100]])
    out = jax.jit(jax.vmap(lambda t: criterion(LOGITS, t)))(stack)
    np.testing.assert_allclose(out, jnp.stack([criterion(LOGITS, t) for t in stack]), rtol=1e-6)


# --- repr ------------------------------------------------------------------------------


def test_repr_names_class_and_options():
    r = repr(jaxce.CrossEntropyLoss(weight=W, reduction="sum", label_smoothing=0.1))
    assert r.startswith("CrossEntropyLoss(")
    for piece in ("axis=-1", "weight=[1.0, 2.0, 0.5]", "ignore_index=-100", "reduction='sum'",
                  "label_smoothing=0.1"):  # fmt: skip
        assert piece in r
    assert repr(jaxce.NLLLoss()) == (
        "NLLLoss(axis=-1, weight=None, ignore_index=-100, reduction='mean')"
    )


# --- validation at construction ------------------------------------------------------


CONSTRUCTION_ERRORS = {
    "ce-reduction": (
        lambda: jaxce.CrossEntropyLoss(reduction="avg"),
        ValueError,
        "CrossEntropyLoss.*reduction.*'avg'",
    ),
    "nll-reduction": (
        lambda: jaxce.NLLLoss(reduction="batchmean"),
        ValueError,
        "NLLLoss.*reduction.*'batchmean'",
    ),
    "ls-high": (
        lambda: jaxce.CrossEntropyLoss(label_smoothing=1.5),
        ValueError,
        "CrossEntropyLoss.*label_smoothing.*1.5",
    ),
    "ls-negative": (
        lambda: jaxce.CrossEntropyLoss(label_smoothing=-0.1),
        ValueError,
        "CrossEntropyLoss.*label_smoothing.*-0.1",
    ),
    "ignore-float": (
        lambda: jaxce.CrossEntropyLoss(ignore_index=0.5),
        TypeError,
        "CrossEntropyLoss.*ignore_index.*0.5",
    ),
    # axis=None (every axis) and tuples are valid, as in the functions; lists are not
    "axis-list": (lambda: jaxce.NLLLoss(axis=[1]), TypeError, r"NLLLoss.*axis.*\[1\]"),
    "axis-empty": (lambda: jaxce.NLLLoss(axis=()), TypeError, r"NLLLoss.*axis.*\(\)"),
    "axis-tuple-float": (
        lambda: jaxce.CrossEntropyLoss(axis=(1, 2.0)), TypeError, "CrossEntropyLoss.*axis"
    ),
    "weight-2d": (
        lambda: jaxce.NLLLoss(weight=np.ones((2, 3), np.float32)),
        ValueError,
        r"NLLLoss.*weight.*\(2, 3\)",
    ),
    "weight-int": (
        lambda: jaxce.CrossEntropyLoss(weight=np.arange(3)),
        TypeError,
        "CrossEntropyLoss.*weight.*int",
    ),
    "legacy-kwarg": (
        lambda: jaxce.CrossEntropyLoss(size_average=True),
        TypeError,
        "size_average",
    ),
}


@pytest.mark.parametrize(
    "make, exc, pattern", CONSTRUCTION_ERRORS.values(), ids=CONSTRUCTION_ERRORS.keys()
)
def test_options_are_validated_at_construction(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


def test_traced_weight_cannot_be_held():
    with pytest.raises(TypeError, match="CrossEntropyLoss.*`weight`"):
        jax.jit(lambda w: jaxce.CrossEntropyLoss(weight=w))(jnp.asarray(W))


def test_traced_label_smoothing_cannot_be_held():
    # Like a traced weight: a clear TypeError naming the class and the option.
    with pytest.raises(TypeError, match="CrossEntropyLoss.*`label_smoothing`"):
        jax.jit(lambda e: jaxce.CrossEntropyLoss(label_smoothing=e))(jnp.float32(0.1))
