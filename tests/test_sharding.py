"""``cross_entropy`` and ``linear_cross_entropy`` on a mesh of 8 simulated CPU devices.

Data parallel (tokens sharded), vocab parallel (logits / kernel sharded over the
classes) and both on a 2-D ``("data", "vocab")`` mesh, under ``AxisType.Auto`` and
``AxisType.Explicit``: values and gradients equal the single-device run, and the
compiled programs contain no all-gather (or all-to-all) of the logits, the kernel or
the hidden states. The device count is fixed when JAX starts, so the checks run in
their own process (``tests/sharding_worker.py``); each check is reported here as its
own test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("sharding_worker.py")
sys.path.insert(0, str(WORKER.parent))
from eight_devices import run_worker  # noqa: E402
from sharding_worker import CHECKS  # noqa: E402


@pytest.fixture(scope="module")
def results() -> dict:
    return run_worker(WORKER, timeout=600)


@pytest.mark.parametrize("name", CHECKS)
def test_sharded_matches_single_device(results, name):
    assert name in results, sorted(results)
    assert results[name]["ok"], results[name]["detail"]
