"""Trace-time validation shared by every public function.

Everything here looks only at static information (shapes, dtypes, Python
values), so it runs once per trace and never forces a device-to-host copy.
Every message starts with the public function's name, names the argument and
repeats the value that was received.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("none", "mean", "sum")
# NumPy dtype kinds JAX cannot hold: object, str, bytes, datetimes, and void (records),
# except ml_dtypes' (bfloat16, float8 ...), whose kind is also "V".
_NOT_NUMERIC = frozenset("OUSMmV")


def _not_numeric(dtype: Any) -> bool:
    dtype = np.dtype(dtype)
    if dtype.kind != "V":
        return dtype.kind in _NOT_NUMERIC
    return not jnp.issubdtype(dtype, jnp.number)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


_dtype_name = dtype_name


def promote_float_dtypes(*dtypes: Any) -> np.dtype:
    """The floating dtype JAX's standard lattice gives for ``dtypes``.

    Spelled out with the standard rules so that it also works when a caller
    runs with ``jax_numpy_dtype_promotion='strict'``.
    """
    with jax.numpy_dtype_promotion("standard"):
        return np.dtype(jnp.result_type(*dtypes))


def compute_dtype(dtype: Any) -> np.dtype:
    """float32 for half-precision inputs (accumulate wide), the dtype otherwise."""
    dtype = np.dtype(dtype)
    return np.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def as_array(fn: str, name: str, x: Any, *, floating: bool = False) -> jax.Array:
    """Accepts JAX and NumPy arrays (and scalars of those); rejects lists and others.

    With ``floating=True`` the dtype is checked as received (before JAX may
    narrow an int64 to int32), so the message names what the caller passed.
    NumPy integers that JAX would narrow (int64 without x64) must fit: a value
    that would wrap raises instead of silently becoming another class.
    """
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(
            f"{fn}: `{name}` must be a JAX or NumPy array, got {type(x).__name__} {x!r:.80}"
        )
    if _not_numeric(x.dtype):
        raise TypeError(
            f"{fn}: `{name}` must hold numbers, got a NumPy array of dtype "
            f"{np.dtype(x.dtype).name} (shape {tuple(np.shape(x))}); JAX has no such dtype"
        )
    if floating:
        check_floating(fn, name, x)
    converted = jnp.asarray(x)
    if isinstance(x, (np.ndarray, np.generic)) and converted.dtype != x.dtype and x.size:
        if np.issubdtype(x.dtype, np.integer):
            info = np.iinfo(converted.dtype)
            values = np.asarray(x)
            outside = (values < info.min) | (values > info.max)
            if outside.any():
                raise ValueError(
                    f"{fn}: `{name}` value {values[outside].flat[0]} does not fit in "
                    f"{converted.dtype.name}, the integer type JAX uses without "
                    "jax_enable_x64; it would wrap to another value"
                )
    return converted


def check_floating(fn: str, name: str, x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: `{name}` must have a floating dtype, got {_dtype_name(x.dtype)} "
            f"(shape {tuple(x.shape)}); cast it, e.g. `{name}.astype(jnp.float32)`"
        )


def normalize_axis(fn: str, axis: Any, ndim: int, shape: tuple) -> int:
    """An int axis in ``[-ndim, ndim)``, returned non-negative."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{fn}: `axis` must be an int, got {type(axis).__name__} {axis!r}")
    axis = int(axis)
    if ndim == 0:
        raise ValueError(
            f"{fn}: expected an input with 1 or more dimensions (the class axis), got a 0-d "
            f"array with shape {shape}"
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{fn}: `axis`={axis} is out of range for an input with shape {shape} "
            f"(ndim {ndim}); expected an axis in [{-ndim}, {ndim - 1}]"
        )
    return axis % ndim


