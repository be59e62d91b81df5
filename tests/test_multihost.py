"""``linear_cross_entropy`` across two JAX processes ("hosts") joined by
``jax.distributed`` on localhost: the README's multi-host recipe, run for real.

Two processes with 4 simulated CPU devices each form a (2, 4) ``("data", "vocab")``
mesh (``vocab`` within a process, ``data`` across them; CPU collectives over gloo).
Each feeds only its own half of the batch and checks its pieces of the loss and the
gradients against a single-device run (``tests/multihost_worker.py``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(WORKER.parent.parent),
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (rc, out, err) in enumerate(outputs):
        assert rc == 0, f"process {i} exited with {rc}:\n{err[-3000:]}"
        result = json.loads(out.strip().splitlines()[-1])
        assert result == {"process": i, "ok": True, "detail": ""}, result["detail"][-3000:]
