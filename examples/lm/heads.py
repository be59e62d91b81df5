"""The two LM heads compared by the example: the same loss, two ways.

``materialised``: ``logits = hidden @ kernel`` (``[B, T, V]``, float32), then
:func:`jaxce.cross_entropy`. ``fused``: :func:`jaxce.linear_cross_entropy` on
``hidden`` and ``kernel`` directly, the logits never existing as a whole. Both take
the same options (padding targets ``ignore_index``, ``label_smoothing``, ``z_loss``),
so their values and gradients are equal up to float32 rounding.
"""

from __future__ import annotations

from typing import Any

import jax

import jaxce

HEADS = ("materialised", "fused")
IGNORE_INDEX = -100


def head_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    *,
    head: str,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    data_axis: Any = None,
    vocab_axis: Any = None,
    mesh: Any = None,
) -> jax.Array:
    """The mean loss of ``hidden`` ``(B, T, D)`` under ``kernel`` ``(D, V)``."""
    opts = dict(ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, z_loss=z_loss)
    if head == "materialised":
        if data_axis is not None or vocab_axis is not None:
            raise ValueError("head_loss: the materialised head takes no mesh axes (GSPMD)")
        return jaxce.cross_entropy(hidden @ kernel, targets, **opts)
    if head == "fused":
        return jaxce.linear_cross_entropy(
            hidden, kernel, targets, data_axis=data_axis, vocab_axis=vocab_axis, mesh=mesh, **opts
        )
    if head == "probe":
        # Not a loss: the same model and optimizer with a one-class "head", to measure
        # what the train step holds apart from any (V-wide) head loss.
        return jax.numpy.mean((hidden @ kernel[:, :1]) ** 2)
    raise ValueError(f"head_loss: `head`={head!r} is not one of {HEADS}")
