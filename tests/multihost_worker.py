"""One process of a two-process ("two-host") run of ``linear_cross_entropy``.

Started twice by ``tests/test_multihost.py`` (process ids 0 and 1), each process with 4
simulated CPU devices; ``jax.distributed.initialize`` joins them over localhost (CPU
collectives through gloo) into 8 global devices. The mesh is ``("data", "vocab")`` =
(2, 4) with the ``vocab`` axis inside each process and ``data`` across them, as the
README recommends for several hosts. Each process holds only its own half of the batch
(``jax.make_array_from_process_local_data``) and compares its addressable pieces of the
loss and of the gradients with a single-device run of the same problem. Prints one
JSON line: ``{"process": i, "ok": bool, "detail": str}``.
"""

from __future__ import annotations

import json
import sys
import traceback

B, S, D, V = 4, 6, 16, 256  # 24 tokens, 2 batch rows per process


def main(process_id: int, port: int) -> dict:
    import jax

    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=120,
    )
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxce

    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    assert jax.local_device_count() == 4

    rng = np.random.default_rng(3)  # the same global problem in both processes
    h_np = rng.normal(size=(B, S, D)).astype(np.float32)
    k_np = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
    t_np = rng.integers(0, V, size=(B, S)).astype(np.int32)
    t_np[0, :2] = -100
    opts = dict(label_smoothing=0.1, z_loss=1e-3, token_block=4, vocab_block=24)

    def loss(kernel, hidden, target, **axes):
        return jaxce.linear_cross_entropy(hidden, kernel, target, **axes, **opts)

    # Reference: one local device, the whole problem.
    local = jax.local_devices()[0]
    ref_args = [jax.device_put(a, local) for a in (k_np, h_np, t_np)]
    ref_loss, (ref_dk, ref_dh) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*ref_args)
    ref_loss, ref_dk, ref_dh = (np.asarray(a) for a in (ref_loss, ref_dk, ref_dh))

    # The global mesh: devices ordered by process, so that each row of the (2, 4) grid is
    # one process's 4 devices ("vocab" within a process, "data" across processes).
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = jax.sharding.Mesh(
        np.array(devices).reshape(2, 4), ("data", "vocab"), axis_types=(AxisType.Auto,) * 2
    )
    rows = slice(process_id * (B // 2), (process_id + 1) * (B // 2))
    hidden = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data", None, None)), h_np[rows], (B, S, D)
    )
    target = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data", None)), t_np[rows], (B, S)
    )
    kernel = jax.make_array_from_callback(
        (D, V), NamedSharding(mesh, P(None, "vocab")), lambda idx: k_np[idx]
    )
    axes = dict(data_axis="data", vocab_axis="vocab", mesh=mesh)
    step = jax.jit(jax.value_and_grad(lambda k, h, t: loss(k, h, t, **axes), argnums=(0, 1)))
    got_loss, (got_dk, got_dh) = step(kernel, hidden, target)

    np.testing.assert_allclose(
        np.asarray(got_loss.addressable_data(0)), ref_loss, rtol=2e-6, err_msg="loss"
    )
    for name, got, want in (("d_kernel", got_dk, ref_dk), ("d_hidden", got_dh, ref_dh)):
        assert got.sharding.spec[: 2 if name == "d_kernel" else 1] == (
            (None, "vocab") if name == "d_kernel" else ("data",)
        ), (name, got.sharding)
        for shard in got.addressable_shards:
            np.testing.assert_allclose(
                np.asarray(shard.data),
                want[shard.index],
                rtol=1e-5,
                atol=1e-6 * float(np.max(np.abs(want))),
                err_msg=name,
            )
    # The process's rows of d_hidden are non-trivial (the comparison is not vacuous).
    assert any(float(np.max(np.abs(np.asarray(s.data)))) > 0 for s in got_dh.addressable_shards)
    return {"process": process_id, "ok": True, "detail": ""}


if __name__ == "__main__":
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    try:
        result = main(pid, port)
    except Exception as e:  # reported to the parent test
        result = {"process": pid, "ok": False, "detail": f"{e!r}\n{traceback.format_exc()}"}
    print(json.dumps(result), flush=True)
