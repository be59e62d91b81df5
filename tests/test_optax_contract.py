"""jaxce's losses side by side with optax 0.2.8's (issue 11): for a call that
``optax.softmax_cross_entropy`` or ``optax.softmax_cross_entropy_with_integer_labels``
accepts (an int or tuple ``axis``, ``where`` of the positions' or the logits' shape,
probability targets that broadcast), ``jaxce.cross_entropy`` with the same arguments
and ``reduction="none"`` gives the same values and gradients, or differs in a way the
docs state (a target of -1 gives NaN where optax wraps it; -100 is ignored; a target
whose own class ``where`` leaves out gives NaN). Also what ``mean`` divides by, the
options composed with ``where`` (against a NumPy reference), and the compiled memory
of the ``where`` path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxce

optax = pytest.importorskip("optax")

F32 = dict(rtol=2e-6, atol=2e-6)


def close(a, b, **tol):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True, **(tol or F32)
    )


def draw(seed, shape, *, scale=2.0):
    return jnp.asarray(np.random.default_rng(seed).normal(scale=scale, size=shape), jnp.float32)


def flat_classes(shape, axes):
    return int(np.prod([shape[a] for a in axes]))


def positions_shape(shape, axes):
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def labels_in(mask_flat, rng):
    """One class per row of a ``(..., C)`` boolean array, among its True entries."""
    m = np.asarray(mask_flat)
    scores = rng.random(m.shape) + m  # True entries score higher
    return np.argmax(scores, axis=-1)


def to_flat(a, axes):
    """``a`` with ``axes`` moved to the end (in order) and merged: optax's layout."""
    batch = tuple(i for i in range(a.ndim) if i not in axes)
    a = np.transpose(np.asarray(a), batch + axes)
    return a.reshape(a.shape[: len(batch)] + (int(np.prod(a.shape[len(batch) :])),))


def _side_by_side(ours, theirs, args, out_shape):
    """Values and gradients (of a random linear functional of the values, with respect to
    every floating argument) of both, computed in one jitted program."""
    r = draw(99, out_shape)
    argnums = tuple(
        i for i, a in enumerate(args) if a is not None and jnp.issubdtype(a.dtype, jnp.floating)
    )

    def run(*args):
        out = []
        for f in (ours, theirs):
            v, g = jax.value_and_grad(lambda *a, f=f: jnp.sum(r * f(*a)), argnums)(*args)
            out.append((f(*args), g))
        return out

    return jax.jit(run)(*args)


def both_int(x, t, **kw):
    """(jaxce, optax) values and gradients for integer labels."""
    where = kw.pop("where", None)
    return _side_by_side(
        lambda x, t, w: jaxce.cross_entropy(x, t, reduction="none", where=w, **kw),
        lambda x, t, w: optax.softmax_cross_entropy_with_integer_labels(x, t, where=w, **kw),
        (x, t, where),
        t.shape,
    )


def both_prob(x, q, **kw):
    where = kw.pop("where", None)
    out = jax.eval_shape(lambda: optax.softmax_cross_entropy(x, q, where=where, **kw))
    return _side_by_side(
        lambda x, q, w: jaxce.cross_entropy(x, q, reduction="none", where=w, **kw),
        lambda x, q, w: optax.softmax_cross_entropy(x, q, where=w, **kw),
        (x, q, where),
        out.shape,
    )


def assert_same(pair):
    """Same values and gradients; where optax's gradient is NaN (with respect to a target
    entry that ``where`` leaves out: optax multiplies it by a -inf log-probability),
    jaxce's is finite: 0, or for a broadcast target the sum over the positions that take
    part (documented)."""
    (v1, g1), (v2, g2) = pair
    assert v1.shape == v2.shape, (v1.shape, v2.shape)
    close(v1, v2)
    assert np.isfinite(np.asarray(v1)).all()
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        assert a.shape == b.shape
        a, b = np.asarray(a), np.asarray(b)
        assert np.isfinite(a).all()
        close(np.where(np.isnan(b), 0, a), np.where(np.isnan(b), 0, b))


# --- integer labels ------------------------------------------------------------------

