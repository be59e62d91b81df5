"""``linear_cross_entropy``: ``cross_entropy(hidden @ kernel + bias, target)`` without the logits.

The ``[N, V]`` logits of a language-model head are never materialised. The tokens
are processed in blocks of ``token_block`` rows; for each block the vocabulary is
swept in blocks of ``vocab_block`` columns with an online logsumexp, keeping per
token only the statistics of :mod:`jaxce.rule` (running max ``m``, ``Σ exp(x - m)``,
the target logit and, for label smoothing, ``Σ_c w_c (x_c - m)`` rescaled when
``m`` moves). The per-position loss and its derivative are then the rule's own
functions, so this path agrees with :func:`jaxce.cross_entropy` by construction.

Gradients (a ``custom_vjp``) come in two schedules:

* ``"recompute"``: the forward pass keeps four numbers per token; the backward pass
  recomputes each ``token_block × vocab_block`` logits block and turns it into
  gradient blocks at once (about ``8·N·D·V`` flops in all). Any reduction.
* ``"forward"``: for ``sum``/``mean`` the upstream gradient is a scalar, so the
  gradients are computed during the forward pass of a differentiated call and only
  scaled in the backward pass (Liger-Kernel's approach). Each token block's logits
  for all classes come from one matmul and are read block by block from there:
  about ``6·N·D·V`` flops, the materialised version's count, for a
  ``token_block × V`` buffer. The first ``min(N, D)`` tokens (per device) need no
  such buffer: before any other token block adds to it, the ``(D, V)`` kernel
  gradient, which has to exist anyway, holds their logits (written vocab block by
  vocab block) until each vocab block's gradient replaces them. With ``N ≤ D`` that
  is every token.

The bias and the softcap are applied where the logits are read (fused into the
reductions), so only matmul outputs are ever held. The target logit is picked by a
gather of one entry per row, never by a block-sized masked sum.

Sharded inputs are handled by :mod:`jaxce.sharding` (``shard_map`` over the token
and vocab axes, statistics combined across the vocab axis).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import PartitionSpec as P

from jaxce import _checks, _spmd, checking, rule, sharding
from jaxce.losses import cross_entropy

__all__ = ["linear_cross_entropy"]

GRAD_MODES = ("auto", "forward", "recompute")

# Default block sizes, measured on a 2-core CPU (benchmarks/bench_linear.py). Blocks
# stay within a budget of a 32nd of the logits (N·V/32 values, clamped to [2**18, 2**23]):
# "recompute" takes 1024 tokens and the vocab block that fits with the two D×vocab_block
# kernel-side blocks (a slice of the kernel and its gradient); "forward" holds a token
# block's logits for every class, N/16 tokens clamped to [32, 512] and to 2**25 logits.
RECOMPUTE_TOKEN_BLOCK = 1024
VOCAB_BLOCK_RANGE = (128, 2048)
BUDGET_RANGE = (1 << 18, 1 << 23)
FORWARD_TOKEN_RANGE = (32, 512)
FORWARD_MAX_ELEMENTS = 1 << 25
# "auto" uses "forward" for sum/mean when its token block would be at least this large
# (or when the kernel gradient holds at least half the tokens' logits): with fewer
# tokens per block, reading and writing the kernel gradient for every block is slower
# on CPU than recomputing the logits.
AUTO_FORWARD_MIN_TOKENS = 128


class _Cfg(NamedTuple):
    """Static configuration of one fused call (per-device sizes)."""

    n: int  # tokens on this device
    v: int  # classes on this device
    d: int
    num_classes: int  # global V
    bt: int
    bv: int
    eps: float  # static label smoothing (a traced one is an argument)
    softcap: float | None
    z_loss: float
    smoothing: bool
    cdt: Any
    mdt: Any  # dtype the logits matmul reads its operands in
    layout: sharding.Layout | None
    # `mean` with label smoothing or z-loss: also sum the rule's terms apart, so that a
    # zero denominator gives torch's value (see `_linear_impl`).
    split_terms: bool = False
    # "forward": the first `head` (≤ d) tokens form one token block whose logits are held
    # in the kernel gradient's own array (see `_gradient_sweep`); all n when n ≤ d.
    head: int = 0
    # The kernel-gradient product reads a transposed copy of the token block's hidden
    # states (token_block × d), made once per token block (see `_block_grads`).
    transpose_hidden: bool = False

    @property
    def nt(self) -> int:
        return -(-self.n // self.bt)

    @property
    def nb(self) -> int:
        return -(-self.v // self.bv)


class _Need(NamedTuple):
    """Which gradients are wanted (static)."""

    hidden: bool
    kernel: bool
    bias: bool
    weight: bool  # the column term of Σ_c w_c·lp_c (label smoothing)
    w_t: bool
    total_weight: bool
    eps: bool


class _Stats(NamedTuple):
    """Per-token statistics of :mod:`jaxce.rule` (``m`` already made finite)."""

    m: jax.Array
    log_s: jax.Array
    shifted_t: jax.Array
    wsh: jax.Array | None


# --------------------------------------------------------------------------- blocks


def _zero(cfg):
    return jnp.zeros((), cfg.cdt)


def _slice_cols(a, start, size):
    return lax.dynamic_slice_in_dim(a, start, size, axis=a.ndim - 1)


def _add_cols(acc, upd, start):
    """``acc[..., start:start+size] += upd`` along the last axis."""
    size = upd.shape[-1]
    cur = lax.dynamic_slice_in_dim(acc, start, size, axis=acc.ndim - 1)
    return lax.dynamic_update_slice_in_dim(acc, cur + upd, start, axis=acc.ndim - 1)


def _col_block(j, cfg):
    """``(start, cols, colmask)`` of vocab block ``j``: the last block is moved back to
    end at ``v`` (no padding) and masks the columns an earlier block already covered.
    ``colmask`` is None when ``vocab_block`` divides the classes (nothing to mask)."""
    if cfg.v % cfg.bv == 0:
        start = j * cfg.bv
        return start, start + lax.iota(jnp.int32, cfg.bv), None
    start = jnp.minimum(j * cfg.bv, cfg.v - cfg.bv)
    cols = start + lax.iota(jnp.int32, cfg.bv)
    return start, cols, cols >= j * cfg.bv


def _masked(colmask, a, fill):
    """``a`` where the column is kept (``colmask`` along the last axis), else ``fill``."""
    if colmask is None:
        return a
    return jnp.where(colmask.reshape((1,) * (a.ndim - 1) + (-1,)), a, fill)


def _matmul(h_b, kernel, start, cfg):
    """``h_b @ kernel[:, start:start+bv]`` in the compute dtype (before bias and softcap,
    which :func:`_post` applies where the logits are read, so that only the matmul's
    output is ever held)."""
    k = _slice_cols(kernel, start, cfg.bv).astype(cfg.mdt)
    return lax.dot_general(
        h_b.astype(cfg.mdt), k, (((1,), (0,)), ((), ())), preferred_element_type=cfg.cdt
    )


def _post(raw, b, cfg):
    """The logits from the matmul's output: ``+ bias``, then ``s·tanh(·/s)``."""
    x = raw if b is None else raw + b.astype(cfg.cdt)
    if cfg.softcap is not None:
        x = cfg.softcap * jnp.tanh(x / cfg.softcap)
    return x


