"""Small helpers for code that must also run under explicit sharding (``AxisType.Explicit``).

Shared by the plain losses and the fused/sharded paths, so there is one copy of each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def explicit_spec(x) -> tuple | None:
    """The explicit sharding spec of ``x``'s type (None when not explicitly sharded)."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None:
        return None
    spec = tuple(spec) + (None,) * (x.ndim - len(tuple(spec)))
    return spec if any(e is not None for e in spec) else None


def explicitly_sharded(x) -> bool:
    return explicit_spec(x) is not None


def take(w: jax.Array, t: jax.Array) -> jax.Array:
    """``w[t]`` for a per-class vector ``w`` and integer positions ``t``.

    Under explicit sharding (of either) a gather's output sharding must be stated:
    it takes ``t``'s (a vocab-sharded ``w`` is gathered whole, ``V`` numbers).
    """
    if explicitly_sharded(t) or explicitly_sharded(w):
        return w.at[t].get(out_sharding=jax.typeof(t).sharding)
    return jnp.take(w, t)