INT_CASES = [  # (shape, axis, mask)
    ((5, 4), -1, None),
    ((5, 4), -1, "positions"),
    ((5, 4), -1, "logits"),
    ((5, 4), -1, "classes-only"),
    ((4, 5), 0, "logits"),
    ((2, 3, 4), 1, "positions"),
    ((2, 3, 4), 1, "classes-only"),
    ((2, 3, 4, 5), (3, 2), None),
    ((2, 3, 4, 5), (3, 2), "logits"),
    ((2, 3, 4, 5), (0, 2), "positions"),
    ((3, 4, 2), (-1, 1), "logits"),
]


@pytest.mark.parametrize(("shape", "axis", "mask"), INT_CASES)
def test_integer_labels_match_optax(shape, axis, mask):
    rng = np.random.default_rng(len(shape) * 7 + (axis if isinstance(axis, int) else 3))
    axes = tuple(a % len(shape) for a in (axis if isinstance(axis, tuple) else (axis,)))
    pshape = positions_shape(shape, axes)
    x = draw(1, shape)
    where = None
    if mask == "positions":
        where = jnp.asarray(rng.random(pshape) < 0.7)
    elif mask in ("logits", "classes-only"):
        wshape = shape if mask == "logits" else tuple(1 if i not in axes else d
                                                      for i, d in enumerate(shape))
        where = rng.random(wshape) < 0.6
        if mask == "logits":  # one fully masked position
            where[tuple(slice(None) if i in axes else 0 for i in range(len(shape)))] = False
        where = jnp.asarray(where)
    if where is not None and where.ndim == len(shape) and not mask == "positions":
        flat = to_flat(np.broadcast_to(where, shape), axes)
        t = labels_in(flat, rng)
    else:
        t = rng.integers(0, flat_classes(shape, axes), pshape)
    t = jnp.asarray(t, jnp.int32)
    if mask == "logits":
        # A row with nothing in it (optax and jaxce: 0); its target is then left out too.
        flat = to_flat(np.asarray(where), axes)
        empty = ~flat.any(-1)
        assert empty.any() or flat.shape[-1] == 1
    if mask == "classes-only" and axes != (len(shape) - 1,) and isinstance(axis, tuple):
        pytest.skip("optax 0.2.8 cannot flatten a broadcast mask over tuple axes (reshape -1)")
    assert_same(both_int(x, t, axis=axis, where=where))


def test_integer_labels_jit_and_vmap_match_optax():
    x = draw(2, (3, 6, 5))
    rng = np.random.default_rng(2)
    where = jnp.asarray(rng.random((3, 6, 5)) < 0.7).at[0, 0].set(False)
    t = jnp.asarray(labels_in(np.asarray(where), rng), jnp.int32)
    want = optax.softmax_cross_entropy_with_integer_labels(x, t, where=where)
    ours = jax.jit(lambda x, t, w: jaxce.cross_entropy(x, t, reduction="none", where=w))
    close(ours(x, t, where), want)
    per = jax.vmap(lambda x, t, w: jaxce.cross_entropy(x, t, reduction="none", where=w))
    close(per(x, t, where), want)
    # vmap over the class-mask's batch axis while the labels stay unbatched
    per_mask = jax.vmap(
        lambda w: jaxce.cross_entropy(x[0], t[0], reduction="none", where=w), in_axes=0
    )
    close(per_mask(where), jax.vmap(
        lambda w: optax.softmax_cross_entropy_with_integer_labels(x[0], t[0], where=w))(where))
    # jit of the gradient
    g = jax.jit(jax.grad(lambda x: jaxce.cross_entropy(x, t, reduction="sum", where=where)))(x)
    close(g, jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(
        x, t, where=where).sum())(x))


# --- probability targets ---------------------------------------------------------------

PROB_CASES = [  # (logits shape, target shape, axis, mask)
    ((5, 4), (4,), -1, None),  # one distribution for every row
    ((5, 4), (5, 1), -1, "positions"),
    ((5, 4), (4,), -1, "logits"),
    ((4,), (3, 4), -1, None),  # the target broadcasts the logits
    ((2, 3, 4), (2, 3, 4), 1, "logits"),
    ((2, 3, 4, 5), (4, 5), (2, 3), "positions"),
    ((2, 3, 4, 5), (2, 3, 4, 5), (3, 1), "logits"),
    ((2, 3, 4), (3, 4), None, None),
    ((3, 4), (3, 4), None, "logits"),
]


