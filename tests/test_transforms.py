"""Every public function works under jit, vmap, grad, jvp/jacfwd, jacrev and second
order; derivatives are checked against finite differences (``check_grads`` in float64)
and against the closed forms of spec section 4; same shapes and options trace once;
half precision keeps its dtype through values and gradients.

Compile time dominates on small CPUs, so related checks share one jitted program
where that does not blur what a failure means.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxce
from jaxce import losses

CE, NLL = jaxce.cross_entropy, jaxce.nll_loss

rng = np.random.default_rng(1234)
X_NP = rng.normal(size=(3, 4)) * 2.0  # (N, C) = (3, 4)
X3_NP = rng.normal(size=(2, 4, 3))  # (N, C, d) for axis=1
T_NP = np.array([0, 2, 3])
T_IGN_NP = np.array([0, -100, 3])
T3_NP = np.array([[0, 1, 3], [2, -100, 1]])
W_NP = np.array([0.5, 2.0, 1.0, 1.5])
P_NP = np.exp(rng.normal(size=(3, 4)))
P_NP = P_NP / P_NP.sum(-1, keepdims=True)
MASK_NP = np.array([[True, True, False, True], [True, False, True, True], [True] * 4])


def _softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _cat(*outs):
    return jnp.concatenate([jnp.ravel(o) for o in outs])


# --------------------------------------------------------------------------------
# check_grads, order 2, forward and reverse, float64
# --------------------------------------------------------------------------------


def _check_grads_cases():
    """name -> (function, args); built inside x64 so every array is float64."""
    x, x3, w = (jnp.asarray(a) for a in (X_NP, X3_NP, W_NP))
    t3, m = jnp.asarray(T3_NP), jnp.asarray(MASK_NP)
    p3 = jnp.asarray(_softmax_np(X3_NP[::-1] * 0.5, axis=1))
    return {
        # The (N, C, d) layout with axis=1, with respect to logits, weight, probability
        # targets and a traced label_smoothing: class-index targets with weights,
        # smoothing and an ignored position (also with z_loss and softcap); probability
        # targets with weights and smoothing; nll_loss ignoring a real class.
        # (The (N, C) layout is checked against the closed forms below.)
        "losses-axis1-kdim-wrt-logits-weight-target-and-label-smoothing": (
            lambda x3, w, q, e: _cat(
                CE(x3, t3, axis=1, weight=w, label_smoothing=e),
                CE(x3, q, axis=1, weight=w, label_smoothing=e, reduction="sum"),
                CE(x3, t3, axis=1, weight=w, label_smoothing=0.1, z_loss=0.05, softcap=3.0),
                NLL(x3, jnp.abs(t3) % 4, axis=1, weight=w, ignore_index=1, reduction="none"),
            ),
            (x3, w, p3, jnp.asarray(0.2)),
        ),
        # log_softmax is -inf at masked entries; compare only the kept ones.
        "softmax-family": (
            lambda x: _cat(
                jaxce.log_softmax(x),
                jnp.where(m, jaxce.log_softmax(x, where=m), 0.0),
                jaxce.softmax(x, axis=0, where=m),
                jaxce.logsumexp(x, -1, where=m),
                jaxce.logsumexp(x, axis=(0, 1)),
            ),
            (x,),
        ),
    }


@pytest.mark.parametrize(
    "name", ["losses-axis1-kdim-wrt-logits-weight-target-and-label-smoothing", "softmax-family"]
)
def test_check_grads_order2(x64, name):
    f, args = _check_grads_cases()[name]
    assert all(a.dtype == jnp.float64 for a in args)
    # Op by op: the primitives' compilations are shared between the cases, where
    # jaxce's internal jit would compile every transformed program anew (too slow
    # for the test budget). The jitted path is differentiated to second order in
    # the jacfwd/jacrev/hessian tests below.
    with jax.disable_jit():
        check_grads(f, args, order=2, modes=["fwd", "rev"])


# --------------------------------------------------------------------------------
# closed forms (spec section 4)
# --------------------------------------------------------------------------------


def test_grad_matches_closed_form_weight_ls_ignore(x64):
    x, w, eps, C = X_NP, W_NP, 0.1, 4
    t = T_IGN_NP
    valid = t != -100
    ts = np.where(valid, t, 0)
    p = _softmax_np(x)
    D = (w[ts] * valid).sum()
    expected = (
        (1 - eps) * w[ts][:, None] * (p - np.eye(C)[ts]) + (eps / C) * (p * w.sum() - w)
    ) / D
    expected[~valid] = 0.0
    g = jax.grad(lambda x: CE(x, jnp.asarray(t), weight=jnp.asarray(w), label_smoothing=eps))(
        jnp.asarray(x)
    )
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-12, atol=1e-15)
    assert np.all(np.asarray(g)[~valid] == 0.0)


def test_grad_matches_closed_form_probability_targets(x64):
    x, w, q = X_NP, W_NP, P_NP * 1.5  # not normalised: (Σ w q) p - w q
    p = _softmax_np(x)
    expected = ((q * w).sum(-1, keepdims=True) * p - w * q) / x.shape[0]
    g = jax.grad(lambda x: CE(x, jnp.asarray(q), weight=jnp.asarray(w)))(jnp.asarray(X_NP))
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-12, atol=1e-15)


def test_hessian_matches_closed_form(x64):
    """Plain mean CE: the Hessian is block diagonal, (diag(p_i) - p_i p_iᵀ)/N_valid per
    non-ignored row, and exactly zero for the ignored row."""
    x, t = jnp.asarray(X_NP), jnp.asarray(T_IGN_NP)
    h = np.asarray(jax.jit(jax.hessian(lambda x: CE(x, t)))(x))
    assert h.shape == (3, 4, 3, 4)
    p = _softmax_np(X_NP)
    expected = np.zeros((3, 4, 3, 4))
    for i in (0, 2):
        expected[i, :, i, :] = (np.diag(p[i]) - np.outer(p[i], p[i])) / 2
    np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-14)
    assert np.all(h[1] == 0) and np.all(h[:, :, 1] == 0)


def test_nll_grad_is_minus_weight_at_target(x64):
    lp, t, w = jnp.asarray(X_NP), jnp.asarray(T_IGN_NP), jnp.asarray(W_NP)
    g = np.asarray(jax.grad(lambda lp: NLL(lp, t, weight=w, reduction="sum"))(lp))
    expected = np.zeros((3, 4))
    expected[0, 0], expected[2, 3] = -W_NP[0], -W_NP[3]
    np.testing.assert_array_equal(g, expected)


# --------------------------------------------------------------------------------
# forward mode agrees with reverse mode (jacfwd, jacrev, jvp), through jit
# --------------------------------------------------------------------------------


def _all_outputs(x):
    t, ti, w, p, m = (jnp.asarray(a) for a in (T_NP, T_IGN_NP, W_NP, P_NP, MASK_NP))
    return _cat(
        CE(x, ti, weight=w, label_smoothing=0.2, reduction="none"),
        CE(x, p, reduction="none", label_smoothing=0.1),
        NLL(x, t, weight=w),
        jaxce.log_softmax(x, where=m),
        jaxce.softmax(x, axis=0),
        jaxce.logsumexp(x, -1, where=m),
    )


def test_jacfwd_equals_jacrev_and_jvp(x64):
    x = jnp.asarray(X_NP)
    v = jnp.asarray(np.random.default_rng(7).normal(size=x.shape))

    @jax.jit
    def derivatives(x, v):
        out, tangent = jax.jvp(_all_outputs, (x,), (v,))
        return out, tangent, jax.jacfwd(_all_outputs)(x), jax.jacrev(_all_outputs)(x)

    out, tangent, jf, jr = (np.asarray(a) for a in derivatives(x, v))
    assert jf.shape == (3 + 3 + 1 + 12 + 12 + 3, 3, 4)
    assert np.all(np.isfinite(jf)) and np.any(jf != 0)
    np.testing.assert_allclose(jf, jr, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out, np.asarray(_all_outputs(x)), rtol=1e-15)
    expected = np.tensordot(jr, np.asarray(v), axes=2)
    np.testing.assert_allclose(tangent, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------
# ignored rows: exactly zero, finite gradient in every mode, whatever their logits
# --------------------------------------------------------------------------------


def _ignored_row_losses(x):
    t = jnp.asarray(T_IGN_NP, jnp.int32)
    w = jnp.asarray(W_NP, jnp.float32)
    return jnp.stack([CE(x, t, weight=w), CE(x, t, weight=w, label_smoothing=0.2)])


@jax.jit
def _ignored_row_derivatives(x):
    f = _ignored_row_losses
    return f(x), jax.jacrev(f)(x), jax.jacfwd(f)(x), jax.hessian(f)(x)


@pytest.mark.parametrize("bad", [-np.inf, np.nan, np.inf], ids=["-inf", "nan", "inf"])
def test_ignored_row_with_nonfinite_logits_has_zero_gradient(bad):
    x = jnp.asarray(X_NP, jnp.float32).at[1].set(bad)
    value, rev, fwd, hess = (np.asarray(a) for a in _ignored_row_derivatives(x))
    assert np.all(np.isfinite(value))
    assert np.all(np.isfinite(rev)) and np.all(rev[:, 1] == 0.0)
    assert np.all(np.isfinite(fwd)) and np.all(fwd[:, 1] == 0.0)
    np.testing.assert_allclose(fwd, rev, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(hess))
    assert np.all(hess[:, 1] == 0.0) and np.all(hess[:, :, :, 1] == 0.0)
    # The other rows are unaffected by what the ignored row holds.
    _, rev_clean, _, _ = _ignored_row_derivatives(jnp.asarray(X_NP, jnp.float32))
    np.testing.assert_array_equal(rev, np.asarray(rev_clean))


def test_where_masked_nonfinite_entries_have_zero_gradient():
    m = jnp.asarray(MASK_NP)
    x = jnp.where(m, jnp.asarray(X_NP, jnp.float32), jnp.nan).at[1, 1].set(-jnp.inf)

    @jax.jit
    def derivatives(x):
        def f(x):
            return _cat(
                jnp.where(m, jaxce.log_softmax(x, where=m), 0.0),
                jaxce.softmax(x, where=m),
                jaxce.logsumexp(x, -1, where=m),
            )

        return jax.jacrev(f)(x), jax.jacfwd(f)(x)

    for jac in derivatives(x):
        jac = np.asarray(jac)
        assert np.all(np.isfinite(jac)) and np.all(jac[:, ~MASK_NP] == 0.0)
        assert np.any(jac[:, MASK_NP] != 0.0)


# --------------------------------------------------------------------------------
# vmap
# --------------------------------------------------------------------------------


def test_vmap_over_batch_equals_reduction_none():
    x, t, w = jnp.asarray(X_NP, jnp.float32), jnp.asarray(T_IGN_NP), jnp.asarray(W_NP, jnp.float32)
    p = jnp.asarray(P_NP, jnp.float32)
    x3, t3 = jnp.asarray(X3_NP, jnp.float32), jnp.asarray(T3_NP)
    opts = dict(weight=w, label_smoothing=0.1, reduction="none")
    pairs = {
        "ce": (
            jax.vmap(lambda xi, ti: CE(xi, ti, **opts))(x, t),
            CE(x, t, **opts),
        ),
        "nll": (
            jax.vmap(lambda xi, ti: NLL(xi, ti, weight=w, reduction="sum"))(x, t),
            NLL(x, t, weight=w, reduction="none"),
        ),
        "prob": (
            jax.vmap(lambda xi, pi: CE(xi, pi, weight=w))(x, p),
            CE(x, p, weight=w, reduction="none"),
        ),
        "kdim": (
            jax.vmap(lambda xi, ti: CE(xi, ti, axis=0, reduction="none"))(x3, t3),
            CE(x3, t3, axis=1, reduction="none"),
        ),
    }
    for name, (vmapped, batched) in pairs.items():
        np.testing.assert_allclose(vmapped, batched, rtol=1e-6, err_msg=name)
    assert pairs["ce"][0][1] == 0.0  # the ignored row


def test_vmap_over_a_stack_of_targets():
    x = jnp.asarray(X_NP, jnp.float32)
    stack = jnp.array([[0, 1, 2], [3, -100, 3], [1, 1, -100], [2, 0, 1]])
    w = jnp.asarray(W_NP, jnp.float32)
    losses_ = {
        reduction: (
            functools.partial(CE, weight=w, label_smoothing=0.05, reduction=reduction),
            functools.partial(NLL, weight=w, reduction=reduction),
        )
        for reduction in ("mean", "none")
    }

    @jax.jit
    def both(x, stack):
        lp = jaxce.log_softmax(x)
        out = {}
        for reduction, (ce, nll) in losses_.items():
            out[reduction] = (
                jax.vmap(ce, in_axes=(None, 0))(x, stack),
                jnp.stack([ce(x, s) for s in stack]),
                jax.vmap(nll, in_axes=(None, 0))(lp, stack),
                jnp.stack([nll(lp, s) for s in stack]),
            )
        return out

    for reduction, (ce_vmapped, ce_looped, nll_vmapped, nll_looped) in both(x, stack).items():
        assert ce_vmapped.shape == ((4,) if reduction == "mean" else (4, 3))
        np.testing.assert_allclose(ce_vmapped, ce_looped, rtol=1e-6, err_msg=reduction)
        np.testing.assert_allclose(nll_vmapped, nll_looped, rtol=1e-6, err_msg=reduction)
    # The eager (un-jitted) vmap agrees too.
    ce = losses_["mean"][0]
    np.testing.assert_allclose(
        jax.vmap(ce, in_axes=(None, 0))(x, stack), jnp.stack([ce(x, s) for s in stack]), rtol=1e-6
    )


def test_vmap_over_a_stack_of_probability_targets_weights_and_label_smoothing():
    x, t = jnp.asarray(X_NP, jnp.float32), jnp.asarray(T_IGN_NP)
    probs = jnp.asarray(np.stack([P_NP, P_NP[::-1], np.full((3, 4), 0.25)]), jnp.float32)
    ws = jnp.asarray(np.stack([W_NP, np.ones(4), W_NP[::-1]]), jnp.float32)
    eps = jnp.asarray([0.0, 0.1, 1.0], jnp.float32)

    @jax.jit
    def both(x, probs, ws, eps):
        vmapped = (
            jax.vmap(CE, in_axes=(None, 0))(x, probs),
            jax.vmap(lambda w: CE(x, t, weight=w))(ws),
            jax.vmap(lambda e: CE(x, t, label_smoothing=e))(eps),
        )
        looped = (
            jnp.stack([CE(x, q) for q in probs]),
            jnp.stack([CE(x, t, weight=w) for w in ws]),
            jnp.stack([CE(x, t, label_smoothing=e) for e in (0.0, 0.1, 1.0)]),
        )
        return vmapped, looped

    for a, b in zip(*both(x, probs, ws, eps), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_per_example_gradients_jit_vmap_grad():
    x, t, w = jnp.asarray(X_NP, jnp.float32), jnp.asarray(T_NP), jnp.asarray(W_NP, jnp.float32)

    def loss(x, t):
        return CE(x, t, weight=w, reduction="sum")

    per_example = jax.jit(jax.vmap(jax.grad(loss)))(x, t)
    np.testing.assert_allclose(per_example, jax.grad(loss)(x, t), rtol=1e-6, atol=1e-7)


def test_vmap_softmax_family_with_where():
    x, m = jnp.asarray(X_NP, jnp.float32), jnp.asarray(MASK_NP)

    @jax.jit
    def both(x, m):
        fns = (jaxce.log_softmax, jaxce.softmax, functools.partial(jaxce.logsumexp, axis=-1))
        vmapped = [jax.vmap(lambda xi, mi, fn=fn: fn(xi, where=mi))(x, m) for fn in fns]
        return vmapped, [fn(x, where=m) for fn in fns]

    for a, b in zip(*both(x, m), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# --------------------------------------------------------------------------------
# jit equals eager; traced label_smoothing equals the static one
# --------------------------------------------------------------------------------


def test_jit_equals_eager():
    x, t, w = jnp.asarray(X_NP, jnp.float32), jnp.asarray(T_IGN_NP), jnp.asarray(W_NP, jnp.float32)
    p = jnp.asarray(P_NP, jnp.float32)

    def all_losses(x, t, w, p):
        return (
            CE(x, t, weight=w, label_smoothing=0.1),
            CE(x, p, weight=w, reduction="none"),
            NLL(jaxce.log_softmax(x), t, reduction="sum"),
            jaxce.logsumexp(x, axis=0),
        )

    for a, b in zip(jax.jit(all_losses)(x, t, w, p), all_losses(x, t, w, p), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("probabilities", [False, True], ids=["class-index", "probabilities"])
def test_traced_label_smoothing_equals_static(x64, probabilities):
    x = jnp.asarray(X_NP)
    t = jnp.asarray(P_NP) if probabilities else jnp.asarray(T_IGN_NP)
    w = jnp.asarray(W_NP)
    values = (0.0, 0.1, 1.0)

    def f(x, e):
        return CE(x, t, weight=w, label_smoothing=e)

    @jax.jit
    def static_and_traced(x, eps):
        static = [jax.value_and_grad(f)(x, e) for e in values]  # Python floats: static
        traced = [jax.value_and_grad(f)(x, eps[i]) for i in range(len(values))]
        return static, traced

    static, traced = static_and_traced(x, jnp.asarray(values))
    for (sv, sg), (tv, tg) in zip(static, traced, strict=True):
        np.testing.assert_allclose(tv, sv, rtol=1e-14)
        np.testing.assert_allclose(tg, sg, rtol=1e-13, atol=1e-15)
    # A traced 0 is exactly the unsmoothed loss.
    assert jax.jit(f)(x, jnp.asarray(0.0)) == CE(x, t, weight=w)


def test_traced_label_smoothing_float32_inside_jit():
    x, t = jnp.asarray(X_NP, jnp.float32), jnp.asarray(T_NP)
    traced = jax.jit(lambda x, e: CE(x, t, label_smoothing=e))(x, jnp.float32(0.25))
    np.testing.assert_allclose(traced, CE(x, t, label_smoothing=0.25), rtol=1e-6)
    assert traced.dtype == jnp.float32


# --------------------------------------------------------------------------------
# differentiability with respect to weight: finite differences
# --------------------------------------------------------------------------------


def test_weight_gradient_matches_finite_differences(x64):
    x, t, ti, p = (jnp.asarray(a) for a in (X_NP, T_NP, T_IGN_NP, P_NP))

    @jax.jit
    def f(w):
        return jnp.stack(
            [
                CE(x, ti, weight=w, label_smoothing=0.2),
                CE(x, t, weight=w, reduction="sum"),
                CE(x, p, weight=w, label_smoothing=0.1),
                NLL(x, ti, weight=w),
            ]
        )

    w = jnp.asarray(W_NP)
    jac = np.asarray(jax.jit(jax.jacrev(f))(w))
    h = 1e-6
    fd = np.stack(
        [
            (np.asarray(f(w.at[c].add(h))) - np.asarray(f(w.at[c].add(-h)))) / (2 * h)
            for c in range(4)
        ],
        axis=1,
    )
    np.testing.assert_allclose(jac, fd, rtol=1e-7, atol=1e-9)
    assert np.all(np.any(jac != 0, axis=1))


# --------------------------------------------------------------------------------
# tracing: same shapes and options trace once
# --------------------------------------------------------------------------------


def test_user_jit_traces_once_for_same_shapes_and_options():
    traces = []

    def f(x, t, w, e):
        traces.append(1)
        return CE(x, t, weight=w, ignore_index=1, label_smoothing=e) + NLL(
            jaxce.log_softmax(x), t, reduction="sum"
        )

    jf = jax.jit(f)
    x, t, w = jnp.asarray(X_NP, jnp.float32), jnp.asarray(T_NP), jnp.asarray(W_NP, jnp.float32)
    jf(x, t, w, jnp.float32(0.1))
    jf(x * 2, t[::-1], w + 1, jnp.float32(0.3))
    assert len(traces) == 1
    jf(x[:2], t[:2], w, jnp.float32(0.3))  # a new shape traces again
    assert len(traces) == 2


def _impl_cache_sizes():
    return losses._cross_entropy_impl._cache_size(), losses._nll_impl._cache_size()


def test_internal_jitted_impls_do_not_retrace():
    """Eager calls with the same shapes and options reuse jaxce's internal jitted
    implementations (``jaxce.losses._cross_entropy_impl`` / ``_nll_impl``)."""
    # A shape and options no other test uses, so the first call adds exactly one entry.
    x = jnp.asarray(np.random.default_rng(8).normal(size=(5, 13)), jnp.float32)
    t = jnp.array([0, 6, 3, 11, 2])
    w = jnp.linspace(0.5, 2.0, 13, dtype=jnp.float32)
    opts = dict(weight=w, label_smoothing=0.1, reduction="sum", ignore_index=11)

    start = _impl_cache_sizes()
    CE(x, t, **opts)
    NLL(x, t, weight=w, ignore_index=11)
    after_first = _impl_cache_sizes()
    assert after_first == (start[0] + 1, start[1] + 1)
    # Same shapes and options, new values (and equal options spelled anew): no retrace.
    CE(x + 1, t[::-1], weight=w * 2, label_smoothing=float("0.1"), reduction="sum", ignore_index=11)
    CE(np.asarray(x), np.asarray(t), **opts)
    NLL(x - 1, t, weight=w + 1, ignore_index=11)
    assert _impl_cache_sizes() == after_first
    # Traced label smoothing: one entry, whatever its value.
    CE(x, t, weight=w, ignore_index=11, label_smoothing=jnp.float32(0.1))
    after_traced = _impl_cache_sizes()
    CE(x, t, weight=w, ignore_index=11, label_smoothing=jnp.float32(0.7))
    assert _impl_cache_sizes() == after_traced
    # Sanity: a new shape does retrace (so the counter is live).
    CE(x[:4], t[:4], **opts)
    assert _impl_cache_sizes()[0] == after_traced[0] + 1


# --------------------------------------------------------------------------------
# half precision: outputs and gradients keep the input dtype
# --------------------------------------------------------------------------------

HALF = [jnp.float16, jnp.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_half_precision_values_and_gradients_keep_dtype(dtype):
    x = jnp.asarray(X_NP, jnp.float32).astype(dtype)
    t = jnp.asarray(T_IGN_NP)
    w = jnp.asarray(W_NP, dtype)
    p = jnp.asarray(P_NP, dtype)

    def outputs(x):
        return {
            "ce": CE(x, t),
            "ce-weight-ls": CE(x, t, weight=w, label_smoothing=0.1),
            "ce-prob": CE(x, p, weight=w, label_smoothing=0.1, reduction="none"),
            "nll": NLL(x, t, weight=w, reduction="sum"),
            "log_softmax": jaxce.log_softmax(x),
            "softmax": jaxce.softmax(x),
            "logsumexp": jaxce.logsumexp(x, -1),
        }

    def total(x):
        return sum(jnp.sum(v.astype(jnp.float32)) for v in outputs(x).values())

    def ce(x):
        return CE(x, t, label_smoothing=0.1)

    @jax.jit
    def everything(x):
        x32 = x.astype(jnp.float32)  # exactly the same values
        return (
            outputs(x),
            jax.grad(total)(x),
            jax.jvp(outputs, (x,), (jnp.ones_like(x),))[1],
            (jax.value_and_grad(ce)(x), jax.value_and_grad(ce)(x32)),
            (jaxce.log_softmax(x), jaxce.log_softmax(x32)),
            # A float32 weight promotes the loss to float32; d/dx keeps x's dtype.
            jax.value_and_grad(lambda x, w: CE(x, t, weight=w), argnums=(0, 1))(
                x, w.astype(jnp.float32)
            ),
        )

    outs, g, tangents, ce_pairs, lsm_pair, (promoted, (gx, gw)) = everything(x)
    for name in outs:
        assert outs[name].dtype == dtype, name
        assert tangents[name].dtype == dtype, name
    assert g.dtype == dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
    # Computed in float32 and rounded once: the float32 computation, rounded.
    (v16, g16), (v32, g32) = ce_pairs
    np.testing.assert_array_equal(v16, v32.astype(dtype))
    np.testing.assert_array_equal(g16, g32.astype(dtype))
    np.testing.assert_array_equal(lsm_pair[0], lsm_pair[1].astype(dtype))
    assert promoted.dtype == jnp.float32 and gx.dtype == dtype and gw.dtype == jnp.float32
    # Eager calls keep the dtype as well.
    assert CE(x, t).dtype == dtype and jaxce.softmax(x).dtype == dtype
