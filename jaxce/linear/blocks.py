"""Block geometry shared by the forward and gradient sweeps.

Slicing a vocab block out of the kernel (and of the bias and class weights), the
shifted last block of an axis that the block size does not divide (moved back to end
at the axis' end, its overlap masked), the logits matmul and where the bias and the
softcap are applied, and the row blocks of the token loop.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxce import sharding


def cdt_zero(cfg):
    return jnp.zeros((), cfg.cdt)


def slice_cols(a, start, size):
    return lax.dynamic_slice_in_dim(a, start, size, axis=a.ndim - 1)


def add_cols(acc, upd, start):
    """``acc[..., start:start+size] += upd`` along the last axis."""
    size = upd.shape[-1]
    cur = lax.dynamic_slice_in_dim(acc, start, size, axis=acc.ndim - 1)
    return lax.dynamic_update_slice_in_dim(acc, cur + upd, start, axis=acc.ndim - 1)


def kernel_block(kernel, start, cfg, size=None):
    """Vocab block ``[start, start+size)`` of the kernel (or of its gradient): columns of
    a ``(d, v)`` kernel, rows of a ``(v, d)`` one (``cfg.vd``)."""
    size = cfg.bv if size is None else size
    return lax.dynamic_slice_in_dim(kernel, start, size, axis=0 if cfg.vd else 1)


def add_kernel_block(acc, upd, start, cfg):
    """``acc``'s vocab block at ``start`` += ``upd`` (layout as :func:`kernel_block`)."""
    if not cfg.vd:
        return add_cols(acc, upd, start)
    cur = lax.dynamic_slice_in_dim(acc, start, upd.shape[0], axis=0)
    return lax.dynamic_update_slice_in_dim(acc, cur + upd, start, axis=0)


def col_block(j, cfg):
    """``(start, cols, colmask)`` of vocab block ``j``: the last block is moved back to
    end at ``v`` (no padding) and masks the columns an earlier block already covered.
    ``colmask`` is None when ``vocab_block`` divides the classes (nothing to mask)."""
    if cfg.v % cfg.bv == 0:
        start = j * cfg.bv
        return start, start + lax.iota(jnp.int32, cfg.bv), None
    start = jnp.minimum(j * cfg.bv, cfg.v - cfg.bv)
    cols = start + lax.iota(jnp.int32, cfg.bv)
    return start, cols, cols >= j * cfg.bv


def masked(colmask, a, fill):
    """``a`` where the column is kept (``colmask`` along the last axis), else ``fill``."""
    if colmask is None:
        return a
    return jnp.where(colmask.reshape((1,) * (a.ndim - 1) + (-1,)), a, fill)


def matmul(h_b, kernel, start, cfg):
    """``h_b @ kernel[:, start:start+bv]`` in the compute dtype (before bias and softcap,
    which :func:`post` applies where the logits are read, so that only the matmul's
    output is ever held). A ``(v, d)`` kernel (``cfg.vd``) is contracted on its axis 1,
    never transposed as a whole."""
    k = kernel_block(kernel, start, cfg).astype(cfg.mdt)
    dims = (((1,), (1 if cfg.vd else 0,)), ((), ()))
    return lax.dot_general(h_b.astype(cfg.mdt), k, dims, preferred_element_type=cfg.cdt)


def post(raw, b, cfg):
    """The logits from the matmul's output: ``+ bias``, then ``s·tanh(·/s)``."""
    x = raw if b is None else raw + b.astype(cfg.cdt)
    if cfg.softcap is not None:
        x = cfg.softcap * jnp.tanh(x / cfg.softcap)
    return x


def bias_cols(bias, start, cfg):
    return None if bias is None else slice_cols(bias, start, cfg.bv)[None, :]


def eps_of(cfg, a):
    return cfg.eps if a["eps"] is None else a["eps"]


def shifted_block(b, size, total):
    """``(start, new)`` of block ``b`` of ``size`` rows out of ``total``: the last block
    is moved back to end at ``total``, and ``new`` masks the rows an earlier block had."""
    start = jnp.minimum(b * size, total - size)
    rows = start + lax.iota(jnp.int32, size)
    return start, rows >= b * size


def row_block(b, cfg):
    """``(start, new)`` of token block ``b`` (the last one moved back like columns)."""
    return shifted_block(b, cfg.bt, cfg.n)


def write_rows(out, blk, new, start):
    cur = lax.dynamic_slice_in_dim(out, start, blk.shape[0], axis=0)
    new = new.reshape(new.shape + (1,) * (blk.ndim - 1))
    return lax.dynamic_update_slice_in_dim(out, jnp.where(new, blk, cur), start, axis=0)


def token_loop(cfg, body, init):
    if cfg.nt == 1:
        return body(0, init)
    return lax.fori_loop(0, cfg.nt, body, init)


def rows_of(arrays: dict, start, cfg) -> dict:
    return {
        k: None if a is None else lax.dynamic_slice_in_dim(a, start, cfg.bt, axis=0)
        for k, a in arrays.items()
    }


def local_target(t, cfg):
    return t - sharding.vocab_offset(cfg.layout, cfg.v)
