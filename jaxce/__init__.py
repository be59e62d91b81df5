"""jaxce: PyTorch-exact classification losses as pure, jittable JAX functions."""

from jaxce.checking import check_targets, checked
from jaxce.criteria import CrossEntropyLoss, NLLLoss
from jaxce.losses import cross_entropy, nll_loss
from jaxce.softmax import log_softmax, logsumexp, softmax

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss",
    "NLLLoss",
    "check_targets",
    "checked",
    "cross_entropy",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]