@pytest.mark.parametrize(("lshape", "tshape", "axis", "mask"), PROB_CASES)
def test_probability_targets_match_optax(lshape, tshape, axis, mask):
    rng = np.random.default_rng(len(lshape) + len(tshape))
    x = draw(3, lshape)
    q = jnp.asarray(rng.dirichlet(np.ones(tshape[-1]), size=tshape[:-1]), jnp.float32)
    shape = tuple(np.broadcast_shapes(lshape, tshape))
    axes = tuple(range(len(shape))) if axis is None else tuple(
        a % len(shape) for a in (axis if isinstance(axis, tuple) else (axis,))
    )
    where = None
    if mask is not None and shape != lshape:
        pytest.skip("optax applies `where` to the logits before they are broadcast")
    if mask == "positions":
        if axis is None:
            pytest.skip("axis=None leaves no positions axis to mask")
        where = jnp.asarray(rng.random(positions_shape(shape, axes)) < 0.7)
    elif mask == "logits":
        w = rng.random(shape) < 0.6
        w[(0,) * len(shape)] = True
        where = jnp.asarray(w)
    assert_same(both_prob(x, q, axis=axis, where=where))


def test_probability_targets_under_jit_and_vmap():
    x, rng = draw(4, (4, 6, 5)), np.random.default_rng(4)
    q = jnp.asarray(rng.dirichlet(np.ones(5), size=(4, 6)), jnp.float32)
    where = jnp.asarray(rng.random((4, 6, 5)) < 0.6)
    want = optax.softmax_cross_entropy(x, q, where=where)
    f = lambda x, q, w: jaxce.cross_entropy(x, q, reduction="none", where=w)  # noqa: E731
    close(jax.jit(f)(x, q, where), want)
    close(jax.vmap(f)(x, q, where), want)
    close(jax.vmap(f, in_axes=(0, None, 0))(x, q[0], where),
          jax.vmap(lambda x, w: optax.softmax_cross_entropy(x, q[0], where=w))(x, where))


# --- edge cases: empty, all masked, infinities, bf16 --------------------------------------


def test_empty_arrays_match_optax():
    x, t = jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)
    for where in (None, jnp.zeros((0,), bool), jnp.zeros((0, 3), bool)):
        (v1, g1), (v2, g2) = both_int(x, t, where=where)
        assert v1.shape == v2.shape == (0,) and g1[0].shape == g2[0].shape == (0, 3)
        (v1, g1), (v2, g2) = both_prob(x, jnp.zeros((0, 3)), where=where)
        assert v1.shape == v2.shape == (0,)
    # reductions of nothing: torch's NaN (mean) and 0 (sum), also when everything is masked
    assert np.isnan(float(jaxce.cross_entropy(x, t)))
    assert float(jaxce.cross_entropy(x, t, reduction="sum")) == 0.0
    masked = jnp.zeros((2,), bool)
    assert np.isnan(float(jaxce.cross_entropy(draw(5, (2, 3)), jnp.array([0, 1]), where=masked)))


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_fully_masked_rows_give_zero_with_zero_finite_gradient(fill):
    """What is left out never reaches the arithmetic: NaN or inf there changes nothing,
    in the value or the gradient (optax agrees where its own gradient is finite)."""
    x = draw(6, (3, 4)).at[1].set(fill).at[2, 3].set(fill)
    t = jnp.array([1, 2, 0])
    where = jnp.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], bool)
    for kw in ({}, dict(label_smoothing=0.2, weight=jnp.array([1.0, 2, 3, 4]), z_loss=0.01),
               dict(softcap=5.0)):
        v, g = jax.value_and_grad(
            lambda x, kw=kw: jaxce.cross_entropy(x, t, reduction="sum", where=where, **kw))(x)
        per = jaxce.cross_entropy(x, t, reduction="none", where=where, **kw)
        assert np.isfinite(float(v)) and float(per[1]) == 0.0
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[1] == 0)
        assert float(g[2, 3]) == 0.0
        clean = jaxce.cross_entropy(x.at[1].set(0.0).at[2, 3].set(0.0), t, reduction="none",
                                    where=where, **kw)
        close(per, clean)
    close(jaxce.cross_entropy(x, t, reduction="none", where=where),
          optax.softmax_cross_entropy_with_integer_labels(x, t, where=where))
    # probability targets, with the same mask
    q = jnp.asarray(np.random.default_rng(6).dirichlet(np.ones(4), size=3), jnp.float32)
    v, g = jax.value_and_grad(
        lambda x: jaxce.cross_entropy(x, q, reduction="sum", where=where))(x)
    assert np.isfinite(float(v)) and np.all(np.isfinite(g)) and np.all(np.asarray(g)[1] == 0)


