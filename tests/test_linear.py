"""``linear_cross_entropy`` against the materialised formulation
``cross_entropy(hidden @ kernel + bias, ...)`` (float32) and against torch (float64):
values and the gradients with respect to ``hidden``, ``kernel``, ``bias`` (and
``weight`` and a traced ``label_smoothing``), for every option, every reduction and
both gradient schedules, with block sizes that divide nothing.

Compilation dominates on small CPUs, so each option combination is one jitted program
that computes every reduction and schedule at once.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxce
from jaxce.linear import linear_cross_entropy as LCE

CE = jaxce.cross_entropy
rng = np.random.default_rng(20240611)

# (2, 7) tokens, D = 16, V = 37 (prime); blocks of 4 tokens and 8 classes divide nothing.
# With 14 ≤ D tokens, "forward" without a token block keeps the logits in the kernel
# gradient (the schedule for few tokens); with blocks of 4 tokens it does not.
# With D = 5 < 14 tokens (HEAD_D), "forward" keeps the logits of the first 5 tokens in
# the kernel gradient and blocks the other 9.
LEAD, D, V = (2, 7), 16, 37
H_NP = rng.normal(size=LEAD + (D,))
K_NP = rng.normal(size=(D, V)) * 0.7
B_NP = rng.normal(size=(V,))
W_NP = rng.uniform(0.3, 2.0, size=(V,))
T_NP = rng.integers(0, V, size=LEAD)
T_NP[0, 3] = -100
T_NP[1, 6] = -100
T_NP[1, 0] = 2  # a real class, ignored in the "ignore-a-class" combination
CT_NP = rng.normal(size=LEAD)  # cotangent for reduction="none"
SMALL = dict(token_block=4, vocab_block=8)
SCHEDULES = {
    "recompute": dict(grad_mode="recompute", **SMALL),
    "forward": dict(grad_mode="forward", **SMALL),
    "forward-buffer": dict(grad_mode="forward", vocab_block=8),
}

# Correctness needs no optimised code: compiling at XLA's lowest backend level roughly
# halves the compile time that dominates these tests.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_fast(f, *args):
    """``jax.jit(f)(*args)``, compiled with :data:`FAST`."""
    return jax.jit(f).lower(*args).compile(FAST)(*args)


def _opts(combo: dict, w, eps):
    o = {k: v for k, v in combo.items() if k not in ("bias", "weight", "traced_eps")}
    if combo.get("weight"):
        o["weight"] = w
    if combo.get("traced_eps"):
        o["label_smoothing"] = eps
    return o


COMBOS = {
    "plain": {},
    "weight-ignore-a-class": {"weight": True, "ignore_index": 2},
    "smoothing": {"label_smoothing": 0.1},
    "weight-smoothing-bias": {"weight": True, "label_smoothing": 0.2, "bias": True},
    "zloss-softcap": {"z_loss": 1e-2, "softcap": 4.0},
    "all": {
        "bias": True,
        "weight": True,
        "label_smoothing": 0.15,
        "z_loss": 1e-3,
        "softcap": 3.0,
    },
    "traced-eps": {"weight": True, "traced_eps": True, "softcap": 5.0},
}

# (reduction, grad_mode, block sizes): small blocks exercise the loops and the shifted
# last blocks; default blocks here cover all 37 classes in one block (logits reused).
# "auto" and "forward" without a token block keep the logits in the kernel gradient.
VARIANTS = (
    ("mean", "recompute", SMALL),
    ("sum", "forward", SMALL),
    ("none", "recompute", SMALL),
    ("mean", "auto", {}),
    ("mean", "forward", {"vocab_block": 8}),
)


def _target(combo: dict) -> np.ndarray:
    """The shared targets; ignored positions use the combination's ``ignore_index``."""
    return np.where(T_NP == -100, combo.get("ignore_index", -100), T_NP)


def _run_combo(combo: dict):
    """Values and gradients of every variant, and of the materialised reference."""
    h, k, b, w, ct = (jnp.asarray(a, jnp.float32) for a in (H_NP, K_NP, B_NP, W_NP, CT_NP))
    t = jnp.asarray(_target(combo), jnp.int32)
    eps0 = jnp.asarray(0.1, jnp.float32)
    use_bias = combo.get("bias", False)

    def scalar(loss, reduction):
        return jnp.sum(loss * ct) if reduction == "none" else loss

    def fused(reduction, mode, blocks):
        def f(h, k, b, w, eps):
            loss = LCE(
                h,
                k,
                t,
                bias=b if use_bias else None,
                reduction=reduction,
                grad_mode=mode,
                **blocks,
                **_opts(combo, w, eps),
            )
            return scalar(loss, reduction), loss

        return f

    def reference(reduction):
        def f(h, k, b, w, eps):
            logits = h @ k + (b if use_bias else jnp.zeros((), jnp.float32))
            loss = CE(logits, t, reduction=reduction, **_opts(combo, w, eps))
            return scalar(loss, reduction), loss

        return f

    def run(h, k, b, w, eps):
        out = {}
        for red, mode, blocks in VARIANTS:
            vg = jax.value_and_grad(fused(red, mode, blocks), argnums=range(5), has_aux=True)
            out[f"{red}/{mode}/{sorted(blocks)}"] = vg(h, k, b, w, eps)
        for red in ("mean", "sum", "none"):
            vg = jax.value_and_grad(reference(red), argnums=range(5), has_aux=True)
            out[f"ref/{red}"] = vg(h, k, b, w, eps)
        return out

    return run_fast(run, h, k, b, w, eps0)


