"""The plan of one fused call: its static configuration, the block sizes, and which
gradient schedule runs.

Everything here is plain Python on static sizes (per device under sharding); nothing
is traced. :func:`make_plan` is the one entry: it picks the schedule ("forward" or
"recompute", see :func:`choose_mode`), the token and vocab blocks within a memory
budget, and how many leading tokens "forward" keeps in the kernel gradient's array
(:func:`head_tokens`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from jaxce import sharding

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


class Cfg(NamedTuple):
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
    # in the kernel gradient's own array (see `gradient_sweep`); all n when n ≤ d.
    head: int = 0
    # The kernel-gradient product reads a transposed copy of the token block's hidden
    # states (token_block × d), made once per token block (see `block_grads`).
    transpose_hidden: bool = False
    # kernel_layout="vd": the kernel (and its gradient) is (v, d); vocab blocks are row
    # slices, and the head block's logits are held transposed in the gradient's array.
    vd: bool = False

    @property
    def nt(self) -> int:
        return -(-self.n // self.bt)

    @property
    def nb(self) -> int:
        return -(-self.v // self.bv)


class Need(NamedTuple):
    """Which gradients are wanted (static)."""

    hidden: bool
    kernel: bool
    bias: bool
    weight: bool  # the column term of Σ_c w_c·lp_c (label smoothing)
    w_t: bool
    total_weight: bool
    eps: bool


def pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1)))))


def forward_tokens(n: int, v: int) -> int:
    lo, hi = FORWARD_TOKEN_RANGE
    return min(max(n // 16, lo), hi, max(8, FORWARD_MAX_ELEMENTS // max(v, 1)))


def head_tokens(n: int, d: int, token_block) -> int:
    """How many leading tokens "forward" puts in one block whose logits are kept in the
    kernel gradient: all ``n`` when ``n ≤ d`` (and no smaller token block is asked
    for), else ``d`` when no token block is given."""
    if n <= d and (token_block is None or token_block >= n):
        return n
    return d if token_block is None else 0


def choose_mode(grad_mode, per_row: bool, n: int, v: int, head: int, token_block) -> str:
    if grad_mode != "auto":
        return grad_mode
    if per_row:
        return "recompute"
    if 2 * head >= n:
        return "forward"
    tokens = token_block or forward_tokens(n, v)
    return "forward" if min(tokens, n) >= AUTO_FORWARD_MIN_TOKENS else "recompute"


def make_plan(grad_mode, per_row, n, v, d, token_block, vocab_block, allow_buffer=True):
    """``(mode, blocks)`` for ``n`` tokens and ``v`` classes per device: ``blocks`` are
    the block fields of :class:`Cfg`. The blocks (a transposed token block of hidden
    states included) stay within a budget of ``n·v/32`` values (clamped to
    ``BUDGET_RANGE``). "forward" keeps the logits of its first ``head`` tokens in the
    kernel gradient (see :func:`head_tokens`; none without ``allow_buffer``)."""
    head = head_tokens(n, d, token_block) if allow_buffer and not per_row else 0
    mode = choose_mode(grad_mode, per_row, n, v, head, token_block)
    if mode != "forward":
        head = 0
    if head == n:
        bt = n
    elif token_block:
        bt = token_block
    elif mode == "forward":
        bt = forward_tokens(n, v)
    else:
        bt = RECOMPUTE_TOKEN_BLOCK
    bt = max(1, min(bt, n))
    budget = min(max(n * v // 32, BUDGET_RANGE[0]), BUDGET_RANGE[1])
    if vocab_block:
        bv = vocab_block
    else:
        lo, hi = VOCAB_BLOCK_RANGE
        bv = min(max(pow2_floor(budget / (bt + 2 * d)), lo), hi)
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
