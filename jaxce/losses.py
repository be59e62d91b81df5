"""``nll_loss`` and ``cross_entropy``, with the numbers and gradients of PyTorch.

The per-position rule lives in :mod:`jaxce.rule`; this module validates the
arguments (at trace time), reduces each row of logits to the rule's statistics
inside a ``custom_jvp`` kernel, and applies torch's reductions and denominators.
"""

from __future__ import annotations

import functools
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


def _stats(x, axis, cdt):
    """``shifted = x - m``, and per row ``log_s``, ``m`` and ``lse``.

    Computed in ``x``'s compute dtype (float32 for half precision; ``x`` is passed
    unconverted, so that no converted copy of it is stored), then cast to ``cdt``;
    ``m`` stays in the compute dtype.
    """
    xdt = _checks.compute_dtype(x.dtype)
    shifted, s, m = softmax.shifted_and_sumexp(x, (axis,), None, dtype=xdt)
    log_s = jnp.log(s)
    lse = (m + log_s).astype(cdt)
    return shifted.astype(cdt), log_s.astype(cdt), m, lse


@functools.cache
def _class_index_kernel(axis: int, smoothing: bool, z_loss: float, cdt: np.dtype):
    """Per-position class-index terms ``f(x, t, valid, bad, w) -> rule.Terms``, custom JVP.

    With ``p = softmax(x)``, ``S = Σ_c p_c·dx_c``, ``T = dx_t`` and ``U = Σ_c w_c·dx_c``,
    the tangents are ``dnll = w_t·(S - T)``, ``dsmooth = W·S - U`` and
    ``dz = 2·z·w_t·lse·S``. Transposed (reverse mode) that is one fused
    elementwise pass; its only ``[N, C]`` input besides ``x`` is the forward's
    ``exp(x - m)``, which XLA keeps in the gradient's own buffer (see
    :func:`_softmax_from_shifted`). Being a JVP, forward mode and higher orders
    work as well.
    """

    def primal(x, t, valid, bad, w):
        num_classes = x.shape[axis]
        shifted, log_s, m, lse = _stats(x, axis, cdt)
        # Picked from x, not from `shifted`, so that `shifted` need not be stored.
        shifted_t = (_pick(x, t, axis).astype(m.dtype) - m).astype(cdt)
        w_t = None if w is None else _spmd.take(w, t)
        wsh, total_weight = None, num_classes
        if smoothing:
            # Σ_c w_c·(x_c - m) as Σ_c w_c·x_c - m·W: reading x, not `shifted`, lets the
            # sum run beside the exp-sum without storing `shifted` (XLA on CPU would).
            # Its rounding error (relative to Σ|w·x|) is small against the smoothing
            # term, which for non-negative weights is at least log_s·W and |wsh|.
            if w is None:
                total_weight, wx = num_classes, _class_sum(x, axis, cdt)
            else:
                total_weight = jnp.sum(w)
                wx = _weighted_class_sum(x, w, axis)
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
    def kernel(x, t, valid, bad, w):
        return primal(x, t, valid, bad, w)[0]

    def jvp(primals, tangents):
        x, t, valid, bad, w = primals
        dx, _, _, _, dw = tangents
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
                big_u = jnp.sum(jnp.where(ok_k, wdx, zero), axis=axis)
                dsmooth = total_weight * big_s - big_u
            if z_loss:
                wt_lse = jnp.where(ok, lse if w is None else w_t * lse, zero)
                dz = 2 * z_loss * wt_lse * big_s
        if w is not None and not _is_zero(dw):
            dw_t = _spmd.take(dw, t)
            dnll = dnll + rule.weighted_nll(jnp.where(ok, shifted_t - log_s, zero), dw_t)
            if smoothing:
                safe = jnp.where(ok_k, shifted, zero)
                dwsh = jnp.sum(safe * _along(dw, axis, x.ndim), axis=axis)
                dsmooth = dsmooth + rule.smoothing_term(
                    jnp.where(ok, log_s, zero), dwsh, jnp.sum(dw)
                )
            if z_loss:
                dz = dz + dw_t * (z_loss * jnp.square(jnp.where(ok, lse, zero)))
        mask = lambda v: None if v is None else jnp.where(ok, v, zero)  # noqa: E731
        return terms, rule.Terms(mask(dnll), mask(dsmooth), mask(dz))

    kernel.defjvp(jvp, symbolic_zeros=True)
    return kernel


