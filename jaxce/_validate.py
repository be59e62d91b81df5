"""Argument validation for the workflow layer (models, data, training, evaluation).

The losses validate their own (traced) arguments in :mod:`jaxce._checks`; the
functions here check the plain Python and host-side values that the workflow
functions take (sizes, seeds, learning rates, optimizers, feature and label
arrays) before anything is computed. Every message starts with the public
function's name, names the argument and repeats the value received. A value of
the wrong kind raises ``TypeError``; a value of the right kind outside its
range raises ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

INT32 = np.iinfo(np.int32)


def _is_array(value: Any) -> bool:
    import jax

    return isinstance(value, (np.ndarray, jax.Array))


def is_real_floating(dtype: Any) -> bool:
    """Floating and not complex, counting ml_dtypes' bfloat16 and float8 types."""
    import jax.numpy as jnp

    return bool(jnp.issubdtype(dtype, jnp.floating))


#: Seeds are used by NumPy's generators and by ``jax.random.key``; this range suits both.
SEED_MAX = 2**32 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def describe(value: Any) -> str:
    """``repr`` of ``value`` on one line, shortened; arrays are described by dtype and shape."""
    if _is_array(value) and np.ndim(value) > 0:
        return f"<{value.dtype} array of shape {tuple(value.shape)}>"
    if isinstance(value, (tuple, list)) and any(_is_array(v) for v in value):
        inner = ", ".join(describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(
    fn: str, name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """A Python or NumPy integer (not a bool, not ``1.0``) in ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: `{name}` must be an int, got {describe(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            bound = f">= {minimum}"
        elif minimum is None:
            bound = f"<= {maximum}"
        else:
            bound = f"in [{minimum}, {maximum}]"
        raise ValueError(f"{fn}: `{name}` must be an int {bound}, got {value!r}")
    return value


def check_seed(fn: str, name: str, value: Any, *, count: int = 1) -> int:
    """A seed in ``[0, 2**32 - 1]``; with ``count`` seeds ``value .. value + count - 1``."""
    value = check_int(fn, name, value, minimum=0)
    if value + count - 1 > SEED_MAX:
        top = SEED_MAX - count + 1
        raise ValueError(f"{fn}: `{name}` must be an int in [0, {top}], got {value!r}")
    return value


def check_ignore_index(fn: str, value: Any) -> int:
    """``ignore_index``: an int that fits the int32 labels it is compared with."""
    return check_int(fn, "ignore_index", value, minimum=int(INT32.min), maximum=int(INT32.max))


def check_bool(fn: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: `{name}` must be True or False, got {describe(value)}")
    return bool(value)


def _real(fn: str, name: str, value: Any, what: str) -> float:
    if _is_array(value) and value.ndim == 0:
        if is_real_floating(value.dtype) or np.issubdtype(value.dtype, np.integer):
            value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: `{name}` must be {what}, got {describe(value)}")
    return float(value)


def check_learning_rate(fn: str, name: str, value: Any) -> float:
    """A finite learning rate > 0 that stays finite and nonzero in float32."""
    what = "a finite float > 0"
    lr = _real(fn, name, value, what)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{fn}: `{name}` must be {what}, got {describe(value)}")
    if lr > _FLOAT32_MAX or lr < _FLOAT32_TINY:
        raise ValueError(
            f"{fn}: `{name}`={lr!r} is {'inf' if lr > _FLOAT32_MAX else '0'} in float32, "
            "the parameters' dtype; it must be a finite float > 0 there"
        )
    return lr


def check_fraction(fn: str, name: str, value: Any) -> float:
    """A float in ``[0, 1]`` (NaN refused)."""
    what = "a float in [0, 1]"
    v = _real(fn, name, value, what)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{fn}: `{name}` must be {what}, got {describe(value)}")
    return v


def check_optimizer(fn: str, name: str, value: Any):
    import optax

    if not isinstance(value, optax.GradientTransformation):
        raise TypeError(
            f"{fn}: `{name}` must be an optax.GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {describe(value)}"
        )
    return value


def _host_array(fn: str, name: str, value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{fn}: `{name}` must be an array, got {describe(value)}")
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: `{name}` must be an array, got {describe(value)} ({e})") from None


def check_features(
    fn: str,
    name: str,
    value: Any,
    *,
    num_features: int | None = None,
    dtype: Any = np.float32,
    finite: bool = True,
) -> np.ndarray:
    """``(N, F)`` real floating features, cast to ``dtype`` (unless None); NaN and inf
    (also after the cast: 1e39 overflows float32) refused when ``finite``.

    Complex, integer, boolean and object arrays are refused rather than converted
    (a cast would drop an imaginary part or hide a mix-up of features and labels).
    """
    x = _host_array(fn, name, value)
    if not is_real_floating(x.dtype):
        raise TypeError(
            f"{fn}: `{name}` must hold real floating values, got dtype {x.dtype} (shape {x.shape})"
        )
    if x.ndim != 2:
        expected = f"(N, {num_features})" if num_features is not None else "(examples, features)"
        raise ValueError(f"{fn}: `{name}` must have shape {expected}, got shape {x.shape}")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"{fn}: `{name}` must have shape (N, {num_features}) for this model, got {x.shape}"
        )
    if dtype is not None:
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below
            x = x.astype(dtype)
    if finite and not np.isfinite(x).all():
        i = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{fn}: `{name}` must be finite, got {x[tuple(i)]} at {tuple(int(v) for v in i)} "
            f"(as {x.dtype.name})"
        )
    return x


def check_labels(
    fn: str,
    name: str,
    value: Any,
    *,
    num_examples: int,
    num_classes: int | None,
    ignore_index: int,
) -> np.ndarray:
    """``(N,)`` integer labels in ``[0, num_classes)`` or equal to ``ignore_index``, as int32."""
    y = _host_array(fn, name, value)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{fn}: `{name}` must hold integer class indices, got dtype {y.dtype} (shape {y.shape})"
        )
    if y.shape != (num_examples,):
        raise ValueError(
            f"{fn}: `{name}` must be 1-D with one label per row of `x` ({num_examples}), "
            f"got shape {y.shape}"
        )
    if num_classes is not None:
        bad = (y != ignore_index) & ((y < 0) | (y >= num_classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{fn}: label {int(y[i])} at position {i} is not a class in "
                f"[0, {num_classes}) nor ignore_index={ignore_index} (in `{name}`)"
            )
    return y.astype(np.int32)


def check_class_weight(
    fn: str, name: str, value: Any, *, num_classes: int | None = None
) -> np.ndarray | None:
    """Optional ``(C,)`` finite, non-negative real floating class weights (float32)."""
    if value is None:
        return None
    w = _host_array(fn, name, value)
    if not is_real_floating(w.dtype) or w.ndim != 1:
        raise ValueError(f"{fn}: `{name}` must be a 1-D floating array, got {w.dtype} {w.shape}")
    if num_classes is not None and w.shape != (num_classes,):
        raise ValueError(
            f"{fn}: `{name}` must have shape ({num_classes},), one weight per class, got {w.shape}"
        )
    w32 = w.astype(np.float32)
    if not (np.isfinite(w32).all() and (w32 >= 0).all()):
        raise ValueError(f"{fn}: `{name}` must be finite and >= 0, got {w.tolist()!r:.120}")
    return w32
