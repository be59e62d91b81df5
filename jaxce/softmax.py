"""Numerically stable ``logsumexp``, ``log_softmax`` and ``softmax``.

Drop-ins for :mod:`jax.nn`'s: the same signatures, defaults, dtype promotion and
semantics (``docs``: "Coming from jax.nn"), with three guarantees that matter inside
losses:

* half-precision inputs (float16, bfloat16) are computed in float32 and rounded
  once to the input dtype;
* entries excluded by ``where`` never reach the arithmetic, so their gradient is
  exactly zero even when they hold ``-inf``, ``+inf`` or NaN, and a fully masked
  row gives ``-inf`` / ``0`` with a zero gradient instead of NaN;
* the backward pass of ``softmax`` and ``log_softmax`` keeps one array of the
  input's size, as jax.nn.softmax does.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
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
    through this function (the custom-JVP kernels of the losses, softmax and
    log_softmax) passes the input unconverted, so that no converted copy of it need be
    stored; one that does (logsumexp) converts first, so that the cotangents are summed
    in ``dtype`` before being rounded to the input's. ``m`` carries no gradient (the
    result does not depend on it mathematically, and differentiating through it costs
    float32 accuracy at the argmax of long rows: tests/test_long_rows.py). A fully
    masked (or all ``-inf``) row uses ``m = 0`` so that the shift itself does not
    produce NaN.
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


# The public functions take jax.nn's arguments. Real inputs go through the cores below:
# custom JVPs whose only logits-sized residual is ``exp(x - m)`` (``softmax``) or the
# exponential of the output (``log_softmax``), as jax.nn.softmax keeps one; half
# precision is computed in float32 and rounded once. Complex inputs, which jaxce has no
# reason to compute differently, go to jax.nn itself.
#
# With ``where``, the tangent of a masked input and of a masked output is replaced by
# that residual, which is exactly 0 there (exp(-inf)): an exact zero that is no new array (a zero
# array made in a JVP rule would be saved as one more residual), and whose transpose
# drops the cotangent of a masked output even when it is inf or NaN (e.g. the
# cotangent of log(softmax) where softmax is 0). Dropping it is jax.nn's convention;
# torch.masked.log_softmax lets it reach the normaliser instead.


def _select(where, a, zero):
    return a if where is None else lax.select(where, a, zero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _softmax_core(x, where, axes):
    """softmax in ``x``'s compute dtype (``x`` unconverted: no converted copy is kept)."""
    shifted, s, _ = shifted_and_sumexp(x, axes, where, dtype=_checks.compute_dtype(x.dtype))
    return _select(where, jnp.exp(shifted) / jnp.expand_dims(s, axes), jnp.zeros_like(shifted))


@_softmax_core.defjvp
def _softmax_core_jvp(axes, primals, tangents):
    # In terms of e = exp(x - m) and s = Σe rather than of the output: the residual is
    # still one logits-sized array (e), and when the forward and backward passes are
    # compiled together XLA then recomputes e where it is read instead of storing it
    # (a jit of value_and_grad at 1024x1000 float32: no logits-sized temporary, against
    # one with the output as the residual).
    x, where = primals
    shifted, s, _ = shifted_and_sumexp(x, axes, where, dtype=_checks.compute_dtype(x.dtype))
    e, s = jnp.exp(shifted), jnp.expand_dims(s, axes)
    y = _select(where, e / s, jnp.zeros_like(e))
    dx = _select(where, tangents[0].astype(e.dtype), e)
    de = e * dx
    return y, _select(where, de / s - e * (jnp.sum(de, axis=axes, keepdims=True) / (s * s)), e)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _log_softmax_core(x, where, axes):
    """log_softmax in ``x``'s compute dtype: ``(x - m) - log(sum(exp(x - m)))``, the order
    of operations torch uses, which reproduces torch's float32 results bit for bit (e.g.
    the notebook's 0.3774033188819885)."""
    shifted, s, _ = shifted_and_sumexp(x, axes, where, dtype=_checks.compute_dtype(x.dtype))
    out = shifted - jnp.expand_dims(jnp.log(s), axes)
    return _select(where, out, jnp.full_like(out, -jnp.inf))


