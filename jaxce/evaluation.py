"""vmap-batched evaluation: per-example losses, accuracy, confusion matrix and
expected calibration error over a dataset; per-example gradients; ensembles.

The dataset is cut into fixed-size batches. The last batch is padded with
zero features and ``ignore_index`` labels, which :func:`jaxce.cross_entropy`
and every metric here skip, so one compiled batch function serves any dataset
size. Inside a batch the model runs per example under ``jax.vmap`` (and, for an
:class:`~jaxce.models.Ensemble`, under a second ``vmap`` over its members).

``jaxce.evaluate`` is the function :func:`evaluate`; import the other names
from this module (``from jaxce.evaluation import per_example_grads``).
This module imports Flax only when it is called, so ``import jaxce`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxce import _validate
from jaxce.losses import cross_entropy
from jaxce.softmax import softmax

__all__ = ["EvalReport", "evaluate", "expected_calibration_error", "per_example_grads"]


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """What :func:`evaluate` measured. Examples whose label is ``ignore_index`` are left out.

    Attributes:
      num_examples: examples counted (labels not equal to ``ignore_index``).
      loss: the dataset's cross-entropy with torch's ``mean`` reduction (``Σ ℓ_i / Σ w[y_i]``).
      accuracy: fraction of counted examples whose argmax prediction is the label.
      ece: expected calibration error of the max-probability confidence, ``num_bins`` bins.
      confusion: ``(C, C)`` int64 counts, rows = true class, columns = predicted class.
      per_example_loss: ``(N,)`` float32, ``reduction="none"`` values (0 where ignored).
      predictions: ``(N,)`` int32 argmax predictions.
      probabilities: ``(N, C)`` float32 predicted probabilities (for an ensemble: the
        mean of its members' probabilities).
      member_accuracy: ``(K,)`` accuracy of each ensemble member, or None for one model.
      num_bins: the number of confidence bins used for ``ece``.

    Examples:
      >>> import numpy as np
      >>> from flax import nnx
      >>> import jaxce
      >>> from jaxce.models import SmallNet
      >>> x = np.zeros((4, 10), np.float32); y = np.array([0, 1, 2, 0], np.int32)
      >>> report = jaxce.evaluate(SmallNet(rngs=nnx.Rngs(0)), x, y)
      >>> int(report.confusion.sum()), report.per_example_loss.shape
      (4, (4,))
    """

    num_examples: int
    loss: float
    accuracy: float
    ece: float
    confusion: np.ndarray
    per_example_loss: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    member_accuracy: np.ndarray | None
    num_bins: int

    def format(self, class_names: tuple[str, ...] | None = None) -> str:
        """A readable multi-line report (metrics, per-member accuracy, confusion matrix).

        Examples:
          >>> import numpy as np
          >>> from flax import nnx
          >>> import jaxce
          >>> from jaxce.models import SmallNet
          >>> x = np.zeros((3, 10), np.float32); y = np.array([0, 1, 2], np.int32)
          >>> print(jaxce.evaluate(SmallNet(rngs=nnx.Rngs(0)), x, y).format())
          examples: 3
          loss: ...
          accuracy: 0.3333
          ...
        """
        c = self.confusion.shape[0]
        names = [str(n) for n in (class_names or range(c))]
        lines = [
            f"examples: {self.num_examples}",
            f"loss: {self.loss:.4f}",
            f"accuracy: {self.accuracy:.4f}",
            f"expected calibration error ({self.num_bins} bins): {self.ece:.4f}",
        ]
        if self.member_accuracy is not None:
            accs = " ".join(f"{a:.3f}" for a in self.member_accuracy)
            lines.append(
                f"member accuracy (K={len(self.member_accuracy)}): mean "
                f"{float(np.mean(self.member_accuracy)):.4f}, min "
                f"{float(np.min(self.member_accuracy)):.4f}, max "
                f"{float(np.max(self.member_accuracy)):.4f}"
            )
            lines.append(f"  per member: {accs}")
            lines.append(f"ensemble (mean-probability) accuracy: {self.accuracy:.4f}")
        width = max([len(n) for n in names] + [len(str(int(self.confusion.max(initial=0))))])
        lines.append("confusion matrix (rows: true class, columns: predicted class):")
        lines.append(" " * (width + 2) + " ".join(n.rjust(width) for n in names))
        for name, row in zip(names, self.confusion, strict=True):
            lines.append(f"{name.rjust(width)}  " + " ".join(str(int(v)).rjust(width) for v in row))
        return "\n".join(lines)


#: A batch_size above this and above the dataset's length is cut to the length.
_SMALL_BATCH = 2**16
#: Beyond 2**24 bins the float32 bin edges k/M are no longer distinct.
MAX_BINS = 2**24


def _check_num_bins(fn: str, num_bins: Any) -> int:
    return _validate.check_int(fn, "num_bins", num_bins, minimum=1, maximum=MAX_BINS)


def _bin_edges(num_bins: int, dtype: Any) -> np.ndarray:
    """The interior edges ``k/M`` (k = 1..M-1), rounded to the confidences' dtype."""
    return (np.arange(1, num_bins, dtype=np.float64) / num_bins).astype(dtype)


def _split_model(fn: str, model: Any):
    """``(graphdef, params, ensemble?)`` of a SmallNet, an Ensemble or another nnx.Module."""
    from jaxce._extras import require_nn

    require_nn(fn)
    from flax import nnx

    from jaxce.models import Ensemble

    if isinstance(model, Ensemble):
        graphdef, params = nnx.split(model.members)
        return graphdef, params, True
    if isinstance(model, nnx.Module):
        graphdef, params = nnx.split(model)
        return graphdef, params, False
    raise TypeError(
        f"{fn}: `model` must be a jaxce.models.SmallNet, Ensemble or another nnx.Module, "
        f"got {type(model).__name__}"
    )


def _member_logits(graphdef, params, x):
    """Logits of one example ``x`` (features,) for one set of parameters."""
    from flax import nnx

    return nnx.merge(graphdef, params)(x)


def _check_data(fn: str, x: Any, y: Any, ignore_index: Any, dtype) -> tuple[Any, ...]:
    """``(x, y, ignore_index)``: finite real floating ``x`` cast to ``dtype``, integer ``y``."""
    ignore_index = _validate.check_ignore_index(fn, ignore_index)
    x = _validate.check_features(fn, "x", x, dtype=dtype)
    y = _validate.check_labels(
        fn, "y", y, num_examples=len(x), num_classes=None, ignore_index=ignore_index
    )
    return x, y, ignore_index


def _check_labels(fn: str, y: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    return _validate.check_labels(
        fn, "y", y, num_examples=len(y), num_classes=num_classes, ignore_index=ignore_index
    )


def _param_dtype(params) -> np.dtype:
    leaves = jax.tree.leaves(params)
    return np.dtype(leaves[0].dtype) if leaves else np.dtype(np.float32)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "ensemble", "num_classes", "num_bins", "ignore_index", "eps"),
)
def _eval_batch(
    params, x, y, weight, *, graphdef, ensemble, num_classes, num_bins, ignore_index, eps
):
    """Per-example outputs and summed statistics of one fixed-size batch."""
    per_example = jax.vmap(functools.partial(_member_logits, graphdef), in_axes=(None, 0))
    valid = y != ignore_index
    y_safe = jnp.where(valid, y, jnp.zeros_like(y))
    member_correct = None
    if ensemble:
        member_logits = jax.vmap(per_example, in_axes=(0, None))(params, x)  # (K, B, C)
        member_pred = jnp.argmax(member_logits, axis=-1).astype(jnp.int32)
        member_correct = jnp.sum((member_pred == y) & valid, axis=1, dtype=jnp.int32)
        probs = jnp.mean(softmax(member_logits, axis=-1), axis=0)
        logits = jnp.log(probs)  # log of the mean probability: the ensemble's log-likelihood
    else:
        logits = per_example(params, x)
        probs = softmax(logits, axis=-1)
    losses = cross_entropy(
        logits, y, weight=weight, ignore_index=ignore_index, reduction="none", label_smoothing=eps
    )
    pred = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    conf = jnp.max(probs, axis=-1)
    correct = (pred == y) & valid
    ones = valid.astype(jnp.int32)
    confusion = jnp.zeros((num_classes, num_classes), jnp.int32).at[y_safe, pred].add(ones)
    # Bins (k/M, (k+1)/M], as in Guo et al. 2017, with the edges rounded to conf's dtype:
    # a confidence equal to an edge joins the lower bin, 0 joins bin 0 and 1 bin M-1.
    # A search over the edges rather than ceil(conf * M): the product rounds, and would
    # move a confidence that sits on an edge into the bin above.
    edges = jnp.asarray(_bin_edges(num_bins, conf.dtype))
    bins = jnp.searchsorted(edges, conf, side="left").astype(jnp.int32)
    zero = jnp.zeros((), conf.dtype)
    stats = {
        "count": jnp.sum(ones),
        "correct": jnp.sum(correct, dtype=jnp.int32),
        "confusion": confusion,
        "bin_count": jnp.zeros(num_bins, jnp.int32).at[bins].add(ones),
        "bin_conf": jnp.zeros(num_bins, conf.dtype).at[bins].add(jnp.where(valid, conf, zero)),
        "bin_correct": jnp.zeros(num_bins, jnp.int32).at[bins].add(correct.astype(jnp.int32)),
    }
    if member_correct is not None:
        stats["member_correct"] = member_correct
    return losses, pred, probs, stats