@pytest.mark.parametrize("name", list(COMBOS))
def test_matches_materialised(name):
    combo = COMBOS[name]
    out = _run_combo(combo)
    names = ("hidden", "kernel", "bias", "weight", "label_smoothing")
    for red, mode, blocks in VARIANTS:
        (_, got), grads = out[f"{red}/{mode}/{sorted(blocks)}"]
        (_, want), ref_grads = out[f"ref/{red}"]
        assert got.shape == want.shape == (() if red != "none" else LEAD)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=f"{red}/{mode}")
        for n, g, r in zip(names, grads, ref_grads, strict=True):
            scale = float(jnp.max(jnp.abs(r))) or 1.0
            np.testing.assert_allclose(
                g, r, rtol=1e-5, atol=2e-6 * scale, err_msg=f"d/d{n} {red}/{mode}"
            )
        # A finite loss and non-trivial gradients (the comparison cannot pass vacuously).
        assert np.all(np.isfinite(got)) and np.all(np.isfinite(grads[1]))
        assert float(jnp.max(jnp.abs(grads[0]))) > 0 and float(jnp.max(jnp.abs(grads[1]))) > 0
        if combo.get("bias"):
            assert float(jnp.max(jnp.abs(grads[2]))) > 0


HEAD_D = 5


@pytest.mark.parametrize("name", list(COMBOS))
def test_head_block_matches_materialised(name):
    """``N > D``: "forward" (and "auto") put the first ``D`` tokens' logits in the kernel
    gradient and take the other tokens in blocks; every option, both scalar reductions,
    one vocab block and shifted ones."""
    combo = COMBOS[name]
    h = jnp.asarray(H_NP[..., :HEAD_D], jnp.float32)
    k = jnp.asarray(K_NP[:HEAD_D], jnp.float32)
    b, w = jnp.asarray(B_NP, jnp.float32), jnp.asarray(W_NP, jnp.float32)
    t = jnp.asarray(_target(combo), jnp.int32)
    eps0 = jnp.asarray(0.1, jnp.float32)
    bias = combo.get("bias", False)
    variants = [
        ("sum", "forward", {"vocab_block": 8}),
        ("mean", "forward", {}),
        ("mean", "auto", {}),
    ]

    def run(h, k, b, w, eps):
        out = []
        for red, mode, blocks in variants:

            def f(h, k, b, w, eps, red=red, mode=mode, blocks=blocks):
                o = _opts(combo, w, eps)
                return LCE(
                    h, k, t, bias=b if bias else None, reduction=red, grad_mode=mode, **blocks, **o
                )

            def r(h, k, b, w, eps, red=red):
                logits = h @ k + (b if bias else jnp.zeros((), jnp.float32))
                return CE(logits, t, reduction=red, **_opts(combo, w, eps))

            out.append(
                (
                    jax.value_and_grad(f, range(5))(h, k, b, w, eps),
                    jax.value_and_grad(r, range(5))(h, k, b, w, eps),
                )
            )
        return out

    for (red, mode, blocks), ((v, g), (rv, rg)) in zip(
        variants, run_fast(run, h, k, b, w, eps0), strict=True
    ):
        what = f"{red}/{mode}/{blocks}"
        np.testing.assert_allclose(v, rv, rtol=2e-6, atol=2e-6, err_msg=what)
        for i, (a, ref) in enumerate(zip(g, rg, strict=True)):
            scale = float(jnp.max(jnp.abs(ref))) or 1.0
            np.testing.assert_allclose(
                a, ref, rtol=1e-5, atol=2e-6 * scale, err_msg=f"{what} arg {i}"
            )
        assert float(jnp.max(jnp.abs(g[1]))) > 0


# --------------------------------------------------------------------------- (V, D) kernel

# Every schedule: "recompute" (three reductions), "forward" in token blocks, "forward"
# with the head block (all 14 tokens with D = 16; the first 5, then blocks, with D = 5),
# one vocab block ("auto"), and a frozen kernel (the fallback without the head block).
VD_VARIANTS = (
    ("mean", dict(grad_mode="recompute", **SMALL)),
    ("sum", dict(grad_mode="recompute", **SMALL)),
    ("none", dict(grad_mode="recompute", **SMALL)),
    ("sum", dict(grad_mode="forward", **SMALL)),
    ("mean", dict(grad_mode="forward", vocab_block=8)),
    ("mean", dict(grad_mode="auto")),
)


