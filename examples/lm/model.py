"""A small decoder-only transformer (GPT-2 style, pre-LayerNorm) in Flax NNX.

The model returns the final hidden states ``(batch, seq, D)``; the LM head is not a
layer of the model but a ``(D, V)`` kernel handed to the loss (:mod:`heads`), which is
what lets one loss multiply it in blocks without materialising the logits. With
``tied=True`` the kernel is the token embedding ``(V, D)`` seen as ``(D, V)``
(:meth:`LM.head_kernel`); with ``tied=False`` it is a separate ``(D, V)`` parameter
(``head``), the ``nn.Dense``/``nnx.Linear`` layout, without a bias as in most LMs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 16384
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    seq_len: int = 128
    tied: bool = True
    # Tied table storage: "vd" = nnx.Embed's (V, D), the head gets its transpose;
    # "dv" = stored (D, V) as the head's kernel, embedding lookup gathers columns.
    tied_layout: str = "vd"
    # compute dtype (Flax's `dtype=`): parameters stay float32 (`param_dtype`), the
    # layers cast them; the head kernel is cast too.
    dtype: str = "float32"


def attention_mask(segments: jax.Array) -> jax.Array:
    """``(B, 1, T, T)`` booleans: causal, and only within a document (same segment id).

    Padding (segment 0) attends to padding, so no row is empty; its targets are ignored.
    """
    t = segments.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, *, layers: int, dtype: str, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        # GPT-2: the residual projections scaled by 1/sqrt(2·layers).
        out_init = nnx.initializers.normal(0.02 / (2 * layers) ** 0.5)
        self.heads = heads
        self.ln1 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=init, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(d, d, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, kernel_init=init, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, kernel_init=out_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
        att = jax.nn.dot_product_attention(q, k, v, mask=mask)
        x = x + self.proj(att.reshape(b, t, d))
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class LM(nnx.Module):
    """Token + learned position embeddings, ``layers`` blocks, a final LayerNorm."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        if cfg.d_model % cfg.heads:
            raise ValueError(f"LM: d_model={cfg.d_model} is not divisible by heads={cfg.heads}")
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        if cfg.tied_layout not in ("vd", "dv"):
            raise ValueError(f"LM: tied_layout={cfg.tied_layout!r} is not 'vd' or 'dv'")
        if cfg.tied and cfg.tied_layout == "dv":
            # the same numbers as the "vd" layout's table, stored transposed
            self.table = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.d_model)).T)
        else:
            self.embed = nnx.Embed(
                cfg.vocab_size, cfg.d_model, embedding_init=init, dtype=cfg.dtype, rngs=rngs
            )
        self.pos = nnx.Param(init(rngs.params(), (cfg.seq_len, cfg.d_model)))
        self.blocks = nnx.List(
            [
                Block(cfg.d_model, cfg.heads, layers=cfg.layers, dtype=cfg.dtype, rngs=rngs)
                for _ in range(cfg.layers)
            ]
        )
        self.ln_f = nnx.LayerNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
        if not cfg.tied:
            self.head = nnx.Param(init(rngs.params(), (cfg.d_model, cfg.vocab_size)))

    def __call__(self, tokens: jax.Array, segments: jax.Array) -> jax.Array:
        """Hidden states ``(B, T, D)`` for ``tokens`` ``(B, T)``."""
        if self.cfg.tied and self.cfg.tied_layout == "dv":
            x = jnp.take(self.table[...], tokens, axis=1)  # (D, B, T)
            x = jnp.moveaxis(x, 0, -1).astype(self.cfg.dtype)
        else:
            x = self.embed(tokens)
        x = x + self.pos[: tokens.shape[1]].astype(self.cfg.dtype)
        mask = attention_mask(segments)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def head_kernel(self) -> jax.Array:
        """The LM head as a ``(D, V)`` kernel: ``embedding.T`` when tied ("vd").

        For the materialised head XLA folds that transpose into the dot products. For
        ``linear_cross_entropy`` it copies the table to ``(D, V)`` and the kernel
        gradient back, every step (see the README); ``tied_layout="dv"`` avoids both.
        """
        if self.cfg.tied:
            if self.cfg.tied_layout == "dv":
                return self.table[...].astype(self.cfg.dtype)
            return self.embed.embedding[...].T.astype(self.cfg.dtype)
        return self.head[...].astype(self.cfg.dtype)
