"""Exports sharded losses for GPU and TPU from a mesh of 8 simulated CPU devices.

Run by ``tests/test_export.py`` in its own process, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is fixed when
JAX starts). Prints one JSON object: case name -> ``{"ok": bool, "detail": str}``.
"""

from __future__ import annotations

import json
import traceback

import jax
import jax.numpy as jnp
from jax import export
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxce

PLATFORMS = ("cuda", "rocm", "tpu")
N, D, V = 64, 16, 256
CASES = ("lce-2d-explicit", "lce-2d-auto-named", "lce-recompute-2d-auto-named", "ce-2d-explicit")


def _spec(mesh, shape, dtype, spec):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _export(name: str):
    explicit = "explicit" in name
    axis_type = AxisType.Explicit if explicit else AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(axis_type,) * 2)
    targets = _spec(mesh, (N,), jnp.int32, P("data"))
    with jax.set_mesh(mesh):
        if name.startswith("ce"):
            logits = _spec(mesh, (N, V), jnp.bfloat16, P("data", "vocab"))
            loss = jax.value_and_grad(
                lambda x, t: jaxce.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-4)
            )
            return export.export(jax.jit(loss), platforms=PLATFORMS)(logits, targets)
        hidden = _spec(mesh, (N, D), jnp.float32, P("data", None))
        kernel = _spec(mesh, (D, V), jnp.float32, P(None, "vocab"))
        options = dict(label_smoothing=0.1, z_loss=1e-4)
        if not explicit:
            options.update(data_axis="data", vocab_axis="vocab")
        if "recompute" in name:
            options["grad_mode"] = "recompute"
        loss = jax.value_and_grad(
            lambda h, k, t: jaxce.linear_cross_entropy(h, k, t, **options), argnums=(0, 1)
        )
        return export.export(jax.jit(loss), platforms=PLATFORMS)(hidden, kernel, targets)


def main() -> None:
    results = {}
    for name in CASES:
        try:
            exported = _export(name)
            ok = exported.platforms == PLATFORMS and exported.nr_devices == 8
            detail = f"platforms {exported.platforms}, {exported.nr_devices} devices"
        except Exception:  # noqa: BLE001 - reported to the test, which fails on it
            ok, detail = False, traceback.format_exc()[-3000:]
        results[name] = {"ok": ok, "detail": detail}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