@pytest.mark.parametrize("d", [D, HEAD_D])
@pytest.mark.parametrize("name", ["all", "weight-ignore-a-class"])
def test_vd_kernel_layout_matches_dv_and_materialised(name, d):
    """``kernel_layout="vd"`` on a ``(V, D)`` table gives the values and gradients of the
    default layout on its transpose and of the materialised loss; the kernel gradient
    comes out ``(V, D)``."""
    combo = COMBOS[name]
    h = jnp.asarray(H_NP[..., :d], jnp.float32)
    k = jnp.asarray(K_NP[:d], jnp.float32)
    b, w, ct = (jnp.asarray(a, jnp.float32) for a in (B_NP, W_NP, CT_NP))
    t = jnp.asarray(_target(combo), jnp.int32)
    eps0 = jnp.asarray(0.1, jnp.float32)
    bias = combo.get("bias", False)

    def loss(layout, red, blocks):
        def f(h, k, b, w):
            o = _opts(combo, w, eps0)
            out = LCE(
                h, k, t, bias=b if bias else None, reduction=red, kernel_layout=layout,
                **blocks, **o,
            )  # fmt: skip
            return jnp.sum(out * ct) if red == "none" else out

        return f

    def reference(red):
        def f(h, k, b, w):
            logits = h @ k + (b if bias else jnp.zeros((), jnp.float32))
            out = CE(logits, t, reduction=red, **_opts(combo, w, eps0))
            return jnp.sum(out * ct) if red == "none" else out

        return f

    def run(h, k, b, w):
        out = []
        for red, blocks in VD_VARIANTS:
            vd = jax.value_and_grad(loss("vd", red, blocks), range(4))(h, k.T, b, w)
            dv = jax.value_and_grad(loss("dv", red, blocks), range(4))(h, k, b, w)
            ref = jax.value_and_grad(reference(red), range(4))(h, k, b, w)
            out.append((vd, dv, ref))
        frozen = dict(grad_mode="forward", vocab_block=8)
        vd = jax.value_and_grad(loss("vd", "mean", frozen), (0, 2, 3))(h, k.T, b, w)
        dv = jax.value_and_grad(loss("dv", "mean", frozen), (0, 2, 3))(h, k, b, w)
        return out, (vd, dv)

    out, frozen = run_fast(run, h, k, b, w)
    names = ("hidden", "kernel", "bias", "weight")
    for (red, blocks), ((v, g), (dv_v, dv_g), (rv, rg)) in zip(VD_VARIANTS, out, strict=True):
        what = f"{red}/{blocks}"
        assert g[1].shape == (V, d), what
        np.testing.assert_allclose(v, dv_v, rtol=1e-6, atol=1e-6, err_msg=what)
        np.testing.assert_allclose(v, rv, rtol=2e-6, atol=2e-6, err_msg=what)
        g = (g[0], g[1].T, g[2], g[3])
        for n, a, other, ref in zip(names, g, dv_g, rg, strict=True):
            scale = float(jnp.max(jnp.abs(ref))) or 1.0
            tol = dict(rtol=1e-5, atol=2e-6 * scale)
            np.testing.assert_allclose(a, other, **tol, err_msg=f"d/d{n} {what} vs dv")
            np.testing.assert_allclose(a, ref, **tol, err_msg=f"d/d{n} {what} vs materialised")
        assert float(jnp.max(jnp.abs(g[1]))) > 0 and float(jnp.max(jnp.abs(g[0]))) > 0
    (v, g), (dv_v, dv_g) = frozen
    np.testing.assert_allclose(v, dv_v, rtol=1e-6, atol=1e-6)
    for a, other in zip(g, dv_g, strict=True):
        np.testing.assert_allclose(a, other, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(g[0]))) > 0


@pytest.mark.parametrize(
    "kw, argnums",
    [
        (dict(grad_mode="recompute", token_block=16, vocab_block=500), (0, 1)),
        (dict(grad_mode="forward", vocab_block=500), (0, 1)),
        (dict(grad_mode="forward", token_block=16, vocab_block=500), (0, 1)),
        (dict(grad_mode="forward", vocab_block=500), 0),
    ],
    ids=["recompute", "forward-head", "forward-token-blocked", "frozen-kernel"],
)
def test_vd_kernel_layout_never_transposes_the_table(kw, argnums):
    """The compiled ``value_and_grad`` of ``kernel_layout="vd"`` holds no transpose or copy
    of the whole ``(V, D)`` table (nor of its ``(D, V)`` transpose), and no more
    temporary memory than the default layout on a ``(D, V)`` kernel; passing
    ``table.T`` to the default layout (what the option replaces) does transpose it."""
    n, d, v = 64, 32, 4000
    h = jnp.ones((n, d), jnp.float32)
    table = jnp.ones((v, d), jnp.float32)
    t = jnp.zeros((n,), jnp.int32)
    whole = re.compile(rf"= f32\[({v},{d}|{d},{v})\]\{{[^}}]*\}} (transpose|copy)\(")

    def compiled(f, k):
        return jax.jit(jax.value_and_grad(f, argnums)).lower(h, k).compile()

    vd = compiled(lambda h, k: LCE(h, k, t, kernel_layout="vd", **kw), table)
    dv = compiled(lambda h, k: LCE(h, k, t, **kw), table.T)
    dv_of_table = compiled(lambda h, k: LCE(h, k.T, t, **kw), table)
    assert not whole.search(vd.as_text())
    assert whole.search(dv_of_table.as_text())
    temp = {c: c.memory_analysis().temp_size_in_bytes for c in (vd, dv)}
    assert temp[vd] <= temp[dv], temp


# --------------------------------------------------------------------------- torch


def _torch_reference(torch, combo, reduction, h, k, b, w, t):
    """torch float64: F.cross_entropy on the logits, plus softcap and z-loss by hand."""
    F = torch.nn.functional
    logits = h @ k + (b if combo.get("bias") else 0)
    if combo.get("softcap"):
        s = combo["softcap"]
        logits = s * torch.tanh(logits / s)
    weight = w if combo.get("weight") else None
    ii = combo.get("ignore_index", -100)
    eps = combo.get("label_smoothing", 0.0)
    loss = F.cross_entropy(
        logits, t, weight=weight, ignore_index=ii, reduction=reduction, label_smoothing=eps
    )
    valid = t != ii
    w_t = (w[t.clamp(min=0)] if weight is not None else torch.ones_like(logits[:, 0])) * valid
    z = combo.get("z_loss", 0.0)
    if z:
        zrow = z * w_t * torch.logsumexp(logits, dim=-1) ** 2
        if reduction == "none":
            loss = loss + zrow
        elif reduction == "sum":
            loss = loss + zrow.sum()
        else:
            loss = loss + zrow.sum() / w_t.sum()
    return loss


