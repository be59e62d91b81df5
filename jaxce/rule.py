"""The per-position loss rule, written once.

Every path (``nll_loss``, ``cross_entropy``, and later the fused and sharded
ones) reduces a row of logits to a few per-position statistics and calls the
functions here, so parity proven once holds everywhere:

* ``m``: the row max (a stop-gradient shift), ``log_s = log Σ_c exp(x_c - m)``,
  ``lse = m + log_s``;
* ``shifted_t = x_t - m`` (the target's shifted logit);
* ``wsh = Σ_c w_c (x_c - m)`` (``Σ_c (x_c - m)`` without weights), needed only for
  label smoothing. Shifted values keep this sum free of cancellation.

``lp_t = shifted_t - log_s`` is torch's own order of operations, so float32
results match torch bit for bit on the notebook examples.

Class-index targets, with ``W = Σ_c w_c`` (``C`` without weights), for a
non-ignored position::

    loss = (1-ε)·(-w_t·lp_t) + (ε/C)·(log_s·W - wsh) + z·w_t·lse²
    ∂loss/∂x_c = a·p_c - b·[c = t] - k·w_c,   p = softmax(x)
    a = (1-ε)·w_t + (ε/C)·W + 2·z·w_t·lse,   b = (1-ε)·w_t,   k = ε/C

``(ε/C)·(log_s·W - wsh)`` equals torch's ``-(ε/C)·Σ_c w_c·lp_c``: each class is
weighted by its own weight in the smoothing term (spec §3.2). The z-loss term is
weighted by the target's class weight, like the nll term, so ``mean`` stays a
weighted mean of per-position losses (denominator ``Σ w_t``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _int_bounds(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def target_masks(target: jax.Array, num_classes: int, ignore_index: int):
    """``(safe_target, valid, bad)`` for integer class-index targets.

    ``valid``: not ignored; ``bad``: not ignored and outside ``[0, C)``;
    ``safe_target``: int32, the target where it is a valid class and 0 elsewhere.
    Comparisons are done in the target's own dtype, so no value is wrapped by a
    cast (``-1`` never becomes the last class, ``2**40`` never a small one).
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
    ok = valid & in_range
    safe = jnp.where(ok, target, jnp.zeros_like(target)).astype(jnp.int32)
    return safe, valid, valid & ~in_range


class Coefficients(NamedTuple):
    """``∂loss/∂x_c = a·p_c - b·[c = t] - k·w_c`` for one position (``k`` may be 0)."""

    a: jax.Array
    b: jax.Array
    k: float | jax.Array


def weighted_nll(lp_t: jax.Array, w_t: jax.Array | None) -> jax.Array:
    """``-w_t·lp_t`` (torch computes ``-x·w``; multiplication commutes exactly)."""
    return -lp_t if w_t is None else -w_t * lp_t


def smoothing_term(log_s, wsh, total_weight):
    """``-Σ_c w_c·lp_c = log_s·W - Σ_c w_c·(x_c - m)``."""
    return log_s * total_weight - wsh


def combine_smoothing(nll, smooth, eps, num_classes: int):
    """torch's ``(1-ε)·nll + smooth·(ε/C)``. A traced ε of 0 gives plain ``nll``
    (torch takes the smoothing path only when ε > 0; ``smooth`` may be inf)."""
    combined = (1 - eps) * nll + smooth * (eps / num_classes)
    if isinstance(eps, (int, float)):
        return combined
    return jnp.where(eps > 0, combined, nll)


class Terms(NamedTuple):
    """The three parts of a class-index loss, kept apart until the reduction.

    torch reduces the nll and smoothing parts separately (``mean`` is
    ``(1-ε)·Σnll/D + (ε/C)·Σsmooth/D``), which matters when ``D`` is 0.
    ``smooth`` and ``z`` are None when that option is off.
    """

    nll: jax.Array
    smooth: jax.Array | None
    z: jax.Array | None


def class_index_terms(*, shifted_t, log_s, lse, wsh, w_t, total_weight, z_loss: float) -> Terms:
    """``-w_t·lp_t``, ``-Σ_c w_c·lp_c`` and ``z·w_t·lse²`` of one position from its statistics."""
    nll = weighted_nll(shifted_t - log_s, w_t)
    smooth = None if wsh is None else smoothing_term(log_s, wsh, total_weight)
    z = None
    if z_loss:
        z = z_loss * jnp.square(lse)
        z = z if w_t is None else w_t * z
    return Terms(nll, smooth, z)


def combine_terms(terms: Terms, eps, num_classes: int):
    """``(1-ε)·nll + (ε/C)·smooth + z``, for per-position terms or their reductions."""
    loss = terms.nll
    if terms.smooth is not None:
        loss = combine_smoothing(loss, terms.smooth, eps, num_classes)
    return loss if terms.z is None else loss + terms.z


def class_index_loss(
    *, shifted_t, log_s, lse, wsh, w_t, total_weight, eps, num_classes: int, z_loss: float
):
    """The loss of one (non-ignored, in-range) position from its statistics."""
    terms = class_index_terms(
        shifted_t=shifted_t,
        log_s=log_s,
        lse=lse,
        wsh=wsh,
        w_t=w_t,
        total_weight=total_weight,
        z_loss=z_loss,
    )
    return combine_terms(terms, eps, num_classes)


def class_index_coefficients(
    *, lse, w_t, total_weight, eps, num_classes: int, z_loss: float, smoothing: bool
) -> Coefficients:
    """The gradient of :func:`class_index_loss` with respect to the logits."""
    wt = jnp.ones_like(lse) if w_t is None else w_t
    if smoothing:
        a = (1 - eps) * wt + (eps / num_classes) * total_weight
        b = (1 - eps) * wt
        k = eps / num_classes
    else:
        a, b, k = wt, wt, 0.0
    if z_loss:
        a = a + 2 * z_loss * wt * lse
    return Coefficients(a, b, k)


