"""Live randomized parity against real torch (skipped when torch is not importable).

Hypothesis draws a configuration (layout, shape, dtype, weight, ignore mask,
label smoothing, reduction, target kind); the arrays themselves come from a
NumPy generator seeded by the drawn seed. jaxce's values and vector-Jacobian
products are compared with torch's on the same inputs:

* float64 runs inside ``jax.enable_x64(True)`` with tight tolerances,
  float32 runs in JAX's default mode with float32 tolerances;
* a position that is NaN in both counts as equal (so does a matching ``±inf``);
* the gradient wrt ``weight`` on the class-index path, which torch refuses to
  compute, is built from torch's own forward: the summed loss is linear and
  homogeneous in ``weight``, so ``∂S/∂w_c = S(e_c)`` (torch evaluated with the
  one-hot weight ``e_c``), and ``mean = S/D`` with ``D = Σ w[t]`` over the
  non-ignored positions gives ``∂mean/∂w_c = (S(e_c) - mean·count_c) / D``.
  On the probability path torch differentiates wrt ``weight`` itself.

Cases where jaxce deliberately differs from torch (spec section 9) are not
generated: rows that are ignored *and* entirely ``-inf``/NaN (9.6), negative or
NaN label smoothing (9.4), out-of-range targets (9.3), half precision (9.5).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxce

torch = pytest.importorskip("torch")
F = torch.nn.functional

PARITY = settings(max_examples=30)  # the rest: the "jaxce" profile (conftest.py)

# (rtol, atol) per dtype; atol is scaled by the magnitude of the reference.
TOL = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}
NP_DTYPE = {"float64": np.float64, "float32": np.float32}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}


def _mode(dtype: str):
    """float64 needs x64; float32 runs in JAX's default (32-bit) mode."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _target_dtype(dtype: str):
    return np.int64 if dtype == "float64" else np.int32


def assert_close(actual, desired, dtype, what, scale=None):
    """allclose with NaN == NaN and matching ±inf; atol scaled by the reference's size."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} vs torch {desired.shape}"
    rtol, atol = TOL[dtype]
    if scale is None:
        finite = desired[np.isfinite(desired)]
        scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(
        actual, desired, rtol=rtol, atol=atol * scale, equal_nan=True, err_msg=what
    )


def _tensor(a, requires_grad=False):
    return torch.tensor(np.asarray(a), requires_grad=requires_grad)


def _value_and_vjp(f, x, w, ct, *extra):
    """``f(x, w, *extra)`` and its VJP wrt ``x`` (and ``w`` unless None), under one ``jit``.

    One compilation per example (instead of one per primitive phase) keeps the
    file fast; ``extra`` arguments are traced, so a label smoothing passed there
    exercises jaxce's traced-ε path.
    """

    def run(xa, wa, cta, *ea):
        if wa is None:
            out, vjp = jax.vjp(lambda xb: f(xb, None, *ea), xa)
            return out, vjp(cta) + (None,)
        out, vjp = jax.vjp(lambda xb, wb: f(xb, wb, *ea), xa, wa)
        return out, vjp(cta)

    w = None if w is None else jnp.asarray(w)
    out, (gx, gw) = jax.jit(run)(jnp.asarray(x), w, jnp.asarray(ct), *extra)
    return out, gx, gw


# ----------------------------------------------------------------------------------------
# Configuration strategies


@st.composite
def layouts(draw):
    """``(torch_shape, class_axis_for_jaxce, channels_last)``.

    ``channels_last`` means jaxce sees the class axis moved to the end (axis=-1)
    while torch gets the usual ``(N, C, d1, ...)`` tensor.
    """
    kind = draw(st.sampled_from(["1d", "2d", "kd", "kd_last"]))
    c = draw(st.sampled_from([1, 2, 3, 5]))
    if kind == "1d":
        return (c,), draw(st.sampled_from([0, -1])), False
    n = draw(st.sampled_from([1, 2, 4]))
    if kind == "2d":
        return (n, c), draw(st.sampled_from([1, -1])), False
    spatial = tuple(draw(st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=2)))
    shape = (n, c) + spatial
    if kind == "kd":
        return shape, draw(st.sampled_from([1, 1 - len(shape)])), False
    return shape, -1, True


def _to_jax_layout(a, channels_last):
    """torch layout (class axis 1) -> jaxce's channels-last layout, when asked for."""
    return np.moveaxis(a, 1, -1) if channels_last else a


