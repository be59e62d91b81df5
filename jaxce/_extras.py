"""The optional ``nn`` extra: SmallNet, training, checkpoints, evaluation and the CLI.

The losses need only jax and numpy; these modules also need flax, optax,
orbax-checkpoint and rich, installed with ``pip install "jaxce[nn]"``.
"""

from __future__ import annotations

import importlib.util

# tensorstore (also in the extra) is needed only to read jaxce 0.1's orbax checkpoints.
NN_PACKAGES = {"flax": "flax", "optax": "optax", "rich": "rich"}
INSTALL_HINT = 'pip install "jaxce[nn]"'


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a half-installed one
        return False


def missing_nn_packages() -> list[str]:
    """The distribution names of the ``nn`` extra's packages that cannot be imported."""
    return [dist for module, dist in NN_PACKAGES.items() if not _importable(module)]


def require_nn(what: str) -> None:
    """Raises ImportError naming ``what`` and the install command when the extra is missing."""
    missing = missing_nn_packages()
    if missing:
        raise ImportError(
            f"{what} needs the nn extra (missing: {', '.join(missing)}); install it with "
            f"{INSTALL_HINT}"
        )