# (reduction, schedule) against torch: the defaults ("forward" keeping the logits in the
# kernel gradient for mean/sum here, "recompute" for none), and the two blocked schedules.
TORCH_VARIANTS = (
    ("mean", {}),
    ("sum", {}),
    ("none", {}),
    ("mean", SCHEDULES["recompute"]),
    ("sum", SCHEDULES["forward"]),
)


@pytest.mark.parametrize("name", list(COMBOS))
def test_matches_torch_float64(torch, x64, name):
    combo = COMBOS[name]
    n = int(np.prod(LEAD))
    h2, t1 = H_NP.reshape(n, D), _target(combo).reshape(n)
    ct = CT_NP.reshape(n)
    eps = 0.1 if combo.get("traced_eps") else combo.get("label_smoothing", 0.0)

    def ours(h, k, b, w, t, eps_arr):
        outs = []
        for red, sched in TORCH_VARIANTS:

            def f(h, k, b, red=red, sched=sched):
                o = _opts(combo, w, eps_arr)
                bias = b if combo.get("bias") else None
                loss = LCE(h, k, t, bias=bias, reduction=red, **sched, **o)
                return (jnp.sum(loss * ct) if red == "none" else loss), loss

            outs.append(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(h, k, b))
        return outs

    args = [jnp.asarray(a, jnp.float64) for a in (h2, K_NP, B_NP, W_NP)]
    outs = run_fast(ours, *args, jnp.asarray(t1, jnp.int32), jnp.asarray(eps, jnp.float64))
    for (red, sched), ((_, value), grads) in zip(TORCH_VARIANTS, outs, strict=True):
        th, tk, tb = (torch.tensor(a, requires_grad=True) for a in (h2, K_NP, B_NP))
        tw, tt = torch.tensor(W_NP), torch.tensor(t1)
        loss = _torch_reference(torch, {**combo, "label_smoothing": eps}, red, th, tk, tb, tw, tt)
        (loss * torch.tensor(ct) if red == "none" else loss).sum().backward()
        what = f"{red}/{sched.get('grad_mode', 'auto')}"
        np.testing.assert_allclose(
            value, loss.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=what
        )
        for g, tg in zip(grads, (th.grad, tk.grad, tb.grad), strict=True):
            if not combo.get("bias") and tg is None:
                continue
            np.testing.assert_allclose(g, tg.numpy(), rtol=1e-10, atol=1e-12, err_msg=what)


@st.composite
def _random_configs(draw):
    """Shapes with N < D, N = D and N > D, blocks that divide nothing or exceed their
    axis, every schedule and reduction, options on and off, a frozen kernel or not."""
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    modes = ["auto", "recompute"] + (["forward"] if reduction != "none" else [])
    return dict(
        n=draw(st.integers(1, 9)),
        d=draw(st.integers(1, 9)),
        v=draw(st.integers(2, 23)),
        token_block=draw(st.sampled_from([None, None, 1, 2, 3, 4, 5, 7, 10])),
        vocab_block=draw(st.none() | st.integers(1, 25)),
        grad_mode=draw(st.sampled_from(modes)),
        reduction=reduction,
        bias=draw(st.booleans()),
        weight=draw(st.booleans()),
        label_smoothing=draw(st.sampled_from([0.0, 0.05, 0.3])),
        z_loss=draw(st.sampled_from([0.0, 1e-2])),
        softcap=draw(st.sampled_from([None, 2.5])),
        frozen_kernel=draw(st.sampled_from([False, False, True])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=40)  # the rest: the "jaxce" profile (conftest.py)
@given(cfg=_random_configs())
def test_random_configurations_against_torch(torch, cfg):
    """Live randomized parity with torch in float64: values and the gradients for
    ``hidden``, ``kernel`` (unless frozen) and ``bias``."""
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    rng = np.random.default_rng(cfg["seed"])
    h, k, b = rng.normal(size=(n, d)), rng.normal(size=(d, v)), rng.normal(size=(v,))
    w = rng.uniform(0.3, 2.0, size=(v,))
    t = rng.integers(0, v, size=(n,))
    t[1:][rng.random(n - 1) < 0.3] = -100  # the first position always counts
    ct = rng.normal(size=(n,))
    combo = {key: cfg[key] for key in ("bias", "weight", "label_smoothing", "z_loss", "softcap")}
    opts = {key: cfg[key] for key in ("token_block", "vocab_block", "grad_mode", "reduction")}
    opts.update(label_smoothing=cfg["label_smoothing"], z_loss=cfg["z_loss"])
    opts["softcap"] = cfg["softcap"]
    red = cfg["reduction"]
    argnums = (0, 2) if cfg["frozen_kernel"] else (0, 1, 2)

    with jax.enable_x64(True):
        ja = [jnp.asarray(a, jnp.float64) for a in (h, k, b, w, ct)]
        jt = jnp.asarray(t, jnp.int32)

        def f(h, k, b):
            loss = LCE(
                h,
                k,
                jt,
                bias=b if cfg["bias"] else None,
                weight=ja[3] if cfg["weight"] else None,
                **opts,
            )
            return jnp.sum(loss * ja[4]) if red == "none" else loss

        value, grads = run_fast(jax.value_and_grad(f, argnums), *ja[:3])

    th, tk, tb = (torch.tensor(a, requires_grad=True) for a in (h, k, b))
    loss = _torch_reference(torch, combo, red, th, tk, tb, torch.tensor(w), torch.tensor(t))
    loss = (loss * torch.tensor(ct)).sum() if red == "none" else loss
    loss.backward()
    np.testing.assert_allclose(value, loss.detach().numpy(), rtol=1e-10, atol=1e-12)
    wanted = {0: th.grad, 1: tk.grad, 2: tb.grad if cfg["bias"] else torch.zeros(v)}
    for i, g in zip(argnums, grads, strict=True):
        want = wanted[i].numpy()
        scale = float(np.max(np.abs(want))) or 1.0
        np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-12 * scale, err_msg=str(i))


