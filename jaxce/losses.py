"""``nll_loss`` and ``cross_entropy``, with the numbers and gradients of PyTorch.

The per-position rule (class weights, ``ignore_index``, label smoothing,
out-of-range targets) is written once, in :func:`class_index_terms` and
:func:`probability_terms`; the reductions and their denominators once, in
:func:`reduce_class_index` and :func:`reduce_probability`. Every public entry
point goes through them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxce import _checks, checking, softmax

__all__ = ["nll_loss", "cross_entropy"]


class ClassIndexTerms(NamedTuple):
    """Per-position pieces of the class-index loss, each of the target's shape.

    ``nll``: ``-w[t]·lp[t]`` (0 where ignored, NaN where the target is not a class).
    ``smooth``: ``-Σ_c w[c]·lp[c]`` (0 where ignored), or None without smoothing.
    ``denom``: ``w[t]`` (1 without weights), 0 where ignored.
    """

    nll: jax.Array
    smooth: jax.Array | None
    denom: jax.Array


def _int_bounds(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def target_masks(target: jax.Array, num_classes: int, ignore_index: int):
    """``(valid, in_range)``: not ignored, and a real class ``0 <= t < C``.

    Comparisons are done in the target's own dtype, so no value is wrapped by
    a cast (``2**40`` never becomes a small class).
    """
    lo, hi = _int_bounds(target.dtype)
    if lo <= ignore_index <= hi:
        valid = target != jnp.asarray(ignore_index, target.dtype)
    else:
        valid = jnp.ones(target.shape, jnp.bool_)
    in_range = jnp.ones(target.shape, jnp.bool_)
    if lo < 0:
        in_range = target >= jnp.asarray(0, target.dtype)
    if num_classes <= hi:
        in_range = in_range & (target < jnp.asarray(num_classes, target.dtype))
    return valid, in_range


def class_index_terms(
    log_probs: jax.Array,
    target: jax.Array,
    weight: jax.Array | None,
    *,
    axis: int,
    ignore_index: int,
    smoothing: bool,
    valid: jax.Array,
    in_range: jax.Array,
) -> ClassIndexTerms:
    """The per-position rule for class-index targets (torch's nll and label smoothing).

    ``log_probs`` and ``weight`` are in the compute dtype; ``target`` has
    ``log_probs``' shape without ``axis``.
    """
    dtype = log_probs.dtype
    safe_t = jnp.where(valid & in_range, target, jnp.zeros_like(target)).astype(jnp.int32)
    picked = jnp.take_along_axis(log_probs, jnp.expand_dims(safe_t, axis), axis=axis)
    picked = jnp.squeeze(picked, axis)
    zero = jnp.zeros((), dtype)
    if weight is None:
        nll = -picked
        denom = valid.astype(dtype)
    else:
        w_t = jnp.take(weight, safe_t)
        nll = -w_t * picked
        denom = jnp.where(valid, w_t, zero)
    nll = jnp.where(valid, nll, zero)
    nll = jnp.where(valid & ~in_range, jnp.full((), jnp.nan, dtype), nll)
    smooth = None
    if smoothing:
        wlp = log_probs if weight is None else log_probs * _along(weight, axis, log_probs.ndim)
        smooth = jnp.where(valid, -jnp.sum(wlp, axis=axis), zero)
    return ClassIndexTerms(nll, smooth, denom)


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    """A 1-D per-class vector shaped to broadcast along ``axis`` of an ``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _combine(nll, smooth, eps, num_classes):
    """torch's ``(1-ε)·nll + smooth·(ε/C)``; a traced ε of 0 gives plain nll."""
    combined = (1 - eps) * nll + smooth * (eps / num_classes)
    if isinstance(eps, float):
        return combined
    return jnp.where(eps > 0, combined, nll)


def reduce_class_index(terms: ClassIndexTerms, reduction: str, eps, num_classes: int):
    """Reductions with torch's denominators: ``mean`` divides by ``Σ w[t]`` over valid positions."""
    nll, smooth, denom = terms
    if reduction == "none":
        return nll if smooth is None else _combine(nll, smooth, eps, num_classes)
    if reduction == "sum":
        total = jnp.sum(nll)
        return total if smooth is None else _combine(total, jnp.sum(smooth), eps, num_classes)
    d = jnp.sum(denom)
    mean = jnp.sum(nll) / d
    return mean if smooth is None else _combine(mean, jnp.sum(smooth) / d, eps, num_classes)


def probability_terms(log_probs, probs, weight, *, axis: int, eps, num_classes: int):
    """``lp·q'·w`` per class, ``q' = (1-ε)·q + ε/C``; the loss is minus its sum."""
    if isinstance(eps, float):
        if eps > 0:
            probs = probs * (1 - eps) + eps / num_classes
    else:
        probs = jnp.where(eps > 0, probs * (1 - eps) + eps / num_classes, probs)
    prod = log_probs * probs
    if weight is not None:
        prod = prod * _along(weight, axis, prod.ndim)
    return prod


def reduce_probability(prod, reduction: str, axis: int, num_classes: int):
    """torch's probability-target reductions: ``mean`` divides by the number of positions."""
    if reduction == "none":
        return -jnp.sum(prod, axis=axis)
    total = -jnp.sum(prod)
    if reduction == "sum":
        return total
    positions = prod.size // num_classes if num_classes else 0
    return total / positions if positions else jnp.full((), jnp.nan, prod.dtype)


def _maybe_check(check, target, num_classes, ignore_index, fn):
    if check:
        checking.check_targets(target, num_classes, ignore_index=ignore_index, fn=fn)


@functools.partial(
    jax.jit, static_argnames=("axis", "ignore_index", "reduction", "fn", "check", "out_dtype")
)
def _nll_impl(log_probs, target, weight, *, axis, ignore_index, reduction, fn, check, out_dtype):
    num_classes = log_probs.shape[axis]
    _maybe_check(check, target, num_classes, ignore_index, fn)
    cdt = _checks.compute_dtype(out_dtype)
    valid, in_range = target_masks(target, num_classes, ignore_index)
    terms = class_index_terms(
        log_probs.astype(cdt),
        target,
        None if weight is None else weight.astype(cdt),
        axis=axis,
        ignore_index=ignore_index,
        smoothing=False,
        valid=valid,
        in_range=in_range,
    )
    return reduce_class_index(terms, reduction, 0.0, num_classes).astype(out_dtype)


@functools.partial(
    jax.jit,
    static_argnames=(
        "axis",
        "ignore_index",
        "reduction",
        "static_eps",
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
    probabilities,
    check,
    out_dtype,
):
    num_classes = logits.shape[axis]
    cdt = _checks.compute_dtype(out_dtype)
    eps = static_eps if dynamic_eps is None else dynamic_eps.astype(cdt)
    x = logits.astype(_checks.compute_dtype(logits.dtype))
    w = None if weight is None else weight.astype(cdt)
    if probabilities:
        log_probs = softmax.log_softmax_compute(x, (axis,)).astype(cdt)
        prod = probability_terms(
            log_probs, target.astype(cdt), w, axis=axis, eps=eps, num_classes=num_classes
        )
        return reduce_probability(prod, reduction, axis, num_classes).astype(out_dtype)

    _maybe_check(check, target, num_classes, ignore_index, "cross_entropy")
    valid, in_range = target_masks(target, num_classes, ignore_index)
    # "Double where": ignored rows are replaced before the softmax, so their
    # gradient is exactly 0 even when their logits are -inf or NaN.
    x = jnp.where(jnp.expand_dims(valid, axis), x, jnp.zeros((), x.dtype))
    log_probs = softmax.log_softmax_compute(x, (axis,)).astype(cdt)
    terms = class_index_terms(
        log_probs,
        target,
        w,
        axis=axis,
        ignore_index=ignore_index,
        smoothing=not (isinstance(eps, float) and eps == 0.0),
        valid=valid,
        in_range=in_range,
    )
    return reduce_class_index(terms, reduction, eps, num_classes).astype(out_dtype)


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
    log_probs = _checks.as_array(fn, "log_probs", log_probs)
    _checks.check_floating(fn, "log_probs", log_probs)
    target = _checks.as_array(fn, "target", target)
    ax = _checks.normalize_axis(fn, axis, log_probs.ndim, tuple(log_probs.shape))
    target = _checks.check_class_target(fn, "log_probs", log_probs, target, ax)
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
      Array([0.4518444, 0.       ], dtype=float32)

    References:
      https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html
      Szegedy et al., "Rethinking the Inception Architecture" (label smoothing), 2016.
    """
    fn = "cross_entropy"
    logits = _checks.as_array(fn, "logits", logits)
    _checks.check_floating(fn, "logits", logits)
    target = _checks.as_array(fn, "target", target)
    ax = _checks.normalize_axis(fn, axis, logits.ndim, tuple(logits.shape))
    ignore_index = _checks.check_ignore_index(fn, ignore_index)
    reduction = _checks.check_reduction(fn, reduction)
    eps = _checks.check_label_smoothing(fn, label_smoothing)
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
        probabilities=bool(probabilities),
        check=checking.enabled() and not probabilities,
        out_dtype=out_dtype,
    )