def _bias_cols(bias, start, cfg):
    return None if bias is None else _slice_cols(bias, start, cfg.bv)[None, :]


def _update(carry, raw, b_blk, cols, colmask, t_b, w_blk, cfg):
    """One step of the online statistics over a logits block (the matmul's output
    ``raw`` (bt, bv), and the block's bias ``b_blk`` (1, bv) or None)."""
    m, s, xt, wsh, wseen = carry
    x = _post(raw, b_blk, cfg)
    neg = jnp.full((), -jnp.inf, cfg.cdt)
    xm = _masked(colmask, x, neg)
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
    picked = _post(picked, None if b_blk is None else jnp.take(b_blk[0], at), cfg)
    xt = xt + jnp.where(here, picked, _zero(cfg))
    if wsh is not None:
        sh = _masked(colmask, x - ms[:, None], _zero(cfg))
        if w_blk is None:
            blk_w = _masked(colmask, jnp.ones((x.shape[1],), cfg.cdt), _zero(cfg))
        else:
            blk_w = _masked(colmask, w_blk.astype(cfg.cdt), _zero(cfg))
        wsh = wsh + (sharding.safe_max(m) - ms) * wseen + jnp.sum(sh * blk_w[None, :], axis=1)
        wseen = wseen + jnp.sum(blk_w)
    return m_new, s, xt, wsh, wseen