# --------------------------------------------------------------------------- bfloat16


@pytest.mark.parametrize(
    "d,sched",
    [
        (D, SMALL),
        (D, dict(grad_mode="forward", vocab_block=8)),  # all logits in the kernel gradient
        (HEAD_D, dict(grad_mode="forward", vocab_block=8)),  # 5 tokens there, 9 in blocks
    ],
    ids=["blocks", "kernel-gradient", "head-and-blocks"],
)
def test_bfloat16_within_tolerance(d, sched):
    """bf16 inputs: the loss is computed in float32 from the bf16 values and rounded once;
    stated tolerance: value within 1% (bf16 has 8 bits), gradients (returned in bf16)
    within 1% of their largest entry, of the float32 materialised reference."""
    bf = jnp.bfloat16
    h, k, b = (jnp.asarray(a, bf) for a in (H_NP[..., :d], K_NP[:d], B_NP))
    t = jnp.asarray(T_NP, jnp.int32)
    w = jnp.asarray(W_NP, jnp.float32)
    opts = dict(weight=w, label_smoothing=0.1, z_loss=1e-3)

    def run(h, k, b):
        def f(h, k, b):
            return LCE(h, k, t, bias=b, **sched, **opts)

        def r(h, k, b):
            up = (a.astype(jnp.float32) for a in (h, k, b))
            h32, k32, b32 = up
            return CE(h32 @ k32 + b32, t, **opts)

        return jax.value_and_grad(f, (0, 1, 2))(h, k, b), jax.value_and_grad(r, (0, 1, 2))(h, k, b)

    (v, g), (rv, rg) = run_fast(run, h, k, b)
    assert v.dtype == jnp.float32  # bf16 logits promoted with the float32 weight
    np.testing.assert_allclose(v, rv, rtol=1e-2)
    for a, ref, src in zip(g, rg, (h, k, b), strict=True):
        assert a.dtype == bf and a.shape == src.shape
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(a.astype(jnp.float32), ref, atol=1e-2 * scale, rtol=0)

    # Without a float32 weight the result stays bfloat16.
    out = LCE(h, k, t, bias=b)
    assert out.dtype == bf


# --------------------------------------------------------------------------- blocks, shapes


