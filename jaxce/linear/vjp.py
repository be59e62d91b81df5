"""The fused loss as a ``custom_vjp``: which schedule runs in the forward and in the
backward pass of a differentiated call.

"recompute" saves the statistics in the forward pass and runs the gradient sweep in
the backward pass with the row cotangents; "forward" (scalar losses) runs the
gradient sweep in the forward pass and only scales its results in the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxce.linear.devices import ARGS, loss_values, sweep
from jaxce.linear.plan import Cfg, Need


def need_of(perturbed: dict, args: dict) -> Need:
    def want(k):
        return args[k] is not None and bool(perturbed[k])

    return Need(
        hidden=want("hidden"),
        kernel=want("kernel"),
        bias=want("bias"),
        weight=want("weight"),
        w_t=want("w_t"),
        total_weight=want("total"),
        eps=want("eps"),
    )


@functools.cache
def fused(cfg: Cfg, per_row: bool, mode: str, fallback: tuple[str, Cfg] | None = None):
    """The fused loss, a ``custom_vjp`` function of the arrays named in ``ARGS``.

    Returns ``(out, term_sums)``: per-token losses shaped like ``hidden[..., 0]``
    (``per_row``) or their sum, and the sums of the rule's terms when
    ``cfg.split_terms`` (else None; never differentiated). ``mode`` is ``"recompute"``
    or ``"forward"`` (gradients during the forward pass; sums only). ``fallback`` is the
    ``(mode, cfg)`` of a differentiated call that does not want the kernel gradient,
    when ``cfg`` keeps the logits in it.
    """

    def primal(*arrays):
        return loss_values(cfg, per_row, dict(zip(ARGS, arrays, strict=True)), False)[0]

    f = jax.custom_vjp(primal)

    def schedule(need: Need) -> tuple[str, Cfg]:
        return fallback if fallback is not None and not need.kernel else (mode, cfg)

    def fwd(*primals):
        pairs = list(zip(ARGS, primals, strict=True))
        args = {k: None if p is None else p.value for k, p in pairs}
        need = need_of({k: p is not None and p.perturbed for k, p in pairs}, args)
        flags = tuple(jnp.zeros((), jnp.bool_) if x else None for x in need)
        how, c = schedule(need)
        if how == "recompute":
            out, stats = loss_values(c, per_row, args, True)
            return out, (flags, args, stats)
        loss, grads = sweep(c, need, args)
        return loss, (flags, args, grads)

    def bwd(res, cts):
        flags, args, extra = res
        need = Need(*(x is not None for x in flags))
        ct = cts[0]  # the term sums are only read for their value (see `_linear_impl`)
        if isinstance(ct, SymbolicZero):
            return (None,) * len(ARGS)
        how, c = schedule(need)
        if how == "recompute":
            r = ct if per_row else jnp.broadcast_to(ct, args["t"].shape)
            _, g = sweep(c, need, {**args, **extra, "r": r.astype(c.cdt)})
        else:
            # Scale the saved gradients; positions that are not counted keep an exact
            # zero even when the scale is not finite (an all-ignored `mean` divides by
            # 0), as the plain path's masked cotangents do.
            ok = args["valid"] & ~args["bad"]
            any_ok = jnp.any(ok)
            g = {}
            for k, v in extra.items():
                keep = {"hidden": ok[..., None], "w_t": ok}.get(k, any_ok)
                g[k] = jnp.where(keep, v * ct.astype(v.dtype), jnp.zeros((), v.dtype))
        return tuple(
            g[k].astype(args[k].dtype) if k in g and args[k] is not None else None for k in ARGS
        )

    f.defvjp(fwd, bwd, symbolic_zeros=True)
    return f