def _from_jax_layout(a, channels_last):
    return np.moveaxis(a, -1, 1) if channels_last else a


def _class_layout(shape):
    """torch's class axis for ``shape`` (0 for a 1-D input, else 1), the class count, and
    the shape of the positions (``shape`` without that axis)."""
    cd = 0 if len(shape) == 1 else 1
    return cd, shape[cd], shape[:cd] + shape[cd + 1 :]


def _logits(rng, shape, dtype, scale, neg_inf, cd):
    x = (rng.standard_normal(shape) * scale).astype(NP_DTYPE[dtype])
    if neg_inf:
        mask = rng.random(shape) < 0.3
        # Keep at least one finite entry per row: an all -inf row is NaN in torch and,
        # when ignored, one of jaxce's deliberate differences (spec 9.6).
        first = [slice(None)] * len(shape)
        first[cd] = slice(0, 1)
        mask[tuple(first)] = False
        x = np.where(mask, -np.inf, x).astype(x.dtype)
    return x


def _weight(rng, c, dtype, kind):
    if kind == "none":
        return None
    w = rng.uniform(0.1, 2.0, size=c)
    if kind == "zeros":
        w = np.where(rng.random(c) < 0.4, 0.0, w)
    return w.astype(NP_DTYPE[dtype])


def _class_targets(rng, pos_shape, c, ignore_index, p_ignore):
    t = rng.integers(0, c, size=pos_shape)
    drop = rng.random(pos_shape) < p_ignore
    return np.where(drop, ignore_index, t).astype(np.int64)


def _cotangent(rng, reduction, pos_shape, dtype):
    shape = pos_shape if reduction == "none" else ()
    return rng.standard_normal(shape).astype(NP_DTYPE[dtype])


# ----------------------------------------------------------------------------------------
# torch references


def _torch_class_loss(fn, x, t, w, ignore_index, reduction, eps):
    kwargs = dict(
        weight=None if w is None else _tensor(w), ignore_index=ignore_index, reduction=reduction
    )
    if fn is F.cross_entropy:
        kwargs["label_smoothing"] = eps
    with torch.no_grad():
        return fn(_tensor(x), _tensor(t), **kwargs).numpy()


def _torch_weight_grad_class(fn, x, t, w, ignore_index, reduction, eps, ct):
    """∂⟨ct, loss⟩/∂w from torch's forward alone (the loss is linear in w; see module doc)."""
    c = w.shape[0]
    red = "sum" if reduction == "mean" else reduction
    upstream = 1.0 if reduction == "mean" else np.asarray(ct, np.float64)
    s_basis = np.empty(c, np.float64)
    for k in range(c):
        e = np.zeros(c, w.dtype)
        e[k] = 1
        loss_k = _torch_class_loss(fn, x, t, e, ignore_index, red, eps).astype(np.float64)
        s_basis[k] = np.sum(upstream * loss_k)
    if reduction != "mean":
        return s_basis, float(np.max(np.abs(s_basis), initial=1.0))
    valid = t != ignore_index
    counts = np.array([np.sum(valid & (t == k)) for k in range(c)], np.float64)
    d = float(np.sum(counts * w.astype(np.float64)))
    if d == 0:
        return None, None
    mean = float(np.sum(s_basis * w.astype(np.float64))) / d
    grad = float(ct) * (s_basis - mean * counts) / d
    scale = float(abs(ct)) * float(np.max(np.abs(s_basis) + np.abs(mean) * counts)) / d
    return grad, max(scale, 1.0)


