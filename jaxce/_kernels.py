"""The per-row kernels of :mod:`jaxce.losses`: each row of logits reduced to the
statistics of :mod:`jaxce.rule`, inside a ``custom_jvp`` whose tangent rule is one fused
elementwise pass (no logits-sized temporary besides the gradient itself)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxce import _checks, _spmd, rule, softmax


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    """A 1-D per-class vector shaped to broadcast along ``axis`` of an ``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _onehot(t: jax.Array, shape: tuple, axis: int) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, shape, axis) == jnp.expand_dims(t, axis)


def _pick(values: jax.Array, t: jax.Array, axis: int) -> jax.Array:
    """``values[..., t, ...]`` along ``axis``.

    A gather, except when ``values`` is explicitly sharded (``AxisType.Explicit``):
    there a gather cannot be partitioned, so a masked sum over the class axis
    (exact: one term plus zeros) is used instead.
    """
    if _spmd.explicitly_sharded(values):
        picked = jnp.where(_onehot(t, values.shape, axis), values, jnp.zeros((), values.dtype))
        return jnp.sum(picked, axis=axis)
    return jnp.squeeze(jnp.take_along_axis(values, jnp.expand_dims(t, axis), axis=axis), axis)


def _bfloat16_parts(w: jax.Array) -> jax.Array:
    """``(C, 3)`` bfloat16 parts of a float32 ``w`` whose sum is ``w`` (8 bits each)."""
    hi = w.astype(jnp.bfloat16)
    rest = w - hi.astype(w.dtype)
    mid = rest.astype(jnp.bfloat16)
    lo = (rest - mid.astype(w.dtype)).astype(jnp.bfloat16)
    return jnp.stack([hi, mid, lo], axis=1)


def _class_sum(x: jax.Array, axis: int, dtype) -> jax.Array:
    """``Σ_c x_c`` along ``axis`` in ``dtype``. A bfloat16 ``x`` is summed by a dot with
    ones (exact products, float32 accumulation): XLA:CPU would store a float32 copy of
    ``x`` for the reduction of its conversion (measured 4x the plain forward)."""
    if x.dtype == jnp.bfloat16 and dtype == jnp.float32 and not _spmd.explicitly_sharded(x):
        ones = jnp.ones((x.shape[axis], 2), jnp.bfloat16)
        sums = lax.dot_general(x, ones, (((axis,), (0,)), ((), ())), preferred_element_type=dtype)
        return sums[..., 0]
    return jnp.sum(x.astype(dtype), axis=axis)


def _weighted_class_sum(x: jax.Array, w: jax.Array, axis: int) -> jax.Array:
    """``Σ_c w_c·x_c`` along ``axis``, in ``w``'s dtype.

    A matrix-vector product (one read of ``x``, and on CPU much faster in the
    backward pass than a broadcast product), except under explicit sharding, where a
    dot over a sharded class axis is ambiguous. A bfloat16 ``x`` is not converted
    (XLA would store a float32 copy of it): it is multiplied by the three bfloat16
    parts of a float32 ``w``, whose products are exact in float32.
    """
    if _spmd.explicitly_sharded(x):
        return jnp.sum(x.astype(w.dtype) * _along(w, axis, x.ndim), axis=axis)
    if x.dtype == jnp.bfloat16 and w.dtype == jnp.float32:
        dims = (((axis,), (0,)), ((), ()))
        parts = lax.dot_general(x, _bfloat16_parts(w), dims, preferred_element_type=w.dtype)
        return jnp.sum(parts, axis=-1)
    return jnp.tensordot(x.astype(w.dtype), w, axes=([axis], [0]), precision=lax.Precision.HIGHEST)


