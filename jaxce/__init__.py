"""jaxce: PyTorch-exact classification losses as pure, jittable JAX functions."""

from jaxce.checking import check_targets, checked
from jaxce.criteria import CrossEntropyLoss, NLLLoss

# jaxce/evaluation.py imports Flax only when `evaluate` is called, so this import stays cheap.
from jaxce.evaluation import evaluate
from jaxce.linear import linear_cross_entropy
from jaxce.losses import cross_entropy, nll_loss
from jaxce.softmax import log_softmax, logsumexp, softmax

__version__ = "0.2.0"

__all__ = [
    "CrossEntropyLoss",
    "NLLLoss",
    "check_targets",
    "checked",
    "cross_entropy",
    "evaluate",
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]


def __getattr__(name: str):
    # SmallNet & co. import Flax and optax (the nn extra): load those submodules on first use,
    # so that `import jaxce; jaxce.models.SmallNet` works without slowing `import jaxce`.
    if name in ("models", "train", "data", "checkpoint"):
        import importlib

        if name != "data":
            from jaxce._extras import require_nn

            require_nn(f"jaxce.{name}")
        return importlib.import_module(f"jaxce.{name}")
    raise AttributeError(f"module 'jaxce' has no attribute {name!r}")
