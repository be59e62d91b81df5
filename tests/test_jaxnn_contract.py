"""jaxce.softmax / log_softmax / logsumexp as drop-ins for jax.nn's (issue 11).

For every call jax.nn accepts, jaxce returns the same values and gradients, except in
the ways docs/_incoming/softmax.md states; each such difference is pinned here too
(``test_differs_*``). Side by side with torch where torch has the same feature
(``torch.masked.softmax`` / ``log_softmax``, ``torch.logsumexp``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.ad_checkpoint import print_saved_residuals

import jaxce

FNS = {
    "softmax": (jaxce.softmax, jax.nn.softmax),
    "log_softmax": (jaxce.log_softmax, jax.nn.log_softmax),
    "logsumexp": (jaxce.logsumexp, jax.nn.logsumexp),
}
SOFTMAXES = ("softmax", "log_softmax")


def standard():
    """jax.nn's own dtype promotion (the suite runs with strict promotion)."""
    return jax.numpy_dtype_promotion("standard")


def assert_same(a, b, *, rtol=2e-6, atol=1e-6, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def pull(f, x, ct):
    """``f(x)`` and the gradient of ``<f(x), ct>`` with respect to ``x``."""
    out, pullback = jax.vjp(f, jnp.asarray(x))
    return out, pullback(jnp.asarray(ct, out.dtype))[0]


# --------------------------------------------------------------------------------
# the calling contract
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FNS)
def test_signature_is_jax_nn_s(name):
    ours, theirs = (inspect.signature(f).parameters for f in FNS[name])
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


def test_positional_where_as_optax_passes_it():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
    m = jnp.asarray(np.random.default_rng(1).random((3, 5)) > 0.4)
    for name in SOFTMAXES:
        ours, theirs = FNS[name]
        assert_same(ours(x, -1, m), theirs(x, -1, m), what=name)
        assert_same(ours(x, 0, m), theirs(x, 0, m), what=name)
    assert_same(
        jaxce.logsumexp(x, 1, None, True, False, m),
        jax.nn.logsumexp(x, 1, None, True, False, m),
    )
    # a mask (and b) of fewer dimensions broadcasts to x's shape
    row, b = m[:1], jnp.asarray([[1.0, 0.0, -2.0, 0.5, 3.0]])
    for name in SOFTMAXES:
        assert_same(FNS[name][0](x, -1, row), FNS[name][1](x, -1, row), what=name)
    for u, v in zip(
        jaxce.logsumexp(x, -1, b, False, True, row),
        jax.nn.logsumexp(x, -1, b, False, True, row),
        strict=True,
    ):
        assert_same(u, v)


def test_logsumexp_reduces_all_axes_by_default():
    x = jnp.arange(6.0).reshape(2, 3)
    assert jaxce.logsumexp(x).shape == () == jax.nn.logsumexp(x).shape
    assert_same(jaxce.logsumexp(x), jax.nn.logsumexp(x))
    assert jaxce.logsumexp(x, keepdims=True).shape == (1, 1)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # in jax.nn
@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8, jnp.int16, jnp.int32, np.int64, jnp.bool_])
def test_integer_and_bool_inputs_promote_as_jax(dtype):
    """jax's dtype rule (bool and integers to float32); the values are those of the
    float32 input (jax.nn.softmax itself shifts in the integer dtype, which for 8-bit
    integers gives NaN: test_differs_small_integers_are_converted_first)."""
    x = np.array([[0, 1, 2], [3, 1, 0]]).astype(dtype)
    for name, (ours, theirs) in FNS.items():
        if dtype == jnp.bool_ and name != "logsumexp":
            # jax.nn.softmax/log_softmax reject bool: so does jaxce
            with pytest.raises(TypeError, match=f"{name}: `x`.*bool"):
                ours(x)
            continue
        with standard():
            assert theirs(x, axis=-1).dtype == jnp.float32
        out = ours(x, axis=-1)
        assert out.dtype == jnp.float32, (name, out.dtype)
        assert_same(out, theirs(jnp.asarray(x, jnp.float32), axis=-1), what=name)


def test_differs_small_integers_are_converted_first():
    x = np.array([0, 1, 2], np.uint8)
    with standard():
        assert np.isnan(np.asarray(jax.nn.softmax(x))).any()
    assert_same(jaxce.softmax(x), jax.nn.softmax(jnp.asarray(x, jnp.float32)))