@_log_softmax_core.defjvp
def _log_softmax_core_jvp(axes, primals, tangents):
    x, where = primals
    out = _log_softmax_core(x, where, axes)
    p = jnp.exp(out)
    dx = _select(where, tangents[0].astype(out.dtype), p)
    return out, _select(where, dx - jnp.sum(p * dx, axis=axes, keepdims=True), p)


@functools.partial(jax.jit, static_argnames=("axes",))
def _log_softmax(x, where, *, axes):
    return _log_softmax_core(x, where, axes).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("axes",))
def _softmax(x, where, *, axes):
    return _softmax_core(x, where, axes).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("axes", "keepdims", "return_sign"))
def _logsumexp(a, b, where, *, axes, keepdims, return_sign):
    """jax.nn.logsumexp's arithmetic in ``a``'s compute dtype (``b`` has ``a``'s dtype)."""
    x = a.astype(_checks.compute_dtype(a.dtype))
    if b is not None:
        b = b.astype(x.dtype)
        x = jnp.where(b != 0, x, jnp.array(-jnp.inf, x.dtype))
    shifted, s, m = shifted_and_sumexp(x, axes, where, finite_shift=True)
    if b is not None:
        terms = jnp.exp(shifted) * b
        if where is not None:
            terms = jnp.where(where, terms, jnp.zeros_like(terms))
        s = jnp.sum(terms, axis=axes)
    sign = jnp.sign(s)
    out = (m + jnp.log(s if b is None else jnp.abs(s))).astype(a.dtype)
    if b is not None and not return_sign:
        out = jnp.where(sign < 0, jnp.array(jnp.nan, out.dtype), out)
    if keepdims:
        out, sign = jnp.expand_dims(out, axes), jnp.expand_dims(sign, axes)
    return (out, sign.astype(a.dtype)) if return_sign else out


_PY_SCALARS = (bool, int, float, complex)


def _dtype_of(fn: str, name: str, x) -> np.dtype:
    """The dtype jax gives ``x`` (a JAX/NumPy array or a Python scalar), checked numeric."""
    if isinstance(x, _PY_SCALARS):
        return np.dtype(jnp.result_type(x))
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(
            f"{fn}: `{name}` must be a JAX or NumPy array or a Python scalar, got "
            f"{type(x).__name__} {x!r:.80}"
        )
    dtype = np.dtype(x.dtype)
    if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.number)):
        raise TypeError(
            f"{fn}: `{name}` must have a numeric dtype, got {dtype.name} "
            f"(shape {tuple(np.shape(x))})"
        )
    return dtype


def _inexact(dtype) -> np.dtype:
    """jax's promotion to an inexact dtype: bool and integers of up to 32 bits become
    float32, 64-bit integers float64 (float32 without jax_enable_x64)."""
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _convert(x, dtype) -> jax.Array:
    # NumPy integers are converted by NumPy, so that an int64 beyond int32 is not wrapped.
    if isinstance(x, (np.ndarray, np.generic, *_PY_SCALARS)):
        return jnp.asarray(np.asarray(x).astype(dtype))
    return x.astype(dtype)


def _input(fn: str, x, *, allow_bool: bool) -> jax.Array:
    dtype = _dtype_of(fn, "x", x)
    if dtype == np.bool_ and not allow_bool:
        raise TypeError(
            f"{fn}: `x` must have a numeric (not bool) dtype, got bool "
            f"(shape {tuple(np.shape(x))}); cast it, e.g. `x.astype(jnp.float32)`"
        )
    return _convert(x, _inexact(dtype))


