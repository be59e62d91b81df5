"""Numerically stable ``logsumexp``, ``log_softmax`` and ``softmax``.

Like :mod:`jax.nn`, with two guarantees that matter inside losses:

* half-precision inputs (float16, bfloat16) are computed in float32 and rounded
  once to the input dtype;
* entries excluded by ``where`` never reach the arithmetic, so their gradient is
  exactly zero even when they hold ``-inf``, ``+inf`` or NaN, and a fully masked
  row gives ``-inf`` / ``0`` with a zero gradient instead of NaN.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import _checks, _spmd

__all__ = ["logsumexp", "log_softmax", "softmax"]

# XLA:CPU reduces rows longer than 32768 elements about 9x slower than shorter ones (jax
# 0.10: Σ exp over 512 × 131072 float32 in 150 ms, over the same data as 4096 rows of
# 16384 in 17 ms; benchmarks/README.md). On CPU such rows are summed in chunks instead.
CPU_FAST_ROW = 32768
_CHUNK = 16384
_MIN_CHUNK = 1024
_MIN_HALF_CHUNKED = 128


@functools.cache
def row_chunks(c: int) -> int:
    """How many contiguous chunks a row of ``c`` elements is summed in on CPU: the
    fewest that divide ``c`` with at most 16384 (else 32768) elements and at least
    1024 each; 1 (no chunking) for short rows and for lengths with no such divisor."""
    if c <= CPU_FAST_ROW:
        return 1
    for longest in (_CHUNK, CPU_FAST_ROW):
        for k in range(-(-c // longest), c // _MIN_CHUNK + 1):
            if c % k == 0:
                return k
    return 1


def _one_cpu_device() -> bool:
    try:
        return len(jax.devices("cpu")) == 1
    except RuntimeError:  # no CPU backend
        return False


def _sum_exp_last_axis(x: jax.Array, m: jax.Array, dtype) -> jax.Array:
    """``Σ exp(x - m)`` over the last axis, ``x`` converted to ``dtype`` (``m``: one per row).

    On CPU a long row is viewed as ``k`` rows of ``c/k`` (a free reshape of the
    contiguous last axis) and the partial sums are added. The optimization barrier
    keeps that view: without it XLA moves the reshape past the ``exp`` and reduces the
    long rows again. It is placed before the conversion to ``dtype``, so that a
    half-precision input is not copied in float32. Other backends reduce the rows as
    they are, and so does a CPU with several devices: the partitioner cannot carry a
    class-axis sharding through the reshape and would gather the logits.
    """
    c = x.shape[-1]
    k = row_chunks(c)

    def plain(x, m):
        return jnp.sum(jnp.exp(x.astype(dtype) - m[..., None]), axis=-1)

    if x.ndim == 0 or _spmd.explicitly_sharded(x) or not _one_cpu_device():
        return plain(x, m)
    if k == 1:
        # A half-precision row, read through a conversion: XLA:CPU fuses the conversion
        # into the reduction of the two-chunk view, but stores a float32 copy of the
        # input (and a broadcast of m) for the row as it is. Short rows are cheap to
        # copy, and the chunked view of them is slow (measured: 10 classes 2.3x slower,
        # 1000 classes 1.4x faster).
        if x.dtype == dtype or c % 2 or c < _MIN_HALF_CHUNKED:
            return plain(x, m)
        k = 2

    def chunked(x, m):
        lead = x.shape[:-1]
        parts = lax.optimization_barrier(x.reshape(-1, c // k)).astype(dtype)
        m_parts = jnp.repeat(m.reshape(-1), k)[:, None]
        partial = jnp.sum(jnp.exp(parts - m_parts), axis=-1)
        return jnp.sum(partial.reshape(lead + (k,)), axis=-1)

    return lax.platform_dependent(x, m, cpu=chunked, default=plain)


def shifted_and_sumexp(
    x: jax.Array,
    axes: tuple[int, ...],
    where: jax.Array | None,
    *,
    finite_shift: bool = False,
    dtype=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x - m, sum(exp(x - m)), m)`` with ``m`` the (masked) max.

    The sum and ``m`` have the reduced shape (``axes`` removed): per-row arithmetic on
    ``(N, 1)``-shaped arrays compiles to slower code on XLA:CPU than on ``(N,)``-shaped
    ones (65536×10 cross-entropy: 1.4 against 0.84 ms).

    Computed in ``dtype`` (default: ``x``'s own). A caller that does not differentiate
    through this function (the losses' custom-JVP kernels) passes the input
    unconverted, so that no converted copy of it need be stored; one that does
    converts first, so that the cotangents are summed in ``dtype`` before being
    rounded to the input's. ``m`` carries no gradient (the result does not depend on
    it mathematically). A fully masked (or all ``-inf``) row uses ``m = 0`` so that
    the shift itself does not produce NaN.
    """
    dtype = x.dtype if dtype is None else dtype
    if where is not None:
        x = jnp.where(where, x, jnp.array(-jnp.inf, x.dtype))
    raw, x = x, x.astype(dtype)
    # The max is exact in the input's own dtype (XLA:CPU would store a converted copy
    # of a half-precision input to take it).
    m = jnp.max(raw, axis=axes, initial=-jnp.inf).astype(dtype)
    # finite_shift (for logsumexp): a +inf max shifts by 0, so the row gives +inf, not
    # NaN; log_softmax/softmax keep torch's NaN for such rows.
    unusable = ~jnp.isfinite(m) if finite_shift else m == -jnp.inf
    m = lax.stop_gradient(jnp.where(unusable, jnp.zeros_like(m), m))
    shifted = x - jnp.expand_dims(m, axes)
    if where is None and axes == (x.ndim - 1,):
        return shifted, _sum_exp_last_axis(raw, m, dtype), m
    return shifted, jnp.sum(jnp.exp(shifted), axis=axes), m