@functools.cache
def _probability_kernel(axis: int, z_loss: float, cdt: np.dtype):
    """Per-position probability-target loss ``f(x, q, w, eps) = -Σ_c w_c·q'_c·lp_c``.

    Written as ``log_s·Σ_c w_c q'_c - Σ_c w_c q'_c (x_c - m)``; the JVP in ``x`` is
    ``Σ_c (Q·p_c - w_c q'_c)·dx_c`` with ``Q = Σ_c w_c q'_c``; ``q``, ``w`` and a
    traced ``ε`` are differentiable too.
    """

    def primal(x, q, w, eps):
        num_classes = x.shape[axis]
        shifted, log_s, m, lse = _stats(x, axis, cdt)
        qs = rule.smooth_probabilities(q, eps, num_classes)
        wq = qs if w is None else qs * _along(w, axis, x.ndim)
        total = jnp.sum(wq, axis=axis)
        # Σ w·q'·(x - m) read from x, as the smoothing sum is (see _class_index_kernel).
        wqsh = jnp.sum(wq * x.astype(cdt), axis=axis) - m.astype(cdt) * total
        loss = log_s * total - wqsh
        if z_loss:
            loss = loss + z_loss * jnp.square(lse)
        return loss, (shifted, log_s, lse, qs, wq, total)

    @jax.custom_jvp
    def kernel(x, q, w, eps):
        return primal(x, q, w, eps)[0]

    def jvp(primals, tangents):
        x, q, w, eps = primals
        dx, dq, dw, deps = tangents
        num_classes = x.shape[axis]
        loss, (shifted, log_s, lse, qs, wq, total) = primal(*primals)
        dloss = jnp.zeros_like(loss)
        if not _is_zero(dx):
            p = _softmax_from_shifted(shifted, log_s, axis)
            a = total + 2 * z_loss * lse if z_loss else total
            g = jnp.expand_dims(a, axis) * p - wq
            dloss = dloss + jnp.sum(g * dx.astype(cdt), axis=axis)
        # d(w·q') from each tangent; the loss is linear in w·q' given x.
        dwq = None
        w_b = None if w is None else _along(w, axis, x.ndim)
        if not _is_zero(dq):
            if isinstance(eps, float):
                dqs = dq * (1 - eps) if eps > 0 else dq
            else:
                dqs = jnp.where(eps > 0, dq * (1 - eps), dq)
            dwq = dqs if w is None else dqs * w_b
        if w is not None and not _is_zero(dw):
            term = qs * _along(dw, axis, x.ndim)
            dwq = term if dwq is None else dwq + term
        if not isinstance(eps, float) and not _is_zero(deps):
            dqs = jnp.where(eps > 0, 1 / num_classes - q, jnp.zeros((), cdt)) * deps
            term = dqs if w is None else dqs * w_b
            dwq = term if dwq is None else dwq + term
        if dwq is not None:
            dloss = dloss + log_s * jnp.sum(dwq, axis=axis) - jnp.sum(dwq * shifted, axis=axis)
        return loss, dloss

    kernel.defjvp(jvp, symbolic_zeros=True)
    return kernel


def _maybe_check(check, target, num_classes, ignore_index, fn):
    if check:
        checking.check_targets(target, num_classes, ignore_index=ignore_index, fn=fn)