def expected_calibration_error(probabilities: Any, labels: Any, *, num_bins: int = 15) -> float:
    """Expected calibration error of max-probability confidences (NumPy reference).

    ``ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|`` over ``num_bins``
    equal-width bins ``(k/M, (k+1)/M]``. :func:`evaluate` computes the same
    quantity batch by batch on the device.

    Args:
      probabilities: ``(N, C)`` real floating probabilities in ``[0, 1]``; the bins are
        computed in their dtype (a float32 confidence equal to ``float32(k/M)`` sits on
        the edge and joins the lower bin, as in :func:`evaluate`).
      labels: ``(N,)`` integer labels.
      num_bins: number of bins ``M``, in ``[1, 2**24]``.

    Returns:
      The ECE as a Python float (NaN for ``N = 0``).

    Raises:
      TypeError: non-floating probabilities or non-integer labels.
      ValueError: wrong shapes, probabilities outside ``[0, 1]`` (logits, say) or
        ``num_bins`` out of range.

    Examples:
      >>> import numpy as np
      >>> from jaxce.evaluation import expected_calibration_error
      >>> p = np.array([[0.9, 0.1], [0.6, 0.4]]); y = np.array([0, 1])
      >>> round(expected_calibration_error(p, y, num_bins=10), 6)  # (|1-0.9| + |0-0.6|) / 2
      0.35
    """
    fn = "expected_calibration_error"
    num_bins = _check_num_bins(fn, num_bins)
    p = _validate.check_features(fn, "probabilities", probabilities, dtype=None)
    if p.shape[1] < 1 or not ((p >= 0) & (p <= 1)).all():
        bad = p[~((p >= 0) & (p <= 1))]
        raise ValueError(
            f"{fn}: `probabilities` must be an (N, C) array of probabilities in [0, 1], "
            f"got shape {p.shape}" + (f" and value {bad.flat[0]} (logits?)" if bad.size else "")
        )
    y = _validate.check_labels(
        fn, "labels", labels, num_examples=len(p), num_classes=None, ignore_index=-1
    )
    if len(y) == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    bins = np.searchsorted(_bin_edges(num_bins, conf.dtype), conf, side="left")
    conf = conf.astype(np.float64)
    total = 0.0
    for b in range(num_bins):
        members = bins == b
        if members.any():
            total += abs(correct[members].sum() - conf[members].sum())
    return float(total / len(y))