def _block_stats(h_b, t_b, kernel, bias, weight, cfg, full: bool = False, sink=None):
    """The statistics of a token block over all (local) classes, combined across the
    vocab axis. Returns ``(stats, x)``: ``x`` is the block's matmul output (logits before
    bias and softcap) for every local class: computed at once (``full``, or a single
    vocab block) or, when a ``sink`` array of shape ``(≥ bt, v)`` is given, written
    block by block into its first ``bt`` rows and returned in it; else None."""
    bt = h_b.shape[0]
    wsh0 = jnp.zeros((bt,), cfg.cdt) if cfg.smoothing else None
    init = (
        jnp.full((bt,), -jnp.inf, cfg.cdt),
        jnp.zeros((bt,), cfg.cdt),
        jnp.zeros((bt,), cfg.cdt),
        wsh0,
        _zero(cfg),
    )

    # With `full`, one matmul gives the logits of every local class; the statistics are
    # still gathered block by block from slices of it, so that the bias-added (and
    # softcapped) values are only ever held for one block.
    at_once = (full or cfg.nb == 1) and sink is None
    xs = _matmul(h_b, kernel, 0, cfg._replace(bv=cfg.v)) if at_once else None

    def step(j, carry):
        carry, sink = carry
        start, cols, colmask = _col_block(j, cfg)
        if xs is None:
            raw = _matmul(h_b, kernel, start, cfg)
        else:
            raw = xs if cfg.nb == 1 else _slice_cols(xs, start, cfg.bv)
        if sink is not None:
            sink = lax.dynamic_update_slice(sink, raw, (0, start))
        w_blk = None if weight is None else _slice_cols(weight, start, cfg.bv)
        b_blk = _bias_cols(bias, start, cfg)
        return _update(carry, raw, b_blk, cols, colmask, t_b, w_blk, cfg), sink

    init = (init, sink)
    carry, sink = step(0, init) if cfg.nb == 1 else lax.fori_loop(0, cfg.nb, step, init)
    m, s, xt, wsh = sharding.combine_stats(*carry, cfg.layout)
    return _Stats(m, jnp.log(s), xt - m, wsh), (xs if sink is None else sink)


def _row_loss(st: _Stats, w_t, total_weight, eps, valid, bad, cfg):
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
    return loss, _sum_terms(rule.finalize_terms(terms, valid, bad))


def _sum_terms(terms):
    return rule.Terms(*(None if v is None else jnp.sum(v) for v in terms))


def _add_terms(acc, terms):
    if acc is None:
        return None
    return rule.Terms(*(None if a is None else a + b for a, b in zip(acc, terms, strict=True)))


def _zero_terms(cfg):
    if not cfg.split_terms:
        return None
    z = _zero(cfg)
    return rule.Terms(z, z if cfg.smoothing else None, z if cfg.z_loss else None)


class _RowGrads(NamedTuple):
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