def test_python_scalars():
    with standard():
        for a in (3, 2.5, True):
            assert_same(jaxce.logsumexp(a), jax.nn.logsumexp(a), what=repr(a))
        # bfloat16 with a Python float b stays bfloat16 (summed in float32: the float32
        # result rounded, here 2.797 where jax.nn's bfloat16 arithmetic gives 2.781)
        out = jaxce.logsumexp(jnp.ones(3, jnp.bfloat16), b=2.0)
        assert jax.nn.logsumexp(jnp.ones(3, jnp.bfloat16), b=2.0).dtype == out.dtype
        assert_same(out, jax.nn.logsumexp(jnp.ones(3), b=2.0).astype(jnp.bfloat16))
    # jax.nn.softmax(2.0) raises (axis -1 of a 0-d array); jaxce reads a 0-d input as
    # one class, as torch does: softmax 1, log_softmax 0.
    assert float(jaxce.softmax(2.0)) == 1.0 and float(jaxce.log_softmax(2.0)) == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # in jax.nn
def test_x64_dtypes():
    with jax.enable_x64(True), standard():
        for x in (np.arange(4), np.arange(4.0), np.arange(4, dtype=np.int8)):
            for name, (ours, theirs) in FNS.items():
                o, t = ours(x), theirs(x)
                assert o.dtype == t.dtype, (name, x.dtype, o.dtype, t.dtype)
                assert_same(o, t, rtol=1e-12, atol=1e-12)
        b = np.array([1.0, 2.0])
        a = jnp.ones(2, jnp.bfloat16)
        assert jaxce.logsumexp(a, b=b).dtype == jax.nn.logsumexp(a, b=b).dtype == jnp.float64


# --------------------------------------------------------------------------------
# values and gradients against jax.nn, drawn
# --------------------------------------------------------------------------------

SPECIALS = np.array([np.inf, -np.inf, np.nan, 80.0, -80.0], np.float32)
# A few shapes and axes, so that the drawn examples reuse compiled programs.
SHAPES = {(7,): [None], (3, 5): [-1, (0, 1)], (2, 3, 4): [1, (0, 2)]}