def evaluate(
    model: Any,
    x: Any,
    y: Any,
    *,
    batch_size: int = 256,
    num_bins: int = 15,
    weight: Any = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> EvalReport:
    """Evaluates a model over a dataset in fixed-size, vmap-batched steps.

    Every batch has ``batch_size`` rows (the last is padded with ``ignore_index``
    labels), so the batch function compiles once per model structure and batch
    size, whatever the dataset's length.

    Args:
      model: a :class:`~jaxce.models.SmallNet`, an :class:`~jaxce.models.Ensemble`
        (reported per member and as the mean-probability ensemble), or any
        ``nnx.Module`` mapping one example ``(F,)`` to logits ``(C,)``.
      x: ``(N, F)`` floating features (NumPy or JAX).
      y: ``(N,)`` integer labels in ``[0, C)``; ``ignore_index`` marks rows to skip.
      batch_size: rows per compiled batch (one above 65536 and above ``N`` is cut to ``N``).
      num_bins: confidence bins of the expected calibration error, in ``[1, 2**24]``.
      weight: optional ``(C,)`` finite, non-negative class weights of the loss (as in
        :func:`jaxce.cross_entropy`).
      label_smoothing: label smoothing of the reported loss, a float in ``[0, 1]``.
      ignore_index: label value that is skipped (also used for the padding); fits int32.

    Returns:
      An :class:`EvalReport`.

    Raises:
      TypeError: an argument of the wrong type (non-floating or complex ``x``,
        non-integer ``y``, ...); the message names it and the value.
      ValueError: shapes that do not fit the model, non-finite features, an option
        out of range, or a label that is neither a class nor ``ignore_index`` (the
        message names it and its position).

    Examples:
      >>> import numpy as np
      >>> from flax import nnx
      >>> import jaxce
      >>> from jaxce.models import SmallNet
      >>> from jaxce.data import load_dataset
      >>> ds = load_dataset("blobs")
      >>> report = jaxce.evaluate(SmallNet(rngs=nnx.Rngs(0)), ds.x_test, ds.y_test, batch_size=64)
      >>> report.num_examples, report.confusion.shape, 0.0 <= report.ece <= 1.0
      (300, (3, 3), True)
    """
    fn = "evaluate"
    batch_size = _validate.check_int(fn, "batch_size", batch_size, minimum=1)
    num_bins = _check_num_bins(fn, num_bins)
    label_smoothing = _validate.check_fraction(fn, "label_smoothing", label_smoothing)
    graphdef, params, ensemble = _split_model(fn, model)
    dtype = _param_dtype(params)
    x, y, ignore_index = _check_data(fn, x, y, ignore_index, dtype)
    num_features = x.shape[1]
    member = model.member(0) if ensemble else model
    try:
        out = jax.eval_shape(member, jax.ShapeDtypeStruct((num_features,), dtype))
    except Exception as e:  # noqa: BLE001 - re-raised with the shapes named
        raise ValueError(
            f"{fn}: the model cannot take examples with {num_features} features: {e}"
        ) from e
    num_classes = int(out.shape[-1])
    y = _check_labels(fn, y, num_classes, ignore_index)
    w = _validate.check_class_weight(fn, "weight", weight, num_classes=num_classes)
    if w is not None:
        w = jnp.asarray(w, dtype)

    n = len(y)
    if batch_size > max(n, _SMALL_BATCH):
        # Same numbers from one batch of the data's rows; a huge padded batch is never
        # allocated. Small batch sizes keep one compiled shape for every dataset length.
        batch_size = max(n, 1)
    num_batches = max(1, -(-n // batch_size))
    total = num_batches * batch_size
    xp = np.zeros((total, num_features), dtype)
    xp[:n] = x
    yp = np.full(total, ignore_index, np.int32)
    yp[:n] = y
    outputs = []
    for b in range(num_batches):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        outputs.append(
            _eval_batch(
                params,
                xp[rows],
                yp[rows],
                w,
                graphdef=graphdef,
                ensemble=ensemble,
                num_classes=num_classes,
                num_bins=num_bins,
                ignore_index=int(ignore_index),
                eps=float(label_smoothing),
            )
        )
    outputs = jax.device_get(outputs)  # one host sync for the whole dataset
    losses = np.concatenate([o[0] for o in outputs])[:n]
    preds = np.concatenate([o[1] for o in outputs])[:n]
    probs = np.concatenate([o[2] for o in outputs])[:n]
    stats = {k: sum(np.asarray(o[3][k], np.float64) for o in outputs) for k in outputs[0][3]}

    count = int(stats["count"])
    valid = y != ignore_index
    denom = float(np.sum(np.asarray(w)[y[valid]])) if w is not None else float(count)
    nan = float("nan")
    loss = float(np.sum(losses, dtype=np.float64) / denom) if denom else nan
    ece = float(np.sum(np.abs(stats["bin_correct"] - stats["bin_conf"])) / count) if count else nan
    member_accuracy = None
    if ensemble:
        member_accuracy = (
            stats["member_correct"] / count if count else stats["member_correct"] * nan
        )
    return EvalReport(
        num_examples=count,
        loss=loss,
        accuracy=float(stats["correct"]) / count if count else nan,
        ece=ece,
        confusion=stats["confusion"].astype(np.int64),
        per_example_loss=losses,
        predictions=preds,
        probabilities=probs,
        member_accuracy=member_accuracy,
        num_bins=num_bins,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "ignore_index", "eps"))
def _per_example_grads(params, x, y, weight, *, graphdef, ignore_index, eps):
    def loss_one(p, xi, yi):
        logits = _member_logits(graphdef, p, xi)  # (C,), target ()
        return cross_entropy(
            logits,
            yi,
            weight=weight,
            ignore_index=ignore_index,
            reduction="sum",
            label_smoothing=eps,
        )

    return jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0))(params, x, y)