# ----------------------------------------------------------------------------------------
# cross_entropy, class-index targets


@st.composite
def class_index_cases(draw):
    shape, axis, channels_last = draw(layouts())
    c = shape[0] if len(shape) == 1 else shape[1]
    ignore_choice = draw(st.sampled_from(["default", "minus1", "real_class", "C", "255"]))
    ignore_index = {
        "default": -100,
        "minus1": -1,
        "real_class": draw(st.integers(0, c - 1)),
        "C": c,
        "255": 255,
    }[ignore_choice]
    eps_kind = draw(st.sampled_from(["zero", "random", "one", "random_traced"]))
    eps = {
        "zero": 0.0,
        "one": 1.0,
        "random": draw(st.floats(0.01, 1.0)),
        "random_traced": draw(st.floats(0.01, 1.0)),
    }[eps_kind]
    return dict(
        shape=shape,
        axis=axis,
        channels_last=channels_last,
        dtype=draw(st.sampled_from(["float64", "float32"])),
        weight=draw(st.sampled_from(["none", "positive", "zeros"])),
        ignore_index=ignore_index,
        p_ignore=draw(st.sampled_from([0.0, 0.3, 1.0])),
        eps=eps,
        traced_eps=eps_kind == "random_traced",
        reduction=draw(st.sampled_from(["none", "sum", "mean"])),
        scale=draw(st.sampled_from([1.0, 5.0, 100.0])),
        neg_inf=draw(st.booleans()),
        target_1d_as_1=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@PARITY
@given(class_index_cases())
def test_cross_entropy_class_index_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    dtype, shape, reduction = case["dtype"], case["shape"], case["reduction"]
    cd, c, pos_shape = _class_layout(shape)
    x = _logits(rng, shape, dtype, case["scale"], case["neg_inf"], cd)
    w = _weight(rng, c, dtype, case["weight"])
    ii = case["ignore_index"]
    t = _class_targets(rng, pos_shape, c, ii, case["p_ignore"])
    ct = _cotangent(rng, reduction, pos_shape, dtype)
    eps = case["eps"]

    # torch
    xt = _tensor(x, requires_grad=True)
    loss_t = F.cross_entropy(
        xt,
        _tensor(t),
        weight=None if w is None else _tensor(w),
        ignore_index=ii,
        reduction=reduction,
        label_smoothing=eps,
    )
    loss_t.backward(_tensor(ct))
    gx_t = xt.grad.numpy()

    # jaxce
    with _mode(dtype):
        xj = jnp.asarray(_to_jax_layout(x, case["channels_last"]))
        tj = t.astype(_target_dtype(dtype))
        if len(shape) == 1 and c > 1 and case["target_1d_as_1"]:
            # torch accepts a (1,) target for (C,) input (spec 2.1); with C == 1 the shapes
            # would be equal, which selects the probability path instead.
            tj = tj.reshape(1)
        tj = jnp.asarray(tj)
        extra = (jnp.asarray(eps, NP_DTYPE[dtype]),) if case["traced_eps"] else ()

        def f(xa, wa, ls=eps):
            return jaxce.cross_entropy(
                xa,
                tj,
                axis=case["axis"],
                weight=wa,
                ignore_index=ii,
                reduction=reduction,
                label_smoothing=ls,
            )

        loss_j, gx_j, gw_j = _value_and_vjp(f, xj, w, ct, *extra)
        assert loss_j.dtype == np.dtype(dtype)
        assert gx_j.dtype == np.dtype(dtype)
        loss_j, gx_j = np.asarray(loss_j), _from_jax_layout(np.asarray(gx_j), case["channels_last"])

    assert_close(loss_j, loss_t.detach().numpy(), dtype, f"loss {case}")
    assert_close(gx_j, gx_t, dtype, f"grad wrt logits {case}")

    if w is not None and np.all(np.isfinite(x)):
        ref, scale = _torch_weight_grad_class(F.cross_entropy, x, t, w, ii, reduction, eps, ct)
        if ref is not None:
            assert_close(np.asarray(gw_j), ref, dtype, f"grad wrt weight {case}", scale=scale)


@pytest.mark.parametrize("eps", [0.1, 1.0])
@pytest.mark.parametrize("ignore_one", [False, True])
def test_label_smoothing_mean_with_zero_denominator_matches_torch(eps, ignore_one):
    """Pinned case of the randomized test above: label smoothing, ``mean``, and every
    non-ignored target of a class whose weight is 0 (D = 0, spec 2.3 / 3.2). torch
    computes ``(1-ε)·Σnll/D + (ε/C)·Σsmooth/D``; its nll part is 0/0."""
    x = np.array([[0.5, -0.3, 1.2], [0.1, 0.2, -0.4], [1.0, 0.0, -1.0]])
    t = np.array([0, 0, -100 if ignore_one else 0])
    w = np.array([0.0, 1.0, 2.0])
    xt = _tensor(x, requires_grad=True)
    loss_t = F.cross_entropy(xt, _tensor(t), weight=_tensor(w), label_smoothing=eps)
    loss_t.backward()
    with jax.enable_x64(True):

        def f(xa, wa):
            return jaxce.cross_entropy(xa, jnp.asarray(t), weight=wa, label_smoothing=eps)

        loss_j, gx_j, _ = _value_and_vjp(f, x, w, np.array(1.0))
    assert_close(np.asarray(loss_j), loss_t.detach().numpy(), "float64", "loss")
    assert_close(np.asarray(gx_j), xt.grad.numpy(), "float64", "grad wrt logits")


# ----------------------------------------------------------------------------------------
# cross_entropy, probability targets


@st.composite
def probability_cases(draw):
    shape, axis, channels_last = draw(layouts())
    eps_kind = draw(st.sampled_from(["zero", "random", "one", "random_traced"]))
    eps = {
        "zero": 0.0,
        "one": 1.0,
        "random": draw(st.floats(0.01, 1.0)),
        "random_traced": draw(st.floats(0.01, 1.0)),
    }[eps_kind]
    dtype = draw(st.sampled_from(["float64", "float32", "mixed"]))
    return dict(
        shape=shape,
        axis=axis,
        channels_last=channels_last,
        # "mixed": float32 logits with float64 probabilities and weight (promoted to float64).
        dtype=dtype,
        weight=draw(st.sampled_from(["none", "positive", "zeros"])),
        target=draw(st.sampled_from(["normalized", "unnormalized", "one_hot", "signed"])),
        ignore_index=draw(st.sampled_from([-100, -1, -5])),
        eps=eps,
        traced_eps=eps_kind == "random_traced",
        reduction=draw(st.sampled_from(["none", "sum", "mean"])),
        scale=draw(st.sampled_from([1.0, 5.0, 100.0])),
        neg_inf=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _prob_targets(rng, shape, cd, kind, dtype):
    if kind == "normalized":
        q = rng.dirichlet(np.ones(shape[cd]), size=int(np.prod(shape)) // shape[cd])
        q = np.moveaxis(q.reshape(shape[:cd] + shape[cd + 1 :] + (shape[cd],)), -1, cd)
    elif kind == "unnormalized":
        q = rng.uniform(0.0, 2.0, size=shape)
    elif kind == "one_hot":
        labels = rng.integers(0, shape[cd], size=shape[:cd] + shape[cd + 1 :])
        q = np.moveaxis(np.eye(shape[cd])[labels], -1, cd)
    else:
        q = rng.uniform(-1.0, 1.5, size=shape)
    return q.astype(NP_DTYPE[dtype])


@PARITY
@given(probability_cases())
def test_cross_entropy_probabilities_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    shape, reduction = case["shape"], case["reduction"]
    mixed = case["dtype"] == "mixed"
    x_dtype = "float32" if mixed else case["dtype"]
    aux_dtype = "float64" if mixed else case["dtype"]  # target and weight
    out_dtype = aux_dtype
    cd, c, pos_shape = _class_layout(shape)
    x = _logits(rng, shape, x_dtype, case["scale"], case["neg_inf"], cd)
    q = _prob_targets(rng, shape, cd, case["target"], aux_dtype)
    w = _weight(rng, c, aux_dtype, case["weight"])
    ct = _cotangent(rng, reduction, pos_shape, out_dtype)
    eps = case["eps"]
    cl = case["channels_last"]

    xt = _tensor(x, requires_grad=True)
    wt = None if w is None else _tensor(w, requires_grad=True)
    loss_t = F.cross_entropy(
        xt,
        _tensor(q),
        weight=wt,
        ignore_index=case["ignore_index"],
        reduction=reduction,
        label_smoothing=eps,
    )
    loss_t.backward(_tensor(ct))

    with _mode("float64" if mixed else x_dtype):
        extra = (jnp.asarray(eps, NP_DTYPE[out_dtype]),) if case["traced_eps"] else ()
        qj = jnp.asarray(_to_jax_layout(q, cl))

        def f(xa, wa, ls=eps):
            return jaxce.cross_entropy(
                xa,
                qj,
                axis=case["axis"],
                weight=wa,
                ignore_index=case["ignore_index"],
                reduction=reduction,
                label_smoothing=ls,
            )

        xj = _to_jax_layout(x, cl)
        loss_j, gx_j, gw_j = _value_and_vjp(f, xj, w, ct, *extra)
        assert loss_j.dtype == np.dtype(out_dtype) == loss_t.detach().numpy().dtype
        assert gx_j.dtype == np.dtype(x_dtype)
        loss_j, gx_j = np.asarray(loss_j), _from_jax_layout(np.asarray(gx_j), cl)

    # With float32 logits the log_softmax is float32 in both libraries: float32 tolerance.
    assert_close(loss_j, loss_t.detach().numpy(), x_dtype, f"loss {case}")
    assert_close(gx_j, xt.grad.numpy(), x_dtype, f"grad wrt logits {case}")
    if w is not None:
        assert_close(np.asarray(gw_j), wt.grad.numpy(), x_dtype, f"grad wrt weight {case}")


# ----------------------------------------------------------------------------------------
# nll_loss


@st.composite
def nll_cases(draw):
    shape, axis, channels_last = draw(layouts())
    c = shape[0] if len(shape) == 1 else shape[1]
    ignore_index = draw(st.sampled_from([-100, -1, 255, c, draw(st.integers(0, c - 1))]))
    return dict(
        shape=shape,
        axis=axis,
        channels_last=channels_last,
        dtype=draw(st.sampled_from(["float64", "float32"])),
        weight=draw(st.sampled_from(["none", "positive", "zeros"])),
        ignore_index=ignore_index,
        p_ignore=draw(st.sampled_from([0.0, 0.3, 1.0])),
        reduction=draw(st.sampled_from(["none", "sum", "mean"])),
        # nll_loss does not check that its input is log-probabilities.
        input=draw(st.sampled_from(["log_probs", "arbitrary"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@PARITY
@given(nll_cases())
def test_nll_loss_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    dtype, shape, reduction = case["dtype"], case["shape"], case["reduction"]
    cd, c, pos_shape = _class_layout(shape)
    x = rng.standard_normal(shape) * 3
    if case["input"] == "log_probs":
        x = x - np.log(np.sum(np.exp(x), axis=cd, keepdims=True))
    x = x.astype(NP_DTYPE[dtype])
    w = _weight(rng, c, dtype, case["weight"])
    ii = case["ignore_index"]
    t = _class_targets(rng, pos_shape, c, ii, case["p_ignore"])
    ct = _cotangent(rng, reduction, pos_shape, dtype)
    cl = case["channels_last"]

    xt = _tensor(x, requires_grad=True)
    loss_t = F.nll_loss(
        xt,
        _tensor(t),
        weight=None if w is None else _tensor(w),
        ignore_index=ii,
        reduction=reduction,
    )
    loss_t.backward(_tensor(ct))

    with _mode(dtype):
        tj = jnp.asarray(t.astype(_target_dtype(dtype)))

        def f(xa, wa):
            return jaxce.nll_loss(
                xa, tj, axis=case["axis"], weight=wa, ignore_index=ii, reduction=reduction
            )

        xj = _to_jax_layout(x, cl)
        loss_j, gx_j, gw_j = _value_and_vjp(f, xj, w, ct)
        assert loss_j.dtype == np.dtype(dtype)
        loss_j, gx_j = np.asarray(loss_j), _from_jax_layout(np.asarray(gx_j), cl)

    assert_close(loss_j, loss_t.detach().numpy(), dtype, f"loss {case}")
    assert_close(gx_j, xt.grad.numpy(), dtype, f"grad wrt input {case}")
    if w is not None:
        ref, scale = _torch_weight_grad_class(F.nll_loss, x, t, w, ii, reduction, 0.0, ct)
        if ref is not None:
            assert_close(np.asarray(gw_j), ref, dtype, f"grad wrt weight {case}", scale=scale)


# ----------------------------------------------------------------------------------------
# log_softmax / softmax


@st.composite
def softmax_cases(draw):
    shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=4)))
    return dict(
        shape=shape,
        axis=draw(st.integers(-len(shape), len(shape) - 1)),
        dtype=draw(st.sampled_from(["float64", "float32"])),
        scale=draw(st.sampled_from([1.0, 10.0, 1000.0])),
        # "-inf": some -inf entries (whole rows possible); "nonfinite": also +inf and NaN.
        special=draw(st.sampled_from(["none", "-inf", "nonfinite"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@PARITY
@given(softmax_cases())
def test_log_softmax_and_softmax_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    dtype, shape, axis = case["dtype"], case["shape"], case["axis"]
    x = rng.standard_normal(shape) * case["scale"]
    if case["special"] != "none":
        u = rng.random(shape)
        x = np.where(u < 0.3, -np.inf, x)
        if case["special"] == "nonfinite":
            x = np.where(u > 0.95, np.inf, np.where((u > 0.9) & (u <= 0.95), np.nan, x))
    x = x.astype(NP_DTYPE[dtype])
    g = rng.standard_normal(shape).astype(NP_DTYPE[dtype])

    results = {}
    for name, tfn in (("log_softmax", F.log_softmax), ("softmax", F.softmax)):
        xt = _tensor(x, requires_grad=True)
        out = tfn(xt, dim=axis)
        out.backward(_tensor(g))
        results[name] = (out.detach().numpy(), xt.grad.numpy())

    @jax.jit
    def both(xa, ga):
        out = {}
        for name, jfn in (("log_softmax", jaxce.log_softmax), ("softmax", jaxce.softmax)):
            val, vjp = jax.vjp(lambda xb, jfn=jfn: jfn(xb, axis), xa)
            out[name] = (val, vjp(ga)[0])
        return out

    with _mode(dtype):
        out = both(jnp.asarray(x), jnp.asarray(g))
    for name, (out_j, gx_j) in out.items():
        assert out_j.dtype == np.dtype(dtype)
        out_t, gx_t = results[name]
        assert_close(np.asarray(out_j), out_t, dtype, f"{name} value {case}")
        assert_close(np.asarray(gx_j), gx_t, dtype, f"{name} grad {case}")
