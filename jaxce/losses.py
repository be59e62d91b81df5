"""``nll_loss`` and ``cross_entropy``, with the numbers and gradients of PyTorch.

The per-position rule lives in :mod:`jaxce.rule`; this module validates the
arguments (at trace time), reduces each row of logits to the rule's statistics
inside a ``custom_jvp`` kernel, and applies torch's reductions and denominators.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxce import _checks, _spmd, checking, rule, softmax

__all__ = ["nll_loss", "cross_entropy"]


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
def _class_index_kernel(axis: int, smoothing: bool, z_loss: float, cdt: np.dtype):
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
def _probability_kernel(axis: int, z_loss: float, cdt: np.dtype):
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
        # Σ w·q'·(x - m) read from x, as the smoothing sum is (see _class_index_kernel).
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


def _flatten_classes(a, axes: tuple[int, ...]):
    """``(a, axis)``: with several class axes, ``a`` with them moved to the end (in the
    order given) and merged into one, as optax does; with one, ``a`` as it is."""
    if a is None or len(axes) == 1:
        return a, axes[0]
    batch = tuple(i for i in range(a.ndim) if i not in axes)
    perm = batch + axes
    if perm != tuple(range(a.ndim)):
        a = jnp.transpose(a, perm)
    return a.reshape(a.shape[: len(batch)] + (-1,)), len(batch)


def _target_masks(target, num_classes, ignore_index, positions, classes, axis, fn, check):
    """:func:`rule.target_masks` with ``where`` applied: positions left out (by the
    positions mask, or a row of the class mask with nothing in it) count as ignored; a
    target whose own class is left out is ``bad`` (NaN, as out of range). With
    ``check``, either kind of bad target raises through checkify."""
    t, valid, bad = rule.target_masks(target, num_classes, ignore_index)
    if positions is not None:
        valid = valid & positions
    if classes is not None:
        valid = valid & jnp.any(classes, axis=axis)
    if positions is not None or classes is not None:
        bad = bad & valid
    if check:
        message = checking.out_of_range_message(fn, num_classes, ignore_index)
        checking.assert_none(bad, target, message)
    if classes is not None:
        left_out = valid & ~bad & ~_pick(classes, t, axis).astype(jnp.bool_)
        if check:
            checking.assert_none(
                left_out,
                target,
                f"{fn}: target value {{value}} at flattened position {{position}} is a class "
                "that `where` leaves out",
            )
        bad = bad | left_out
    return t, valid, bad


def _softcap(x, softcap: float):
    """``s·tanh(x / s)``. For a huge ``s`` (static), ``x`` itself where ``|x / s|`` is below
    ``sqrt(eps)`` (they agree to the last bit there): ``x / s`` would be flushed to 0 for
    every ``|x| < s·tiny`` (``s=1e38``: every logit below 1.2). Up to ``2**40`` that
    error is below ``2**-86`` and the plain form is kept (one logits-sized temporary less
    in the gradient)."""
    x = x.astype(_checks.compute_dtype(x.dtype))
    y = x / softcap
    if softcap <= 2.0**40:
        return softcap * jnp.tanh(y)
    small = jnp.abs(y) < float(np.sqrt(np.finfo(x.dtype).eps))
    return jnp.where(small, x, softcap * jnp.tanh(y))


def _reduce(per_position, denom, reduction: str):
    if reduction == "none":
        return per_position
    total = jnp.sum(per_position)
    return total if reduction == "sum" else total / jnp.sum(denom)


@functools.partial(
    jax.jit, static_argnames=("axes", "ignore_index", "reduction", "fn", "check", "out_dtype")
)
def _nll_impl(
    log_probs, target, weight, positions, classes, *, axes, ignore_index, reduction, fn, check,
    out_dtype,
):
    log_probs, axis = _flatten_classes(log_probs, axes)
    classes, _ = _flatten_classes(classes, axes)
    num_classes = log_probs.shape[axis]
    cdt = _checks.compute_dtype(out_dtype)
    t, valid, bad = _target_masks(
        target, num_classes, ignore_index, positions, classes, axis, fn, check
    )
    # Cleaned where not used, so a -inf there cannot turn a zero cotangent into NaN.
    picked = jnp.where(valid & ~bad, _pick(log_probs, t, axis).astype(cdt), jnp.zeros((), cdt))
    w = None if weight is None else weight.astype(cdt)
    if w is not None and reduction == "mean":
        w = rule.weights_for_mean(w)
    w_t = None if w is None else _spmd.take(w, t)
    nll = rule.finalize(rule.weighted_nll(picked, w_t), valid, bad)
    denom = rule.mean_denominator(valid, w_t, cdt) if reduction == "mean" else None
    return rule.reduce_terms(
        rule.Terms(nll, None, None), denom, reduction, 0.0, num_classes
    ).astype(out_dtype)


@functools.partial(
    jax.jit,
    static_argnames=(
        "axes",
        "ignore_index",
        "reduction",
        "static_eps",
        "z_loss",
        "softcap",
        "probabilities",
        "check",
        "out_dtype",
    ),
)
def _cross_entropy_impl(
    logits,
    target,
    weight,
    dynamic_eps,
    positions,
    classes,
    *,
    axes,
    ignore_index,
    reduction,
    static_eps,
    z_loss,
    softcap,
    probabilities,
    check,
    out_dtype,
):
    cdt = _checks.compute_dtype(out_dtype)
    eps = static_eps if dynamic_eps is None else dynamic_eps.astype(cdt)
    # The kernels take the logits unconverted (a half-precision input is read as it is
    # and computed in float32; see `_stats`), unless a softcap computes new ones.
    x = logits
    w = None if weight is None else weight.astype(cdt)
    if probabilities:
        shape = jnp.broadcast_shapes(x.shape, target.shape)  # optax broadcasts them
        x, q = jnp.broadcast_to(x, shape), jnp.broadcast_to(target.astype(cdt), shape)
        x, axis = _flatten_classes(x, axes)
        q, _ = _flatten_classes(q, axes)
        classes, _ = _flatten_classes(classes, axes)
        valid = positions
        if classes is not None:
            rows = jnp.any(classes, axis=axis)
            valid = rows if valid is None else valid & rows
        if softcap is not None:
            x = _softcap(_masked(x, classes), softcap)
        kernel = _probability_kernel(axis, z_loss, cdt)
        per_position = kernel(x, q, w, eps, valid, classes)
        if reduction == "sum" and per_position.size == 0:
            return jnp.full((), -0.0, out_dtype)  # torch negates an empty sum
        if valid is None:
            count = jnp.full((), per_position.size, cdt)
        else:
            count = rule.mean_denominator(valid, None, cdt)
        return _reduce(per_position, count, reduction).astype(out_dtype)

    x, axis = _flatten_classes(x, axes)
    classes, _ = _flatten_classes(classes, axes)
    num_classes = x.shape[axis]
    t, valid, bad = _target_masks(
        target, num_classes, ignore_index, positions, classes, axis, "cross_entropy", check
    )
    if softcap is not None:
        # Ignored rows (and left-out logits) are cleaned first: tanh's derivative at NaN
        # would leak into their (zero) gradient. The kernel itself needs no cleaning.
        keep = _and(jnp.expand_dims(valid, axis), classes)
        x = _softcap(jnp.where(keep, x, jnp.zeros((), x.dtype)), softcap)
    if w is not None and reduction == "mean":
        w = rule.weights_for_mean(w)  # mean is a ratio: scaled so that its sums stay finite
    smoothing = not (isinstance(eps, float) and eps == 0.0)
    kernel = _class_index_kernel(axis, smoothing, z_loss, cdt)
    terms = kernel(x, t, valid, bad, w, classes)
    denom = None
    if reduction == "mean":
        denom = rule.mean_denominator(valid, None if w is None else _spmd.take(w, t), cdt)
    return rule.reduce_terms(terms, denom, reduction, eps, num_classes).astype(out_dtype)


def _result_dtype(*arrays) -> np.dtype:
    return _checks.promote_float_dtypes(*(a.dtype for a in arrays if a is not None))


def _flat_struct(x, axes):
    """The shape of ``x`` after :func:`_flatten_classes`, and its class axis."""
    if len(axes) == 1:
        return x, axes[0]
    batch = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    classes = int(np.prod([x.shape[a] for a in axes]))
    return jax.ShapeDtypeStruct(batch + (classes,), x.dtype), len(batch)


def _broadcast_probabilities(fn, logits, target, axis):
    """The shape probability targets and logits broadcast to (optax multiplies them)."""
    shape, tshape = tuple(logits.shape), tuple(target.shape)
    if tshape == shape:
        return shape
    expected = None
    if logits.ndim and isinstance(axis, int) and not isinstance(axis, bool):
        if -logits.ndim <= axis < logits.ndim:
            expected = _checks.reduced_shape(shape, axis % logits.ndim)
    if tshape == expected:
        raise TypeError(
            f"{fn}: `target` has the class-index shape {expected} but a floating dtype "
            f"{_checks.dtype_name(target.dtype)}; class indices must be integers, class "
            f"probabilities must broadcast to the logits' shape {shape}"
        )
    try:
        out = tuple(jnp.broadcast_shapes(shape, tshape))
    except ValueError:
        out = None
    if out is None:
        raise ValueError(
            f"{fn}: floating `target` (class probabilities) must broadcast to the logits' "
            f"shape {shape}, got {tshape}"
        )
    if out != shape:
        axes = axis if isinstance(axis, tuple) else (axis,)
        if len(out) != len(shape) and any(
            isinstance(a, numbers.Integral) and a >= 0 for a in axes
        ):
            raise ValueError(
                f"{fn}: floating `target` shape {tshape} broadcasts the logits' shape {shape} "
                f"to {out}, where the non-negative `axis`={axis!r} names another axis; use "
                "negative axes, or broadcast the logits yourself"
            )
    return out


def nll_loss(
    log_probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    where: Any = None,
) -> jax.Array:
    r"""Negative log-likelihood of class-index targets, as ``torch.nn.functional.nll_loss``.

    For each position ``i`` with target ``t_i``:

    .. math::
        \ell_i = -w_{t_i} \, x_{i, t_i} \quad (0 \text{ if } t_i = \texttt{ignore\_index}),
        \qquad \texttt{mean} = \frac{\sum_i \ell_i}{\sum_{i \text{ not ignored}} w_{t_i}}

    The input is used as given (it is not checked to be log-probabilities).

    Args:
      log_probs: floating array ``(C,)``, ``(N, C)`` or any shape with the class
        axis at ``axis``.
      target: integer class indices (any integer dtype), shaped like ``log_probs``
        without ``axis`` (a ``(1,)`` target is accepted for ``(C,)`` input).
      axis: the class axis; default ``-1``. Use ``axis=1`` for torch's
        ``(N, C, d1, ..., dk)`` layout. A tuple of axes spreads the classes over several
        axes (``C`` is the product of their sizes and a target is a flat index into them,
        in the order given, as in optax); None means every axis.
      weight: optional ``(C,)`` floating array of class weights (differentiable).
      ignore_index: target value whose positions contribute 0 to the loss and to
        the ``mean`` denominator.
      reduction: ``"none"`` (the target's shape), ``"mean"`` (weighted mean) or ``"sum"``.
      where: optional boolean mask of what takes part, as in :func:`cross_entropy`:
        of the positions' shape (a left-out position counts as ignored) or of
        ``log_probs``' shape (a position whose entries are all left out counts as
        ignored; a target whose own entry is left out gives NaN).

    Returns:
      The loss, 0-d unless ``reduction="none"``; dtype of ``log_probs`` promoted
      with ``weight``. A non-ignored target outside ``[0, C)`` gives NaN at its
      position (see :func:`jaxce.checked` to raise instead). All targets ignored
      gives NaN for ``mean`` (0/0) with a zero gradient.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> lp = jaxce.log_softmax(jnp.array([[1.2, -0.5, 0.8, 2.1]]))
      >>> print(float(jaxce.nll_loss(lp, jnp.array([2]))))
      1.8615424633026123

    References:
      https://pytorch.org/docs/stable/generated/torch.nn.NLLLoss.html
    """
    fn = "nll_loss"
    log_probs = _checks.as_array(fn, "log_probs", log_probs, floating=True)
    target = _checks.as_array(fn, "target", target)
    shape = tuple(log_probs.shape)
    axes = _checks.class_axes(fn, axis, log_probs.ndim, shape)
    positions, classes = _checks.check_where(fn, where, shape, axes, axis)
    flat, ax = _flat_struct(log_probs, axes)
    target = _checks.check_class_target(
        fn, "log_probs", flat, target, ax, probabilities_possible=False
    )
    weight = _checks.check_weight(fn, weight, flat.shape[ax])
    return _nll_impl(
        log_probs,
        target,
        weight,
        positions,
        classes,
        axes=axes,
        ignore_index=_checks.check_ignore_index(fn, ignore_index),
        reduction=_checks.check_reduction(fn, reduction),
        fn=fn,
        check=checking.enabled(),
        out_dtype=_result_dtype(log_probs, weight),
    )


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: Any = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where: Any = None,
) -> jax.Array:
    r"""Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    Class-index targets (integer ``target`` without the class axis), with
    ``lp = log_softmax(logits)`` and smoothing ``ε``:

    .. math::
        \ell_i = (1-\varepsilon)\,(-w_{t_i}\,lp_{i,t_i})
                 + \frac{\varepsilon}{C} \Big(-\sum_c w_c\, lp_{i,c}\Big),
        \qquad \texttt{mean} = \frac{\sum_i \ell_i}{\sum_{i \text{ not ignored}} w_{t_i}}

    Probability targets (floating ``target`` broadcastable to the logits' shape), with
    ``q' = (1-ε)q + ε/C``:

    .. math::
        \ell_i = -\sum_c w_c\, q'_{i,c}\, lp_{i,c},
        \qquad \texttt{mean} = \frac{1}{M}\sum_i \ell_i \quad (M = \text{number of positions})

    ``where`` (optax's): a position left out, by a mask of the positions' shape or by a
    mask of the logits' shape with nothing of its row in it, gives 0 and counts as an
    ignored one (it is not in ``mean``'s denominator, ``M`` or ``Σ w_t``). Logits left
    out by a mask of the logits' shape are not in the softmax; the sums over classes
    (smoothing, probability targets, ``W``) run over the classes that take part, with
    ``ε/C`` for the full ``C``. A class-index target whose own logit is left out gives
    NaN (its probability is 0), as an out-of-range one does.

    Args:
      logits: floating array ``(C,)``, ``(N, C)`` or any shape with the class axis
        at ``axis``.
      target: integer class indices shaped like ``logits`` without ``axis``, or
        floating class probabilities of ``logits``' shape (not normalised, used as given).
      axis: the class axis; default ``-1``. Use ``axis=1`` for torch's
        ``(N, C, d1, ..., dk)`` layout. A tuple of axes spreads the classes over several
        axes, as in optax (``C`` is the product of their sizes; a class index is a flat
        index into them in the order given); None means every axis.
      weight: optional ``(C,)`` floating array of class weights (differentiable).
      ignore_index: target value to skip (class-index targets). With probability
        targets only a negative value (no effect) is allowed.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: ``ε`` in ``[0, 1]``, a Python number (static) or a 0-d
        array (traced, not range-checked).
      z_loss: ``z ≥ 0``; adds ``z·logsumexp(logits)²`` to each non-ignored
        position's loss (PaLM's auxiliary loss). With class weights it is scaled by
        the target's weight ``w_t`` like the nll term, so ``mean`` (which divides by
        ``Σ w_t``) stays a weighted mean; with probability targets it is unweighted.
        Not in torch; default off.
      softcap: ``s > 0`` replaces the logits by ``s·tanh(logits / s)`` first
        (Gemma 2). Not in torch; default off. ``s``, like a non-zero ``z_loss``, must be
        a normal number of the compute dtype (float32 for half precision).
      where: optional boolean mask of what takes part (see above), of the positions'
        shape or of the logits' shape, broadcastable to it (optax's ``where``).

    Returns:
      The loss, 0-d unless ``reduction="none"`` (then the positions' shape). The
      dtype is ``logits``' promoted with ``weight`` (and a probability target).
      float16/bfloat16 are computed in float32 and rounded once. A non-ignored
      target outside ``[0, C)`` gives NaN (see :func:`jaxce.checked`).

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> logits = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
      >>> print(float(jaxce.cross_entropy(logits, jnp.array([0, 1]))))
      0.3774033188819885
      >>> jaxce.cross_entropy(logits, jnp.array([0, -100]), reduction="none")
      Array([0.47461075, 0.        ], dtype=float32)

    References:
      https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html
      Szegedy et al., "Rethinking the Inception Architecture" (label smoothing), 2016.
    """
    fn = "cross_entropy"
    logits = _checks.as_array(fn, "logits", logits, floating=True)
    target = _checks.as_array(fn, "target", target)
    ignore_index = _checks.check_ignore_index(fn, ignore_index)
    reduction = _checks.check_reduction(fn, reduction)
    eps = _checks.check_label_smoothing(fn, label_smoothing)
    z_loss = _checks.check_nonnegative(fn, "z_loss", z_loss)
    softcap = None if softcap is None else _checks.check_positive(fn, "softcap", softcap)
    probabilities = bool(jnp.issubdtype(target.dtype, jnp.floating))
    shape = tuple(logits.shape)
    if probabilities and logits.ndim:
        shape = _broadcast_probabilities(fn, logits, target, axis)
    axes = _checks.class_axes(fn, axis, len(shape), shape)
    positions, classes = _checks.check_where(fn, where, shape, axes, axis)
    flat, ax = _flat_struct(jax.ShapeDtypeStruct(shape, logits.dtype), axes)
    weight = _checks.check_weight(fn, weight, flat.shape[ax])
    if probabilities:
        if ignore_index >= 0:
            raise ValueError(
                f"{fn}: `ignore_index`={ignore_index} is not supported with class-probability "
                "targets (floating `target`); leave it at its default"
            )
        out_dtype = _result_dtype(logits, target, weight)
    else:
        target = _checks.check_class_target(fn, "logits", flat, target, ax)
        out_dtype = _result_dtype(logits, weight)
    cdt = _checks.compute_dtype(out_dtype)
    if softcap is not None:
        _checks.representable(fn, "softcap", softcap, cdt)
    _checks.representable(fn, "z_loss", z_loss, cdt)
    static_eps = eps if isinstance(eps, float) else 0.0
    return _cross_entropy_impl(
        logits,
        target,
        weight,
        None if isinstance(eps, float) else eps,
        positions,
        classes,
        axes=axes,
        ignore_index=ignore_index,
        reduction=reduction,
        static_eps=static_eps,
        z_loss=z_loss,
        softcap=softcap,
        probabilities=probabilities,
        check=checking.enabled() and not probabilities,
        out_dtype=out_dtype,
    )