def _softmax_from_shifted(shifted, log_s, axis):
    """``exp(x - m) / s``, the very ``exp(x - m)`` that the forward pass sums.

    XLA computes that exponential once, keeps it in the gradient's own buffer and
    scales it in the backward pass (as it does for optax): one ``exp`` per element
    in ``value_and_grad`` (on CPU the exp, not memory, is the bound) and no
    temporary. A forward pass alone still only reduces it.
    """
    return jnp.exp(shifted) / jnp.expand_dims(jnp.exp(log_s), axis)


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _stats(x, axis, cdt, mask=None):
    """``shifted = x - m``, and per row ``log_s``, ``m`` and ``lse``.

    Computed in ``x``'s compute dtype (float32 for half precision; ``x`` is passed
    unconverted, so that no converted copy of it is stored), then cast to ``cdt``;
    ``m`` stays in the compute dtype. Entries outside ``mask`` (None: none) are left
    out: ``shifted`` is ``-inf`` there. The mask is applied inside each reduction
    (not to a masked copy of ``x``, which XLA would store for the two of them).
    """
    xdt = _checks.compute_dtype(x.dtype)
    if mask is None:
        shifted, s, m = softmax.shifted_and_sumexp(x, (axis,), None, dtype=xdt)
    else:
        m = jnp.max(jnp.where(mask, x, jnp.array(-jnp.inf, x.dtype)), axis=axis).astype(xdt)
        # A row with nothing in it: shifted by 0, not by -inf (which would give NaN).
        m = lax.stop_gradient(jnp.where(m == -jnp.inf, jnp.zeros((), xdt), m))
        shifted = jnp.where(
            mask, x.astype(xdt) - jnp.expand_dims(m, axis), jnp.array(-jnp.inf, xdt)
        )
        s = jnp.sum(jnp.exp(shifted), axis=axis)
    log_s = jnp.log(s)
    lse = (m + log_s).astype(cdt)
    return shifted.astype(cdt), log_s.astype(cdt), m, lse


def _masked(x, mask):
    """``x`` with 0 outside ``mask`` (None: ``x``), so that what is left out cannot turn a
    sum into NaN."""
    return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


def _and(a, b):
    return a if b is None else a & b