def test_infinite_logits_as_optax_and_torch():
    x = jnp.array([[0.0, -jnp.inf, 1.0], [jnp.inf, 0.0, 1.0], [-jnp.inf] * 3])
    t = jnp.array([0, 1, 2])
    ours = jaxce.cross_entropy(x, t, reduction="none")
    theirs = optax.softmax_cross_entropy_with_integer_labels(x, t)
    # finite with a -inf logit, NaN for a row of -inf; a +inf logit gives NaN, as in
    # torch (log_softmax there is inf - inf), where optax gives +inf (documented)
    close(ours[::2], theirs[::2])
    assert np.isfinite(float(ours[0])) and np.isnan(ours[1:]).all()
    assert float(theirs[1]) == np.inf
    # masked out, the -inf row and the +inf entry are harmless
    where = jnp.array([[1, 1, 1], [0, 1, 1], [0, 0, 0]], bool)
    close(jaxce.cross_entropy(x, t, reduction="none", where=where),
          optax.softmax_cross_entropy_with_integer_labels(x, t, where=where))


def test_bfloat16_matches_optax_in_float32():
    x = draw(7, (6, 9)).astype(jnp.bfloat16)
    rng = np.random.default_rng(7)
    where = jnp.asarray(rng.random((6, 9)) < 0.7)
    t = jnp.asarray(labels_in(np.asarray(where), rng), jnp.int32)
    ours = jaxce.cross_entropy(x, t, reduction="none", where=where)
    assert ours.dtype == jnp.bfloat16
    want = optax.softmax_cross_entropy_with_integer_labels(x.astype(jnp.float32), t, where=where)
    close(ours, want, rtol=1e-2, atol=1e-2)
    g = jax.grad(lambda x: jaxce.cross_entropy(x, t, reduction="sum", where=where))(x)
    gw = jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(
        x, t, where=where).sum())(x.astype(jnp.float32))
    assert g.dtype == jnp.bfloat16
    close(g, gw, rtol=2e-2, atol=1e-2)


# --- documented differences ----------------------------------------------------------------


def test_documented_differences_from_optax():
    x = draw(8, (3, 4))
    # -1: optax wraps it to the last class; jaxce never wraps (NaN, or raises when checked)
    t = jnp.array([0, -1, 2])
    ours = jaxce.cross_entropy(x, t, reduction="none")
    theirs = optax.softmax_cross_entropy_with_integer_labels(x, t)
    assert np.isnan(float(ours[1])) and np.isfinite(float(theirs[1]))
    close(theirs[1], jaxce.cross_entropy(x[1], jnp.array(3)))
    # -100 is torch's default ignore_index: 0 and left out of `mean`
    t = jnp.array([0, -100, 2])
    assert float(jaxce.cross_entropy(x, t, reduction="none")[1]) == 0.0
    close(jaxce.cross_entropy(x, t), jaxce.cross_entropy(x[::2], t[::2]))
    # a target whose own class is left out: NaN (probability 0); optax reads the
    # left-out logit (lse over what is left minus x_t)
    where = jnp.array([[1, 1, 0, 1]] * 3, bool)
    t = jnp.array([0, 2, 1])
    ours = jaxce.cross_entropy(x, t, reduction="none", where=where)
    theirs = optax.softmax_cross_entropy_with_integer_labels(x, t, where=where)
    assert np.isnan(float(ours[1])) and np.isfinite(float(theirs[1]))
    close(ours[::2], theirs[::2])
    with pytest.raises(ValueError, match="target value 2 at flattened position 1 .* `where`"):
        jaxce.checked(jaxce.cross_entropy)(x, t, where=where)
    # `where` must be boolean (optax fails inside jnp.max for others)
    with pytest.raises(TypeError, match="cross_entropy: `where` must be a boolean mask"):
        jaxce.cross_entropy(x, t, where=where.astype(jnp.float32))
    # integer labels must have the positions' shape (optax broadcasts a (1,) label)
    with pytest.raises(ValueError, match="expected target shape"):
        jaxce.cross_entropy(x, jnp.array([1]), reduction="none")
    # a floating target of the class-index shape is refused even where it broadcasts
    with pytest.raises(TypeError, match="class-index shape"):
        jaxce.cross_entropy(draw(9, (4, 4)), jnp.full((4,), 0.25), reduction="none")