def normalize_axes(fn: str, axis: Any, ndim: int, shape: tuple) -> tuple[int, ...]:
    """Like :func:`normalize_axis`, also accepting a tuple of distinct ints."""
    if isinstance(axis, tuple):
        axes = tuple(normalize_axis(fn, a, ndim, shape) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"{fn}: `axis`={axis} repeats an axis (input shape {shape})")
        return axes
    return (normalize_axis(fn, axis, ndim, shape),)


def check_reduction(fn: str, reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{fn}: `reduction`={reduction!r} is not a valid reduction; "
            f"expected one of {', '.join(repr(r) for r in REDUCTIONS)}"
        )
    return reduction


def check_ignore_index(fn: str, ignore_index: Any) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(
            f"{fn}: `ignore_index` must be a Python int, got "
            f"{type(ignore_index).__name__} {ignore_index!r}"
        )
    return int(ignore_index)


def check_label_smoothing(fn: str, label_smoothing: Any) -> float | jax.Array:
    """A Python number in [0, 1] (returned as float), or a 0-d floating array (as is)."""
    if _is_array(label_smoothing):
        concrete = not isinstance(label_smoothing, jax.core.Tracer)
        if concrete:  # checked before jnp.asarray, which may stage it under jit
            value = np.asarray(label_smoothing)
        ls = jnp.asarray(label_smoothing)
        if ls.ndim != 0 or not jnp.issubdtype(ls.dtype, jnp.floating):
            raise TypeError(
                f"{fn}: `label_smoothing` given as an array must be a 0-d floating scalar, "
                f"got dtype {_dtype_name(ls.dtype)} with shape {tuple(ls.shape)}"
            )
        if concrete and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{fn}: `label_smoothing` must lie in [0, 1], got {float(value)!r}")
        return ls
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(
            f"{fn}: `label_smoothing` must be a float in [0, 1] or a 0-d array, got "
            f"{type(label_smoothing).__name__} {label_smoothing!r}"
        )
    value = float(label_smoothing)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{fn}: `label_smoothing` must lie in [0, 1], got {value!r}")
    return value


def _finite_float(fn: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: `{name}` must be a Python float, got {type(value).__name__} {value!r}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{fn}: `{name}` must be finite, got {value!r}")
    return value


def check_nonnegative(fn: str, name: str, value: Any) -> float:
    value = _finite_float(fn, name, value)
    if value < 0:
        raise ValueError(f"{fn}: `{name}` must be >= 0, got {value!r}")
    return value


def check_positive(fn: str, name: str, value: Any) -> float:
    value = _finite_float(fn, name, value)
    if value <= 0:
        raise ValueError(f"{fn}: `{name}` must be > 0 (or None to disable), got {value!r}")
    return value


def check_weight(fn: str, weight: Any, num_classes: int) -> jax.Array | None:
    if weight is None:
        return None
    weight = as_array(fn, "weight", weight, floating=True)
    if weight.ndim != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"{fn}: `weight` must be a 1-D array with one entry per class ({num_classes}), "
            f"got shape {tuple(weight.shape)}"
        )
    return weight


def reduced_shape(shape: tuple, axis: int) -> tuple:
    return shape[:axis] + shape[axis + 1 :]


def check_class_target(
    fn: str,
    logits_name: str,
    logits: jax.Array,
    target: jax.Array,
    axis: int,
    *,
    probabilities_possible: bool = True,
) -> jax.Array:
    """Validates an integer class-index target; returns it shaped like the logits without
    the class axis (a ``(1,)`` target for 1-D logits becomes 0-d, as in torch)."""
    if target.dtype == jnp.bool_ or not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: class-index `target` must have an integer dtype, got "
            f"{_dtype_name(target.dtype)} with shape {tuple(target.shape)}"
        )
    shape, expected = tuple(logits.shape), reduced_shape(tuple(logits.shape), axis)
    tshape = tuple(target.shape)
    if tshape == expected:
        return target
    # torch accepts a (1,) target for (C,) input, except where cross_entropy reads
    # equal shapes as class probabilities (C = 1).
    if logits.ndim == 1 and tshape == (1,) and (shape != (1,) or not probabilities_possible):
        return target.reshape(())
    if tshape == shape:
        hint = (
            "an integer target with the logits' shape is not a class-index target; for "
            "class probabilities pass a floating target"
        )
    elif target.ndim == logits.ndim and tshape[axis] == 1:
        hint = "multi-target (a class axis of size 1 in the target) is not supported; squeeze it"
    else:
        hint = f"the target must have the `{logits_name}` shape with the class axis removed"
    raise ValueError(
        f"{fn}: `target` shape {tshape} does not match `{logits_name}` shape {shape} with "
        f"class axis {axis}: expected target shape {expected}; {hint}"
    )