def log_softmax_compute(x: jax.Array, axes: tuple[int, ...], where: jax.Array | None = None):
    """log_softmax in ``x``'s own dtype: ``(x - m) - log(sum(exp(x - m)))``.

    This order of operations is the one torch uses; it reproduces torch's
    float32 results (e.g. the notebook's 0.3774033188819885) bit for bit.
    """
    shifted, s, _ = shifted_and_sumexp(x, axes, where)
    out = shifted - jnp.expand_dims(jnp.log(s), axes)
    if where is not None:
        out = jnp.where(where, out, -jnp.inf)
    return out


@functools.partial(jax.jit, static_argnames=("axes",))
def _log_softmax(x, where, *, axes):
    return log_softmax_compute(x.astype(_checks.compute_dtype(x.dtype)), axes, where).astype(
        x.dtype
    )


@functools.partial(jax.jit, static_argnames=("axes",))
def _softmax(x, where, *, axes):
    shifted, s, _ = shifted_and_sumexp(x.astype(_checks.compute_dtype(x.dtype)), axes, where)
    out = jnp.exp(shifted) / jnp.expand_dims(s, axes)
    if where is not None:
        out = jnp.where(where, out, jnp.zeros_like(out))
    return out.astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("axes",))
def _logsumexp(x, where, *, axes):
    x_c = x.astype(_checks.compute_dtype(x.dtype))
    _, s, m = shifted_and_sumexp(x_c, axes, where, finite_shift=True)
    return (jnp.log(s) + m).astype(x.dtype)


