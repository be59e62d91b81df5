"""The core install: ``import jaxce`` and every loss work with only jax and numpy.

flax, optax, rich and tensorstore (the ``nn`` extra), and scikit-learn, torch and
safetensors (tests only) are made unimportable in a subprocess by a finder at the front
of ``sys.meta_path``; the losses must run there, forward and backward, and the CLI and
the workflow modules must say in one line what to install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"flax", "optax", "orbax", "rich", "sklearn", "torch", "safetensors", "tensorstore"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import jax, jax.numpy as jnp
    import jaxce

    x = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
    y = jnp.array([0, 1])
    assert abs(float(jaxce.CrossEntropyLoss()(x, y)) - 0.3774033188819885) < 1e-7
    assert abs(float(jaxce.NLLLoss()(jaxce.log_softmax(x), y)) - 0.3774033188819885) < 1e-7
    g = jax.grad(lambda x: jaxce.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    jax.grad(lambda x: jaxce.nll_loss(jaxce.log_softmax(x), y, weight=jnp.ones(3)))(x)
    jax.grad(lambda x: jnp.sum(jaxce.softmax(x)) + jnp.sum(jaxce.logsumexp(x)))(x)
    jaxce.checked(jaxce.cross_entropy)(x, y)
    h = jnp.ones((4, 8)); k = jnp.ones((8, 16)); t = jnp.array([0, 3, -100, 15])
    jax.grad(lambda k: jaxce.linear_cross_entropy(h, k, t, label_smoothing=0.1))(k)
    assert sorted(m for m in BLOCKED if m in sys.modules) == []

    try:
        jaxce.models
    except ImportError as e:
        assert 'pip install "jaxce[nn]"' in str(e), e
    else:
        raise AssertionError("jaxce.models imported without flax")

    try:
        jaxce.evaluate(object(), x, y)
    except ImportError as e:
        assert 'evaluate needs the nn extra' in str(e) and 'pip install "jaxce[nn]"' in str(e), e
    else:
        raise AssertionError("jaxce.evaluate ran without flax")

    from jaxce.cli import main
    assert main(["demo"]) == 1
    """
)


def test_losses_run_without_the_nn_extra():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    # the CLI's answer: exactly one line, naming the command and what to install
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jaxce demo: error: needs the nn extra"), lines[0]
    assert 'pip install "jaxce[nn]"' in lines[0]
    assert "flax" in lines[0] and "optax" in lines[0]
