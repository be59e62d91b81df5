"""The forward sweep: the online statistics of :mod:`jaxce.rule` over vocab blocks.

For each token block the vocabulary is swept in blocks with an online logsumexp,
keeping per token only the running max ``m``, ``Σ exp(x - m)``, the target logit and,
for label smoothing, ``Σ_c w_c (x_c - m)`` rescaled when ``m`` moves
(:func:`block_stats`). The per-position loss is then the rule's own function
(:func:`row_loss`); :func:`forward_values` runs the token loop of a call that is not
differentiated, or of the "recompute" schedule's forward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import rule, sharding
from jaxce.linear.blocks import (
    bias_cols,
    cdt_zero,
    col_block,
    eps_of,
    local_target,
    masked,
    matmul,
    post,
    row_block,
    rows_of,
    slice_cols,
    token_loop,
    write_rows,
)


class Stats(NamedTuple):
    """Per-token statistics of :mod:`jaxce.rule` (``m`` already made finite)."""

    m: jax.Array
    log_s: jax.Array
    shifted_t: jax.Array
    wsh: jax.Array | None


def update_stats(carry, raw, b_blk, cols, colmask, t_b, w_blk, cfg):
    """One step of the online statistics over a logits block (the matmul's output
    ``raw`` (bt, bv), and the block's bias ``b_blk`` (1, bv) or None)."""
    m, s, xt, wsh, wseen = carry
    x = post(raw, b_blk, cfg)
    neg = jnp.full((), -jnp.inf, cfg.cdt)
    xm = masked(colmask, x, neg)
    m_new = jnp.maximum(m, jnp.max(xm, axis=1))
    ms = sharding.safe_max(m_new)
    s = s * jnp.exp(m - ms) + jnp.sum(jnp.exp(xm - ms[:, None]), axis=1)
    # The target logit by a gather of one entry per row (a masked sum over the block
    # would materialise a block-sized temporary); a target in the columns that the
    # shifted last block shares with the previous one was counted there.
    first = cols[0]
    idx = t_b - first
    fresh = t_b >= (first if colmask is None else first + jnp.sum(~colmask, dtype=jnp.int32))
    here = fresh & (idx < x.shape[1])
    at = jnp.clip(idx, 0, x.shape[1] - 1)
    picked = jnp.take_along_axis(raw, at[:, None], axis=1)[:, 0]
    picked = post(picked, None if b_blk is None else jnp.take(b_blk[0], at), cfg)
    xt = xt + jnp.where(here, picked, cdt_zero(cfg))
    if wsh is not None:
        sh = masked(colmask, x - ms[:, None], cdt_zero(cfg))
        if w_blk is None:
            blk_w = masked(colmask, jnp.ones((x.shape[1],), cfg.cdt), cdt_zero(cfg))
        else:
            blk_w = masked(colmask, w_blk.astype(cfg.cdt), cdt_zero(cfg))
        wsh = wsh + (sharding.safe_max(m) - ms) * wseen + jnp.sum(sh * blk_w[None, :], axis=1)
        wseen = wseen + jnp.sum(blk_w)
    return m_new, s, xt, wsh, wseen


def block_stats(h_b, t_b, kernel, bias, weight, cfg, full: bool = False, sink=None):
    """The statistics of a token block over all (local) classes, combined across the
    vocab axis. Returns ``(stats, x)``: ``x`` is the block's matmul output (logits before
    bias and softcap) for every local class: computed at once (``full``, or a single
    vocab block) or, when a ``sink`` array of shape ``(≥ bt, v)`` is given, written
    block by block into its first ``bt`` rows (its first ``bt`` columns, transposed, of a
    ``(v, ≥ bt)`` sink under ``cfg.vd``) and returned in it; else None."""
    bt = h_b.shape[0]
    wsh0 = jnp.zeros((bt,), cfg.cdt) if cfg.smoothing else None
    init = (
        jnp.full((bt,), -jnp.inf, cfg.cdt),
        jnp.zeros((bt,), cfg.cdt),
        jnp.zeros((bt,), cfg.cdt),
        wsh0,
        cdt_zero(cfg),
    )

    # With `full`, one matmul gives the logits of every local class; the statistics are
    # still gathered block by block from slices of it, so that the bias-added (and
    # softcapped) values are only ever held for one block.
    at_once = (full or cfg.nb == 1) and sink is None
    xs = matmul(h_b, kernel, 0, cfg._replace(bv=cfg.v)) if at_once else None

    def step(j, carry):
        carry, sink = carry
        start, cols, colmask = col_block(j, cfg)
        if xs is None:
            raw = matmul(h_b, kernel, start, cfg)
        else:
            raw = xs if cfg.nb == 1 else slice_cols(xs, start, cfg.bv)
        if sink is not None:
            if cfg.vd:  # a (v, d) array holds the logits transposed
                sink = lax.dynamic_update_slice(sink, raw.T.astype(sink.dtype), (start, 0))
            else:
                sink = lax.dynamic_update_slice(sink, raw, (0, start))
        w_blk = None if weight is None else slice_cols(weight, start, cfg.bv)
        b_blk = bias_cols(bias, start, cfg)
        return update_stats(carry, raw, b_blk, cols, colmask, t_b, w_blk, cfg), sink

    init = (init, sink)
    carry, sink = step(0, init) if cfg.nb == 1 else lax.fori_loop(0, cfg.nb, step, init)
    m, s, xt, wsh = sharding.combine_stats(*carry, cfg.layout)
    return Stats(m, jnp.log(s), xt - m, wsh), (xs if sink is None else sink)


def row_loss(st: Stats, w_t, total_weight, eps, valid, bad, cfg):
    """``(loss, terms)`` per token: the combined loss, and the block's sums of the rule's
    terms (:class:`rule.Terms`, 0-d) when ``cfg.split_terms``, else None."""
    terms = rule.class_index_terms(
        shifted_t=st.shifted_t,
        log_s=st.log_s,
        lse=st.m + st.log_s,
        wsh=st.wsh,
        w_t=w_t,
        total_weight=cfg.num_classes if total_weight is None else total_weight,
        z_loss=cfg.z_loss,
    )
    loss = rule.finalize(rule.combine_terms(terms, eps, cfg.num_classes), valid, bad)
    if not cfg.split_terms:
        return loss, None
    return loss, sum_terms(rule.finalize_terms(terms, valid, bad))


def sum_terms(terms):
    return rule.Terms(*(None if v is None else jnp.sum(v) for v in terms))


def add_terms(acc, terms):
    if acc is None:
        return None
    return rule.Terms(*(None if a is None else a + b for a, b in zip(acc, terms, strict=True)))


def zero_terms(cfg):
    if not cfg.split_terms:
        return None
    z = cdt_zero(cfg)
    return rule.Terms(z, z if cfg.smoothing else None, z if cfg.z_loss else None)


def forward_values(cfg, a: dict, with_stats: bool):
    """Per-token losses (and their statistics, for the backward pass)."""
    n = cfg.n
    vec = jnp.zeros((n,), cfg.cdt)
    stats0 = (vec, vec, vec, vec if cfg.smoothing else None) if with_stats else None
    init = (vec, zero_terms(cfg), stats0)
    rows_in = {k: a[k] for k in ("hidden", "t", "valid", "bad", "w_t")}

    def body(b, carry):
        loss, terms, stats = carry
        start, new = row_block(b, cfg)
        r = rows_of(rows_in, start, cfg)
        t_b = local_target(r["t"], cfg)
        st, _ = block_stats(r["hidden"], t_b, a["kernel"], a["bias"], a["weight"], cfg)
        loss_b, terms_b = row_loss(
            st, r["w_t"], a["total"], eps_of(cfg, a), r["valid"] & new, r["bad"] & new, cfg
        )
        loss = write_rows(loss, loss_b, new, start)
        if stats is not None:
            stats = tuple(
                None if s is None else write_rows(s, v, new, start)
                for s, v in zip(stats, st, strict=True)
            )
        return loss, add_terms(terms, terms_b), stats

    loss, terms, stats = token_loop(cfg, body, init)
    return loss, terms, (None if stats is None else Stats(*stats))