def _row_grads(st: _Stats, r, ok, w_t, total_weight, eps, need: _Need, cfg) -> _RowGrads:
    """The rule's coefficients ``a, b, k`` and the derivatives of the per-position loss
    with respect to its per-row inputs (``w_t``, ``Σw``, ``ε``, ``wsh``), each times
    the row cotangent ``r``. Rows that are not ``ok`` get exact zeros."""
    zero = _zero(cfg)
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
    return _RowGrads(
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


class _Acc(NamedTuple):
    """Gradient accumulators over the local vocabulary (None when not wanted)."""

    kernel: jax.Array | None
    bias: jax.Array | None
    weight: jax.Array | None


def _block_grads(
    h_b, t_b, ok_b, rg: _RowGrads, kernel, bias, weight, acc: _Acc, cfg, need, xs, buffered=False
):
    """Adds a token block's gradient to ``acc``; returns ``(dh_b, acc)``.

    Walks the vocab blocks; their logits are sliced from ``xs`` (all of the block's
    logits, when the forward sweep kept them) or recomputed. With ``buffered`` (the only
    token block, see :func:`_gradient_sweep`) they are read from the first rows of
    ``acc.kernel``, and each vocab block's kernel gradient overwrites the columns it was
    computed from.

    ``g = a·p - b·[c = t] - k·w`` (:func:`rule.class_index_coefficients`), times
    ``1 - (x/s)²`` under a softcap; ``dh = g·Kᵀ``, ``dK = hᵀ·g``, ``db = Σ g``. The two
    products read their operands in the logits matmul's dtype (``g`` rounded to it for
    half-precision inputs, as the materialised version's bfloat16 logits gradient is)
    and accumulate in the compute dtype: no float32 copy of a bfloat16 kernel is made,
    and the products run at the half-precision rate where there is one.
    """
    zero = _zero(cfg)
    hm = h_b.astype(cfg.mdt)
    # XLA:CPU transposes a product's contracted-first operand on every call: once per
    # token block instead of once per vocab block, when the budget allows.
    hmt = hm.T if need.kernel and cfg.transpose_hidden else None
    dh0 = jnp.zeros((h_b.shape[0], cfg.d), cfg.cdt) if need.hidden else None

    def step(j, carry):
        dh, acc = carry
        start, cols, colmask = _col_block(j, cfg)
        if buffered:
            # A shifted last block also reads columns that already hold kernel gradient;
            # they are masked below like every overlap column.
            raw = lax.dynamic_slice(acc.kernel, (0, start), (h_b.shape[0], cfg.bv))
        elif xs is None:
            raw = _matmul(h_b, kernel, start, cfg)
        else:
            raw = xs if cfg.nb == 1 else _slice_cols(xs, start, cfg.bv)
        x = _post(raw, _bias_cols(bias, start, cfg), cfg)
        w_blk = None if weight is None else _slice_cols(weight, start, cfg.bv).astype(cfg.cdt)
        g = rg.a[:, None] * jnp.exp(x - rg.lse[:, None])
        g = g - jnp.where(cols[None, :] == t_b[:, None], rg.b[:, None], zero)
        if rg.k is not None:
            g = g - rg.k[:, None] * (1 if w_blk is None else w_blk[None, :])
        if cfg.softcap is not None:
            g = g * (1 - jnp.square(x / cfg.softcap))
        mask = _masked(colmask, ok_b[:, None], False)
        g = jnp.where(mask, g, zero)
        gm = g.astype(cfg.mdt)
        if need.hidden:
            k = _slice_cols(kernel, start, cfg.bv).astype(cfg.mdt)
            if buffered:
                dh = _add_product_by_rows(dh, gm, k, cfg)
            else:
                dims = (((1,), (1,)), ((), ()))
                dh = dh + lax.dot_general(gm, k, dims, preferred_element_type=cfg.cdt)
        d_k, d_b, d_w = acc
        if need.kernel:
            dims = (((0,), (0,)), ((), ()))
            if hmt is None:
                d_kb = lax.dot_general(hm, gm, dims, preferred_element_type=cfg.cdt)
            else:
                d_kb = jnp.matmul(hmt, gm, preferred_element_type=cfg.cdt)
            if buffered:
                d_kb = _masked(colmask, d_kb, _slice_cols(d_k, start, cfg.bv))
                d_k = lax.dynamic_update_slice(d_k, d_kb, (0, start))
            else:
                d_k = _add_cols(d_k, d_kb, start)
        if need.bias:
            d_b = _add_cols(d_b, jnp.sum(g, axis=0), start)
        if need.weight and rg.cw is not None:
            sh = jnp.where(mask, x - rg.m[:, None], zero)
            d_w = _add_cols(d_w, jnp.sum(rg.cw[:, None] * sh, axis=0), start)
        return dh, _Acc(d_k, d_b, d_w)

    if cfg.nb == 1:
        return step(0, (dh0, acc))
    return lax.fori_loop(0, cfg.nb, step, (dh0, acc))


def _add_product_by_rows(dh, gm, k, cfg):
    """``dh + gm @ kᵀ`` updated in place, ``vocab_block`` rows at a time: a single
    product would hold a second ``dh``-sized array, which the kernel-gradient buffer's
    memory budget (a few ``vocab_block``-wide blocks) does not allow."""
    rows = dh.shape[0]
    size = min(rows, cfg.bv)
    chunks = -(-rows // size)
    dims = (((1,), (1,)), ((), ()))

    def chunk(q, dh):
        start, new = _shifted_block(q, size, rows)
        prod = lax.dot_general(
            lax.dynamic_slice_in_dim(gm, start, size, axis=0),
            k,
            dims,
            preferred_element_type=cfg.cdt,
        )
        cur = lax.dynamic_slice_in_dim(dh, start, size, axis=0)
        return _write_rows(dh, cur + prod, new, start)

    # A loop, not unrolled chunks: XLA would schedule every chunk's product at once.
    return chunk(0, dh) if chunks == 1 else lax.fori_loop(0, chunks, chunk, dh)


# --------------------------------------------------------------------------- token loop


def _eps(cfg, a):
    return cfg.eps if a["eps"] is None else a["eps"]


def _shifted_block(b, size, total):
    """``(start, new)`` of block ``b`` of ``size`` rows out of ``total``: the last block
    is moved back to end at ``total``, and ``new`` masks the rows an earlier block had."""
    start = jnp.minimum(b * size, total - size)
    rows = start + lax.iota(jnp.int32, size)
    return start, rows >= b * size


def _row_block(b, cfg):
    """``(start, new)`` of token block ``b`` (the last one moved back like columns)."""
    return _shifted_block(b, cfg.bt, cfg.n)


def _write_rows(out, blk, new, start):
    cur = lax.dynamic_slice_in_dim(out, start, blk.shape[0], axis=0)
    new = new.reshape(new.shape + (1,) * (blk.ndim - 1))
    return lax.dynamic_update_slice_in_dim(out, jnp.where(new, blk, cur), start, axis=0)


def _token_loop(cfg, body, init):
    if cfg.nt == 1:
        return body(0, init)
    return lax.fori_loop(0, cfg.nt, body, init)


def _rows(arrays: dict, start, cfg) -> dict:
    return {
        k: None if a is None else lax.dynamic_slice_in_dim(a, start, cfg.bt, axis=0)
        for k, a in arrays.items()
    }


def _local_target(t, cfg):
    return t - sharding.vocab_offset(cfg.layout, cfg.v)


def _forward_values(cfg, a: dict, with_stats: bool):
    """Per-token losses (and their statistics, for the backward pass)."""
    n = cfg.n
    vec = jnp.zeros((n,), cfg.cdt)
    stats0 = (vec, vec, vec, vec if cfg.smoothing else None) if with_stats else None
    init = (vec, _zero_terms(cfg), stats0)
    rows_in = {k: a[k] for k in ("hidden", "t", "valid", "bad", "w_t")}

    def body(b, carry):
        loss, terms, stats = carry
        start, new = _row_block(b, cfg)
        r = _rows(rows_in, start, cfg)
        t_b = _local_target(r["t"], cfg)
        st, _ = _block_stats(r["hidden"], t_b, a["kernel"], a["bias"], a["weight"], cfg)
        loss_b, terms_b = _row_loss(
            st, r["w_t"], a["total"], _eps(cfg, a), r["valid"] & new, r["bad"] & new, cfg
        )
        loss = _write_rows(loss, loss_b, new, start)
        if stats is not None:
            stats = tuple(
                None if s is None else _write_rows(s, v, new, start)
                for s, v in zip(stats, st, strict=True)
            )
        return loss, _add_terms(terms, terms_b), stats

    loss, terms, stats = _token_loop(cfg, body, init)
    return loss, terms, (None if stats is None else _Stats(*stats))


def _empty_acc(cfg, need):
    cdt = cfg.cdt
    return _Acc(
        jnp.zeros((cfg.d, cfg.v), cdt) if need.kernel else None,
        jnp.zeros((cfg.v,), cdt) if need.bias else None,
        jnp.zeros((cfg.v,), cdt) if need.weight and cfg.smoothing else None,
    )


def _gradient_sweep(cfg, need, a: dict):
    """Gradients of ``Σ_i r_i·loss_i`` token block by token block, with ``r = a["r"]``
    (1 on every counted token when None). The statistics are ``a["m"]`` etc. when saved
    by the forward pass; otherwise they are computed here, with the losses (whose sum is
    returned). Returns ``((loss_sum, term_sums), dh, acc, d_w_t, d_total, d_eps)``."""
    n, cdt = cfg.n, cfg.cdt
    zero = _zero(cfg)
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
        (zero, _zero_terms(cfg)),
        jnp.zeros((n, cfg.d), cdt) if need.hidden else None,
        _empty_acc(cfg, need),
        jnp.zeros((n,), cdt) if need.w_t else None,
        zero,
        zero,
    )

    def phase(c, offset, head):
        """The loop body over the ``c.n`` tokens from row ``offset`` (``head``: the one
        block whose logits go in the kernel gradient)."""

        def body(b, carry):
            loss_sum, dh, acc, d_w_t, d_total, d_eps = carry
            start, new = _row_block(b, c)
            start = start + offset
            r = _rows(rows_in, start, c)
            valid, bad = r["valid"] & new, r["bad"] & new
            ok = valid & ~bad
            t_b = _local_target(r["t"], c)
            x = None
            if saved:
                st = _Stats(r["m"], r["log_s"], r["shifted_t"], r["wsh"])
            else:
                st, x = _block_stats(
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
                loss_b, terms_b = _row_loss(st, r["w_t"], a["total"], _eps(c, a), valid, bad, c)
                loss_sum = (loss_sum[0] + jnp.sum(loss_b), _add_terms(loss_sum[1], terms_b))
            cot = ok.astype(cdt) if r["r"] is None else r["r"]
            rg = _row_grads(st, cot, ok, r["w_t"], a["total"], _eps(c, a), need, c)
            dh_b, acc = _block_grads(
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
                dh = dh_b if head and c.n == n else _write_rows(dh, dh_b, new, start)
            if need.w_t:
                d_w_t = _write_rows(d_w_t, rg.d_w_t, new, start)
            if need.total_weight:
                d_total = d_total + rg.d_total
            if need.eps:
                d_eps = d_eps + rg.d_eps
            return loss_sum, dh, acc, d_w_t, d_total, d_eps

        return body

    if not buffered:
        return _token_loop(cfg, phase(cfg, 0, False), init)
    first = cfg._replace(n=cfg.head, bt=cfg.head)
    carry = phase(first, 0, True)(0, init)
    if cfg.head == n:
        return carry
    rest = cfg._replace(n=n - cfg.head, bt=min(cfg.bt, n - cfg.head))
    return _token_loop(rest, phase(rest, cfg.head, False), carry)


# --------------------------------------------------------------------------- custom_vjp

# The fused function's array arguments, in order; then the extra per-token arrays the
# backward pass passes along (row cotangents and saved statistics).
_ARGS = ("hidden", "kernel", "bias", "weight", "w_t", "total", "eps", "t", "valid", "bad")
_DIFF = ("hidden", "kernel", "bias", "weight", "w_t", "total", "eps")
_STATS = ("m", "log_s", "shifted_t", "wsh")
_ROW_KEYS = ("w_t", "t", "valid", "bad", "r") + _STATS
_ALL = _ARGS + ("r",) + _STATS


def _spec_table(layout: sharding.Layout) -> dict:
    lead, voc = layout.lead_spec, layout.vocab
    table = {
        "hidden": P(*lead, None),
        "kernel": P(None, voc),
        "bias": P(voc),
        "weight": P(voc),
        "total": P(),
        "eps": P(),
    }
    table.update({k: P(*lead) for k in _ROW_KEYS})
    return table


def _on_devices(cfg, fn, args: dict, out_specs):
    """Runs ``fn(a, lead_shape)`` on the local blocks: under ``shard_map`` when the call is
    laid out on a mesh, directly otherwise. Token arrays arrive with their leading axes
    and are flattened per device (no global reshape of a sharded axis is needed);
    ``lead_shape`` is the local leading shape, for ``fn`` to shape its outputs."""
    present = {k: v for k, v in args.items() if v is not None}

    def flat(kw):
        lead = kw["hidden"].shape[:-1]
        a = dict.fromkeys(_ALL)
        a.update(kw)
        a["hidden"] = a["hidden"].reshape(-1, cfg.d)
        for k in _ROW_KEYS:
            if a[k] is not None:
                a[k] = a[k].reshape(-1)
        return fn(a, lead)

    if cfg.layout is None:
        return flat(present)
    table = _spec_table(cfg.layout)
    if sharding.is_explicit(cfg.layout):
        # Under explicit axes shard_map takes its inputs as they are typed: lay out
        # the derived arrays (row cotangents, saved statistics) as declared.
        present = {k: jax.sharding.reshard(v, table[k]) for k, v in present.items()}
    mapped = jax.shard_map(
        flat,
        mesh=cfg.layout.mesh,
        in_specs=({k: table[k] for k in present},),
        out_specs=out_specs,
        check_vma=False,
    )
    return mapped(present)


def _need_of(perturbed: dict, args: dict) -> _Need:
    def want(k):
        return args[k] is not None and bool(perturbed[k])

    return _Need(
        hidden=want("hidden"),
        kernel=want("kernel"),
        bias=want("bias"),
        weight=want("weight"),
        w_t=want("w_t"),
        total_weight=want("total"),
        eps=want("eps"),
    )


_NEED_KEY = dict(zip(_DIFF, _Need._fields, strict=True))


def _axes(cfg):
    if cfg.layout is None:
        return (), ()
    return cfg.layout.data_axes, cfg.layout.vocab_axes


def _values(cfg, per_row: bool, args: dict, with_stats: bool):
    """``((out, term_sums), stats)``: the losses (per token, or their sum), the sums of
    the rule's terms when ``cfg.split_terms`` (else None) and, optionally, the saved
    statistics."""
    data_axes, _ = _axes(cfg)

    def fn(a, lead):
        loss, terms, stats = _forward_values(cfg, a, with_stats)
        out = loss.reshape(lead) if per_row else sharding.psum(jnp.sum(loss), data_axes)
        if stats is not None:
            pairs = zip(_STATS, stats, strict=True)
            stats = {k: s.reshape(lead) for k, s in pairs if s is not None}
        return (out, _psum_terms(terms, data_axes)), stats

    if cfg.layout is None:
        return _on_devices(cfg, fn, args, None)
    row = P(*cfg.layout.lead_spec)
    stat_specs = None
    if with_stats:
        stat_specs = {k: row for k in _STATS if k != "wsh" or cfg.smoothing}
    out_spec = (row if per_row else P(), _terms_spec(cfg))
    return _on_devices(cfg, fn, args, (out_spec, stat_specs))


def _psum_terms(terms, axes):
    if terms is None:
        return None
    return rule.Terms(*(None if v is None else sharding.psum(v, axes) for v in terms))


def _terms_spec(cfg):
    t = _zero_terms(cfg)
    return None if t is None else rule.Terms(*(None if v is None else P() for v in t))


def _sweep(cfg, need: _Need, args: dict):
    """``((loss_sum, term_sums), grads)`` from :func:`_gradient_sweep`, reduced across
    devices."""
    data_axes, vocab_axes = _axes(cfg)

    def fn(a, lead):
        (loss_sum, terms), dh, acc, d_w_t, d_total, d_eps = _gradient_sweep(cfg, need, a)
        g = {}
        if need.hidden:
            g["hidden"] = sharding.psum(dh, vocab_axes).reshape(lead + (cfg.d,))
        if need.kernel:
            g["kernel"] = sharding.psum(acc.kernel, data_axes)
        if need.bias:
            g["bias"] = sharding.psum(acc.bias, data_axes)
        if acc.weight is not None:
            g["weight"] = sharding.psum(acc.weight, data_axes)
        if need.w_t:
            g["w_t"] = d_w_t.reshape(lead)
        if need.total_weight:
            g["total"] = sharding.psum(d_total, data_axes)
        if need.eps:
            g["eps"] = sharding.psum(d_eps, data_axes)
        return (sharding.psum(loss_sum, data_axes), _psum_terms(terms, data_axes)), g

    if cfg.layout is None:
        return _on_devices(cfg, fn, args, None)
    table = _spec_table(cfg.layout)
    keys = [k for k in _DIFF if getattr(need, _NEED_KEY[k])]
    if "weight" in keys and not cfg.smoothing:
        keys.remove("weight")
    return _on_devices(cfg, fn, args, ((P(), _terms_spec(cfg)), {k: table[k] for k in keys}))


@functools.cache
def _fused(cfg: _Cfg, per_row: bool, mode: str, fallback: tuple[str, _Cfg] | None = None):
    """The fused loss, a ``custom_vjp`` function of the arrays named in ``_ARGS``.

    Returns ``(out, term_sums)``: per-token losses shaped like ``hidden[..., 0]``
    (``per_row``) or their sum, and the sums of the rule's terms when
    ``cfg.split_terms`` (else None; never differentiated). ``mode`` is ``"recompute"``
    or ``"forward"`` (gradients during the forward pass; sums only). ``fallback`` is the
    ``(mode, cfg)`` of a differentiated call that does not want the kernel gradient,
    when ``cfg`` keeps the logits in it.
    """

    def primal(*arrays):
        return _values(cfg, per_row, dict(zip(_ARGS, arrays, strict=True)), False)[0]

    f = jax.custom_vjp(primal)

    def schedule(need: _Need) -> tuple[str, _Cfg]:
        return fallback if fallback is not None and not need.kernel else (mode, cfg)

    def fwd(*primals):
        pairs = list(zip(_ARGS, primals, strict=True))
        args = {k: None if p is None else p.value for k, p in pairs}
        need = _need_of({k: p is not None and p.perturbed for k, p in pairs}, args)
        flags = tuple(jnp.zeros((), jnp.bool_) if x else None for x in need)
        how, c = schedule(need)
        if how == "recompute":
            out, stats = _values(c, per_row, args, True)
            return out, (flags, args, stats)
        loss, grads = _sweep(c, need, args)
        return loss, (flags, args, grads)

    def bwd(res, cts):
        flags, args, extra = res
        need = _Need(*(x is not None for x in flags))
        ct = cts[0]  # the term sums are only read for their value (see `_linear_impl`)
        if isinstance(ct, SymbolicZero):
            return (None,) * len(_ARGS)
        how, c = schedule(need)
        if how == "recompute":
            r = ct if per_row else jnp.broadcast_to(ct, args["t"].shape)
            _, g = _sweep(c, need, {**args, **extra, "r": r.astype(c.cdt)})
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
            g[k].astype(args[k].dtype) if k in g and args[k] is not None else None for k in _ARGS
        )

    f.defvjp(fwd, bwd, symbolic_zeros=True)
    return f


# --------------------------------------------------------------------------- public API


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


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1)))))


