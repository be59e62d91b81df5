"""The public entry :func:`linear_cross_entropy`: validation of every argument, then
the jitted :func:`_linear_impl` that masks the targets, makes the plan and calls the
fused ``custom_vjp`` function."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxce import _checks, _spmd, checking, rule, sharding
from jaxce.linear.plan import GRAD_MODES, Cfg, make_plan
from jaxce.linear.vjp import fused
from jaxce.losses import cross_entropy

__all__ = ["linear_cross_entropy"]

KERNEL_LAYOUTS = ("dv", "vd")


def _check_block(fn: str, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: `{name}` must be a positive int or None, got {type(value).__name__} {value!r}"
        )
    if value < 1:
        raise ValueError(f"{fn}: `{name}` must be a positive int or None, got {value!r}")
    return int(value)


def _check_target_kind(fn: str, target: Any) -> None:
    """A NumPy target JAX cannot hold (str, bytes, object, datetime) is refused by name
    here; other non-integer dtypes are refused with their shape after conversion."""
    dtype = getattr(target, "dtype", None)
    if isinstance(target, (np.ndarray, np.generic)) and dtype.kind in "OSUVMm":
        raise TypeError(
            f"{fn}: class-index `target` must have an integer dtype, got {dtype.name} "
            f"with shape {tuple(target.shape)}"
        )


@functools.partial(
    jax.jit,
    static_argnames=(
        "ignore_index",
        "reduction",
        "static_eps",
        "z_loss",
        "softcap",
        "token_block",
        "vocab_block",
        "grad_mode",
        "layout",
        "kernel_layout",
        "check",
        "out_dtype",
    ),
)
def _linear_impl(
    hidden,
    kernel,
    target,
    bias,
    weight,
    dynamic_eps,
    *,
    ignore_index,
    reduction,
    static_eps,
    z_loss,
    softcap,
    token_block,
    vocab_block,
    grad_mode,
    layout,
    kernel_layout,
    check,
    out_dtype,
):
    fn = "linear_cross_entropy"
    vd = kernel_layout == "vd"
    num_classes = kernel.shape[0 if vd else 1]
    if check:
        checking.check_targets(target, num_classes, ignore_index=ignore_index, fn=fn)
    cdt = _checks.compute_dtype(out_dtype)
    mdt = _checks.promote_float_dtypes(*(a.dtype for a in (hidden, kernel, bias) if a is not None))
    eps = static_eps if dynamic_eps is None else dynamic_eps.astype(cdt)

    if hidden.size == 0 or num_classes == 0 or math.prod(hidden.shape[:-1]) == 0:
        # Nothing to block over: the materialised formulation is as small as its inputs.
        logits = jnp.matmul(hidden.astype(mdt), (kernel.T if vd else kernel).astype(mdt))
        if bias is not None:
            logits = logits + bias.astype(mdt)
        return cross_entropy(
            logits,
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=eps,
            z_loss=z_loss,
            softcap=softcap,
        ).astype(out_dtype)

    t, valid, bad = rule.target_masks(target, num_classes, ignore_index)
    w = None if weight is None else weight.astype(cdt)
    if w is not None and reduction == "mean":
        w = rule.weights_for_mean(w)  # a common power of two: mean is unchanged, sums stay finite
    w_t = None if w is None else _spmd.take(w, t)
    smoothing = not (isinstance(eps, float) and eps == 0.0)
    w_full = w if smoothing else None
    total = None if w_full is None else jnp.sum(w_full)

    lead = tuple(hidden.shape[:-1])
    lead_local = sharding.local_size(layout, lead, () if layout is None else layout.lead_spec)
    v_local = sharding.local_size(
        layout, (num_classes,), (None,) if layout is None else (layout.vocab,)
    )[0]
    n_local = max(1, math.prod(lead_local))
    per_row = reduction == "none"
    d = kernel.shape[1 if vd else 0]
    plan = functools.partial(
        make_plan, grad_mode, per_row, n_local, v_local, d, token_block, vocab_block
    )
    mode, blocks = plan()
    cfg = Cfg(
        n=n_local,
        v=v_local,
        d=d,
        num_classes=num_classes,
        eps=static_eps,
        softcap=softcap,
        z_loss=z_loss,
        smoothing=smoothing,
        cdt=cdt,
        mdt=mdt,
        layout=layout,
        split_terms=reduction == "mean" and (smoothing or bool(z_loss)),
        vd=vd,
        **blocks,
    )
    fallback = None
    if cfg.head:
        # Without a kernel gradient there is nowhere to keep the logits.
        mode2, blocks2 = plan(allow_buffer=False)
        fallback = (mode2, cfg._replace(**blocks2))
    f = fused(cfg, per_row, mode, fallback)
    eps_arg = None if isinstance(eps, float) else eps
    out, term_sums = f(hidden, kernel, bias, w_full, w_t, total, eps_arg, t, valid, bad)
    if reduction == "mean":
        denom = rule.mean_denominator(valid, w_t, cdt)
        out = out / denom
        if term_sums is not None:
            # torch divides each term's sum by D before combining them: with D = 0 a zero
            # sum (or two of opposite signs) gives NaN where the combined sum over D gives
            # ±inf. Otherwise the two agree, and the value of `out` is kept as it is.
            means = rule.Terms(*(None if v is None else v / denom for v in term_sums))
            exact = lax.stop_gradient(rule.combine_terms(means, eps, num_classes))
            out = out + jnp.where(jnp.isnan(exact), jnp.nan, 0.0).astype(cdt)
    return out.astype(out_dtype)


def linear_cross_entropy(
    hidden: Any,
    kernel: Any,
    target: Any,
    *,
    bias: Any = None,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: Any = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    token_block: int | None = None,
    vocab_block: int | None = None,
    grad_mode: str = "auto",
    kernel_layout: str = "dv",
    data_axis: Any = None,
    vocab_axis: Any = None,
    mesh: Any = None,
) -> jax.Array:
    r"""``cross_entropy(hidden @ kernel + bias, target, ...)`` without materialising the logits.

    The loss of a language-model head (or any large-vocabulary classifier), with
    the values and gradients of :func:`jaxce.cross_entropy` on the logits
    ``hidden @ kernel + bias`` computed in float32 (float64 for float64 inputs),
    but blockwise: the ``[N, V]`` logits, their softmax and their gradient never
    exist. Memory is a few ``token_block × vocab_block`` blocks plus the inputs
    and the gradients themselves.

    Every option of :func:`jaxce.cross_entropy` for class-index targets is
    supported and has the same meaning (``weight``, ``ignore_index``, the three
    reductions, ``label_smoothing``, ``z_loss``, ``softcap``). In particular
    ``z_loss`` adds ``z·lse²`` to each non-ignored position's loss, scaled by the
    target's class weight ``w_t`` like the nll term, so that ``mean`` (which
    divides by ``Σ w_t``) stays a weighted mean.

    Differentiable (reverse mode) with respect to ``hidden``, ``kernel``, ``bias``,
    ``weight`` and a traced ``label_smoothing``. The gradients are a
    ``custom_vjp``: forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is
    not supported; use :func:`jaxce.cross_entropy` on materialised logits for that.

    Args:
      hidden: floating array ``(..., D)`` (e.g. ``(batch, seq, D)``), or ``(D,)``
        for a single position.
      kernel: floating array ``(D, V)``, the Flax ``nn.Dense`` layout, or ``(V, D)``
        with ``kernel_layout="vd"`` (a tied embedding table, passed as it is).
      target: integer class indices of shape ``hidden.shape[:-1]``.
      bias: optional floating ``(V,)``.
      weight: optional floating ``(V,)`` class weights.
      ignore_index: target value whose positions contribute 0 to the loss and to
        the ``mean`` denominator, and exactly 0 to every gradient (even when their
        ``hidden`` rows are not finite).
      reduction: ``"none"`` (shape ``hidden.shape[:-1]``), ``"mean"`` or ``"sum"``.
      label_smoothing: ``ε`` in ``[0, 1]``, a Python number or a 0-d array.
      z_loss: ``z ≥ 0``: PaLM's auxiliary ``z·logsumexp²`` (see above). Default off.
      softcap: ``s > 0`` replaces the logits by ``s·tanh(logits / s)`` (Gemma 2).
      token_block: tokens per block. Default: 1024 for ``"recompute"``; for
        ``"forward"``, one block of the first ``min(N, D)`` tokens (their logits are
        kept in the kernel gradient's array), then blocks of ``N/16`` tokens clamped
        to ``[32, 512]`` and to ``2**25 / V`` (each holds ``token_block × V``
        logits). A given size applies to every block. Sizes are per device under
        sharding.
      vocab_block: classes per block. Default: a power of two in ``[128, 2048]``
        such that ``(token_block + 2·D)·vocab_block`` stays within ``N·V/32``
        (clamped to ``[2**18, 2**23]``). Neither size needs to divide its axis, nor
        be smaller than it: the last block is shifted back to end at the axis' end
        and masks the overlap.
      grad_mode: ``"recompute"`` (the backward pass recomputes the logits blocks,
        about ``8·N·D·V`` flops in all), ``"forward"`` (``sum``/``mean`` only:
        gradients computed during the forward pass of a differentiated call,
        Liger-Kernel's approach, about ``6·N·D·V`` flops) or ``"auto"``:
        ``"forward"`` for ``sum``/``mean`` when ``N ≤ 2·D`` and no ``token_block``
        is given (at least half the tokens have their logits kept in the kernel
        gradient) or when its token blocks have at least 128 tokens (``N ≥ 2048``
        with the default), else
        ``"recompute"`` (measured on CPU; see the README, "Large vocabularies").
        Without a kernel gradient (a frozen ``kernel``) no logits are kept there
        and only the token-block rule counts. A call that is not differentiated
        never computes gradients.
      kernel_layout: ``"dv"`` (default): ``kernel`` is ``(D, V)``; ``"vd"``: it is
        ``(V, D)``, e.g. the table of a tied ``nnx.Embed``. With ``"vd"`` the vocab
        blocks are row slices of the table, the logits product contracts its axis 1
        and its gradient comes out ``(V, D)``: unlike ``embedding.T`` with ``"dv"``,
        no copy of the whole table is transposed into or out of the call, and the
        compiled temporaries are those of ``"dv"`` on a ``(D, V)`` kernel. Values and
        gradients are those of ``"dv"`` on ``kernel.T``. On XLA:CPU the ``(V, D)``
        gradient product reads a transposed block per vocab block: with
        ``"forward"`` and small token blocks it is slower than ``"dv"`` (measured
        1.3–1.5x at ``V=16384, D=128, N=1024``), with ``"recompute"`` within ~5%.
      data_axis: mesh axis name (or tuple of names) over which ``hidden``'s first
        axis (and ``target``'s) is sharded (data parallelism).
      vocab_axis: mesh axis name (or tuple) over which ``kernel``'s class axis (axis 1,
        or 0 with ``kernel_layout="vd"``) (and
        ``bias``, ``weight``) is sharded (vocab parallelism). Each device then only
        ever touches its own slice of the vocabulary; three per-token statistics
        are combined across this axis.
      mesh: the :class:`jax.sharding.Mesh` for ``data_axis`` / ``vocab_axis``;
        default: the mesh set by :func:`jax.set_mesh`. Under
        ``AxisType.Explicit`` meshes the axes are read from the inputs' shardings
        when ``data_axis`` and ``vocab_axis`` are both None.

    Returns:
      The loss: 0-d unless ``reduction="none"``; the dtype of ``hidden``,
      ``kernel`` and ``bias`` promoted with ``weight``. A non-ignored target
      outside ``[0, V)`` gives NaN (see :func:`jaxce.checked`).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxce
      >>> hidden = jnp.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]])
      >>> kernel = jnp.array([[0.5, -1.0, 0.2, 0.7], [1.5, 0.3, -0.4, 0.1]])
      >>> target = jnp.array([3, 0, -100])
      >>> loss = jaxce.linear_cross_entropy(hidden, kernel, target, vocab_block=3)
      >>> ref = jaxce.cross_entropy(hidden @ kernel, target)
      >>> bool(jnp.allclose(loss, ref))
      True
      >>> dh, dk = jax.grad(jaxce.linear_cross_entropy, argnums=(0, 1))(hidden, kernel, target)
      >>> dh.shape, dk.shape
      ((3, 2), (2, 4))

      A tied embedding table ``(V, D)`` as it is:

      >>> table = kernel.T
      >>> loss_vd = jaxce.linear_cross_entropy(hidden, table, target, kernel_layout="vd")
      >>> bool(jnp.allclose(loss_vd, loss))
      True
      >>> jax.grad(jaxce.linear_cross_entropy, argnums=1)(
      ...     hidden, table, target, kernel_layout="vd").shape
      (4, 2)

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
      Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024.
      Chowdhery et al., "PaLM" (z-loss), 2022; Gemma Team, "Gemma 2" (soft-capping), 2024.
    """
    fn = "linear_cross_entropy"
    if not isinstance(kernel_layout, str) or kernel_layout not in KERNEL_LAYOUTS:
        raise ValueError(
            f"{fn}: `kernel_layout`={kernel_layout!r} is not valid; expected one of "
            f"{', '.join(repr(m) for m in KERNEL_LAYOUTS)}"
        )
    vd = kernel_layout == "vd"
    shape_name = "(V, D)" if vd else "(D, V)"
    # `floating=True` checks the dtype as passed, before a str or object array reaches JAX.
    hidden = _checks.as_array(fn, "hidden", hidden, floating=True)
    kernel = _checks.as_array(fn, "kernel", kernel, floating=True)
    if hidden.ndim < 1:
        raise ValueError(
            f"{fn}: `hidden` must have shape (..., D) with at least one axis, got a 0-d array"
        )
    if kernel.ndim != 2:
        hint = "" if vd else '; for tied embeddings of shape (V, D) pass kernel_layout="vd"'
        raise ValueError(
            f"{fn}: `kernel` must be 2-D {shape_name} (kernel_layout={kernel_layout!r}), got "
            f"shape {tuple(kernel.shape)}{hint}"
        )
    d_axis, class_axis = (1, 0) if vd else (0, 1)
    if kernel.shape[d_axis] != hidden.shape[-1]:
        other = "dv" if vd else "vd"
        raise ValueError(
            f"{fn}: `kernel` shape {tuple(kernel.shape)} does not match `hidden` shape "
            f"{tuple(hidden.shape)}: with kernel_layout={kernel_layout!r} the kernel is "
            f"{shape_name}, expected kernel.shape[{d_axis}] == hidden.shape[-1] "
            f"({hidden.shape[-1]}); a {'(D, V)' if vd else '(V, D)'} kernel needs "
            f"kernel_layout={other!r}"
        )
    num_classes = kernel.shape[class_axis]
    _check_target_kind(fn, target)
    target = _checks.as_array(fn, "target", target)
    logits_like = jax.ShapeDtypeStruct(tuple(hidden.shape[:-1]) + (num_classes,), hidden.dtype)
    target = _checks.check_class_target(fn, "hidden @ kernel", logits_like, target, hidden.ndim - 1)
    if bias is not None:
        bias = _checks.as_array(fn, "bias", bias, floating=True)
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(
                f"{fn}: `bias` must have shape ({num_classes},) (one entry per class, "
                f"kernel.shape[{class_axis}]), got {tuple(bias.shape)}"
            )
    weight = _checks.check_weight(fn, weight, num_classes)
    ignore_index = _checks.check_ignore_index(fn, ignore_index)
    reduction = _checks.check_reduction(fn, reduction)
    eps = _checks.check_label_smoothing(fn, label_smoothing)
    z_loss = _checks.check_nonnegative(fn, "z_loss", z_loss)
    softcap = None if softcap is None else _checks.check_positive(fn, "softcap", softcap)
    token_block = _check_block(fn, "token_block", token_block)
    vocab_block = _check_block(fn, "vocab_block", vocab_block)
    if not isinstance(grad_mode, str) or grad_mode not in GRAD_MODES:
        raise ValueError(
            f"{fn}: `grad_mode`={grad_mode!r} is not valid; expected one of "
            f"{', '.join(repr(m) for m in GRAD_MODES)}"
        )
    if grad_mode == "forward" and reduction == "none":
        raise ValueError(
            f"{fn}: `grad_mode`='forward' needs a scalar loss (reduction 'mean' or 'sum'), "
            f"got reduction={reduction!r}; use 'recompute' or 'auto'"
        )
    layout = sharding.resolve(
        fn,
        mesh=mesh,
        data_axis=data_axis,
        vocab_axis=vocab_axis,
        hidden=hidden,
        kernel=kernel,
        vocab_args={"bias": bias, "weight": weight},
        class_axis=class_axis,
    )
    out_dtype = _checks.promote_float_dtypes(
        *(a.dtype for a in (hidden, kernel, bias, weight) if a is not None)
    )
    return _linear_impl(
        hidden,
        kernel,
        target,
        bias,
        weight,
        None if isinstance(eps, float) else eps,
        ignore_index=ignore_index,
        reduction=reduction,
        static_eps=eps if isinstance(eps, float) else 0.0,
        z_loss=z_loss,
        softcap=softcap,
        token_block=token_block,
        vocab_block=vocab_block,
        grad_mode=grad_mode,
        layout=layout,
        kernel_layout=kernel_layout,
        check=checking.enabled(),
        out_dtype=out_dtype,
    )