@functools.cache
def class_index_kernel(axis: int, smoothing: bool, z_loss: float, cdt: np.dtype):
    """Per-position class-index terms ``f(x, t, valid, bad, w, mask) -> rule.Terms``, custom JVP.

    With ``p = softmax(x)``, ``S = Σ_c p_c·dx_c``, ``T = dx_t`` and ``U = Σ_c w_c·dx_c``,
    the tangents are ``dnll = w_t·(S - T)``, ``dsmooth = W·S - U`` and
    ``dz = 2·z·w_t·lse·S``. Transposed (reverse mode) that is one fused
    elementwise pass; its only ``[N, C]`` input besides ``x`` is the forward's
    ``exp(x - m)``, which XLA keeps in the gradient's own buffer (see
    :func:`_softmax_from_shifted`). Being a JVP, forward mode and higher orders
    work as well.

    ``mask`` (None, or boolean of ``x``'s shape) leaves logits out of the softmax and of
    the smoothing sums (``W`` and ``U`` become per-row sums over the classes that take
    part); the caller has marked rows whose target is left out as ``bad``.
    """

    def primal(x, t, valid, bad, w, mask):
        num_classes = x.shape[axis]
        shifted, log_s, m, lse = _stats(x, axis, cdt, mask)
        # Picked from x, not from `shifted`, so that `shifted` need not be stored.
        shifted_t = (_pick(x, t, axis).astype(m.dtype) - m).astype(cdt)
        w_t = None if w is None else _spmd.take(w, t)
        wsh, total_weight = None, num_classes
        if smoothing:
            # Σ_c w_c·(x_c - m) as Σ_c w_c·x_c - m·W: reading x, not `shifted`, lets the
            # sum run beside the exp-sum without storing `shifted` (XLA on CPU would).
            # Its rounding error (relative to Σ|w·x|) is small against the smoothing
            # term, which for non-negative weights is at least log_s·W and |wsh|.
            xs = _masked(x, mask)
            if w is None:
                wx = _class_sum(xs, axis, cdt)
                if mask is not None:
                    total_weight = jnp.sum(mask, axis=axis, dtype=jnp.int32).astype(cdt)
            else:
                wx = _weighted_class_sum(xs, w, axis)
                if mask is None:
                    total_weight = jnp.sum(w)
                else:
                    total_weight = jnp.sum(_masked(_along(w, axis, x.ndim), mask), axis=axis)
            wsh = wx - m.astype(cdt) * total_weight
        terms = rule.class_index_terms(
            shifted_t=shifted_t,
            log_s=log_s,
            lse=lse,
            wsh=wsh,
            w_t=w_t,
            total_weight=total_weight,
            z_loss=z_loss,
        )
        res = (shifted, log_s, lse, shifted_t, w_t, total_weight)
        return rule.finalize_terms(terms, valid, bad), res

    @jax.custom_jvp
    def kernel(x, t, valid, bad, w, mask):
        return primal(x, t, valid, bad, w, mask)[0]

    def jvp(primals, tangents):
        x, t, valid, bad, w, mask = primals
        dx, _, _, _, dw, _ = tangents
        terms, (shifted, log_s, lse, shifted_t, w_t, total_weight) = primal(*primals)
        # Ignored rows (and out-of-range targets) get exactly zero tangents; their
        # values (NaN if their logits are) are replaced by 0 wherever they would
        # multiply a tangent or cotangent.
        ok = valid & ~bad
        ok_k = jnp.expand_dims(ok, axis)
        zero = jnp.zeros((), cdt)
        dnll = jnp.zeros_like(terms.nll)
        dsmooth = None if terms.smooth is None else jnp.zeros_like(terms.smooth)
        dz = None if terms.z is None else jnp.zeros_like(terms.z)
        if not _is_zero(dx):
            dx = dx.astype(cdt)
            p = jnp.where(ok_k, _softmax_from_shifted(shifted, log_s, axis), zero)
            big_s = jnp.sum(p * dx, axis=axis)
            onehot = _onehot(t, shifted.shape, axis) & ok_k
            big_t = jnp.sum(jnp.where(onehot, dx, zero), axis=axis)
            dnll = big_s - big_t if w is None else w_t * (big_s - big_t)
            if smoothing:
                wdx = dx if w is None else dx * _along(w, axis, x.ndim)
                big_u = jnp.sum(jnp.where(_and(ok_k, mask), wdx, zero), axis=axis)
                dsmooth = total_weight * big_s - big_u
            if z_loss:
                wt_lse = jnp.where(ok, lse if w is None else w_t * lse, zero)
                dz = 2 * z_loss * wt_lse * big_s
        if w is not None and not _is_zero(dw):
            dw_t = _spmd.take(dw, t)
            dnll = dnll + rule.weighted_nll(jnp.where(ok, shifted_t - log_s, zero), dw_t)
            if smoothing:
                dw_k = _along(dw, axis, x.ndim)
                safe = jnp.where(_and(ok_k, mask), shifted, zero)
                dwsh = jnp.sum(safe * dw_k, axis=axis)
                dw_total = jnp.sum(dw) if mask is None else jnp.sum(_masked(dw_k, mask), axis)
                dsmooth = dsmooth + rule.smoothing_term(
                    jnp.where(ok, log_s, zero), dwsh, dw_total
                )
            if z_loss:
                dz = dz + dw_t * (z_loss * jnp.square(jnp.where(ok, lse, zero)))
        mask_ok = lambda v: None if v is None else jnp.where(ok, v, zero)  # noqa: E731
        return terms, rule.Terms(mask_ok(dnll), mask_ok(dsmooth), mask_ok(dz))

    kernel.defjvp(jvp, symbolic_zeros=True)
    return kernel