def _axes(fn: str, axis, x: jax.Array) -> tuple[jax.Array, tuple[int, ...], tuple]:
    """``(x, axes, shape)``: ``axis`` as a tuple of non-negative ints (None: all axes).

    A 0-d ``x`` with ``axis`` 0 or -1 is read as torch reads it, one class along that
    axis, and comes back with shape ``(1,)``; ``shape`` is the caller's shape."""
    shape = tuple(x.shape)
    if axis is None:
        return x, tuple(range(x.ndim)), shape
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    for a in items:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(
                f"{fn}: `axis` must be an int, a tuple of ints or None, got "
                f"{type(a).__name__} {a!r}"
            )
    if x.ndim == 0 and items:
        if len(items) != 1 or items[0] not in (0, -1):
            raise ValueError(
                f"{fn}: `axis`={axis!r} is out of range for a 0-d input (shape ()); "
                "expected 0, -1, () or None"
            )
        return x.reshape((1,)), (0,), shape
    return x, _checks.normalize_axes(fn, items, x.ndim, shape), shape


def _operand(fn: str, name: str, value, shape: tuple, *, boolean: bool, x: str = "x"):
    """``where`` (boolean) or ``b``, which must broadcast to ``x``'s shape ``shape``."""
    if boolean:
        if isinstance(value, (bool, np.bool_)):
            value = np.asarray(value)
        value = _checks.as_array(fn, name, value)
        if value.dtype != jnp.bool_:
            raise TypeError(
                f"{fn}: `{name}` must be a boolean mask, got dtype {value.dtype} "
                f"with shape {tuple(value.shape)}"
            )
    vshape = tuple(np.shape(value))
    try:
        fits = jnp.broadcast_shapes(vshape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{fn}: `{name}` shape {vshape} does not broadcast to `{x}` shape {shape} "
            f"(jaxce never broadcasts `{x}` up to `{name}`)"
        )
    return value


def log_softmax(x, axis=-1, where=None):
    r"""Log-softmax along ``axis``, equal to ``torch.nn.functional.log_softmax``.

    The arguments of :func:`jax.nn.log_softmax`.

    .. math::
        \mathrm{log\_softmax}(x)_j = (x_j - m) - \log \sum_k \exp(x_k - m),
        \qquad m = \max_k x_k

    Args:
      x: array (or Python scalar); integers are promoted to float as in jax. A 0-d
        input is one class (the result is 0), as in torch.
      axis: the axis, tuple of axes or ``None`` (all axes) to normalise over; default
        the last.
      where: optional boolean mask broadcastable to ``x``'s shape. Masked-out entries
        are excluded from the normalisation, their output is ``-inf`` and their
        gradient exactly zero, whatever they hold (``nan``, ``inf``). The cotangent of
        a masked output is dropped (jax.nn's convention, not torch.masked's).

    Returns:
      An array of ``x``'s shape and (floating) dtype. float16/bfloat16 are computed in
      float32 and rounded once.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> jaxce.log_softmax(jnp.array([1.2, -0.5, 0.8, 2.1]))
      Array([-1.4615424, -3.1615424, -1.8615425, -0.5615425], dtype=float32)
      >>> jaxce.log_softmax(jnp.array([0.0, -jnp.inf, 1.0]))
      Array([-1.3132616 ,        -inf, -0.31326163], dtype=float32)
      >>> jaxce.log_softmax(jnp.array([0.0, 5.0, 1.0]), -1, jnp.array([True, False, True]))
      Array([-1.3132616 ,        -inf, -0.31326163], dtype=float32)
    """
    x = _input("log_softmax", x, allow_bool=False)
    x, axes, shape = _axes("log_softmax", axis, x)
    if where is not None:
        where = jnp.broadcast_to(
            _operand("log_softmax", "where", where, shape, boolean=True), x.shape
        )
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jax.nn.log_softmax(x, axes, where).reshape(shape)
    return _log_softmax(x, where, axes=axes).reshape(shape)