def _forward_tokens(n: int, v: int) -> int:
    lo, hi = FORWARD_TOKEN_RANGE
    return min(max(n // 16, lo), hi, max(8, FORWARD_MAX_ELEMENTS // max(v, 1)))


def _head_tokens(n: int, d: int, token_block) -> int:
    """How many leading tokens "forward" puts in one block whose logits are kept in the
    kernel gradient: all ``n`` when ``n ≤ d`` (and no smaller token block is asked
    for), else ``d`` when no token block is given."""
    if n <= d and (token_block is None or token_block >= n):
        return n
    return d if token_block is None else 0


def _choose_mode(grad_mode, per_row: bool, n: int, v: int, head: int, token_block) -> str:
    if grad_mode != "auto":
        return grad_mode
    if per_row:
        return "recompute"
    if 2 * head >= n:
        return "forward"
    tokens = token_block or _forward_tokens(n, v)
    return "forward" if min(tokens, n) >= AUTO_FORWARD_MIN_TOKENS else "recompute"


def _plan(grad_mode, per_row, n, v, d, token_block, vocab_block, allow_buffer=True):
    """``(mode, blocks)`` for ``n`` tokens and ``v`` classes per device: ``blocks`` are
    the block fields of :class:`_Cfg`. The blocks (a transposed token block of hidden
    states included) stay within a budget of ``n·v/32`` values (clamped to
    ``BUDGET_RANGE``). "forward" keeps the logits of its first ``head`` tokens in the
    kernel gradient (see :func:`_head_tokens`; none without ``allow_buffer``)."""
    head = _head_tokens(n, d, token_block) if allow_buffer and not per_row else 0
    mode = _choose_mode(grad_mode, per_row, n, v, head, token_block)
    if mode != "forward":
        head = 0
    if head == n:
        bt = n
    elif token_block:
        bt = token_block
    elif mode == "forward":
        bt = _forward_tokens(n, v)
    else:
        bt = RECOMPUTE_TOKEN_BLOCK
    bt = max(1, min(bt, n))
    budget = min(max(n * v // 32, BUDGET_RANGE[0]), BUDGET_RANGE[1])
    if vocab_block:
        bv = vocab_block
    else:
        lo, hi = VOCAB_BLOCK_RANGE
        bv = min(max(_pow2_floor(budget / (bt + 2 * d)), lo), hi)
    # The transposed copy fits beside the blocks when it and the hidden-gradient
    # accumulator of a token block (none for the head block, which updates the gradient
    # in place) take at most the budget.
    transpose_hidden = max(head * d, 0 if head == n else 2 * bt * d) <= budget
    blocks = dict(
        bt=bt,
        bv=max(1, min(bv, v)),
        head=head,
        transpose_hidden=transpose_hidden,
    )
    return mode, blocks


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
    check,
    out_dtype,
):
    fn = "linear_cross_entropy"
    num_classes = kernel.shape[1]
    if check:
        checking.check_targets(target, num_classes, ignore_index=ignore_index, fn=fn)
    cdt = _checks.compute_dtype(out_dtype)
    mdt = _checks.promote_float_dtypes(*(a.dtype for a in (hidden, kernel, bias) if a is not None))
    eps = static_eps if dynamic_eps is None else dynamic_eps.astype(cdt)

    if hidden.size == 0 or num_classes == 0 or math.prod(hidden.shape[:-1]) == 0:
        # Nothing to block over: the materialised formulation is as small as its inputs.
        logits = jnp.matmul(hidden.astype(mdt), kernel.astype(mdt))
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
    d = kernel.shape[0]
    plan = functools.partial(
        _plan, grad_mode, per_row, n_local, v_local, d, token_block, vocab_block
    )
    mode, blocks = plan()
    cfg = _Cfg(
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
        **blocks,
    )
    fallback = None
    if cfg.head:
        # Without a kernel gradient there is nowhere to keep the logits.
        mode2, blocks2 = plan(allow_buffer=False)
        fallback = (mode2, cfg._replace(**blocks2))
    f = _fused(cfg, per_row, mode, fallback)
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
      kernel: floating array ``(D, V)``, the Flax ``nn.Dense`` layout; for tied
        embeddings ``(V, D)`` pass ``embedding.T``.
      target: integer class indices of shape ``hidden.shape[:-1]``.
      bias: optional floating ``(V,)``.
      weight: optional floating ``(V,)`` class weights.
      ignore_index: target value whose positions contribute 0 to the loss and to
        the ``mean`` denominator.
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
      data_axis: mesh axis name (or tuple of names) over which ``hidden``'s first
        axis (and ``target``'s) is sharded (data parallelism).
      vocab_axis: mesh axis name (or tuple) over which ``kernel``'s class axis (and
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

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
      Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024.
      Chowdhery et al., "PaLM" (z-loss), 2022; Gemma Team, "Gemma 2" (soft-capping), 2024.
    """
    fn = "linear_cross_entropy"
    hidden = _checks.as_array(fn, "hidden", hidden)
    _checks.check_floating(fn, "hidden", hidden)
    kernel = _checks.as_array(fn, "kernel", kernel)
    _checks.check_floating(fn, "kernel", kernel)
    if hidden.ndim < 1:
        raise ValueError(
            f"{fn}: `hidden` must have shape (..., D) with at least one axis, got a 0-d array"
        )
    if kernel.ndim != 2:
        raise ValueError(
            f"{fn}: `kernel` must be 2-D (D, V), got shape {tuple(kernel.shape)}; for tied "
            "embeddings of shape (V, D) pass `embedding.T`"
        )
    if kernel.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"{fn}: `kernel` shape {tuple(kernel.shape)} does not match `hidden` shape "
            f"{tuple(hidden.shape)}: expected kernel.shape[0] == hidden.shape[-1] "
            f"({hidden.shape[-1]}); a (V, D) embedding table must be passed as `embedding.T`"
        )
    num_classes = kernel.shape[1]
    target = _checks.as_array(fn, "target", target)
    logits_like = jax.ShapeDtypeStruct(tuple(hidden.shape[:-1]) + (num_classes,), hidden.dtype)
    target = _checks.check_class_target(fn, "hidden @ kernel", logits_like, target, hidden.ndim - 1)
    if bias is not None:
        bias = _checks.as_array(fn, "bias", bias)
        _checks.check_floating(fn, "bias", bias)
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(
                f"{fn}: `bias` must have shape ({num_classes},) (one entry per class, "
                f"kernel.shape[1]), got {tuple(bias.shape)}"
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
        check=checking.enabled(),
        out_dtype=out_dtype,
    )