@functools.cache
def probability_kernel(axis: int, z_loss: float, cdt: np.dtype):
    """Per-position probability-target loss ``f(x, q, w, eps, valid, mask) = -Σ_c w_c·q'_c·lp_c``.

    Written as ``log_s·Σ_c w_c q'_c - Σ_c w_c q'_c (x_c - m)``; the JVP in ``x`` is
    ``Σ_c (Q·p_c - w_c q'_c)·dx_c`` with ``Q = Σ_c w_c q'_c``; ``q``, ``w`` and ``ε``
    (which arrives here traced) are differentiable too. ``valid`` (None, or boolean of
    the positions' shape) gives 0 with zero tangents where False; ``mask`` (None, or
    boolean of ``x``'s shape) leaves logits out of the softmax and the sum, as optax does.
    """

    def primal(x, q, w, eps, valid, mask):
        num_classes = x.shape[axis]
        shifted, log_s, m, lse = _stats(x, axis, cdt, mask)
        qs = rule.smooth_probabilities(q, eps, num_classes)
        wq = _masked(qs if w is None else qs * _along(w, axis, x.ndim), mask)
        total = jnp.sum(wq, axis=axis)
        # Σ w·q'·(x - m) read from x, as the smoothing sum is (see class_index_kernel).
        wqsh = jnp.sum(wq * _masked(x, mask).astype(cdt), axis=axis) - m.astype(cdt) * total
        loss = log_s * total - wqsh
        if z_loss:
            loss = loss + z_loss * jnp.square(lse)
        if valid is not None:
            loss = jnp.where(valid, loss, jnp.zeros((), cdt))
        return loss, (shifted, log_s, lse, qs, wq, total)

    @jax.custom_jvp
    def kernel(x, q, w, eps, valid, mask):
        return primal(x, q, w, eps, valid, mask)[0]

    def jvp(primals, tangents):
        x, q, w, eps, valid, mask = primals
        dx, dq, dw, deps, _, _ = tangents
        num_classes = x.shape[axis]
        loss, (shifted, log_s, lse, qs, wq, total) = primal(*primals)
        zero = jnp.zeros((), cdt)
        valid_k = None if valid is None else jnp.expand_dims(valid, axis)
        dloss = jnp.zeros_like(loss)
        if not _is_zero(dx):
            p = _softmax_from_shifted(shifted, log_s, axis)
            a = total + 2 * z_loss * lse if z_loss else total
            g = jnp.expand_dims(a, axis) * p - wq
            g = g if valid is None else jnp.where(valid_k, g, zero)
            dloss = dloss + jnp.sum(g * dx.astype(cdt), axis=axis)
        # d(w·q') from each tangent; the loss is linear in w·q' given x.
        dwq = None
        w_b = None if w is None else _along(w, axis, x.ndim)
        if not _is_zero(dq):
            dqs = jnp.where(eps > 0, dq * (1 - eps), dq)
            dwq = dqs if w is None else dqs * w_b
        if w is not None and not _is_zero(dw):
            term = qs * _along(dw, axis, x.ndim)
            dwq = term if dwq is None else dwq + term
        if not _is_zero(deps):
            dqs = jnp.where(eps > 0, 1 / num_classes - q, zero) * deps
            term = dqs if w is None else dqs * w_b
            dwq = term if dwq is None else dwq + term
        if dwq is not None:
            if valid is None and mask is None:
                dloss = dloss + log_s * jnp.sum(dwq, axis=axis) - jnp.sum(dwq * shifted, axis=axis)
            else:
                # Coefficients cleaned where left out: a -inf there times a zero cotangent
                # would be NaN in reverse mode.
                keep = valid_k if mask is None else _and(mask, valid_k)
                log_s_ok = log_s if valid is None else jnp.where(valid, log_s, zero)
                dwq = jnp.where(keep, dwq, zero)
                shifted_ok = jnp.where(keep, shifted, zero)
                dloss = dloss + log_s_ok * jnp.sum(dwq, axis=axis) - jnp.sum(
                    dwq * shifted_ok, axis=axis
                )
        return loss, dloss

    kernel.defjvp(jvp, symbolic_zeros=True)
    return kernel