@pytest.mark.parametrize(
    "blocks",
    [
        dict(token_block=1, vocab_block=1),
        dict(token_block=3, vocab_block=36),  # last vocab block overlaps by 35 columns
        dict(token_block=100, vocab_block=1000),  # blocks larger than N and V
        dict(token_block=14, vocab_block=37),  # exactly one block each
    ],
    ids=["1x1", "3x36", "larger", "exact"],
)
def test_block_sizes(blocks):
    h, k, b = (jnp.asarray(a, jnp.float32) for a in (H_NP, K_NP, B_NP))
    t = jnp.asarray(T_NP, jnp.int32)
    opts = dict(label_smoothing=0.1, weight=jnp.asarray(W_NP, jnp.float32), reduction="sum")

    def run(h, k, b):
        f = lambda h, k, b: LCE(h, k, t, bias=b, grad_mode="recompute", **blocks, **opts)  # noqa: E731
        r = lambda h, k, b: CE(h @ k + b, t, **opts)  # noqa: E731
        return jax.value_and_grad(f, (0, 1, 2))(h, k, b), jax.value_and_grad(r, (0, 1, 2))(h, k, b)

    (v, g), (rv, rg) = run_fast(run, h, k, b)
    np.testing.assert_allclose(v, rv, rtol=2e-6)
    for a, r in zip(g, rg, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_single_position_and_1d_target():
    """``hidden`` of shape (D,) with a 0-d or (1,) target, as ``cross_entropy``'s (C,)."""
    h, k = jnp.asarray(H_NP[0, 0], jnp.float32), jnp.asarray(K_NP, jnp.float32)
    want = CE(h @ k, jnp.asarray(5))
    for t in (jnp.asarray(5), jnp.asarray([5])):
        got = LCE(h, k, t, reduction="none")
        assert got.shape == ()
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_semantics_edge_cases():
    """torch's conventions carried over: all ignored → mean NaN with a zero gradient;
    out-of-range target → NaN; an ignored row's NaN hidden state does not leak;
    empty input → mean NaN, sum 0, none empty."""
    h, k = jnp.asarray(H_NP.reshape(-1, D), jnp.float32), jnp.asarray(K_NP, jnp.float32)
    n = h.shape[0]
    all_ignored = jnp.full((n,), -100, jnp.int32)
    # Kernel gradients too: without them "forward-buffer" has nowhere to keep the logits.
    for name, sched in SCHEDULES.items():
        vg = jax.value_and_grad(lambda h, k, t, s=sched: LCE(h, k, t, **s), argnums=(0, 1))
        f = jax.jit(vg).lower(h, k, all_ignored).compile(FAST)
        v, (gh, gk) = f(h, k, all_ignored)
        assert np.isnan(v) and np.all(gh == 0) and np.all(gk == 0), name

    bad = jnp.asarray(T_NP.reshape(-1), jnp.int32).at[2].set(V)
    v, _ = f(h, k, bad)
    assert np.isnan(v)
    per = LCE(h, k, bad, reduction="none", **SMALL)
    assert np.isnan(per[2]) and np.all(np.isfinite(np.delete(np.asarray(per), 2)))

    t = jnp.asarray(T_NP.reshape(-1), jnp.int32).at[4].set(-100)
    h_nan = h.at[4].set(jnp.nan)
    v, (g, _) = f(h_nan, k, t)
    rv = CE(h @ k, t)
    np.testing.assert_allclose(v, rv, rtol=1e-6)
    assert np.all(np.isfinite(g)) and np.all(g[4] == 0)

    empty_h, empty_t = jnp.zeros((0, D), jnp.float32), jnp.zeros((0,), jnp.int32)
    assert np.isnan(LCE(empty_h, k, empty_t))
    assert float(LCE(empty_h, k, empty_t, reduction="sum")) == 0.0
    assert LCE(empty_h, k, empty_t, reduction="none").shape == (0,)


@pytest.mark.parametrize(
    "opts", [{"label_smoothing": 0.1}, {"z_loss": 1e-2}, {"label_smoothing": 0.2, "z_loss": 1e-2}]
)
def test_mean_with_zero_denominator_matches_cross_entropy(opts):
    """``mean`` whose denominator ``Σ w_t`` is 0 while the smoothing or z-loss sum is
    not: torch divides each term's sum apart, so 0/0 in the nll term makes the loss NaN
    (not the ±inf of the combined sum over 0), in every gradient schedule. The
    gradients are non-finite at the same entries (±inf here where torch has NaN: the
    fused gradient is of the combined loss)."""
    h, k = jnp.asarray(H_NP.reshape(-1, D), jnp.float32), jnp.asarray(K_NP, jnp.float32)
    t = jnp.asarray(T_NP.reshape(-1), jnp.int32)
    w = jnp.ones((V,), jnp.float32).at[t].set(0.0)  # every target's weight is 0
    want = CE(h @ k, t, weight=w, **opts)
    assert np.isnan(want)
    for name, sched in SCHEDULES.items():
        got = LCE(h, k, t, weight=w, **sched, **opts)
        assert np.isnan(got), (name, float(got))
        g = jax.grad(lambda h, k, s=sched: LCE(h, k, t, weight=w, **s, **opts), (0, 1))(h, k)
        g_ref = jax.grad(lambda h, k: CE(h @ k, t, weight=w, **opts), (0, 1))(h, k)
        for a, r in zip(g, g_ref, strict=True):
            np.testing.assert_array_equal(np.isfinite(a), np.isfinite(r), err_msg=name)
            assert not np.all(np.isfinite(a)), name
    # A nonzero denominator is untouched by the degenerate-case correction.
    w2 = w.at[t[0]].set(1.5)
    np.testing.assert_allclose(
        LCE(h, k, t, weight=w2, **SMALL, **opts), CE(h @ k, t, weight=w2, **opts), rtol=2e-6
    )


def test_checked_raises_on_out_of_range_target():
    h, k = jnp.asarray(H_NP, jnp.float32), jnp.asarray(K_NP, jnp.float32)
    t = jnp.asarray(T_NP, jnp.int32).at[1, 2].set(V + 3)
    with pytest.raises(Exception, match=r"linear_cross_entropy: target value 40 at flattened"):
        jaxce.checked(LCE)(h, k, t)


def test_frozen_inputs_and_forward_mode():
    """Gradients for a subset of the inputs (a frozen kernel); forward mode is refused."""
    h, k = jnp.asarray(H_NP, jnp.float32), jnp.asarray(K_NP, jnp.float32)
    t = jnp.asarray(T_NP, jnp.int32)

    # With the kernel frozen, "forward-buffer" and "auto" fall back to token blocks.
    schedules = [*SCHEDULES.values(), {}]

    def run(h):
        want = jax.grad(lambda h: CE(h @ k, t))(h)
        got = [jax.grad(lambda h, s=s: LCE(h, k, t, **s))(h) for s in schedules]
        return want, got

    want, got = run_fast(run, h)
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda h: LCE(h, k, t), (h,), (h,))


@pytest.mark.parametrize(
    "n,d,v,blocks",
    [(512, 32, 4096, dict(token_block=128, vocab_block=512)), (256, 512, 32768, {})],
    ids=["tokens-blocked", "logits-in-kernel-gradient"],
)
def test_never_materialises_the_logits(n, d, v, blocks):
    """The compiled ``value_and_grad`` holds no ``[N, V]`` array, and its temporary memory
    is at most 1/16 of the materialised formulation's: with the default blocks (with
    ``n ≤ d``, "forward" keeping the logits in the kernel gradient), with the kernel
    frozen, and with ``grad_mode="recompute"`` (and given blocks)."""
    h = jnp.ones((n, d), jnp.float32)
    k = jnp.ones((d, v), jnp.float32)
    t = jnp.zeros((n,), jnp.int32)
    recompute = dict(grad_mode="recompute", **blocks)
    cases = {
        "default": (lambda h, k: LCE(h, k, t, label_smoothing=0.1), (0, 1)),
        "recompute": (lambda h, k: LCE(h, k, t, label_smoothing=0.1, **recompute), (0, 1)),
        "frozen-kernel": (lambda h, k: LCE(h, k, t, label_smoothing=0.1), 0),
        "materialised": (lambda h, k: CE(h @ k, t, label_smoothing=0.1), (0, 1)),
        "materialised-frozen": (lambda h, k: CE(h @ k, t, label_smoothing=0.1), 0),
    }
    compiled = {
        name: jax.jit(jax.value_and_grad(f, argnums)).lower(h, k).compile()
        for name, (f, argnums) in cases.items()
    }
    temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in compiled.items()}
    assert temp["materialised"] >= n * v * 4  # the logits themselves, at least
    for name, ref in (
        ("default", "materialised"),
        ("recompute", "materialised"),
        ("frozen-kernel", "materialised-frozen"),
    ):
        assert temp[name] * 16 <= temp[ref], (name, temp)
        assert not re.search(rf"f32\[{n},{v}\]", compiled[name].as_text()), name
    assert re.search(rf"f32\[{n},{v}\]", compiled["materialised"].as_text())


