"""``nll_loss`` and ``cross_entropy``, with the numbers and gradients of PyTorch.

The per-position rule lives in :mod:`jaxce.rule` and the per-row ``custom_jvp``
kernels in :mod:`jaxce._kernels`; this module validates the arguments (at trace
time), lays out the class axes and the ``where`` masks, and applies torch's
reductions and denominators.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxce import _checks, _spmd, checking, rule
from jaxce._kernels import (  # noqa: F401 - _class_sum, _weighted_class_sum: tests use them
    _and,
    _class_sum,
    _masked,
    _pick,
    _weighted_class_sum,
    class_index_kernel,
    probability_kernel,
)

__all__ = ["nll_loss", "cross_entropy"]


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
        kernel = probability_kernel(axis, z_loss, cdt)
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
    smoothing = not (isinstance(eps, float) and eps == 0.0)
    # `mean` is a ratio: the weights are scaled so that its sums stay in range. Not beside
    # bfloat16 logits with smoothing, whose kernel stores bfloat16 parts of the weights:
    # XLA would store the scaled weights as well (C floats more).
    if w is not None and reduction == "mean" and not (smoothing and x.dtype == jnp.bfloat16):
        w = rule.weights_for_mean(w)
    kernel = class_index_kernel(axis, smoothing, z_loss, cdt)
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

      optax's ``where``: a mask of the positions' shape (a left-out position counts as
      an ignored one) or of the logits' shape (left-out logits are not in the softmax):

      >>> jaxce.cross_entropy(logits, jnp.array([0, 1]), where=jnp.array([True, False]),
      ...                     reduction="none")
      Array([0.47461075, 0.        ], dtype=float32)
      >>> vocab = jnp.array([[True, True, False]])  # the last class never takes part
      >>> jaxce.cross_entropy(logits, jnp.array([0, 1]), where=vocab, reduction="none")
      Array([0.40318602, 0.20141333], dtype=float32)

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
