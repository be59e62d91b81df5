"""Test configuration: strict dtype promotion (no silent up-casts inside jaxce),
and a `torch` fixture that skips when torch is not importable."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