def test_schedule_choice():
    """Which schedule runs. "forward" puts the logits of its first min(N, D) tokens in the
    kernel gradient (all of them when N ≤ D, unless a smaller token block is given; none
    with any token block when N > D); "auto" takes "forward" for a scalar loss when
    that covers at least half the tokens, or when its token blocks have ≥ 128 tokens."""
    from jaxce.linear.plan import make_plan

    def plan(grad_mode="auto", per_row=False, n=1024, d=1024, token_block=None, **kw):
        return make_plan(grad_mode, per_row, n, 32768, d, token_block, None, **kw)

    mode, blocks = plan()
    assert mode == "forward" and blocks["head"] == blocks["bt"] == 1024
    assert blocks["transpose_hidden"]  # 1024·1024 values fit the budget of 2**20
    assert plan(grad_mode="forward", token_block=2048)[1]["head"] == 1024
    assert plan(grad_mode="forward", token_block=512)[1]["head"] == 0
    assert plan(grad_mode="forward", n=2048, token_block=512)[1]["head"] == 0
    assert plan(grad_mode="recompute")[1]["head"] == 0
    assert plan(per_row=True) == plan(grad_mode="recompute", per_row=True)
    # N > D: a head of D tokens, then token blocks of N/16.
    assert plan(n=1024, d=768) == ("forward", plan(n=1024, d=768)[1])
    assert plan(n=1024, d=768)[1]["head"] == 768 and plan(n=1024, d=768)[1]["bt"] == 64
    assert plan(n=1024, d=512)[0] == "forward"
    assert plan(n=1024, d=256) == ("recompute", plan(n=1024, d=256)[1])
    assert plan(n=1024, d=256)[1]["head"] == 0
    assert plan(n=2048, d=256)[0] == "forward" and plan(n=2048, d=256)[1]["head"] == 256
    # Without a kernel gradient (the fallback) there is no head, and "auto" keeps its
    # token-count rule.
    assert plan(allow_buffer=False)[1]["head"] == 0
    assert plan(n=1024, d=768, allow_buffer=False)[0] == "recompute"
    assert plan(n=2048, d=768, allow_buffer=False)[0] == "forward"


# --------------------------------------------------------------------------- errors

X2 = np.zeros((4, 3), np.float32)
K2 = np.zeros((3, 5), np.float32)
T2 = np.zeros((4,), np.int32)
F4 = np.zeros((4,), np.float32)
MESH = jax.sharding.AbstractMesh((2, 4), ("data", "vocab"))  # 8 devices, never used to run


