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

The modules, each one idea, in the order a call passes through them:

* :mod:`~jaxce.linear.api`: the public function, its validation, and the jitted
  entry that masks the targets and builds the plan;
* :mod:`~jaxce.linear.plan`: the static configuration, block sizes and schedule choice;
* :mod:`~jaxce.linear.vjp`: the ``custom_vjp`` tying the schedules to the two passes;
* :mod:`~jaxce.linear.devices`: running a sweep directly or under ``shard_map``;
* :mod:`~jaxce.linear.stats`: the forward sweep of online statistics and the losses;
* :mod:`~jaxce.linear.grads`: the gradient sweep shared by both schedules;
* :mod:`~jaxce.linear.blocks`: block geometry (slices, shifted last blocks, the matmul).
"""

from jaxce.linear.api import linear_cross_entropy

__all__ = ["linear_cross_entropy"]