def _reduce(per_position, denom, reduction: str):
    if reduction == "none":
        return per_position
    total = jnp.sum(per_position)
    return total if reduction == "sum" else total / jnp.sum(denom)


@functools.partial(
    jax.jit, static_argnames=("axis", "ignore_index", "reduction", "fn", "check", "out_dtype")
)
def _nll_impl(log_probs, target, weight, *, axis, ignore_index, reduction, fn, check, out_dtype):
    num_classes = log_probs.shape[axis]
    _maybe_check(check, target, num_classes, ignore_index, fn)
    cdt = _checks.compute_dtype(out_dtype)
    t, valid, bad = rule.target_masks(target, num_classes, ignore_index)
    # Cleaned where not used, so a -inf there cannot turn a zero cotangent into NaN.
    picked = jnp.where(valid & ~bad, _pick(log_probs, t, axis).astype(cdt), jnp.zeros((), cdt))
    w_t = None if weight is None else _spmd.take(weight.astype(cdt), t)
    nll = rule.finalize(rule.weighted_nll(picked, w_t), valid, bad)
    denom = rule.mean_denominator(valid, w_t, cdt) if reduction == "mean" else None
    return rule.reduce_terms(
        rule.Terms(nll, None, None), denom, reduction, 0.0, num_classes
    ).astype(out_dtype)


