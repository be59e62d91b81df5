"""The gradient schedules: per-token coefficients and the blockwise gradient sweep.

:func:`row_grads` turns a token's statistics into the rule's coefficients (``g = a·p
- b·[c = t] - k·w`` per class) times its cotangent; :func:`block_grads` walks the
vocab blocks of one token block and adds ``dh = g·Kᵀ``, ``dK = hᵀ·g``, ``db = Σ g``;
:func:`gradient_sweep` is the token loop. The same sweep serves both schedules:
"recompute" calls it in the backward pass with the saved statistics and the row
cotangents; "forward" calls it in the forward pass, computing the statistics (and the
losses) on the way, with the first ``head`` tokens' logits held in the kernel
gradient's own array.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import rule
from jaxce.linear.blocks import (
    add_cols,
    add_kernel_block,
    bias_cols,
    cdt_zero,
    col_block,
    eps_of,
    kernel_block,
    local_target,
    masked,
    matmul,
    post,
    row_block,
    rows_of,
    shifted_block,
    slice_cols,
    token_loop,
    write_rows,
)
from jaxce.linear.plan import Need
from jaxce.linear.stats import Stats, add_terms, block_stats, row_loss, zero_terms


class RowGrads(NamedTuple):
    """Per-token gradient coefficients (already multiplied by the row cotangent)."""

    a: jax.Array  # of p_c
    b: jax.Array  # of [c = t]
    k: jax.Array | None  # of w_c (label smoothing)
    cw: jax.Array | None  # of (x_c - m) w.r.t. weight_c (label smoothing, weight grad)
    lse: jax.Array
    m: jax.Array
    d_w_t: jax.Array | None
    d_total: jax.Array | None
    d_eps: jax.Array | None


def row_grads(st: Stats, r, ok, w_t, total_weight, eps, need: Need, cfg) -> RowGrads:
    """The rule's coefficients ``a, b, k`` and the derivatives of the per-position loss
    with respect to its per-row inputs (``w_t``, ``Σw``, ``ε``, ``wsh``), each times
    the row cotangent ``r``. Rows that are not ``ok`` get exact zeros."""
    zero = cdt_zero(cfg)
    clean = functools.partial(jnp.where, ok)
    m, log_s, shifted_t = clean(st.m, zero), clean(st.log_s, zero), clean(st.shifted_t, zero)
    wsh = None if st.wsh is None else clean(st.wsh, zero)
    w_t_c = None if w_t is None else clean(w_t, zero)
    r = clean(r, zero)
    lse = m + log_s
    tw = cfg.num_classes if total_weight is None else total_weight
    co = rule.class_index_coefficients(
        lse=lse,
        w_t=w_t_c,
        total_weight=tw,
        eps=eps,
        num_classes=cfg.num_classes,
        z_loss=cfg.z_loss,
        smoothing=cfg.smoothing,
    )
    k = r * co.k if cfg.smoothing else None

    # Derivatives with respect to the rule's other inputs, by differentiating the rule.
    names, primals = [], []
    for name, value, wanted in (
        ("wsh", wsh, cfg.smoothing and need.weight),
        ("w_t", w_t_c, need.w_t),
        ("total", total_weight, need.total_weight),
        ("eps", eps, need.eps),
    ):
        if wanted and value is not None and not isinstance(value, (int, float)):
            names.append(name)
            primals.append(value)
    cts = dict.fromkeys(("wsh", "w_t", "total", "eps"))
    if names:

        def loss_of(*args):
            kw = dict(zip(names, args, strict=True))
            return rule.class_index_loss(
                shifted_t=shifted_t,
                log_s=log_s,
                lse=lse,
                wsh=kw.get("wsh", wsh),
                w_t=kw.get("w_t", w_t_c),
                total_weight=kw.get("total", tw),
                eps=kw.get("eps", eps),
                num_classes=cfg.num_classes,
                z_loss=cfg.z_loss,
            )

        _, vjp = jax.vjp(loss_of, *primals)
        cts.update(zip(names, vjp(r), strict=True))
    return RowGrads(
        a=r * co.a,
        b=r * co.b,
        k=k,
        cw=cts["wsh"],
        lse=lse,
        m=m,
        d_w_t=cts["w_t"],
        d_total=cts["total"],
        d_eps=cts["eps"],
    )


class Acc(NamedTuple):
    """Gradient accumulators over the local vocabulary (None when not wanted)."""

    kernel: jax.Array | None
    bias: jax.Array | None
    weight: jax.Array | None


def block_grads(
    h_b, t_b, ok_b, rg: RowGrads, kernel, bias, weight, acc: Acc, cfg, need, xs, buffered=False
):
    """Adds a token block's gradient to ``acc``; returns ``(dh_b, acc)``.

    Walks the vocab blocks; their logits are sliced from ``xs`` (all of the block's
    logits, when the forward sweep kept them) or recomputed. With ``buffered`` (the only
    token block, see :func:`gradient_sweep`) they are read from the first rows of
    ``acc.kernel``, and each vocab block's kernel gradient overwrites the columns it was
    computed from.

    ``g = a·p - b·[c = t] - k·w`` (:func:`rule.class_index_coefficients`), times
    ``1 - (x/s)²`` under a softcap; ``dh = g·Kᵀ``, ``dK = hᵀ·g``, ``db = Σ g``. The two
    products read their operands in the logits matmul's dtype (``g`` rounded to it for
    half-precision inputs, as the materialised version's bfloat16 logits gradient is)
    and accumulate in the compute dtype: no float32 copy of a bfloat16 kernel is made,
    and the products run at the half-precision rate where there is one.
    """
    zero = cdt_zero(cfg)
    # Positions that are not counted contribute exactly zero even when their hidden
    # state (or a kernel entry) is not finite: selected away, never multiplied by 0.
    hm = jnp.where(ok_b[:, None], h_b, jnp.zeros((), h_b.dtype)).astype(cfg.mdt)
    # XLA:CPU transposes a product's contracted-first operand on every call: once per
    # token block instead of once per vocab block, when the budget allows.
    hmt = hm.T if need.kernel and cfg.transpose_hidden and not cfg.vd else None
    dh0 = jnp.zeros((h_b.shape[0], cfg.d), cfg.cdt) if need.hidden else None

    def step(j, carry):
        dh, acc = carry
        start, cols, colmask = col_block(j, cfg)
        if buffered:
            # A shifted last block also reads columns that already hold kernel gradient;
            # they are masked below like every overlap column.
            if cfg.vd:
                raw = lax.dynamic_slice(acc.kernel, (start, 0), (cfg.bv, h_b.shape[0])).T
            else:
                raw = lax.dynamic_slice(acc.kernel, (0, start), (h_b.shape[0], cfg.bv))
        elif xs is None:
            raw = matmul(h_b, kernel, start, cfg)
        else:
            raw = xs if cfg.nb == 1 else slice_cols(xs, start, cfg.bv)
        x = post(raw, bias_cols(bias, start, cfg), cfg)
        w_blk = None if weight is None else slice_cols(weight, start, cfg.bv).astype(cfg.cdt)
        g = rg.a[:, None] * jnp.exp(x - rg.lse[:, None])
        g = g - jnp.where(cols[None, :] == t_b[:, None], rg.b[:, None], zero)
        if rg.k is not None:
            g = g - rg.k[:, None] * (1 if w_blk is None else w_blk[None, :])
        if cfg.softcap is not None:
            g = g * (1 - jnp.square(x / cfg.softcap))
        mask = masked(colmask, ok_b[:, None], False)
        g = jnp.where(mask, g, zero)
        gm = g.astype(cfg.mdt)
        if need.hidden:
            k = kernel_block(kernel, start, cfg).astype(cfg.mdt)
            if buffered:
                dh = add_product_by_rows(dh, gm, k, cfg)
            else:
                dims = (((1,), (0 if cfg.vd else 1,)), ((), ()))
                dh = dh + lax.dot_general(gm, k, dims, preferred_element_type=cfg.cdt)
        d_k, d_b, d_w = acc
        if need.kernel:
            dims = (((0,), (0,)), ((), ()))
            if cfg.vd:  # gᵀ·h, the (bv, d) block of a (v, d) gradient
                d_kb = lax.dot_general(gm, hm, dims, preferred_element_type=cfg.cdt)
            elif hmt is None:
                d_kb = lax.dot_general(hm, gm, dims, preferred_element_type=cfg.cdt)
            else:
                d_kb = jnp.matmul(hmt, gm, preferred_element_type=cfg.cdt)
            if buffered and cfg.vd:
                if colmask is not None:
                    d_kb = jnp.where(colmask[:, None], d_kb, kernel_block(d_k, start, cfg))
                d_k = lax.dynamic_update_slice(d_k, d_kb, (start, 0))
            elif buffered:
                d_kb = masked(colmask, d_kb, slice_cols(d_k, start, cfg.bv))
                d_k = lax.dynamic_update_slice(d_k, d_kb, (0, start))
            else:
                d_k = add_kernel_block(d_k, d_kb, start, cfg)
        if need.bias:
            d_b = add_cols(d_b, jnp.sum(g, axis=0), start)
        if need.weight and rg.cw is not None:
            sh = jnp.where(mask, x - rg.m[:, None], zero)
            d_w = add_cols(d_w, jnp.sum(rg.cw[:, None] * sh, axis=0), start)
        return dh, Acc(d_k, d_b, d_w)

    dh, acc = step(0, (dh0, acc)) if cfg.nb == 1 else lax.fori_loop(0, cfg.nb, step, (dh0, acc))
    if need.hidden:
        dh = jnp.where(ok_b[:, None], dh, zero)
    return dh, acc


def add_product_by_rows(dh, gm, k, cfg):
    """``dh + gm @ kᵀ`` updated in place, ``vocab_block`` rows at a time: a single
    product would hold a second ``dh``-sized array, which the kernel-gradient buffer's
    memory budget (a few ``vocab_block``-wide blocks) does not allow."""
    rows = dh.shape[0]
    size = min(rows, cfg.bv)
    chunks = -(-rows // size)
    dims = (((1,), (0 if cfg.vd else 1,)), ((), ()))

    def chunk(q, dh):
        start, new = shifted_block(q, size, rows)
        prod = lax.dot_general(
            lax.dynamic_slice_in_dim(gm, start, size, axis=0),
            k,
            dims,
            preferred_element_type=cfg.cdt,
        )
        cur = lax.dynamic_slice_in_dim(dh, start, size, axis=0)
        return write_rows(dh, cur + prod, new, start)

    # A loop, not unrolled chunks: XLA would schedule every chunk's product at once.
    return chunk(0, dh) if chunks == 1 else lax.fori_loop(0, chunks, chunk, dh)


def empty_acc(cfg, need):
    cdt = cfg.cdt
    return Acc(
        jnp.zeros((cfg.v, cfg.d) if cfg.vd else (cfg.d, cfg.v), cdt) if need.kernel else None,
        jnp.zeros((cfg.v,), cdt) if need.bias else None,
        jnp.zeros((cfg.v,), cdt) if need.weight and cfg.smoothing else None,
    )


def gradient_sweep(cfg, need, a: dict):
    """Gradients of ``Σ_i r_i·loss_i`` token block by token block, with ``r = a["r"]``
    (1 on every counted token when None). The statistics are ``a["m"]`` etc. when saved
    by the forward pass; otherwise they are computed here, with the losses (whose sum is
    returned). Returns ``((loss_sum, term_sums), dh, acc, d_w_t, d_total, d_eps)``."""
    n, cdt = cfg.n, cfg.cdt
    zero = cdt_zero(cfg)
    saved = a["m"] is not None
    # The kernel gradient's (d, v) array holds the logits of the first `head` ≤ d tokens
    # until each vocab block's gradient replaces them: the forward schedule's matmul
    # count with no logits-sized temporary. The other tokens then add to it block by block.
    buffered = cfg.head > 0 and not saved
    if buffered and not (need.kernel and cfg.head <= min(n, cfg.d)):
        raise AssertionError(f"kernel buffer without a place for the logits: {cfg}, {need}")
    keys = ("hidden", "t", "valid", "bad", "w_t", "r", "m", "log_s", "shifted_t", "wsh")
    rows_in = {k: a[k] for k in keys}
    init = (
        (zero, zero_terms(cfg)),
        jnp.zeros((n, cfg.d), cdt) if need.hidden else None,
        empty_acc(cfg, need),
        jnp.zeros((n,), cdt) if need.w_t else None,
        zero,
        zero,
    )

    def phase(c, offset, head):
        """The loop body over the ``c.n`` tokens from row ``offset`` (``head``: the one
        block whose logits go in the kernel gradient)."""

        def body(b, carry):
            loss_sum, dh, acc, d_w_t, d_total, d_eps = carry
            start, new = row_block(b, c)
            start = start + offset
            r = rows_of(rows_in, start, c)
            valid, bad = r["valid"] & new, r["bad"] & new
            ok = valid & ~bad
            t_b = local_target(r["t"], c)
            x = None
            if saved:
                st = Stats(r["m"], r["log_s"], r["shifted_t"], r["wsh"])
            else:
                st, x = block_stats(
                    r["hidden"],
                    t_b,
                    a["kernel"],
                    a["bias"],
                    a["weight"],
                    c,
                    full=True,
                    sink=acc.kernel if head else None,
                )
                if head:
                    acc, x = acc._replace(kernel=x), None
                loss_b, terms_b = row_loss(st, r["w_t"], a["total"], eps_of(c, a), valid, bad, c)
                loss_sum = (loss_sum[0] + jnp.sum(loss_b), add_terms(loss_sum[1], terms_b))
            cot = ok.astype(cdt) if r["r"] is None else r["r"]
            rg = row_grads(st, cot, ok, r["w_t"], a["total"], eps_of(c, a), need, c)
            dh_b, acc = block_grads(
                r["hidden"],
                t_b,
                ok,
                rg,
                a["kernel"],
                a["bias"],
                a["weight"],
                acc,
                c,
                need,
                x,
                buffered=head,
            )
            if need.hidden:
                dh = dh_b if head and c.n == n else write_rows(dh, dh_b, new, start)
            if need.w_t:
                d_w_t = write_rows(d_w_t, rg.d_w_t, new, start)
            if need.total_weight:
                d_total = d_total + rg.d_total
            if need.eps:
                d_eps = d_eps + rg.d_eps
            return loss_sum, dh, acc, d_w_t, d_total, d_eps

        return body

    if not buffered:
        return token_loop(cfg, phase(cfg, 0, False), init)
    first = cfg._replace(n=cfg.head, bt=cfg.head)
    carry = phase(first, 0, True)(0, init)
    if cfg.head == n:
        return carry
    rest = cfg._replace(n=n - cfg.head, bt=min(cfg.bt, n - cfg.head))
    return token_loop(rest, phase(rest, cfg.head, False), carry)
