"""Mathematical properties of jaxce's losses and softmax family (no torch needed).

Each property is checked against an independent float64 NumPy computation or
against jaxce itself on transformed inputs (shifted logits, permuted classes,
permuted positions). Inputs come from a NumPy generator seeded by hypothesis;
hypothesis only draws the configuration, and runs derandomized.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxce

PROPS = settings(max_examples=10)  # the rest: the "jaxce" profile (conftest.py)

RTOL, ATOL = 1e-10, 1e-12  # float64 comparisons


def assert_close(actual, desired, rtol=RTOL, atol=ATOL, what=""):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(desired, np.float64),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
        err_msg=what,
    )


def np_log_softmax(x, axis):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def np_softmax(x, axis):
    return np.exp(np_log_softmax(x, axis))


def _value_and_grad_fn(f):
    """A jitted ``args -> (f(*args), ∂⟨1, f⟩/∂args[0])``; call it more than once to reuse
    the compilation (the properties compare jaxce with itself on same-shaped inputs)."""

    def run(*a):
        out, vjp = jax.vjp(lambda x0: f(x0, *a[1:]), a[0])
        return out, vjp(jnp.ones_like(out))[0]

    return jax.jit(run)


def _value_and_grad(f, *args):
    return _value_and_grad_fn(f)(*args)


def _vjp_jit(f, x, ct):
    """``(f(x), ∂⟨ct, f(x)⟩/∂x)`` as NumPy arrays, under one jit."""

    def run(xa, cta):
        out, vjp = jax.vjp(f, xa)
        return out, vjp(cta)[0]

    out, g = jax.jit(run)(jnp.asarray(x), jnp.asarray(ct))
    return np.asarray(out), np.asarray(g)


# ----------------------------------------------------------------------------------------
# Shared configuration


@st.composite
def configs(draw, probabilities=False):
    """A shape with its class axis, plus the loss options; arrays come from ``seed``."""
    layout = draw(st.sampled_from(["2d", "kd", "kd_last"]))
    n = draw(st.sampled_from([2, 3, 5]))
    c = draw(st.sampled_from([2, 3, 4]))
    if layout == "2d":
        shape, axis = (n, c), -1
    elif layout == "kd":
        shape, axis = (n, c, 3), 1
    else:
        shape, axis = (n, 3, c), -1
    eps = draw(st.sampled_from([0.0, 1.0, draw(st.floats(0.01, 0.99))]))
    return dict(
        shape=shape,
        axis=axis % len(shape),
        weight=draw(st.sampled_from(["none", "positive", "zeros"])),
        eps=eps,
        reduction=draw(st.sampled_from(["none", "sum", "mean"])),
        ignore_index=-100 if probabilities else draw(st.sampled_from([-100, 1])),
        p_ignore=0.0 if probabilities else draw(st.sampled_from([0.0, 0.4])),
        target=draw(st.sampled_from(["normalized", "unnormalized"])) if probabilities else None,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _make(case, rng):
    """``(x, target, weight)`` as float64 / int64 NumPy arrays for ``case``."""
    shape, axis = case["shape"], case["axis"]
    c = shape[axis]
    x = rng.standard_normal(shape) * 3.0
    w = None
    if case["weight"] != "none":
        w = rng.uniform(0.2, 2.0, size=c)
        if case["weight"] == "zeros":
            w[rng.integers(0, c)] = 0.0
    if case["target"] is None:
        pos = shape[:axis] + shape[axis + 1 :]
        t = rng.integers(0, c, size=pos)
        t = np.where(rng.random(pos) < case["p_ignore"], case["ignore_index"], t)
    elif case["target"] == "normalized":
        t = rng.dirichlet(np.ones(c), size=int(np.prod(shape)) // c)
        t = np.moveaxis(t.reshape(shape[:axis] + shape[axis + 1 :] + (c,)), -1, axis)
    else:
        t = rng.uniform(0.0, 2.0, size=shape)
    return x, t, w


def _ce(case, **overrides):
    kw = dict(
        axis=case["axis"],
        ignore_index=case["ignore_index"],
        reduction=case["reduction"],
        label_smoothing=case["eps"],
    )
    kw.update(overrides)

    def f(x, t, w):
        return jaxce.cross_entropy(x, t, weight=w, **kw)

    return f


def _positions_denominator(t, w, ignore_index):
    valid = t != ignore_index
    wt = np.ones(t.shape) if w is None else w[np.where(valid, t, 0)]
    return float(np.sum(np.where(valid, wt, 0.0)))


# ----------------------------------------------------------------------------------------
# Invariances


@PROPS
@given(configs(), st.booleans())
def test_shift_invariance(case, probabilities):
    if probabilities:
        case = dict(case, target="unnormalized", ignore_index=-100, p_ignore=0.0)
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    shift_shape = list(x.shape)
    shift_shape[case["axis"]] = 1
    shift = rng.uniform(-50.0, 50.0, size=shift_shape)
    with jax.enable_x64(True):
        f = _value_and_grad_fn(_ce(case))
        args = (jnp.asarray(t), None if w is None else jnp.asarray(w))
        v0, g0 = f(jnp.asarray(x), *args)
        v1, g1 = f(jnp.asarray(x + shift), *args)
    assert_close(v1, v0, atol=1e-11, what=f"value {case}")
    assert_close(g1, g0, atol=1e-11, what=f"grad {case}")


@PROPS
@given(configs(), st.booleans())
def test_class_permutation_equivariance(case, probabilities):
    """Relabelling the classes (logits, targets, weights and a class-valued
    ignore_index together) leaves the loss unchanged and permutes the gradient."""
    if probabilities:
        case = dict(case, target="normalized", ignore_index=-100, p_ignore=0.0)
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    axis, c = case["axis"], x.shape[case["axis"]]
    perm = rng.permutation(c)  # new class j is old class perm[j]
    inv = np.argsort(perm)  # old class k is new class inv[k]
    xp = np.take(x, perm, axis=axis)
    wp = None if w is None else w[perm]
    ii = case["ignore_index"]
    if probabilities:
        tp, iip = np.take(t, perm, axis=axis), ii
    else:
        valid = t != ii
        tp = np.where(valid, inv[np.where(valid, t, 0)], t)
        iip = int(inv[ii]) if 0 <= ii < c else ii
        if 0 <= ii < c:
            tp = np.where(valid, tp, iip)
    with jax.enable_x64(True):
        v0, g0 = _value_and_grad(
            _ce(case), jnp.asarray(x), jnp.asarray(t), None if w is None else jnp.asarray(w)
        )
        v1, g1 = _value_and_grad(
            _ce(case, ignore_index=iip),
            jnp.asarray(xp),
            jnp.asarray(tp),
            None if wp is None else jnp.asarray(wp),
        )
    assert_close(v1, v0, what=f"value {case} perm={perm}")
    assert_close(g1, np.take(np.asarray(g0), perm, axis=axis), what=f"grad {case} perm={perm}")


@PROPS
@given(configs(), st.booleans())
def test_position_permutation(case, probabilities):
    """Permuting positions permutes ``none`` and its gradient, and leaves sum/mean unchanged."""
    if probabilities:
        case = dict(case, target="unnormalized", ignore_index=-100, p_ignore=0.0)
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    axis = case["axis"]
    c = x.shape[axis]
    xl = np.moveaxis(x, axis, -1)  # positions first, classes last
    pos_shape = xl.shape[:-1]
    order = rng.permutation(int(np.prod(pos_shape)))

    def permute_x(a):
        a = np.moveaxis(a, axis, -1).reshape(-1, c)[order].reshape(xl.shape)
        return np.moveaxis(a, -1, axis)

    xp = permute_x(x)
    tp = permute_x(t) if probabilities else t.reshape(-1)[order].reshape(t.shape)
    with jax.enable_x64(True):
        wj = None if w is None else jnp.asarray(w)
        f = _value_and_grad_fn(_ce(case))
        v0, g0 = f(jnp.asarray(x), jnp.asarray(t), wj)
        v1, g1 = f(jnp.asarray(xp), jnp.asarray(tp), wj)
    v0 = np.asarray(v0)
    expected = v0.reshape(-1)[order].reshape(v0.shape) if case["reduction"] == "none" else v0
    assert_close(v1, expected, what=f"value {case}")
    assert_close(g1, permute_x(np.asarray(g0)), what=f"grad {case}")


# ----------------------------------------------------------------------------------------
# Reductions and gradients against closed forms


@PROPS
@given(configs(), st.booleans())
def test_mean_is_sum_over_denominator(case, probabilities):
    """mean = sum / D: D = Σ w[t] over non-ignored positions for class indices (spec 2.3,
    3.2), the number of positions for probability targets (3.3). Gradients likewise."""
    if probabilities:
        case = dict(case, target="unnormalized", ignore_index=-100, p_ignore=0.0)
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    if probabilities:
        denom = x.size / x.shape[case["axis"]]
    else:
        denom = _positions_denominator(t, w, case["ignore_index"])
    with jax.enable_x64(True):
        mean_f, sum_f = _ce(case, reduction="mean"), _ce(case, reduction="sum")
        (vm, gm), (vs, gs) = jax.jit(
            lambda *a: (_value_and_grad(mean_f, *a), _value_and_grad(sum_f, *a))
        )(jnp.asarray(x), jnp.asarray(t), None if w is None else jnp.asarray(w))
    if denom == 0:
        assert np.isnan(vm), f"{case}: D = 0 but mean = {vm}"
        return
    assert_close(vm, np.asarray(vs) / denom, what=f"value {case}")
    assert_close(gm, np.asarray(gs) / denom, what=f"grad {case}")


@PROPS
@given(configs(), st.sampled_from(["none", "sum", "mean"]))
def test_class_index_closed_form(case, reduction):
    """Value, spec 3.2: (1-ε)·(-w_t·lp_t) + (ε/C)·(-Σ_c w_c·lp_c), 0 where ignored; mean
    divides by D = Σ w_t. Gradient, spec section 4: s_i·[(1-ε)·w_t·(p - e_t) + (ε/C)·(p·Σw
    - w)], 0 on ignored rows; without weights (p - q)·s_i with q = (1-ε)·e_t + ε/C."""
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    axis, eps, ii = case["axis"], case["eps"], case["ignore_index"]
    c = x.shape[axis]
    ct = rng.standard_normal(t.shape) if reduction == "none" else np.array(1.7)
    valid = t != ii
    denom = _positions_denominator(t, w, ii)
    if reduction == "mean" and denom == 0:
        return  # D = 0: covered by test_all_ignored_mean_is_nan_with_zero_gradient
    s = ct if reduction == "none" else np.full(t.shape, 1.7 / (denom if reduction == "mean" else 1))
    s = np.expand_dims(np.where(valid, s, 0.0), axis)
    p = np_softmax(x, axis)
    lp = np_log_softmax(x, axis)
    onehot = np.moveaxis(np.eye(c)[np.where(valid, t, 0)], -1, axis)
    wv = np.ones(c) if w is None else w
    per = -wv[np.where(valid, t, 0)] * np.sum(onehot * lp, axis=axis)
    if eps > 0:
        smooth = -np.sum(wv.reshape([c if d == axis else 1 for d in range(x.ndim)]) * lp, axis)
        per = (1 - eps) * per + (eps / c) * smooth
    per = np.where(valid, per, 0.0)
    value = per if reduction == "none" else np.sum(per) / (denom if reduction == "mean" else 1)
    if w is None:
        expected = s * (p - ((1 - eps) * onehot + eps / c))
    else:
        wb = w.reshape([c if d == axis else 1 for d in range(x.ndim)])
        w_t = np.expand_dims(w[np.where(valid, t, 0)], axis)
        expected = s * ((1 - eps) * w_t * (p - onehot) + (eps / c) * (p * np.sum(w) - wb))
    with jax.enable_x64(True):

        def f(xa):
            return jaxce.cross_entropy(
                xa,
                jnp.asarray(t),
                axis=axis,
                weight=None if w is None else jnp.asarray(w),
                ignore_index=ii,
                reduction=reduction,
                label_smoothing=eps,
            )

        out, g = _vjp_jit(f, x, ct)
    assert_close(out, value, what=f"value {case} reduction={reduction}")
    assert_close(g, expected, what=f"grad {case} reduction={reduction}")
    ignored = np.broadcast_to(np.expand_dims(~valid, axis), x.shape)
    assert np.all(np.asarray(g)[ignored] == 0)


@PROPS
@given(configs(probabilities=True), st.sampled_from(["none", "sum", "mean"]))
def test_probability_closed_form(case, reduction):
    """Value, spec 3.3: -Σ_c w_c·q'_c·lp_c with q' = (1-ε)·q + ε/C, mean over positions.
    Gradient, spec section 4: s_i·[(Σ_c w_c·q'_c)·p - w⊙q']; normalized and unweighted
    this is p - q'."""
    rng = np.random.default_rng(case["seed"])
    x, q, w = _make(case, rng)
    axis, eps = case["axis"], case["eps"]
    c = x.shape[axis]
    pos_shape = x.shape[:axis] + x.shape[axis + 1 :]
    ct = rng.standard_normal(pos_shape) if reduction == "none" else np.array(0.6)
    m = int(np.prod(pos_shape))
    s = {"none": ct, "sum": np.full(pos_shape, 0.6), "mean": np.full(pos_shape, 0.6 / m)}[reduction]
    s = np.expand_dims(s, axis)
    qs = (1 - eps) * q + eps / c if eps > 0 else q
    p = np_softmax(x, axis)
    wb = np.ones(c) if w is None else w
    wb = wb.reshape([c if d == axis else 1 for d in range(x.ndim)])
    expected = s * (np.sum(wb * qs, axis=axis, keepdims=True) * p - wb * qs)
    per = -np.sum(wb * qs * np_log_softmax(x, axis), axis=axis)
    value = {"none": per, "sum": np.sum(per), "mean": np.sum(per) / m}[reduction]
    if w is None and case["target"] == "normalized":
        assert_close(expected, s * (p - qs), atol=1e-12)  # the reference's own special case
    with jax.enable_x64(True):

        def f(xa):
            return jaxce.cross_entropy(
                xa,
                jnp.asarray(q),
                axis=axis,
                weight=None if w is None else jnp.asarray(w),
                reduction=reduction,
                label_smoothing=eps,
            )

        out, g = _vjp_jit(f, x, ct)
    assert_close(out, value, what=f"value {case} reduction={reduction}")
    assert_close(g, expected, what=f"grad {case} reduction={reduction}")


@PROPS
@given(configs(), st.sampled_from(["none", "sum", "mean"]))
def test_one_hot_probabilities_equal_class_indices_without_weights(case, reduction):
    """Spec 3.3: without weights a one-hot probability target gives the class-index loss
    (and, by 3.2, also with label smoothing); gradients too."""
    case = dict(case, weight="none", p_ignore=0.0, ignore_index=-100)
    rng = np.random.default_rng(case["seed"])
    x, t, _ = _make(case, rng)
    axis, c = case["axis"], x.shape[case["axis"]]
    onehot = np.moveaxis(np.eye(c)[t], -1, axis)
    with jax.enable_x64(True):
        kw = dict(reduction=reduction)
        vi, gi = _value_and_grad(_ce(case, **kw), jnp.asarray(x), jnp.asarray(t), None)
        vp, gp = _value_and_grad(_ce(case, **kw), jnp.asarray(x), jnp.asarray(onehot), None)
    assert_close(vp, vi, what=f"value {case} {reduction}")
    assert_close(gp, gi, what=f"grad {case} {reduction}")


# ----------------------------------------------------------------------------------------
# Ignored rows, all-ignored


@PROPS
@given(
    configs(),
    st.sampled_from(["-inf", "nan", "+inf", "mixed"]),
    st.sampled_from(["cross_entropy", "nll_loss"]),
    st.sampled_from(["float64", "float32"]),
)
@example(  # -inf log-probabilities are what log_softmax(where=...) gives for masked rows
    case=dict(
        shape=(3, 4),
        axis=1,
        weight="positive",
        eps=0.0,
        reduction="mean",
        ignore_index=-100,
        p_ignore=0.0,
        target=None,
        seed=1,
    ),
    fill="-inf",
    fn="nll_loss",
    dtype="float64",
)
def test_ignored_rows_do_not_leak_nonfinite_logits(case, fill, fn, dtype):
    """Spec 9.6: an ignored position contributes exactly 0 and gets an exactly-zero,
    finite gradient, whatever its logits hold; the other positions are unaffected."""
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    axis, ii = case["axis"], case["ignore_index"]
    pos = t.shape
    ignored = rng.random(pos) < 0.4
    ignored.reshape(-1)[0] = True
    ignored.reshape(-1)[-1] = False
    t = np.where(ignored, ii, t)
    row_mask = np.broadcast_to(np.expand_dims(ignored, axis), x.shape)
    bad = {"-inf": -np.inf, "nan": np.nan, "+inf": np.inf}.get(fill)
    if bad is None:
        bad = rng.choice(np.array([-np.inf, np.nan, np.inf]), size=x.shape)
    x_dirty = np.where(row_mask, bad, x).astype(dtype)
    x_clean = np.where(row_mask, 0.0, x).astype(dtype)
    w = None if w is None else w.astype(dtype)
    ctx = jax.enable_x64(True) if dtype == "float64" else jax.enable_x64(False)
    with ctx:
        tj = jnp.asarray(t.astype(np.int64 if dtype == "float64" else np.int32))
        if fn == "cross_entropy":
            f = _ce(case)
        else:

            def f(xa, ta, wa):
                return jaxce.nll_loss(
                    xa, ta, axis=axis, weight=wa, ignore_index=ii, reduction=case["reduction"]
                )

        @jax.jit
        def run(xa, wa):  # value and the gradients wrt the logits and the weight
            if wa is None:
                out, vjp = jax.vjp(lambda xb: f(xb, tj, None), xa)
                return out, vjp(jnp.ones_like(out)) + (None,)
            out, vjp = jax.vjp(lambda xb, wb: f(xb, tj, wb), xa, wa)
            return out, vjp(jnp.ones_like(out))

        wj = None if w is None else jnp.asarray(w)
        vd, (gd, gwd) = run(jnp.asarray(x_dirty), wj)
        vc, (gc, gwc) = run(jnp.asarray(x_clean), wj)
    vd, gd, gc = np.asarray(vd), np.asarray(gd), np.asarray(gc)
    what = f"{fn} {dtype} fill={fill} {case}"
    if w is not None:  # the weight gradient (spec 9.7) does not see ignored rows either
        np.testing.assert_array_equal(np.asarray(gwd), np.asarray(gwc), err_msg=what)
    np.testing.assert_array_equal(vd, np.asarray(vc), err_msg=what)
    if case["reduction"] == "none":
        assert np.all(vd[ignored] == 0), what
    assert np.all(gd[row_mask] == 0), what  # exactly zero, hence finite
    # Other rows: as with clean logits (NaN only where the clean gradient is NaN, i.e.
    # when every non-ignored target has weight 0, spec section 4).
    np.testing.assert_array_equal(gd, gc, err_msg=what)


@PROPS
@given(configs(), st.sampled_from(["cross_entropy", "nll_loss"]))
def test_all_ignored_mean_is_nan_with_zero_gradient(case, fn):
    """Spec 2.3 / 9.8: every target ignored gives mean NaN, sum 0, none zeros, and an
    all-zero logits gradient in each case."""
    rng = np.random.default_rng(case["seed"])
    x, t, w = _make(case, rng)
    ii = case["ignore_index"]
    t = np.full(t.shape, ii)
    reductions = ("mean", "sum", "none")

    @jax.jit
    def run(xa, ta, wa):
        out = {}
        for reduction in reductions:
            if fn == "cross_entropy":
                f = _ce(case, reduction=reduction)
            else:

                def f(xa, ta, wa, reduction=reduction):
                    return jaxce.nll_loss(
                        xa, ta, axis=case["axis"], weight=wa, ignore_index=ii, reduction=reduction
                    )

            v, vjp = jax.vjp(lambda xb, f=f: f(xb, ta, wa), xa)
            out[reduction] = (v, vjp(jnp.ones_like(v))[0])
        return out

    with jax.enable_x64(True):
        out = run(jnp.asarray(x), jnp.asarray(t), None if w is None else jnp.asarray(w))
        for reduction in reductions:
            v, g = np.asarray(out[reduction][0]), np.asarray(out[reduction][1])
            what = f"{fn} {reduction} {case}"
            if reduction == "mean":
                assert v.shape == () and np.isnan(v), what
            else:
                assert v.shape == (() if reduction == "sum" else t.shape), what
                assert np.all(v == 0), what
            assert np.all(g == 0), what


# ----------------------------------------------------------------------------------------
# log_softmax / softmax / logsumexp


@PROPS
@given(
    st.sampled_from([(4, 5), (3, 2, 4), (2, 3, 1)]),
    st.sampled_from([-1, 0, 1]),
    st.sampled_from(["float64", "float32"]),
    st.integers(0, 2**31 - 1),
)
def test_log_softmax_where_masks_exactly(shape, axis, dtype, seed):
    """Masked entries (holding -inf, +inf or NaN) never reach the arithmetic: log_softmax is
    -inf there, softmax 0, both gradients exactly 0; a fully masked row gives -inf / 0
    with a zero gradient; unmasked entries equal the log_softmax of the unmasked subset."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 4
    # Built with the normalised axis last: one fully masked row and, when there is
    # another row, one fully unmasked row.
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    rows = (rng.random(moved) < 0.6).reshape(-1, moved[-1])
    rows[0] = False
    if rows.shape[0] > 1:
        rows[-1] = True
    mask = np.moveaxis(rows.reshape(moved), -1, axis)
    x = np.where(mask, x, rng.choice(np.array([-np.inf, np.inf, np.nan]), size=shape))
    g = rng.standard_normal(shape)
    # float64 reference over the unmasked subset
    xr = np.where(mask, x, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.max(xr, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        lse = np.log(np.sum(np.where(mask, np.exp(xr - m), 0.0), axis=axis, keepdims=True)) + m
        ref_lp = np.where(mask, xr - lse, -np.inf)
    ref_p = np.where(mask, np.exp(ref_lp), 0.0)
    ref_glp = np.where(mask, g - ref_p * np.sum(np.where(mask, g, 0.0), axis, keepdims=True), 0)
    ref_gp = np.where(mask, ref_p * (g - np.sum(g * ref_p, axis, keepdims=True)), 0.0)

    ctx = jax.enable_x64(True) if dtype == "float64" else jax.enable_x64(False)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    with ctx:
        fns = (jaxce.log_softmax, jaxce.softmax)

        @jax.jit
        def run(xa, ma, ga):
            res = []
            for fn in fns:
                out, vjp = jax.vjp(lambda a, fn=fn: fn(a, axis, where=ma), xa)
                res.append((out, vjp(ga)[0]))
            return res

        res = run(jnp.asarray(x.astype(dtype)), jnp.asarray(mask), jnp.asarray(g.astype(dtype)))
        refs = ((ref_lp, ref_glp), (ref_p, ref_gp))
        for fn, (out, grad), (ref, ref_g) in zip(fns, res, refs, strict=True):
            out, grad = np.asarray(out), np.asarray(grad)
            what = f"{fn.__name__} {shape} axis={axis} {dtype}"
            assert np.all(np.isfinite(grad)), what
            assert np.all(grad[~mask] == 0), what
            assert np.all(out[~mask] == (-np.inf if fn is jaxce.log_softmax else 0)), what
            assert_close(out, ref, what=what, **tol)
            assert_close(grad, ref_g, what=what, **tol)


@PROPS
@given(
    st.lists(st.sampled_from([1, 2, 3, 7]), min_size=1, max_size=3),
    st.data(),
    st.sampled_from(["float64", "float32"]),
    st.sampled_from([1.0, 30.0, 1e4]),
    st.integers(0, 2**31 - 1),
)
def test_softmax_sums_to_one(shape, data, dtype, scale, seed):
    shape = tuple(shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    # -inf entries, but never a whole row (that is NaN in torch and here)
    neg = rng.random(shape) < 0.3
    first = [slice(None)] * len(shape)
    first[axis] = slice(0, 1)
    neg[tuple(first)] = False
    x = np.where(neg, -np.inf, x)
    ctx = jax.enable_x64(True) if dtype == "float64" else jax.enable_x64(False)
    with ctx:
        p = np.asarray(jaxce.softmax(jnp.asarray(x.astype(dtype)), axis))
        lp = np.asarray(jaxce.log_softmax(jnp.asarray(x.astype(dtype)), axis))
    tol = 1e-13 if dtype == "float64" else 2e-6
    assert np.all(p >= 0) and np.all(p <= 1)
    assert np.all(p[neg] == 0)
    np.testing.assert_allclose(np.sum(p.astype(np.float64), axis=axis), 1.0, rtol=0, atol=tol)
    assert_close(p, np.exp(lp.astype(np.float64)), rtol=10 * tol, atol=tol)


def _np_logsumexp(x, axes):
    """float64 reference: np.logaddexp.reduce over the (moved, flattened) axes."""
    x = np.asarray(x, np.float64)
    keep = [d for d in range(x.ndim) if d not in axes]
    xm = np.transpose(x, keep + list(axes)).reshape([x.shape[d] for d in keep] + [-1])
    return np.logaddexp.reduce(xm, axis=-1)


@PROPS
@given(
    st.sampled_from([(5,), (3, 4), (2, 3, 4)]),
    st.data(),
    st.sampled_from(["float64", "float32"]),
    st.sampled_from([1.0, 50.0, 1e4]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_logsumexp_matches_numpy(shape, data, dtype, scale, neg_inf, seed):
    ndim = len(shape)
    axis = data.draw(
        st.one_of(
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
        )
    )
    axes = tuple(a % ndim for a in (axis if isinstance(axis, tuple) else (axis,)))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    if neg_inf:  # some -inf entries; whole -inf rows give -inf
        x = np.where(rng.random(shape) < 0.4, -np.inf, x)
    x = x.astype(dtype)
    ctx = jax.enable_x64(True) if dtype == "float64" else jax.enable_x64(False)
    with ctx:
        out = np.asarray(jaxce.logsumexp(jnp.asarray(x), axis))
    assert out.dtype == np.dtype(dtype)
    ref = _np_logsumexp(x, axes)
    tol = dict(rtol=1e-13, atol=1e-13) if dtype == "float64" else dict(rtol=1e-6, atol=1e-6)
    assert_close(out, ref, what=f"{shape} axis={axis}", **tol)


def test_logsumexp_nonfinite_matches_numpy():
    """log Σ exp over a row holding +inf is +inf (numpy, jax.nn and torch agree); NaN
    propagates; an all -inf row is -inf."""
    x = np.array(
        [
            [1.0, np.inf, 0.0],
            [np.inf, np.inf, -np.inf],
            [np.nan, 0.0, 1.0],
            [-np.inf, -np.inf, -np.inf],
            [-np.inf, 2.0, -np.inf],
        ]
    )
    with jax.enable_x64(True):
        out = np.asarray(jaxce.logsumexp(jnp.asarray(x), -1))
    with np.errstate(invalid="ignore"):
        ref = np.logaddexp.reduce(x, axis=-1)
    np.testing.assert_array_equal(out, ref)