def softmax(x, axis=-1, where=None):
    r"""Softmax along ``axis``, equal to ``torch.nn.functional.softmax``.

    The arguments of :func:`jax.nn.softmax`.

    .. math::
        \mathrm{softmax}(x)_j = \frac{\exp(x_j - m)}{\sum_k \exp(x_k - m)}

    Args:
      x: array (or Python scalar); integers are promoted to float as in jax.
      axis: the axis, tuple of axes or ``None`` (all axes) to normalise over; default
        the last.
      where: optional boolean mask broadcastable to ``x``'s shape; masked-out entries
        get probability 0 and a zero gradient.

    Returns:
      An array of ``x``'s shape and (floating) dtype. The backward pass keeps one
      array of that shape (the output; in float32 for half precision).

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> jaxce.softmax(jnp.array([[1.2, -0.5, 0.8, 2.1]]))
      Array([[0.23187836, 0.04236035, 0.1554327 , 0.57032865]], dtype=float32)
      >>> jaxce.softmax(jnp.array([[1, 2], [3, 4]]), axis=None)
      Array([[0.0320586 , 0.08714432],
             [0.23688284, 0.6439143 ]], dtype=float32)
    """
    x = _input("softmax", x, allow_bool=False)
    x, axes, shape = _axes("softmax", axis, x)
    if where is not None:
        where = jnp.broadcast_to(_operand("softmax", "where", where, shape, boolean=True), x.shape)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jax.nn.softmax(x, axes, where).reshape(shape)
    return _softmax(x, where, axes=axes).reshape(shape)


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False, where=None):
    r"""``log(sum(b * exp(a)))`` over ``axis``, computed stably: :func:`jax.nn.logsumexp`.

    .. math:: \mathrm{logsumexp}(a) = m + \log \sum_k b_k \exp(a_k - m),
        \qquad m = \max_k a_k

    Args:
      a: array (or Python scalar); bool and integers are promoted to float as in jax.
      axis: the axis or tuple of axes reduced; ``None`` (the default) reduces all.
      b: optional scale factors broadcastable to ``a``'s shape (negative allowed: see
        ``return_sign``); entries with ``b == 0`` take no part.
      keepdims: keep the reduced axes with size 1.
      return_sign: return ``(log|sum|, sign(sum))``. Otherwise a negative sum gives NaN.
      where: optional boolean mask broadcastable to ``a``'s shape; masked-out entries
        are skipped (gradient exactly zero), a fully masked reduction gives ``-inf``
        (with a zero gradient).

    Returns:
      ``a``'s shape without ``axis`` (or with it kept, size 1), in the dtype jax
      promotes ``a`` and ``b`` to; float16/bfloat16 are summed in float32 and rounded
      once. With ``return_sign``, a pair ``(result, sign)``.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> jaxce.logsumexp(jnp.array([1000.0, 1000.0]))
      Array(1000.6932, dtype=float32)
      >>> jaxce.logsumexp(jnp.array([[0.0, 1.0], [2.0, 3.0]]), axis=-1)
      Array([1.3132616, 3.3132615], dtype=float32)
      >>> jaxce.logsumexp(jnp.array([1.0, 2.0]), b=jnp.array([1.0, -1.0]), return_sign=True)
      (Array(1.5413249, dtype=float32), Array(-1., dtype=float32))
    """
    fn = "logsumexp"
    _dtype_of(fn, "a", a)
    if b is not None:
        _dtype_of(fn, "b", b)
    for name, flag in (("keepdims", keepdims), ("return_sign", return_sign)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{fn}: `{name}` must be a bool, got {type(flag).__name__} {flag!r}")
    with jax.numpy_dtype_promotion("standard"):
        dtype = _inexact(jnp.result_type(*([a] if b is None else [a, b])))
    a = _convert(a, dtype)
    a, axes, shape = _axes(fn, axis, a)
    if b is not None:
        b = _operand(fn, "b", b, shape, boolean=False, x="a")
        b = jnp.broadcast_to(_convert(b, dtype), shape).reshape(a.shape)
    if where is not None:
        where = jnp.broadcast_to(_operand(fn, "where", where, shape, boolean=True, x="a"), shape)
        where = where.reshape(a.shape)
    keep = bool(keepdims) and a.shape == shape  # a 0-d input read as one class stays 0-d
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jax.nn.logsumexp(a, axes, b, keep, bool(return_sign), where)
    return _logsumexp(a, b, where, axes=axes, keepdims=keep, return_sign=bool(return_sign))
