"""The opt-in checked path: out-of-range targets raise instead of giving NaN.

By default a non-ignored target outside ``[0, C)`` makes that position's loss
NaN, because a value cannot raise from inside ``jit``. :func:`checked` wraps any
function that calls jaxce losses so that such a target raises an error naming
the bad value and its position. It uses :mod:`jax.experimental.checkify`, so
the wrapped function is still jitted and the check runs on the device.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxce import _checks, rule

__all__ = ["checked", "check_targets"]

_ENABLED = contextvars.ContextVar("jaxce_check_targets", default=False)


def enabled() -> bool:
    """Whether losses traced now should emit target-range checks."""
    return _ENABLED.get()


@contextlib.contextmanager
def _enable():
    token = _ENABLED.set(True)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def check_num_classes(fn: str, num_classes) -> int:
    """``num_classes`` as a Python int ``>= 0`` (NumPy integers accepted), or a TypeError /
    ValueError naming it."""
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(
            f"{fn}: `num_classes` must be a Python int (the class axis' size), got "
            f"{type(num_classes).__name__} {num_classes!r:.80}"
        )
    if num_classes < 0:
        raise ValueError(f"{fn}: `num_classes` must be >= 0, got {int(num_classes)}")
    return int(num_classes)


def assert_none(bad: jax.Array, target: jax.Array, message: str) -> None:
    """``checkify.check`` that no entry of ``bad`` is set; ``message`` may use ``{value}``
    (the target there) and ``{position}`` (the first such flattened position). An empty
    array passes (there is nothing to check, and no first position)."""
    bad, t = jnp.ravel(bad), jnp.ravel(target)
    if bad.size == 0:
        return
    position = jnp.argmax(bad)
    checkify.check(
        ~jnp.any(bad), message, value=jnp.take(t, position, mode="clip"), position=position
    )


def out_of_range_message(fn: str, num_classes: int, ignore_index: int) -> str:
    return (
        f"{fn}: target value {{value}} at flattened position {{position}} is out of range "
        f"for {num_classes} classes (valid: 0..{num_classes - 1}, or "
        f"ignore_index={ignore_index})"
    )


def check_targets(
    target: jax.Array,
    num_classes: int,
    *,
    ignore_index: int = -100,
    where: jax.Array | None = None,
    fn: str = "check_targets",
) -> None:
    """Asserts (through :func:`checkify.check`) that every non-ignored target is a class.

    Call it inside a function transformed by :func:`jax.experimental.checkify.checkify`
    (or by :func:`checked`, which does that for you). An empty ``target`` passes.

    Args:
      target: integer array of class indices, any shape.
      num_classes: the number of classes ``C`` (a Python int ``>= 0``).
      ignore_index: the target value that marks positions to skip.
      where: optional boolean mask broadcastable to ``target``'s shape; positions where
        it is False are skipped, as the losses' ``where`` of the positions' shape does.
      fn: the name used at the start of the error message.
    """
    num_classes = check_num_classes(fn, num_classes)
    target = _checks.as_array(fn, "target", target)
    if target.dtype == jnp.bool_ or not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: `target` must have an integer dtype, got {_checks.dtype_name(target.dtype)}"
        )
    ignore_index = _checks.check_ignore_index(fn, ignore_index)
    _, _, bad = rule.target_masks(target, num_classes, ignore_index)
    if where is not None:
        where = _checks.as_array(fn, "where", where)
        if where.dtype != jnp.bool_:
            raise TypeError(
                f"{fn}: `where` must be a boolean mask, got dtype "
                f"{_checks.dtype_name(where.dtype)}"
            )
        try:
            bad = bad & jnp.broadcast_to(where, target.shape)
        except ValueError:
            raise ValueError(
                f"{fn}: `where` shape {tuple(where.shape)} does not broadcast to the target's "
                f"shape {tuple(target.shape)}"
            ) from None
    assert_none(bad, target, out_of_range_message(fn, num_classes, ignore_index))


def checked(fn: Callable) -> Callable:
    """Returns a jitted version of ``fn`` that raises on out-of-range targets.

    ``fn`` is any function that calls jaxce losses (or a loss itself). Every
    ``nll_loss`` / ``cross_entropy`` traced inside it checks its class-index
    targets; a bad one raises :class:`jax.experimental.checkify.JaxRuntimeError`
    (a ``ValueError``) naming the value and its position. Keyword arguments
    that are arrays are traced; all other keyword arguments must be hashable
    (they are static, as the options of the losses are).

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> safe_ce = jaxce.checked(jaxce.cross_entropy)
      >>> safe_ce(jnp.zeros((2, 3)), jnp.array([0, 7]))
      Traceback (most recent call last):
      ...
      jax._src.checkify.JaxRuntimeError: cross_entropy: target value 7 at flattened position 1 ...
    """

    if not callable(fn):
        raise TypeError(f"checked: `fn` must be callable, got {type(fn).__name__} {fn!r:.80}")

    def traced(args, array_kwargs, static_kwargs):
        with _enable():
            return fn(*args, **array_kwargs, **dict(static_kwargs))

    checkified = jax.jit(
        checkify.checkify(traced, errors=checkify.user_checks), static_argnums=(2,)
    )

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            raise TypeError(
                "checked: the wrapped function was called with traced arguments (inside jit, "
                "vmap or grad). `checked` jits and raises by itself; call it outside other "
                "transformations, or use `jaxce.check_targets` inside your own "
                "`checkify.checkify` (see its docstring)"
            )
        arrays = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
        static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays))
        for key, value in static:
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"checked: keyword argument `{key}` must be an array or a hashable value, "
                    f"got {type(value).__name__} {value!r:.80}"
                ) from None
        err, out = checkified(args, arrays, static)
        err.throw()
        return out

    return wrapper