@functools.partial(
    jax.jit,
    static_argnames=(
        "axis",
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
    *,
    axis,
    ignore_index,
    reduction,
    static_eps,
    z_loss,
    softcap,
    probabilities,
    check,
    out_dtype,
):
    num_classes = logits.shape[axis]
    cdt = _checks.compute_dtype(out_dtype)
    eps = static_eps if dynamic_eps is None else dynamic_eps.astype(cdt)
    # The kernels take the logits unconverted (a half-precision input is read as it is
    # and computed in float32; see `_stats`), unless a softcap computes new ones.
    x = logits
    w = None if weight is None else weight.astype(cdt)
    if probabilities:
        if softcap is not None:
            x = x.astype(_checks.compute_dtype(x.dtype))
            x = softcap * jnp.tanh(x / softcap)
        kernel = _probability_kernel(axis, z_loss, cdt)
        per_position = kernel(x, target.astype(cdt), w, eps)
        if reduction == "sum" and per_position.size == 0:
            return jnp.full((), -0.0, out_dtype)  # torch negates an empty sum
        positions = jnp.full((), per_position.size, cdt)
        return _reduce(per_position, positions, reduction).astype(out_dtype)

    _maybe_check(check, target, num_classes, ignore_index, "cross_entropy")
    t, valid, bad = rule.target_masks(target, num_classes, ignore_index)
    if softcap is not None:
        # Ignored rows are cleaned first: tanh's derivative at NaN would leak into
        # their (zero) gradient. The kernel itself needs no cleaning.
        x = x.astype(_checks.compute_dtype(x.dtype))
        x = jnp.where(jnp.expand_dims(valid, axis), x, jnp.zeros((), x.dtype))
        x = softcap * jnp.tanh(x / softcap)
    smoothing = not (isinstance(eps, float) and eps == 0.0)
    kernel = _class_index_kernel(axis, smoothing, z_loss, cdt)
    terms = kernel(x, t, valid, bad, w)
    denom = None
    if reduction == "mean":
        denom = rule.mean_denominator(valid, None if w is None else _spmd.take(w, t), cdt)
    return rule.reduce_terms(terms, denom, reduction, eps, num_classes).astype(out_dtype)


def _result_dtype(*arrays) -> np.dtype:
    return _checks.promote_float_dtypes(*(a.dtype for a in arrays if a is not None))


def nll_loss(
    log_probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
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
        ``(N, C, d1, ..., dk)`` layout.
      weight: optional ``(C,)`` floating array of class weights (differentiable).
      ignore_index: target value whose positions contribute 0 to the loss and to
        the ``mean`` denominator.
      reduction: ``"none"`` (the target's shape), ``"mean"`` (weighted mean) or ``"sum"``.

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
    ax = _checks.normalize_axis(fn, axis, log_probs.ndim, tuple(log_probs.shape))
    target = _checks.check_class_target(
        fn, "log_probs", log_probs, target, ax, probabilities_possible=False
    )
    weight = _checks.check_weight(fn, weight, log_probs.shape[ax])
    return _nll_impl(
        log_probs,
        target,
        weight,
        axis=ax,
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
) -> jax.Array:
    r"""Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    Class-index targets (integer ``target`` without the class axis), with
    ``lp = log_softmax(logits)`` and smoothing ``ε``:

    .. math::
        \ell_i = (1-\varepsilon)\,(-w_{t_i}\,lp_{i,t_i})
                 + \frac{\varepsilon}{C} \Big(-\sum_c w_c\, lp_{i,c}\Big),
        \qquad \texttt{mean} = \frac{\sum_i \ell_i}{\sum_{i \text{ not ignored}} w_{t_i}}

    Probability targets (floating ``target`` of the logits' shape), with
    ``q' = (1-ε)q + ε/C``:

    .. math::
        \ell_i = -\sum_c w_c\, q'_{i,c}\, lp_{i,c},
        \qquad \texttt{mean} = \frac{1}{M}\sum_i \ell_i \quad (M = \text{number of positions})

    Args:
      logits: floating array ``(C,)``, ``(N, C)`` or any shape with the class axis
        at ``axis``.
      target: integer class indices shaped like ``logits`` without ``axis``, or
        floating class probabilities of ``logits``' shape (not normalised, used as given).
      axis: the class axis; default ``-1``. Use ``axis=1`` for torch's
        ``(N, C, d1, ..., dk)`` layout.
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
        (Gemma 2). Not in torch; default off.

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
    ax = _checks.normalize_axis(fn, axis, logits.ndim, tuple(logits.shape))
    ignore_index = _checks.check_ignore_index(fn, ignore_index)
    reduction = _checks.check_reduction(fn, reduction)
    eps = _checks.check_label_smoothing(fn, label_smoothing)
    z_loss = _checks.check_nonnegative(fn, "z_loss", z_loss)
    softcap = None if softcap is None else _checks.check_positive(fn, "softcap", softcap)
    weight = _checks.check_weight(fn, weight, logits.shape[ax])
    probabilities = jnp.issubdtype(target.dtype, jnp.floating)
    if probabilities:
        if tuple(target.shape) != tuple(logits.shape):
            expected = _checks.reduced_shape(tuple(logits.shape), ax)
            if tuple(target.shape) == expected:
                raise TypeError(
                    f"{fn}: `target` has the class-index shape {expected} but a floating dtype "
                    f"{target.dtype}; class indices must be integers, class probabilities "
                    f"must have the logits' shape {tuple(logits.shape)}"
                )
            raise ValueError(
                f"{fn}: floating `target` (class probabilities) must have the logits' shape "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        if ignore_index >= 0:
            raise ValueError(
                f"{fn}: `ignore_index`={ignore_index} is not supported with class-probability "
                "targets (floating `target`); leave it at its default"
            )
        out_dtype = _result_dtype(logits, target, weight)
    else:
        target = _checks.check_class_target(fn, "logits", logits, target, ax)
        out_dtype = _result_dtype(logits, weight)
    static_eps = eps if isinstance(eps, float) else 0.0
    return _cross_entropy_impl(
        logits,
        target,
        weight,
        None if isinstance(eps, float) else eps,
        axis=ax,
        ignore_index=ignore_index,
        reduction=reduction,
        static_eps=static_eps,
        z_loss=z_loss,
        softcap=softcap,
        probabilities=bool(probabilities),
        check=checking.enabled() and not probabilities,
        out_dtype=out_dtype,
    )