def finalize_terms(terms: Terms, valid, bad) -> Terms:
    """:func:`finalize` for each term (the NaN of a bad target goes into ``nll``)."""
    zero = jnp.zeros((), terms.nll.dtype)
    return Terms(
        finalize(terms.nll, valid, bad),
        None if terms.smooth is None else jnp.where(valid, terms.smooth, zero),
        None if terms.z is None else jnp.where(valid, terms.z, zero),
    )


def reduce_terms(terms: Terms, denom, reduction: str, eps, num_classes: int):
    """torch's reductions: ``none``/``sum`` combine then reduce; ``mean`` divides each
    term's sum by ``denom`` (:func:`mean_denominator`) before combining (0/0 stays
    NaN, as in torch). ``denom`` is only read for ``mean``."""
    if reduction == "none":
        return combine_terms(terms, eps, num_classes)
    sums = Terms(*(None if v is None else jnp.sum(v) for v in terms))
    if reduction == "mean":
        sums = Terms(*(None if v is None else v / denom for v in sums))
    return combine_terms(sums, eps, num_classes)


def finalize(loss, valid, bad):
    """0 where ignored, NaN where a non-ignored target is not a class."""
    loss = jnp.where(valid, loss, jnp.zeros((), loss.dtype))
    return jnp.where(bad, jnp.full((), jnp.nan, loss.dtype), loss)


def mean_denominator(valid, w_t, dtype):
    """torch's ``mean`` denominator ``D``: ``Σ w_t`` over valid positions, or without
    weights their exact count. Up to ``2**24`` positions a float32 (or float64) sum of
    ones is exact in any order, and XLA:CPU runs it with the loss's own reduction
    instead of a chain of integer reductions (65536×10 forward: 0.73 against 1.06 ms);
    more positions are counted as integers and rounded once to ``dtype``."""
    if w_t is None:
        if valid.size <= 1 << 24 and jnp.finfo(dtype).nmant >= 23:
            return jnp.sum(valid.astype(dtype))
        return jnp.sum(valid, dtype=jnp.int32).astype(dtype)
    return jnp.sum(jnp.where(valid, w_t, jnp.zeros((), dtype)))


def smooth_probabilities(probs, eps, num_classes: int):
    """``q' = (1-ε)·q + ε/C`` (torch's order), or ``q`` when ε is a static 0."""
    if isinstance(eps, (int, float)):
        return probs * (1 - eps) + eps / num_classes if eps > 0 else probs
    return jnp.where(eps > 0, probs * (1 - eps) + eps / num_classes, probs)


def _pow2(q, dtype):
    """``2**q`` built from its bits, exact for integer ``q`` in the normal range of ``dtype``."""
    info = jnp.finfo(dtype)
    itype = jnp.int64 if info.bits == 64 else jnp.int32
    biased = (q + (info.maxexp - 1)).astype(itype)
    return jax.lax.bitcast_convert_type(biased << info.nmant, dtype)


def weights_for_mean(w: jax.Array) -> jax.Array:
    """Class weights times the power of two that brings the largest to ``[1, 2)``.

    ``mean`` is a ratio of sums linear in the weights, so any common factor cancels, and a
    power of two changes no rounding: for ordinary weights the result is bit for bit the
    same. It keeps ``Σ w_t`` and ``Σ w_t·ℓ`` from overflowing (weights of ``1e38``: the
    exact answer where torch's float32 sums give inf/inf) and from underflowing (``1e37``:
    torch's gradient, not ``1/Σw = 0``), and brings subnormal weights (``1e-39``, which XLA
    on CPU flushes to zero, giving 0/0) into the normal range: those are rebuilt from
    their bits, without arithmetic on the subnormals. The weights' own tangent is scaled
    by the same factor, so the loss stays differentiable with respect to them. One
    fused elementwise pass over ``w`` and a reduction to a scalar.
    """
    info = jnp.finfo(w.dtype)
    itype = jnp.int64 if info.bits == 64 else jnp.int32
    bias, nmant = info.maxexp - 1, info.nmant
    bits = jax.lax.bitcast_convert_type(w, itype) & ((1 << (info.bits - 1)) - 1)  # |w|
    field = bits >> nmant
    usable = (field < 2 * bias + 1) & (bits != 0)  # finite and non-zero
    top = jnp.max(jnp.where(usable, jnp.maximum(field, 1), 0), initial=0)
    top = jax.lax.stop_gradient(jnp.where(top == 0, bias, top))
    k = bias - top  # w·2**k has its largest finite |w| in [1, 2)
    f1, f2 = _pow2(k // 2, w.dtype), _pow2(k - k // 2, w.dtype)
    normal = w * f1 * f2
    # A subnormal w is mant·2**(1 - bias - nmant); scaled: mant·2**(1 - nmant - top), or 0
    # where even that is below the normal range (a weight 2**-126 below the largest).
    e_sub = 1 - nmant - top
    mant = (bits & ((1 << nmant) - 1)).astype(w.dtype)
    sub = mant * _pow2(jnp.maximum(e_sub, 1 - bias), w.dtype)
    sub = jnp.where((e_sub < 1 - bias) | (bits == 0), jnp.zeros((), w.dtype), sub)
    sub = jnp.where(bits != jax.lax.bitcast_convert_type(w, itype), -sub, sub)  # sign bit
    sub = jax.lax.stop_gradient(sub) + (w - jax.lax.stop_gradient(w)) * f1 * f2
    return jnp.where(field == 0, sub, normal)