def _prepare(fn: str, x, axis, where):
    """Validated ``(x, axes, where, shape)``; a 0-d ``x`` comes back as shape ``(1,)``."""
    x = _checks.as_array(fn, "x", x, floating=True)
    shape = x.shape
    if x.ndim == 0:
        # As torch: a 0-d input is a single class along axis 0 (or -1).
        axes = axis if isinstance(axis, tuple) else (axis,)
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, numbers.Integral):
                raise TypeError(f"{fn}: `axis` must be an int, got {type(a).__name__} {a!r}")
        if len(axes) != 1 or axes[0] not in (0, -1):
            raise ValueError(
                f"{fn}: `axis`={axis!r} is out of range for a 0-d input (shape ()); "
                "expected 0 or -1"
            )
        axis = 0
        x = x.reshape((1,))
        if where is not None:
            where = jnp.reshape(_checks.as_array(fn, "where", where), (1,))
    axes = _checks.normalize_axes(fn, axis, x.ndim, tuple(x.shape))
    if where is not None:
        where = _checks.as_array(fn, "where", where)
        if where.dtype != jnp.bool_:
            raise TypeError(
                f"{fn}: `where` must be a boolean mask, got dtype {where.dtype} "
                f"with shape {tuple(where.shape)}"
            )
        try:
            jnp.broadcast_shapes(where.shape, x.shape)
        except ValueError:
            raise ValueError(
                f"{fn}: `where` shape {tuple(where.shape)} does not broadcast to `x` shape "
                f"{tuple(x.shape)}"
            ) from None
        where = jnp.broadcast_to(where, x.shape)
    return x, axes, where, shape


def log_softmax(x, axis=-1, *, where=None):
    r"""Log-softmax along ``axis``, equal to ``torch.nn.functional.log_softmax``.

    .. math::
        \mathrm{log\_softmax}(x)_j = (x_j - m) - \log \sum_k \exp(x_k - m),
        \qquad m = \max_k x_k

    Args:
      x: floating array of any shape with at least one dimension.
      axis: the axis (or tuple of axes) to normalise over; default the last.
      where: optional boolean mask broadcastable to ``x``. Masked-out entries are
        excluded from the normalisation, their output is ``-inf`` and their
        gradient exactly zero, whatever they hold (``nan``, ``inf``).

    Returns:
      An array of ``x``'s shape and dtype. float16/bfloat16 are computed in
      float32 and rounded once.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> jaxce.log_softmax(jnp.array([1.2, -0.5, 0.8, 2.1]))
      Array([-1.4615424, -3.1615424, -1.8615425, -0.5615425], dtype=float32)
      >>> jaxce.log_softmax(jnp.array([0.0, -jnp.inf, 1.0]))
      Array([-1.3132616 ,        -inf, -0.31326163], dtype=float32)
    """
    x, axes, where, shape = _prepare("log_softmax", x, axis, where)
    return _log_softmax(x, where, axes=axes).reshape(shape)


def softmax(x, axis=-1, *, where=None):
    r"""Softmax along ``axis``, equal to ``torch.nn.functional.softmax``.

    .. math::
        \mathrm{softmax}(x)_j = \frac{\exp(x_j - m)}{\sum_k \exp(x_k - m)}

    Args:
      x: floating array with at least one dimension.
      axis: the axis (or tuple of axes) to normalise over; default the last.
      where: optional boolean mask broadcastable to ``x``; masked-out entries get
        probability 0 and a zero gradient.

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> jaxce.softmax(jnp.array([[1.2, -0.5, 0.8, 2.1]]))
      Array([[0.23187836, 0.04236035, 0.1554327 , 0.57032865]], dtype=float32)
    """
    x, axes, where, shape = _prepare("softmax", x, axis, where)
    return _softmax(x, where, axes=axes).reshape(shape)


def logsumexp(x, axis=-1, *, where=None):
    r"""``log(sum(exp(x)))`` along ``axis``, computed stably.

    .. math:: \mathrm{logsumexp}(x) = m + \log \sum_k \exp(x_k - m)

    Args:
      x: floating array with at least one dimension.
      axis: the axis (or tuple of axes) reduced; default the last.
      where: optional boolean mask; masked-out entries are skipped, a fully
        masked row gives ``-inf`` (with a zero gradient).

    Returns:
      ``x``'s shape without ``axis``, in ``x``'s dtype.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> jaxce.logsumexp(jnp.array([1000.0, 1000.0]))
      Array(1000.6932, dtype=float32)
    """
    x, axes, where, _ = _prepare("logsumexp", x, axis, where)
    return _logsumexp(x, where, axes=axes)