@st.composite
def problems(draw):
    shape = draw(st.sampled_from(sorted(SHAPES)))
    axis = draw(st.sampled_from(SHAPES[shape]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = (rng.normal(size=shape) * draw(st.sampled_from([0.5, 3.0, 30.0]))).astype(np.float32)
    if draw(st.booleans()):  # sprinkle +-inf, nan and large values
        spots = rng.random(shape) < 0.15
        x[spots] = rng.choice(SPECIALS, size=int(spots.sum()))
    where = None
    if draw(st.booleans()):  # p = 0: every row fully masked
        where = rng.random(shape) < draw(st.sampled_from([0.0, 0.5, 0.9]))
    return x, axis, where


@functools.cache
def _pullbacks(axis, masked):
    """jitted (outputs, gradients) of jaxce's and of jax.nn's three functions, for
    cotangents that are 0 where an output is not finite (as a user's masked sum)."""

    def run(fns, x, w, cts):
        outs, grads = [], []
        for f, ct in zip(fns, cts, strict=True):
            out, pullback = jax.vjp(lambda x, f=f: f(x, axis, where=w if masked else None), x)
            outs.append(out)
            grads.append(pullback(jnp.where(jnp.isfinite(out), ct, 0))[0])
        return outs, grads

    ours, theirs = zip(*FNS.values(), strict=True)
    return jax.jit(functools.partial(run, ours)), jax.jit(functools.partial(run, theirs))


@settings(max_examples=20)
@given(problems())
def test_values_and_gradients_match_jax_nn(problem):
    x, axis, where = problem
    w = jnp.ones(x.shape, bool) if where is None else jnp.asarray(where)
    ct = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    cts = [ct, ct, jnp.sum(ct, axis=axis)]
    ours, theirs = _pullbacks(axis, where is not None)
    (o, g), (t, h) = ours(x, w, cts), theirs(x, w, cts)
    for name, a, b, c, d in zip(FNS, o, t, g, h, strict=True):
        what = f"{name} axis={axis} where={where is not None}\nx={x}\nwhere={where}"
        assert_same(a, b, rtol=1e-5, atol=1e-6, what=what)
        c, d = np.asarray(c), np.asarray(d)
        # inf/nan inputs make some gradients NaN: in both, or compare where both are not
        assert np.array_equal(np.isnan(c), np.isnan(d)) or not np.isfinite(x).all(), what
        both = ~np.isnan(c) & ~np.isnan(d)
        np.testing.assert_allclose(c[both], d[both], rtol=1e-5, atol=1e-6, err_msg=what)
        if where is not None:  # masked entries: exactly zero gradient, whatever they hold
            assert np.all(c[~where] == 0), what


@functools.cache
def _lse(axis, keepdims):
    """jitted values and gradients (wrt a and b) of logsumexp with b and where, without
    and with return_sign."""

    def run(f, x, b, w):
        def value(x, b, sign):
            out = f(x, axis, b, keepdims, sign, w)
            lse, sgn = out if sign else (out, jnp.ones_like(out))
            return jnp.sum(jnp.where(jnp.isfinite(lse), lse * sgn, 0)), out

        return [
            jax.value_and_grad(value, argnums=(0, 1), has_aux=True)(x, b, sign)
            for sign in (False, True)
        ]

    return tuple(jax.jit(functools.partial(run, f)) for f in FNS["logsumexp"])


@settings(max_examples=12)
@given(problems(), st.sampled_from(["ones", "scalar", "row", "full"]), st.booleans())
def test_logsumexp_b_keepdims_return_sign(problem, b_kind, keepdims):
    x, axis, where = problem
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    values = np.array([0.0, -1.0, 0.5, 2.0], np.float32)  # zeros and negatives
    rng = np.random.default_rng(3)
    b = {
        "ones": np.ones(x.shape, np.float32),
        "scalar": np.full(x.shape, -2.0, np.float32),
        "row": np.broadcast_to(rng.choice(values, size=x.shape[-1:]), x.shape),
        "full": rng.choice(values, size=x.shape),
    }[b_kind]
    w = jnp.ones(x.shape, bool) if where is None else jnp.asarray(where)
    ours, theirs = _lse(axis, keepdims)
    what = f"axis={axis} b={b_kind} keepdims={keepdims}\nx={x}\nb={b}\nwhere={where}"
    for u, v in zip(jax.tree.leaves(ours(x, b, w)), jax.tree.leaves(theirs(x, b, w)), strict=True):
        assert_same(u, v, rtol=1e-5, atol=1e-6, what=what)


def test_logsumexp_b_broadcasts_as_jax():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 3)), jnp.float32)
    for b in (np.float32(-2.0), np.array([1.0, 0.0, -0.5], np.float32), np.ones((2, 1))):
        for sign in (False, True):
            with standard():
                ref = jax.nn.logsumexp(x, -1, b, False, sign)
            for u, v in zip(
                jax.tree.leaves(jaxce.logsumexp(x, -1, b, False, sign)),
                jax.tree.leaves(ref),
                strict=True,
            ):
                assert_same(u, v, what=f"{b} {sign}")


def test_logsumexp_edges():
    ninf = -jnp.inf
    cases = [
        (jnp.array([[ninf, ninf], [0.0, 1.0]]), dict(axis=-1)),  # an all -inf row
        (jnp.array([jnp.inf, 1.0]), {}),
        (jnp.array([jnp.inf, ninf]), {}),
        (jnp.array([jnp.nan, 1.0]), {}),
        (jnp.zeros((0, 3)), {}),
        (jnp.zeros((0, 3)), dict(axis=0)),
        (jnp.zeros((0, 3)), dict(axis=1, keepdims=True)),
        (jnp.zeros((2, 3)), dict(axis=())),
        (jnp.array([1.0, 2.0]), dict(b=jnp.array([1.0, -1.0]))),  # negative sum: NaN
        (jnp.array([1.0, 2.0]), dict(b=jnp.array([1.0, -1.0]), return_sign=True)),
        (jnp.array([1.0, 2.0]), dict(b=jnp.zeros(2), return_sign=True)),  # sign 0, -inf
        (jnp.array([[1.0, 2.0]]), dict(where=jnp.array([[False, False]]), return_sign=True)),
        (jnp.float32(1.5), {}),
    ]
    for a, kw in cases:
        o, t = jaxce.logsumexp(a, **kw), jax.nn.logsumexp(a, **kw)
        for u, v in zip(jax.tree.leaves(o), jax.tree.leaves(t), strict=True):
            assert_same(u, v, what=f"{a} {kw}")
    # finite gradients where masked or all -inf
    x = jnp.array([[jnp.nan, jnp.inf, 1.0], [jnp.nan, jnp.inf, ninf]])
    m = jnp.array([[False, False, True], [False, False, False]])  # row 1 fully masked

    def total(x, f):
        out = f(x, 1, where=m)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0))

    g = jax.grad(total)(x, jaxce.logsumexp)
    assert np.array_equal(np.asarray(g), [[0, 0, 1], [0, 0, 0]])
    assert_same(g, jax.grad(total)(x, jax.nn.logsumexp))