def class_axes(fn: str, axis: Any, ndim: int, shape: tuple) -> tuple[int, ...]:
    """The class axes of a loss, non-negative, in the order given: an int, a non-empty
    tuple of distinct ints (classes spread over several axes, flattened in that order,
    as optax does), or None (every axis)."""
    if axis is None:
        if ndim == 0:
            normalize_axis(fn, -1, ndim, shape)  # raises: no class axis
        return tuple(range(ndim))
    if isinstance(axis, tuple):
        if not axis:
            raise ValueError(f"{fn}: `axis`=() names no class axis (input shape {shape})")
        return normalize_axes(fn, axis, ndim, shape)
    if isinstance(axis, list):
        raise TypeError(f"{fn}: `axis` must be an int, a tuple of ints or None, got list {axis!r}")
    return (normalize_axis(fn, axis, ndim, shape),)


def representable(fn: str, name: str, value: float, dtype: Any) -> float:
    """``value`` (a non-negative Python float), refused if it is above the largest finite
    value of ``dtype`` (it would become inf) or a non-zero value below its smallest normal
    one (XLA flushes subnormals to zero on CPU)."""
    info = np.finfo(dtype)
    if value > float(info.max) or 0 < value < float(info.tiny):
        raise ValueError(
            f"{fn}: `{name}`={value!r} is not representable in {np.dtype(dtype).name}, the dtype "
            f"it is computed in: expected 0 or a value in [{float(info.tiny):.4g}, "
            f"{float(info.max):.4g}]"
        )
    return value


def check_where(fn: str, where: Any, shape: tuple, axes: tuple[int, ...], axis: Any = None):
    """optax's ``where``: a boolean mask of what takes part, of the positions' shape (the
    input's shape without ``axes``) or of the input's own shape, broadcastable to it.

    As optax does, a mask whose ndim differs from the input's gets the class axes
    inserted (``jnp.expand_dims(where, axis)``, ``axis`` as the caller gave it). Returns
    ``(positions, classes)``: a mask of the positions' shape (the class axes were all of
    size 1) or None, and a mask of the input's shape or None.
    """
    if where is None:
        return None, None
    where = as_array(fn, "where", where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"{fn}: `where` must be a boolean mask, got dtype {_dtype_name(where.dtype)} "
            f"with shape {tuple(where.shape)}"
        )
    given = tuple(where.shape)
    positions = reduced_shape_axes(shape, axes)
    problem = (
        f"{fn}: `where` shape {given} broadcasts neither to the positions' shape {positions} "
        f"nor to the input's shape {shape} (class axes {axes})"
    )
    if where.ndim != len(shape):
        try:
            where = jnp.expand_dims(where, axes if axis is None else axis)
        except ValueError:
            raise ValueError(problem) from None
    try:
        if jnp.broadcast_shapes(tuple(where.shape), shape) != shape:
            raise ValueError(problem)
    except ValueError:
        raise ValueError(problem) from None
    where = where.reshape((1,) * (len(shape) - where.ndim) + tuple(where.shape))
    if all(where.shape[a] == 1 for a in axes):
        return jnp.broadcast_to(jnp.squeeze(where, axes), positions), None
    return None, jnp.broadcast_to(where, shape)


def reduced_shape_axes(shape: tuple, axes: tuple[int, ...]) -> tuple:
    return tuple(d for i, d in enumerate(shape) if i not in axes)
