"""``NLLLoss`` and ``CrossEntropyLoss``: the losses' options held in an immutable,
hashable callable, so ``criterion(logits, labels)`` reads like the torch code and
a criterion can be a static argument of :func:`jax.jit`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxce import _checks
from jaxce.losses import cross_entropy, nll_loss

__all__ = ["NLLLoss", "CrossEntropyLoss"]


def _frozen_weight(name: str, weight: Any) -> np.ndarray | None:
    if weight is None:
        return None
    if isinstance(weight, jax.core.Tracer):
        raise TypeError(
            f"{name}: `weight` must be a concrete array to be held by a criterion (it is part "
            "of its hash); pass traced weights to the functional form instead"
        )
    array = np.array(_checks.as_array(name, "weight", weight, floating=True))  # a private copy
    if array.ndim != 1:
        raise ValueError(
            f"{name}: `weight` must be 1-D (one entry per class), got shape {array.shape}"
        )
    array.flags.writeable = False
    return array


def _rebuild(cls, options):
    return cls(**options)


class _Criterion:
    """Shared machinery: keyword-only options, validation at construction, value semantics."""

    _name = ""

    def __init__(self, **options):
        options["weight"] = _frozen_weight(self._name, options["weight"])
        fn = self._name
        axis = options["axis"]
        parts = axis if isinstance(axis, tuple) else (axis,)
        if axis is not None and (
            not parts or any(isinstance(a, bool) or not isinstance(a, int) for a in parts)
        ):
            raise TypeError(
                f"{fn}: `axis` must be an int, a non-empty tuple of ints or None, got "
                f"{type(axis).__name__} {axis!r}"
            )
        _checks.check_ignore_index(fn, options["ignore_index"])
        _checks.check_reduction(fn, options["reduction"])
        if "label_smoothing" in options:
            if isinstance(options["label_smoothing"], jax.core.Tracer):
                raise TypeError(
                    f"{fn}: `label_smoothing` must be a concrete number to be held by a criterion "
                    "(it is part of its hash); pass a traced value to the functional form instead"
                )
            options["label_smoothing"] = float(
                _checks.check_label_smoothing(fn, options["label_smoothing"])
            )
            options["z_loss"] = _checks.check_nonnegative(fn, "z_loss", options["z_loss"])
            if options["softcap"] is not None:
                options["softcap"] = _checks.check_positive(fn, "softcap", options["softcap"])
        object.__setattr__(self, "_options", options)

    def __setattr__(self, name, value):
        raise AttributeError(f"{self._name} is immutable; build a new one with other options")

    def __reduce__(self):  # copy, deepcopy and pickle rebuild through __init__
        return _rebuild, (type(self), self._options)

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "_options")[name]
        except KeyError:
            raise AttributeError(name) from None

    def _key(self):
        w = self._options["weight"]
        wkey = None if w is None else (w.dtype.str, w.shape, w.tobytes())
        return (type(self), wkey) + tuple(
            (k, v) for k, v in sorted(self._options.items()) if k != "weight"
        )

    def __eq__(self, other):
        return isinstance(other, _Criterion) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        parts = []
        for k, v in self._options.items():
            parts.append(f"{k}={v.tolist() if isinstance(v, np.ndarray) else v!r}")
        return f"{self._name}({', '.join(parts)})"


class NLLLoss(_Criterion):
    """Callable form of :func:`jaxce.nll_loss`, like ``torch.nn.NLLLoss``.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> criterion = jaxce.NLLLoss()
      >>> lp = jaxce.log_softmax(jnp.array([[1.2, -0.5, 0.8, 2.1]]))
      >>> print(float(criterion(lp, jnp.array([2]))))
      1.8615424633026123
    """

    _name = "NLLLoss"

    def __init__(self, *, axis=-1, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction)

    def __call__(self, log_probs, target, *, where=None):
        return nll_loss(log_probs, target, where=where, **self._options)


class CrossEntropyLoss(_Criterion):
    """Callable form of :func:`jaxce.cross_entropy`, like ``torch.nn.CrossEntropyLoss``.

    Options are validated when the criterion is built. It is immutable and
    hashable, so it can be passed as a static argument to :func:`jax.jit`.

    Examples:
      >>> import jax.numpy as jnp, jaxce
      >>> criterion = jaxce.CrossEntropyLoss()
      >>> logits = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
      >>> print(float(criterion(logits, jnp.array([0, 1]))))
      0.3774033188819885
    """

    _name = "CrossEntropyLoss"

    def __init__(
        self,
        *,
        axis=-1,
        weight=None,
        ignore_index=-100,
        reduction="mean",
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=None,
    ):
        super().__init__(
            axis=axis,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )

    def __call__(self, logits, target, *, where=None):
        return cross_entropy(logits, target, where=where, **self._options)