def test_empty_arrays():
    for shape, axis in (((0, 3), -1), ((3, 0), -1), ((0, 3), None), ((2, 0, 3), (0, 1))):
        x = jnp.zeros(shape)
        for name, (ours, theirs) in FNS.items():
            assert_same(ours(x, axis), theirs(x, axis), what=f"{name} {shape} {axis}")


def test_complex_inputs_are_jax_nn_s():
    z = jnp.array([[1 + 1j, 2 - 1j, -0.5j]], jnp.complex64)
    b = jnp.array([1.0, -2.0, 0.5])
    for name, (ours, theirs) in FNS.items():
        assert_same(ours(z, -1), theirs(z, -1), what=name)
    with standard():
        ref = jax.nn.logsumexp(z, b=b, return_sign=True)
    for u, v in zip(jaxce.logsumexp(z, b=b, return_sign=True), ref, strict=True):
        assert_same(u, v)


def test_jit_and_vmap_agree_with_eager_and_jax_nn():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(4, 3, 6)), jnp.float32)
    m = jnp.asarray(rng.random((4, 3, 6)) > 0.3)
    for name, (ours, theirs) in FNS.items():
        eager = ours(x, -1, where=m)
        jitted = jax.jit(lambda x, m, f=ours: f(x, -1, where=m))(x, m)
        vmapped = jax.vmap(lambda x, m, f=ours: f(x, -1, where=m))(x, m)
        ref = jax.vmap(lambda x, m, f=theirs: f(x, -1, where=m))(x, m)
        for got in (jitted, vmapped):
            assert_same(got, eager, rtol=1e-6, what=name)
        assert_same(vmapped, ref, rtol=1e-6, what=name)

        def total(x, f):
            out = f(x, (0, 2), where=m)
            return jnp.sum(jnp.where(jnp.isfinite(out), out, 0))

        assert_same(
            jax.jit(jax.grad(total), static_argnums=1)(x, ours),
            jax.grad(total)(x, theirs),
            rtol=1e-5,
            what=name,
        )


# --------------------------------------------------------------------------------
# one logits-sized residual in the backward pass
# --------------------------------------------------------------------------------


