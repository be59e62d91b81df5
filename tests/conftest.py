"""Test configuration: strict dtype promotion (no silent up-casts inside jaxce), the
hypothesis profile, and a `torch` fixture that skips when torch is not importable."""

import jax
import pytest
from hypothesis import HealthCheck, Phase, settings

jax.config.update("jax_numpy_dtype_promotion", "strict")

# Every hypothesis test: reproducible draws, no example database, and no shrinking (a
# failing example is reported as drawn, its seed reproduces it, and a failure does not
# multiply the runtime). The `torch` fixture only imports torch, so nothing needs to be
# reset between the examples of a test that uses it. Each test sets its max_examples.
settings.register_profile(
    "jaxce",
    phases=(Phase.explicit, Phase.generate),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("jaxce")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
