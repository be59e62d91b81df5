"""Sharded runs of ``cross_entropy`` and ``linear_cross_entropy`` on 8 simulated CPU devices.

Run by ``tests/test_sharding.py`` in its own process, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is fixed when
JAX starts). Prints one JSON object: check name -> ``{"ok": bool, "detail": str}``.

Each check jits ``value_and_grad`` of a loss on inputs sharded on a mesh and compares
the value and gradients with the single-device run; it also scans the compiled HLO
for collectives whose result has the full vocabulary (``V``) or token (``N``) extent,
which is how a gathered logits array (or kernel, or hidden) would show up. ``N``,
``V`` and ``D`` are chosen so that no other array has those extents.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import traceback

B, S, D, V = 8, 6, 24, 512  # N = 48 tokens
N = B * S
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
AXIS_TYPES = ("auto", "explicit")
LAYOUTS = ("data", "vocab", "2d")
CHECKS = [
    f"{fn}-{layout}-{at}"
    for fn, layout, at in itertools.product(("ce", "lce"), LAYOUTS, AXIS_TYPES)
] + [
    "ce-vocab-explicit-sharded-weight",
    "lce-none-2d-explicit",
    "lce-forward-2d-auto",
    "lce-buffer-2d-auto",
    "lce-buffer-data-explicit",
    "lce-head-vocab-auto",
    "lce-gspmd-only-2d-auto",
    "lce-vd-2d-auto",
    "lce-vd-buffer-2d-explicit",
    "ce-long-rows-vocab-auto",
    "ce-long-rows-2d-auto",
]
# Rows longer than XLA:CPU's fast reduction length, which one CPU device sums in chunks
# (a reshape that would make GSPMD gather class-sharded logits).
N_LONG, V_LONG = 16, 65536


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType
    from jax.sharding import PartitionSpec as P

    import jaxce

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    assert jax.device_count() == 8, jax.devices()

    rng = np.random.default_rng(7)
    h_np = rng.normal(size=(B, S, D)).astype(np.float32)
    k_np = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
    b_np = rng.normal(size=(V,)).astype(np.float32)
    w_np = rng.uniform(0.5, 2.0, size=(V,)).astype(np.float32)
    t_np = rng.integers(0, V, size=(B, S)).astype(np.int32)
    t_np[0, :3] = -100
    ct_np = rng.normal(size=(B, S)).astype(np.float32)
    logits_np = (h_np @ k_np + b_np).astype(np.float32)
    ce_opts = dict(label_smoothing=0.1, z_loss=1e-3)
    lce_opts = dict(label_smoothing=0.1, z_loss=1e-3, softcap=8.0, token_block=5, vocab_block=40)

    def meshes(layout, at):
        kind = AxisType.Explicit if at == "explicit" else AxisType.Auto
        if layout == "2d":
            return jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(kind, kind))
        return jax.make_mesh((8,), (layout,), axis_types=(kind,))

    def specs(layout):
        data = "data" if layout in ("data", "2d") else None
        vocab = "vocab" if layout in ("vocab", "2d") else None
        return data, vocab

    def bad_collectives(hlo: str) -> list[str]:
        """Collectives whose result is a gathered ``[N, V]`` logits, ``[D, V]`` kernel or
        ``[N, D]`` / ``[B, S, D]`` hidden (a matrix with a full token or class extent).
        Vectors of ``V`` numbers (a replicated weight's gradient) are fine."""
        found = []
        for line in hlo.splitlines():
            m = re.search(r"= \(?[a-z0-9]+\[([0-9,]*)\][^=]*? (all-gather|all-to-all)\(", line)
            if m:
                dims = [int(x) for x in m.group(1).split(",") if x]
                if (len(dims) >= 2 and (N in dims or V in dims)) or dims == [B, S, D]:
                    found.append(line.strip()[:160])
        return found

    def run(fn, *args):
        """Compiles once (at XLA's lowest backend optimisation level: correctness only;
        the SPMD partitioner runs all the same) and returns ``(outputs, HLO text)``."""
        compiled = jax.jit(fn).lower(*args).compile(FAST)
        return compiled(*args), compiled.as_text()

    def compare(got, want, rtol, atol, what):
        got_l, want_l = jax.tree.leaves(got), jax.tree.leaves(want)
        assert len(got_l) == len(want_l), what
        for i, (g, w) in enumerate(zip(got_l, want_l, strict=True)):
            g, w = np.asarray(g), np.asarray(w)
            assert g.shape == w.shape, (what, i, g.shape, w.shape)
            scale = float(np.max(np.abs(w))) if w.size else 1.0
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale, err_msg=f"{what}[{i}]")

    # ---------------------------------------------------------------- cross_entropy
    def ce_loss(x, w, t):
        return jaxce.cross_entropy(x, t, weight=w, **ce_opts)

    ce_fn = jax.value_and_grad(ce_loss, argnums=(0, 1))
    ce_ref = run(ce_fn, logits_np.reshape(N, V), w_np, t_np.reshape(N))[0]

    def check_ce(layout, at, weight_spec="vocab"):
        mesh = meshes(layout, at)
        data, vocab = specs(layout)
        with jax.set_mesh(mesh):
            x = jax.device_put(logits_np.reshape(N, V), P(data, vocab))
            w = jax.device_put(w_np, P(vocab) if weight_spec == "vocab" else P())
            t = jax.device_put(t_np.reshape(N), P(data))
            out, hlo = run(ce_fn, x, w, t)
        compare(out, ce_ref, 2e-6, 2e-6, "ce")
        if at == "explicit":
            got = jax.typeof(out[1][0]).sharding.spec if hasattr(out[1][0], "sharding") else None
            assert tuple(out[1][0].sharding.spec) == (data, vocab), (got, out[1][0].sharding)
        bad = bad_collectives(hlo)
        assert not bad, f"gathers of the logits: {bad}"

    # ---------------------------------------------------------------- linear_cross_entropy
    def lce_fn(reduction, mode, axes, blocks=None):
        def loss(h, k, b, w, t):
            out = jaxce.linear_cross_entropy(
                h,
                k,
                t,
                bias=b,
                weight=w,
                reduction=reduction,
                grad_mode=mode,
                **axes,
                **{**lce_opts, **(blocks or {})},
            )
            return (jnp.sum(out * ct_np) if reduction == "none" else out), out

        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)

    refs = {}

    def lce_ref(reduction):
        if reduction not in refs:
            args = (h_np, k_np, b_np, w_np, t_np)
            refs[reduction] = run(lce_fn(reduction, "recompute", {}), *args)[0]
        return refs[reduction]

    def check_lce(
        layout, at, reduction="mean", mode="recompute", name_axes=None, blocks=None, vd=False
    ):
        """``vd``: the kernel is passed as a (V, D) table with ``kernel_layout="vd"``,
        its class axis (0) sharded over the vocab axis."""
        mesh = meshes(layout, at)
        data, vocab = specs(layout)
        axes = {}
        if at == "auto" and name_axes is not False:
            axes = {"data_axis": data, "vocab_axis": vocab}
        if vd:
            axes["kernel_layout"] = "vd"
        with jax.set_mesh(mesh):
            kernel = jax.device_put(k_np.T, P(vocab, None)) if vd else None
            args = (
                jax.device_put(h_np, P(data, None, None)),
                kernel if vd else jax.device_put(k_np, P(None, vocab)),
                jax.device_put(b_np, P(vocab)),
                jax.device_put(w_np, P(vocab)),
                jax.device_put(t_np, P(data, None)),
            )
            out, hlo = run(lce_fn(reduction, mode, axes, blocks), *args)
        dh, dk = out[1][0], out[1][1]
        if vd:
            assert dk.shape == (V, D), dk.shape
            if at == "explicit":
                assert tuple(dk.sharding.spec) == (vocab, None), dk.sharding
            out = (out[0], (dh, dk.T, *out[1][2:]))
        compare(out, lce_ref(reduction), 1e-5, 2e-6, "lce")
        if at == "explicit" and not vd:
            assert tuple(dk.sharding.spec) == (None, vocab), dk.sharding
            assert tuple(dh.sharding.spec)[:1] == (data,), dh.sharding
        bad = bad_collectives(hlo)
        if name_axes is not False:
            assert not bad, f"gathers of the kernel/hidden/logits: {bad}"
        else:
            # GSPMD alone gathers the kernel (and hidden) around the blocked loops; seeing
            # it here also shows that `bad_collectives` does detect such gathers.
            assert any(f"[{D},{V}]" in line for line in bad), bad

    def check_ce_long_rows(layout):
        x_np = rng.normal(size=(N_LONG, V_LONG)).astype(np.float32)
        t_long = rng.integers(0, V_LONG, size=N_LONG).astype(np.int32)
        fn = jax.value_and_grad(lambda x, t: jaxce.cross_entropy(x, t, label_smoothing=0.1))
        want = run(fn, x_np, t_long)[0]
        data, vocab = specs(layout)
        with jax.set_mesh(meshes(layout, "auto")):
            x = jax.device_put(x_np, P(data, vocab))
            out, hlo = run(fn, x, jax.device_put(t_long, P(data)))
        compare(out, want, 2e-6, 2e-6, "ce-long-rows")
        gathers = [
            line.strip()[:160]
            for line in hlo.splitlines()
            if re.search(r"(all-gather|all-to-all)\(", line) and str(V_LONG) in line
        ]
        assert not gathers, f"gathers of the logits: {gathers}"

    checks = {}
    for layout, at in itertools.product(LAYOUTS, AXIS_TYPES):
        # A vocab-sharded weight with replicated targets under explicit axes needs the
        # gather's out_sharding in losses._take; checked on its own below.
        wspec = "replicated" if (layout, at) == ("vocab", "explicit") else "vocab"
        checks[f"ce-{layout}-{at}"] = (check_ce, (layout, at), {"weight_spec": wspec})
        checks[f"lce-{layout}-{at}"] = (check_lce, (layout, at), {})
    checks["ce-vocab-explicit-sharded-weight"] = (check_ce, ("vocab", "explicit"), {})
    checks["lce-none-2d-explicit"] = (check_lce, ("2d", "explicit"), {"reduction": "none"})
    checks["lce-forward-2d-auto"] = (check_lce, ("2d", "auto"), {"mode": "forward"})
    # "forward" without token blocks: with ≤ D tokens per device all logits are kept in
    # the kernel gradient.
    whole = {"mode": "forward", "blocks": {"token_block": None}}
    checks["lce-buffer-2d-auto"] = (check_lce, ("2d", "auto"), whole)
    checks["lce-buffer-data-explicit"] = (check_lce, ("data", "explicit"), whole)
    # 48 tokens per device > D: the first 24 in the kernel gradient, the rest in a block.
    checks["lce-head-vocab-auto"] = (check_lce, ("vocab", "auto"), whole)
    # Without data_axis/vocab_axis under Auto axes: GSPMD alone (values only).
    checks["lce-gspmd-only-2d-auto"] = (check_lce, ("2d", "auto"), {"name_axes": False})
    # A (V, D) table with kernel_layout="vd": its axis 0 sharded over the vocab axis.
    checks["lce-vd-2d-auto"] = (check_lce, ("2d", "auto"), {"vd": True})
    checks["lce-vd-buffer-2d-explicit"] = (check_lce, ("2d", "explicit"), {**whole, "vd": True})
    checks["ce-long-rows-vocab-auto"] = (check_ce_long_rows, ("vocab",), {})
    checks["ce-long-rows-2d-auto"] = (check_ce_long_rows, ("2d",), {})
    assert sorted(checks) == sorted(CHECKS)

    only = set(sys.argv[1:])
    results = {}
    for name, (fn, args, kwargs) in checks.items():
        if only and name not in only:
            continue
        try:
            fn(*args, **kwargs)
            results[name] = {"ok": True, "detail": ""}
        except Exception as e:  # reported to the parent test, not raised here
            tb = traceback.format_exc(limit=4)
            results[name] = {"ok": False, "detail": f"{type(e).__name__}: {e}\n{tb}"[-3000:]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