def _saved(f, x):
    """The float residuals of x's shape that print_saved_residuals lists."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(f, x)
    dims = ",".join(map(str, x.shape))
    return [
        line
        for line in buf.getvalue().splitlines()
        if line.split("[")[0] in ("f32", "bf16", "f16", "f64") and f"[{dims}]" in line
    ]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", SOFTMAXES)
def test_backward_keeps_one_logits_sized_residual(name, masked, dtype):
    ours, theirs = FNS[name]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), dtype)
    m = x > -0.5

    def f(x, fn=ours):
        return fn(x, -1, m if masked else None)

    saved = _saved(f, x)
    assert len(saved) == 1, saved
    # the same through jax.vjp: what the pullback closes over
    _, pullback = jax.vjp(f, x)
    big = [a for a in jax.tree.leaves(pullback) if getattr(a, "shape", None) == x.shape]
    assert [a.dtype for a in big if jnp.issubdtype(a.dtype, jnp.floating)] == [jnp.float32]
    if dtype == jnp.float32 and not masked:
        assert len(_saved(lambda x: theirs(x), x)) == 1  # jax.nn keeps one too


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="compiled memory measured on CPU")
@pytest.mark.parametrize("name", SOFTMAXES)
def test_compiled_backward_needs_no_more_memory_than_jax_nn(name):
    """Forward and backward compiled together: no more temporary memory than jax.nn's
    (measured, 256x1000 float32: grad none, value_and_grad 2 (softmax) and 1
    (log_softmax) logits-sized arrays, as jax.nn; with softmax's output as the residual
    XLA stored one more for grad)."""
    x = jax.ShapeDtypeStruct((256, 1000), jnp.float32)
    for transform in (jax.grad, jax.value_and_grad):
        temps = []
        for fn in FNS[name]:

            def f(x, ct, fn=fn):
                return jnp.sum(fn(x) * ct)

            compiled = jax.jit(transform(f)).lower(x, x).compile()
            temps.append(compiled.memory_analysis().temp_size_in_bytes)
        assert temps[0] <= temps[1] + 256 * 1000 * 4 // 50, (transform.__name__, temps)


# --------------------------------------------------------------------------------
# against torch
# --------------------------------------------------------------------------------


@settings(max_examples=10)
@given(problems())
def test_masked_softmaxes_match_torch_masked(torch, problem):
    x, axis, where = problem
    if not isinstance(axis, int) or where is None:
        axis, where = -1, np.random.default_rng(0).random(x.shape) < 0.6
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    mt = torch.tensor(where)
    ct = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    ct[~where] = 0.0  # a cotangent only where the output is unmasked (see below)
    live = where.any(axis=axis, keepdims=True)  # torch gives NaN on fully masked rows
    for name in SOFTMAXES:
        ref = getattr(torch.masked, name)(xt, axis, mask=mt)
        (gt,) = torch.autograd.grad(torch.where(mt, ref, 0).mul(torch.tensor(ct)).sum(), xt)
        out, g = pull(lambda x, n=name: FNS[n][0](x, axis, where), x, ct)
        rows = np.broadcast_to(live, x.shape)
        np.testing.assert_allclose(
            np.asarray(out)[rows], ref.detach().numpy()[rows], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(np.asarray(g)[rows], gt.numpy()[rows], rtol=1e-5, atol=1e-6)


def test_logsumexp_matches_torch(torch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32) * 4
    x[0, 1, :] = -np.inf
    xt = torch.tensor(x, requires_grad=True)
    for axis in (-1, 0, (0, 2), (0, 1, 2)):
        ref = torch.logsumexp(xt, dim=axis, keepdim=True)
        out = jaxce.logsumexp(jnp.asarray(x), axis, keepdims=True)
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-6, atol=1e-6)
        (gt,) = torch.autograd.grad(ref.sum(), xt)
        g = jax.grad(lambda x, a=axis: jnp.sum(jaxce.logsumexp(x, a)))(jnp.asarray(x))
        # an all -inf row: NaN gradient in torch, jax.nn and jaxce alike
        np.testing.assert_allclose(g, gt.numpy(), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------
# the deliberate differences (docs/_incoming/softmax.md), each pinned
# --------------------------------------------------------------------------------


def test_differs_masked_output_cotangent_is_dropped_as_jax_nn_not_torch(torch):
    """The gradient of log_softmax(where=) when a masked (-inf) output has a non-zero
    cotangent: jaxce and jax.nn drop that cotangent; torch.masked.log_softmax lets it
    reach the normaliser of the unmasked entries."""
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    m = np.array([[True, False, True]])
    ct = np.array([[1.0, 5.0, 2.0]], np.float32)  # 5 at the masked output
    _, g = pull(lambda x: jaxce.log_softmax(x, where=m), x, ct)
    _, h = pull(lambda x: jax.nn.log_softmax(x, where=m), x, ct)
    assert_same(g, h)
    p = np.exp(x - 3) * m
    p /= p.sum()
    np.testing.assert_allclose(g, (ct - p * (ct * m).sum()) * m, rtol=1e-6)  # sum over kept
    xt = torch.tensor(x, requires_grad=True)
    out = torch.masked.log_softmax(xt, 1, mask=torch.tensor(m))
    (gt,) = torch.autograd.grad(out, xt, torch.tensor(ct))
    np.testing.assert_allclose(gt.numpy(), (ct - p * ct.sum()) * m, rtol=1e-5)  # sum over all
    assert not np.allclose(gt.numpy(), g)
    # an inf or NaN cotangent there (log of a masked softmax: 0/0) is dropped too
    ct_bad = jnp.asarray(ct).at[0, 1].set(jnp.nan)
    _, g_bad = pull(lambda x: jaxce.softmax(x, where=m), x, ct_bad)
    assert np.all(np.isfinite(g_bad))


def test_differs_fully_masked_rows_from_torch_masked(torch):
    x = np.ones((2, 3), np.float32)
    m = np.array([[True, False, True], [False, False, False]])
    t = torch.masked.softmax(torch.tensor(x), 1, mask=torch.tensor(m))
    assert torch.isnan(t[1]).all()  # torch: NaN
    assert_same(jaxce.softmax(x, where=m)[1], jnp.zeros(3))  # jaxce and jax.nn: 0, -inf
    assert_same(jaxce.softmax(x, where=m), jax.nn.softmax(x, where=m))
    assert np.all(np.asarray(jaxce.log_softmax(x, where=m)[1]) == -np.inf)


def test_differs_where_and_b_must_broadcast_to_the_input():
    x = jnp.ones(3)
    # jax.nn broadcasts x up to where's (or b's) shape; jaxce raises
    assert jax.nn.log_softmax(x, where=jnp.ones((2, 3), bool)).shape == (2, 3)
    assert jax.nn.logsumexp(x, axis=-1, b=jnp.ones((2, 3))).shape == (2,)
    for name, (ours, _) in FNS.items():
        with pytest.raises(ValueError, match=rf"{name}: `where` shape \(2, 3\)"):
            ours(x, -1, where=jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"logsumexp: `b` shape \(2, 3\) .* `a` shape \(3,\)"):
        jaxce.logsumexp(x, b=jnp.ones((2, 3)))
    # issue 10: a 0-d input with a 1-d mask
    for name, (ours, _) in FNS.items():
        with pytest.raises(ValueError, match=rf"{name}: `where` shape \(3,\) .* shape \(\)"):
            ours(jnp.float32(2.0), where=jnp.ones(3, bool))


def test_differs_flags_must_be_bools_and_0d_is_one_class():
    assert isinstance(jax.nn.logsumexp(jnp.ones(2), return_sign=1), tuple)
    with pytest.raises(TypeError, match="logsumexp: `return_sign` must be a bool"):
        jaxce.logsumexp(jnp.ones(2), return_sign=1)
    with pytest.raises(ValueError):
        jax.nn.logsumexp(jnp.float32(1.5), axis=0)
    assert float(jaxce.logsumexp(jnp.float32(1.5), axis=0)) == 1.5


def test_differs_numpy_int64_beyond_int32_is_not_wrapped():
    x = np.array([2**40, 0])
    with standard():
        assert float(jax.nn.logsumexp(x)) == pytest.approx(np.log(2))  # 2**40 wrapped to 0
    assert float(jaxce.logsumexp(x)) == pytest.approx(2.0**40)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_differs_half_precision_is_computed_in_float32(dtype):
    """jaxce computes half precision in float32 and rounds once: its result is the float32
    result rounded; jax.nn works in the input's dtype and can be further off."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 3000)) * 3, dtype)
    x32 = x.astype(jnp.float32)
    ref64 = jax.nn.logsumexp(np.asarray(x32, np.float64), axis=-1)
    for name, (ours, theirs) in FNS.items():
        o = ours(x, -1)
        assert o.dtype == dtype
        assert_same(o, theirs(x32, -1).astype(dtype), rtol=0, atol=0, what=name)
    ours_err = np.abs(np.asarray(jaxce.logsumexp(x, -1), np.float64) - ref64).max()
    theirs_err = np.abs(np.asarray(jax.nn.logsumexp(x, -1), np.float64) - ref64).max()
    assert ours_err <= theirs_err
    # gradients too: the float32 gradient rounded once
    ct = jnp.asarray(rng.normal(size=x.shape), dtype)
    _, g = pull(jaxce.softmax, x, ct)
    _, g32 = pull(jax.nn.softmax, x32, ct)
    assert g.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(g, np.float32),
        np.asarray(g32.astype(dtype), np.float32),
        rtol=0.02,
        atol=float(jnp.finfo(dtype).eps) * float(jnp.max(jnp.abs(g32))),
    )