# --- mean and the options, composed with where -----------------------------------------------


def np_reference(x, t, *, where_pos, where_cls, weight, eps, z, softcap, ignore_index=-100):
    """Per-position losses and the mean's denominator, in float64 NumPy."""
    x = np.asarray(x, np.float64)
    if softcap is not None:
        x = softcap * np.tanh(x / softcap)
    n, c = x.shape
    cls = np.ones_like(x, bool) if where_cls is None else np.asarray(where_cls)
    pos = np.ones(n, bool) if where_pos is None else np.asarray(where_pos)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    loss, denom = np.zeros(n), 0.0
    for i in range(n):
        if t[i] == ignore_index or not pos[i] or not cls[i].any():
            continue
        xi = np.where(cls[i], x[i], -np.inf)
        lse = np.logaddexp.reduce(xi[cls[i]])
        lp = xi - lse
        nll = -w[t[i]] * lp[t[i]] if cls[i, t[i]] else np.nan
        smooth = -np.sum(w[cls[i]] * lp[cls[i]])
        loss[i] = (1 - eps) * nll + eps / c * smooth + z * w[t[i]] * lse**2
        denom += w[t[i]]
    return loss, denom


@pytest.mark.parametrize("kind", ["positions", "logits"])
@pytest.mark.parametrize(
    "opts",
    [
        {},
        dict(weight=[0.5, 2.0, 1.0, 3.0, 0.25]),
        dict(label_smoothing=0.2),
        dict(label_smoothing=0.1, weight=[0.5, 2.0, 1.0, 3.0, 0.25], z_loss=1e-2, softcap=4.0),
        dict(ignore_index=1, z_loss=1e-3),
    ],
)
def test_options_and_mean_with_where_match_reference(kind, opts):
    """``mean`` divides by ``Σ w_t`` (or the count) over positions that take part: not
    ignored, not left out by ``where`` (torch's rule for ignored positions)."""
    rng = np.random.default_rng(10)
    x = draw(10, (7, 5))
    wc = rng.random((7, 5)) < 0.7
    wc[3] = False
    t = labels_in(wc, rng)
    t[5] = 1
    wp = rng.random(7) < 0.7
    where = jnp.asarray(wp) if kind == "positions" else jnp.asarray(wc)
    weight = opts.get("weight")
    kw = dict(opts, weight=None if weight is None else jnp.asarray(weight, jnp.float32))
    ref, denom = np_reference(
        x, t, where_pos=wp if kind == "positions" else None,
        where_cls=wc if kind == "logits" else None, weight=weight,
        eps=opts.get("label_smoothing", 0.0), z=opts.get("z_loss", 0.0),
        softcap=opts.get("softcap"), ignore_index=opts.get("ignore_index", -100),
    )
    tj = jnp.asarray(t, jnp.int32)
    close(jaxce.cross_entropy(x, tj, reduction="none", where=where, **kw), ref, rtol=1e-5,
          atol=1e-5)
    close(jaxce.cross_entropy(x, tj, reduction="sum", where=where, **kw), ref.sum(), rtol=1e-5)
    close(jaxce.cross_entropy(x, tj, where=where, **kw), ref.sum() / denom, rtol=1e-5)
    if kind == "positions":  # left out == ignored
        ignored = jnp.where(jnp.asarray(wp), tj, -100)
        if "ignore_index" not in opts:
            close(jaxce.cross_entropy(x, tj, where=where, **kw),
                  jaxce.cross_entropy(x, ignored, **kw))


def test_probability_mean_divides_by_positions_that_take_part():
    rng = np.random.default_rng(11)
    x = draw(11, (6, 4))
    q = jnp.asarray(rng.dirichlet(np.ones(4), size=6), jnp.float32)
    wp = jnp.array([1, 0, 1, 1, 0, 1], bool)
    per = jaxce.cross_entropy(x, q, reduction="none", where=wp)
    close(jaxce.cross_entropy(x, q, where=wp), per.sum() / 4)
    wc = jnp.ones((6, 4), bool).at[2].set(False)
    per = jaxce.cross_entropy(x, q, reduction="none", where=wc)
    close(jaxce.cross_entropy(x, q, where=wc), per.sum() / 5)