@pytest.mark.parametrize(
    "args, kwargs, exc, pieces",
    [
        ((X2, np.zeros((2, 5), np.float32), T2), {}, ValueError, ("`kernel`", "(2, 5)", "(4, 3)")),
        ((X2, np.zeros((3,), np.float32), T2), {}, ValueError, ("`kernel`", "2-D", "(3,)")),
        ((X2, K2, np.zeros((3,), np.int32)), {}, ValueError, ("`target`", "(3,)", "(4,)")),
        ((X2, K2, np.zeros((4,), np.float32)), {}, TypeError, ("`target`", "integer", "float32")),
        ((X2.astype(np.int32), K2, T2), {}, TypeError, ("`hidden`", "floating", "int32")),
        ((X2, K2.astype(np.int32), T2), {}, TypeError, ("`kernel`", "floating", "int32")),
        ((np.zeros((), np.float32), K2, T2), {}, ValueError, ("`hidden`", "0-d")),
        ((X2, K2, T2), {"bias": F4}, ValueError, ("`bias`", "(5,)", "(4,)")),
        ((X2, K2, T2), {"weight": F4}, ValueError, ("`weight`", "(4,)")),
        ((X2, K2, T2), {"token_block": 0}, ValueError, ("`token_block`", "0")),
        ((X2, K2, T2), {"vocab_block": 2.5}, TypeError, ("`vocab_block`", "2.5")),
        ((X2, K2, T2), {"grad_mode": "fast"}, ValueError, ("`grad_mode`", "'fast'")),
        ((X2, K2, T2), {"kernel_layout": "VD"}, ValueError, ("`kernel_layout`", "'VD'")),
        ((X2, K2, T2), {"kernel_layout": None}, ValueError, ("`kernel_layout`", "None")),
        (
            (X2, K2, T2),
            {"kernel_layout": "vd"},
            ValueError,
            ("`kernel`", "(3, 5)", "kernel_layout='vd'", "(V, D)", "kernel.shape[1]"),
        ),
        (
            (X2, K2.T, T2),
            {},
            ValueError,
            ("`kernel`", "(5, 3)", "kernel_layout='dv'", "(D, V)", "kernel_layout='vd'"),
        ),
        ((X2, K2.T, T2), {"kernel_layout": "vd", "bias": F4}, ValueError, ("`bias`", "(5,)")),
        (
            (X2, K2.T, T2),
            {"mesh": MESH, "vocab_axis": "vocab", "kernel_layout": "vd"},
            ValueError,
            ("number of classes (5", "`kernel` axis 0", "4 devices"),
        ),
        ((X2, K2, T2), {"grad_mode": "forward", "reduction": "none"}, ValueError, ("'none'",)),
        ((X2, K2, T2), {"reduction": "avg"}, ValueError, ("`reduction`", "'avg'")),
        ((X2, K2, T2), {"label_smoothing": 1.5}, ValueError, ("`label_smoothing`", "1.5")),
        ((X2, K2, T2), {"z_loss": -1.0}, ValueError, ("`z_loss`", "-1.0")),
        ((X2, K2, T2), {"softcap": 0.0}, ValueError, ("`softcap`", "0.0")),
        ((X2, K2, T2), {"ignore_index": 1.0}, TypeError, ("`ignore_index`", "1.0")),
        ((X2, K2, T2), {"data_axis": "data"}, ValueError, ("`data_axis`", "mesh")),
        ((X2, K2, T2), {"vocab_axis": 3}, TypeError, ("`vocab_axis`", "3")),
        ((X2, K2, T2), {"mesh": MESH}, ValueError, ("`mesh`", "`data_axis`")),
        ((X2, K2, T2), {"mesh": MESH, "data_axis": "batch"}, ValueError, ("'batch'", "axes")),
        (
            (X2, K2, T2),
            {"mesh": MESH, "data_axis": "data", "vocab_axis": ("vocab", "data")},
            ValueError,
            ("`data_axis`", "`vocab_axis`", "share", "'data'"),
        ),
        (
            (X2, K2, T2),
            {"mesh": MESH, "vocab_axis": "vocab"},
            ValueError,
            ("number of classes (5", "divisible", "4 devices"),
        ),
        (
            (X2[:3], K2, T2[:3]),
            {"mesh": MESH, "data_axis": "data"},
            ValueError,
            ("`hidden` axis 0 (size 3)", "divisible", "2 devices"),
        ),
    ],
    ids=lambda p: None,
)
def test_errors_name_argument_and_value(args, kwargs, exc, pieces):
    pattern = "(?s)^linear_cross_entropy: " + "".join(f"(?=.*{re.escape(p)})" for p in pieces)
    with pytest.raises(exc, match=pattern):
        LCE(*args, **kwargs)
    with pytest.raises(exc, match=pattern):  # trace-time only: nothing is executed
        jax.eval_shape(lambda *a: LCE(*a, **kwargs), *args)


# --------------------------------------------------------------------------- benchmark


def test_benchmark_program_runs(tmp_path):
    """``benchmarks/bench_linear.py`` on a tiny shape, with a block size: it runs and
    writes its tables (the times are not checked; the deviation from the materialised
    version is)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location("bench_linear", bench_dir / "bench_linear.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(bench_dir))
    # Block options reach the fused cases only (the materialised one has no blocks).
    argv = ["--shapes", "64x8x300", "--repeats", "1", "--variants", "auto", "--vocab-block", "128"]
    out = bench.main(argv + ["--out", str(tmp_path)])
    rows = {(r["head"], r["impl"]): r for r in out["rows"]}
    # Both heads by default: with a bias (three gradients) and without (bias=None).
    assert set(rows) == {(h, i) for h in ("bias", "nobias") for i in ("materialised", "fused/auto")}
    for head in ("bias", "nobias"):
        fused = rows[head, "fused/auto"]
        assert fused["max_rel_dev"] < 1e-5
        assert fused["temp_ratio"] is not None and fused["median_ms"] > 0
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md"]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(data["rows"]) == 4
    assert "| nobias |" in next(tmp_path.glob("*.md")).read_text()


@pytest.mark.parametrize("scale", [1e37, 1e38, 1e-39])
@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
def test_extreme_class_weights_match_cross_entropy(scale, grad_mode):
    """Weighted ``mean`` with weights whose sums overflow, or whose 1/Σw underflows, or that
    are subnormal: the fused loss scales them by a common power of two, as cross_entropy does,
    so it gives the same finite loss and gradients (without it: inf, or NaN)."""
    k = jax.random.split(jax.random.key(3), 3)
    h = jax.random.normal(k[0], (16, 8))
    kernel = jax.random.normal(k[1], (8, 40))
    t = jax.random.randint(k[2], (16,), 0, 40)
    # built in NumPy: XLA on CPU would flush the subnormal products to zero
    w = jnp.asarray((np.linspace(0.5, 1.5, 40) * scale).astype(np.float32))

    def fused(h, kernel):
        return jaxce.linear_cross_entropy(
            h, kernel, t, weight=w, grad_mode=grad_mode, label_smoothing=0.1
        )

    def materialised(h, kernel):
        return jaxce.cross_entropy(h @ kernel, t, weight=w, label_smoothing=0.1)

    v1, g1 = jax.value_and_grad(fused, argnums=(0, 1))(h, kernel)
    v2, g2 = jax.value_and_grad(materialised, argnums=(0, 1))(h, kernel)
    assert np.isfinite(float(v1))
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