def per_example_grads(
    model: Any,
    x: Any,
    y: Any,
    *,
    weight: Any = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
):
    """Gradients of each example's loss w.r.t. the parameters, with ``vmap(grad(...))``.

    Example ``i``'s loss is ``cross_entropy(model(x[i]), y[i], reduction="none")``
    (``w[y_i]·nll`` with class weights; 0, hence a zero gradient, when ``y[i]`` is
    ``ignore_index``). Summing the result over its first axis gives the gradient
    of the ``reduction="sum"`` batch loss.

    Args:
      model: a :class:`~jaxce.models.SmallNet` (or another single ``nnx.Module``).
      x: ``(N, F)`` features.
      y: ``(N,)`` integer labels.
      weight: optional ``(C,)`` finite, non-negative class weights.
      label_smoothing: a float in ``[0, 1]``.
      ignore_index: label value whose examples get a zero gradient; fits int32.

    Returns:
      An ``nnx.State`` shaped like ``nnx.state(model)`` with a leading ``N`` axis on
      every leaf.

    Examples:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from jaxce.models import SmallNet
      >>> from jaxce.evaluation import per_example_grads
      >>> g = per_example_grads(SmallNet(rngs=nnx.Rngs(0)), np.ones((4, 10), np.float32),
      ...                       np.array([0, 1, 2, 0], np.int32))
      >>> g["fc1"]["kernel"].shape
      (4, 10, 5)
    """
    fn = "per_example_grads"
    graphdef, params, ensemble = _split_model(fn, model)
    if ensemble:
        raise TypeError(
            f"{fn}: `model` is an Ensemble; pass one model (for a member: `model.member(i)`)"
        )
    label_smoothing = _validate.check_fraction(fn, "label_smoothing", label_smoothing)
    dtype = _param_dtype(params)
    x, y, ignore_index = _check_data(fn, x, y, ignore_index, dtype)
    try:
        out = jax.eval_shape(model, jax.ShapeDtypeStruct(x.shape[1:], dtype))
    except Exception as e:  # noqa: BLE001 - re-raised with the shapes named
        raise ValueError(
            f"{fn}: the model cannot take examples with {x.shape[1]} features: {e}"
        ) from e
    num_classes = int(out.shape[-1])
    y = _check_labels(fn, y, num_classes, ignore_index)
    w = _validate.check_class_weight(fn, "weight", weight, num_classes=num_classes)
    w = None if w is None else jnp.asarray(w, dtype)
    return _per_example_grads(
        params,
        x,
        y,
        w,
        graphdef=graphdef,
        ignore_index=int(ignore_index),
        eps=float(label_smoothing),
    )
