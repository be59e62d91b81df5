"""The losses, the fused LM head and a SmallNet train step lower for GPU and TPU.

This machine has only a CPU, so "runs on CPU, GPU and TPU through XLA" is checked by
exporting with ``jax.export`` for the ``cuda``, ``rocm`` and ``tpu`` platforms: that
lowers each program with every platform's lowering rules and refuses custom calls
that are not guaranteed to exist there, so a CPU-only construct fails here. (It does
not run the programs: GPU numbers come from ``benchmarks/device_check.sh``.)
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import export

import jaxce

PLATFORMS = ("cuda", "rocm", "tpu")
OPTIONS = {
    "plain": {},
    "weight": {"weight": "w"},
    "ignore-smoothing": {"ignore_index": 1, "label_smoothing": 0.1},
    "z-softcap": {"z_loss": 1e-4, "softcap": 30.0},
    "all-sum": {
        "weight": "w",
        "ignore_index": 1,
        "label_smoothing": 0.1,
        "z_loss": 1e-4,
        "softcap": 30.0,
        "reduction": "sum",
    },
    "all-none": {"weight": "w", "label_smoothing": 0.2, "reduction": "none"},
}


def _export(fn, *args):
    exported = export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
    assert exported.platforms == PLATFORMS
    assert exported.mlir_module_serialized  # a non-empty serialized StableHLO module
    return exported


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


# 40000 classes: rows longer than 32768 take the chunked-sum path (CPU-only branch).
@pytest.mark.parametrize("classes", [7, 40000])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("options", list(OPTIONS), ids=list(OPTIONS))
def test_cross_entropy_value_and_grad_exports(options, dtype, classes):
    kwargs = dict(OPTIONS[options])
    reduce = kwargs.get("reduction") == "none"

    def loss(logits, targets, w):
        if kwargs.get("weight") == "w":
            kwargs["weight"] = w
        out = jaxce.cross_entropy(logits, targets, **kwargs)
        return jnp.sum(out) if reduce else out

    _export(
        jax.value_and_grad(loss, argnums=(0, 2)),
        _sds((8, classes), dtype),
        _sds((8,), jnp.int32),
        _sds((classes,), jnp.float32),
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_probability_targets_and_nll_export(dtype):
    def loss(logits, probs):
        return jaxce.cross_entropy(logits, probs, label_smoothing=0.1) + jaxce.nll_loss(
            jaxce.log_softmax(logits, axis=-1), jnp.argmax(probs, axis=-1), reduction="sum"
        )

    _export(jax.value_and_grad(loss), _sds((4, 5, 3), dtype), _sds((4, 5, 3), dtype))


# (N, D, V, grad_mode, token_block): the kernel-gradient head block (N <= D), a head block
# followed by token blocks, token blocks only, and the recompute schedule.
SCHEDULES = {
    "forward-head": (32, 64, 1000, "forward", None),
    "forward-head-then-blocks": (96, 32, 1000, "forward", None),
    "forward-token-blocks": (96, 32, 1000, "forward", 16),
    "recompute": (96, 32, 1000, "recompute", None),
}


@pytest.mark.parametrize("frozen_kernel", [False, True], ids=["kernel-grad", "frozen-kernel"])
@pytest.mark.parametrize("schedule", list(SCHEDULES), ids=list(SCHEDULES))
def test_linear_cross_entropy_schedules_export(schedule, frozen_kernel):
    n, d, v, mode, token_block = SCHEDULES[schedule]
    argnums = (0, 2) if frozen_kernel else (0, 1, 2)

    def loss(hidden, kernel, bias, targets):
        return jaxce.linear_cross_entropy(
            hidden,
            kernel,
            targets,
            bias=bias,
            grad_mode=mode,
            token_block=token_block,
            vocab_block=256,
            label_smoothing=0.1,
            z_loss=1e-4,
        )

    _export(
        jax.value_and_grad(loss, argnums=argnums),
        _sds((n, d), jnp.float32),
        _sds((d, v), jnp.float32),
        _sds((v,), jnp.float32),
        _sds((n,), jnp.int32),
    )


def test_linear_cross_entropy_bf16_exports():
    def loss(hidden, kernel, targets):
        return jaxce.linear_cross_entropy(hidden, kernel, targets, ignore_index=0)

    _export(
        jax.value_and_grad(loss, argnums=(0, 1)),
        _sds((64, 32), jnp.bfloat16),
        _sds((32, 1000), jnp.bfloat16),
        _sds((64,), jnp.int32),
    )


def test_smallnet_train_step_exports():
    pytest.importorskip("flax")
    optax = pytest.importorskip("optax")
    from flax import nnx

    from jaxce.models import SmallNet
    from jaxce.train import make_train_step

    graphdef, params = nnx.split(SmallNet(rngs=nnx.Rngs(0)))
    tx = optax.adam(1e-2)
    step = make_train_step(graphdef, tx, label_smoothing=0.1)
    opt_state = tx.init(params)
    as_sds = lambda tree: jax.tree.map(lambda a: _sds(a.shape, a.dtype), tree)  # noqa: E731
    _export(step, as_sds(params), as_sds(opt_state), _sds((16, 10), jnp.float32),
            _sds((16,), jnp.int32))


@pytest.fixture(scope="module")
def sharded_results() -> dict:
    from eight_devices import run_worker

    return run_worker(Path(__file__).with_name("export_worker.py"), timeout=300)


@pytest.mark.parametrize(
    "name",
    ["lce-2d-explicit", "lce-2d-auto-named", "lce-recompute-2d-auto-named", "ce-2d-explicit"],
)
def test_sharded_exports_on_eight_devices(sharded_results, name):
    assert name in sharded_results, sorted(sharded_results)
    assert sharded_results[name]["ok"], sharded_results[name]["detail"]