def test_nll_loss_where_composes_with_log_softmax():
    rng = np.random.default_rng(12)
    x = draw(12, (6, 5))
    wc = jnp.asarray(rng.random((6, 5)) < 0.7).at[1].set(False)
    t = jnp.asarray(labels_in(np.asarray(wc), rng), jnp.int32)
    for where in (wc, wc[:, 0]):
        lp = jaxce.log_softmax(x, where=where[:, None] if where.ndim == 1 else where)
        for red in ("none", "mean", "sum"):
            close(jaxce.nll_loss(lp, t, where=where, reduction=red),
                  jaxce.cross_entropy(x, t, where=where, reduction=red))
    # tuple axes in nll_loss, as in cross_entropy
    x4 = draw(13, (2, 3, 4))
    t4 = jnp.asarray(rng.integers(0, 12, (2,)), jnp.int32)
    close(jaxce.nll_loss(jax.nn.log_softmax(x4.reshape(2, 12)), t4, reduction="none"),
          jaxce.nll_loss(jax.nn.log_softmax(x4, axis=(1, 2)), t4, axis=(1, 2), reduction="none"))


def test_criteria_take_tuple_axes_and_where():
    x, rng = draw(14, (2, 3, 4, 5)), np.random.default_rng(14)
    t = jnp.asarray(rng.integers(0, 20, (2, 3)), jnp.int32)
    where = jnp.asarray(rng.random((2, 3)) < 0.5).at[0, 0].set(True)
    crit = jaxce.CrossEntropyLoss(axis=(2, 3))
    close(crit(x, t, where=where), jaxce.cross_entropy(x, t, axis=(2, 3), where=where))
    assert hash(crit) == hash(jaxce.CrossEntropyLoss(axis=(2, 3)))
    nll = jaxce.NLLLoss(axis=(2, 3), reduction="sum")
    close(nll(x, t, where=where), jaxce.nll_loss(x, t, axis=(2, 3), reduction="sum", where=where))


@given(
    n=st.integers(0, 4),
    c=st.integers(1, 6),
    extra=st.integers(1, 3),
    tuple_axes=st.booleans(),
    mask=st.sampled_from([None, "positions", "logits"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=6)
def test_hypothesis_integer_labels_match_optax(n, c, extra, tuple_axes, mask, seed):
    rng = np.random.default_rng(seed)
    shape = (n, extra, c)
    axis = (1, 2) if tuple_axes else -1
    axes = (1, 2) if tuple_axes else (2,)
    x = draw(seed, shape)
    where = None
    if mask == "positions":
        where = jnp.asarray(rng.random(positions_shape(shape, axes)) < 0.6)
    elif mask == "logits":
        where = jnp.asarray(rng.random(shape) < 0.6)
    if mask == "logits":
        t = labels_in(to_flat(np.asarray(where), axes), rng)
    else:
        t = rng.integers(0, flat_classes(shape, axes), positions_shape(shape, axes))
    assert_same(both_int(x, jnp.asarray(t, jnp.int32), axis=axis, where=where))


# --- compiled memory of the where path ---------------------------------------------------


@pytest.mark.skipif(len(jax.devices("cpu")) != 1, reason="measured on one CPU device")
def test_where_path_compiled_memory():
    """A positions mask costs nothing of the logits' size (as ``ignore_index``); a mask of
    the logits' shape adds no logits-sized temporary to the training step (value and
    gradient), and at most one float32 copy to a forward pass alone (XLA:CPU stores the
    masked logits for the max and the exp-sum)."""
    n, c = 256, 1000
    x = jax.ShapeDtypeStruct((n, c), jnp.float32)
    t = jax.ShapeDtypeStruct((n,), jnp.int32)
    nbytes = n * c * 4

    def temp(f, mask_shape):
        m = jax.ShapeDtypeStruct(mask_shape, jnp.bool_)
        return jax.jit(f).lower(x, t, m).compile().memory_analysis().temp_size_in_bytes

    def ce(x, t, m):
        return jaxce.cross_entropy(x, t, where=m)

    for f in (ce, jax.value_and_grad(ce)):
        assert temp(f, (n,)) < nbytes / 4
    assert temp(jax.value_and_grad(ce), (n, c)) < nbytes / 4
    assert temp(jax.value_and_grad(ce), (1, c)) < nbytes / 4
    assert temp(ce, (n, c)) < 1.25 * nbytes
