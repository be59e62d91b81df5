"""Datasets for SmallNet: two embedded ones that need no download, and the small
real datasets that scikit-learn ships (``pip install "jaxce[datasets]"``).

Every dataset is split into a training and a held-out part with a seeded
permutation, and its features are standardised with the training part's mean and
standard deviation, so the same ``(name, seed, test_fraction)`` always gives the
same arrays. Features are float32, labels int32.

This module imports only NumPy (scikit-learn when one of its datasets is asked for).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxce import _validate

__all__ = ["Dataset", "DATASETS", "load_dataset", "make_blobs", "make_teacher"]

#: Embedded datasets (generated from a seed, no download) and their descriptions.
EMBEDDED = {
    "blobs": "seeded Gaussian mixture: 10 features, 3 imbalanced classes (the default)",
    "teacher": "10 Gaussian features labelled by a fixed random teacher network, 3 classes",
}
#: Datasets that scikit-learn ships (no download either; need the ``datasets`` extra).
SKLEARN = {
    "iris": "scikit-learn's iris: 4 features, 3 classes, 150 examples",
    "wine": "scikit-learn's wine: 13 features, 3 classes, 178 examples",
    "breast_cancer": "scikit-learn's breast cancer: 30 features, 2 classes, 569 examples",
    "digits": "scikit-learn's 8x8 digits: 64 features, 10 classes, 1797 examples",
}
#: Every dataset name :func:`load_dataset` accepts, with a one-line description.
DATASETS = {**EMBEDDED, **SKLEARN}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset split into training and held-out parts.

    Attributes:
      name: the name it was loaded by.
      x_train: ``(n_train, num_features)`` float32, standardised.
      y_train: ``(n_train,)`` int32 class indices in ``[0, num_classes)``.
      x_test: ``(n_test, num_features)`` float32, standardised with the training statistics.
      y_test: ``(n_test,)`` int32.
      num_classes: number of classes.
      class_names: one name per class.

    Examples:
      >>> from jaxce.data import load_dataset
      >>> ds = load_dataset("blobs")
      >>> ds.num_features, ds.num_classes, ds.x_train.dtype.name, ds.y_train.dtype.name
      (10, 3, 'float32', 'int32')
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def num_features(self) -> int:
        """The number of input features (``x_train.shape[1]``)."""
        return int(self.x_train.shape[1])

    def summary(self) -> str:
        """A one-line description: name, sizes and class counts.

        Examples:
          >>> from jaxce.data import load_dataset
          >>> print(load_dataset("blobs").summary())
          blobs: 10 features, 3 classes, 1200 train / 300 test examples ...
        """
        counts = np.bincount(self.y_train, minlength=self.num_classes).tolist()
        return (
            f"{self.name}: {self.num_features} features, {self.num_classes} classes, "
            f"{len(self.y_train)} train / {len(self.y_test)} test examples "
            f"(train class counts {counts})"
        )


def make_blobs(
    num_examples: int = 1500, *, num_features: int = 10, num_classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Gaussian mixture: the embedded default dataset, shaped for SmallNet.

    Class means are random directions at a fixed distance from their centroid;
    each class has its own per-feature noise scale, and the classes are
    imbalanced (proportions decreasing roughly as 5:3:2 for three classes), so a
    small MLP reaches about 90% held-out accuracy, not 100%.

    Args:
      num_examples: number of examples.
      num_features: number of features.
      num_classes: number of classes (at least 2).
      seed: NumPy seed in ``[0, 2**32)``; the same seed gives the same arrays.

    Returns:
      ``(x, y)``: float32 ``(num_examples, num_features)`` and int32 ``(num_examples,)``.

    Examples:
      >>> from jaxce.data import make_blobs
      >>> x, y = make_blobs(100, seed=1)
      >>> x.shape, y.shape, sorted(set(y.tolist()))
      ((100, 10), (100,), [0, 1, 2])
    """
    fn = "make_blobs"
    n = _validate.check_int(fn, "num_examples", num_examples, minimum=1)
    f = _validate.check_int(fn, "num_features", num_features, minimum=1)
    c = _validate.check_int(fn, "num_classes", num_classes, minimum=2)
    rng = np.random.default_rng(_validate.check_seed(fn, "seed", seed))
    means = rng.normal(size=(c, f))
    centred = means - means.mean(axis=0)
    means = centred * (1.3 * np.sqrt(2.0) / np.linalg.norm(centred, axis=1, keepdims=True))
    proportions = np.linspace(2.5, 1.0, c)
    proportions /= proportions.sum()
    y = rng.choice(c, size=n, p=proportions)
    scales = rng.uniform(0.5, 1.5, size=(c, f))
    x = means[y] + rng.normal(size=(n, f)) * scales[y]
    return x.astype(np.float32), y.astype(np.int32)


def make_teacher(
    num_examples: int = 1500,
    *,
    num_features: int = 10,
    num_classes: int = 3,
    hidden: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features labelled by the argmax of a fixed random ReLU teacher network.

    Args:
      num_examples: number of examples.
      num_features: number of features.
      num_classes: number of classes (at least 2).
      hidden: the teacher's hidden width.
      seed: NumPy seed in ``[0, 2**32)`` for the teacher and the features.

    Returns:
      ``(x, y)``: float32 ``(num_examples, num_features)`` and int32 ``(num_examples,)``.

    Examples:
      >>> from jaxce.data import make_teacher
      >>> x, y = make_teacher(50)
      >>> x.shape, y.dtype.name
      ((50, 10), 'int32')
    """
    fn = "make_teacher"
    n = _validate.check_int(fn, "num_examples", num_examples, minimum=1)
    f = _validate.check_int(fn, "num_features", num_features, minimum=1)
    c = _validate.check_int(fn, "num_classes", num_classes, minimum=2)
    h = _validate.check_int(fn, "hidden", hidden, minimum=1)
    rng = np.random.default_rng(_validate.check_seed(fn, "seed", seed))
    w1 = rng.normal(size=(f, h)) / np.sqrt(f)
    b1 = rng.normal(size=h) * 0.1
    w2 = rng.normal(size=(h, c)) / np.sqrt(h)
    x = rng.normal(size=(n, f))
    logits = np.maximum(x @ w1 + b1, 0.0) @ w2
    # Centre the logits per class so that every class is predicted for some inputs.
    logits -= logits.mean(axis=0)
    return x.astype(np.float32), logits.argmax(axis=1).astype(np.int32)


def _load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from sklearn import datasets as skd
    except ImportError as e:
        raise ImportError(
            f"load_dataset: the dataset {name!r} comes from scikit-learn, which is not "
            'installed; install it with `pip install "jaxce[datasets]"`'
        ) from e
    bunch = getattr(skd, f"load_{name}")()
    names = getattr(bunch, "target_names", None)
    classes = int(np.max(bunch.target)) + 1
    class_names = (
        tuple(str(v) for v in names) if names is not None else tuple(str(i) for i in range(classes))
    )
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target), class_names


def load_dataset(name: str = "blobs", *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Loads a dataset by name, split and standardised.

    Args:
      name: one of :data:`DATASETS`: ``"blobs"`` (default) and ``"teacher"`` are
        embedded; ``"iris"``, ``"wine"``, ``"breast_cancer"`` and ``"digits"`` come
        from scikit-learn (the ``datasets`` extra).
      seed: seed of the embedded generators and of the train/test permutation, in
        ``[0, 2**32)``.
      test_fraction: fraction of the examples held out, in ``(0, 1)``.

    Returns:
      A :class:`Dataset`; its ``num_features`` and ``num_classes`` size the model.

    Raises:
      ValueError: unknown ``name`` (the message lists the choices), ``seed`` or
        ``test_fraction`` out of range.
      TypeError: ``seed`` not an int, ``test_fraction`` not a real number.
      ImportError: a scikit-learn dataset without scikit-learn installed.

    Examples:
      >>> from jaxce.data import load_dataset
      >>> ds = load_dataset("blobs", seed=0)
      >>> abs(float(ds.x_train.mean())) < 1e-6, ds.x_test.shape
      (True, (300, 10))
    """
    fn = "load_dataset"
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(
            f"{fn}: unknown dataset {_validate.describe(name)}; choose one of {', '.join(DATASETS)}"
        )
    seed = _validate.check_seed(fn, "seed", seed)
    fraction = _validate.check_fraction(fn, "test_fraction", test_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{fn}: `test_fraction` must be a number in (0, 1), got {test_fraction!r}")
    if name == "blobs":
        x, y = make_blobs(seed=seed)
        class_names = tuple(f"class {i}" for i in range(3))
    elif name == "teacher":
        x, y = make_teacher(seed=seed)
        class_names = tuple(f"class {i}" for i in range(3))
    else:
        x, y, class_names = _load_sklearn(name)
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, round(n * fraction)), n - 1)
    test, train = order[:n_test], order[n_test:]
    x = np.asarray(x, np.float64)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant features (digits' corner pixels) stay 0

    def standardise(rows):
        return ((x[rows] - mean) / std).astype(np.float32)

    y = np.asarray(y).astype(np.int32)
    return Dataset(
        name=name,
        x_train=standardise(train),
        y_train=y[train],
        x_test=standardise(test),
        y_test=y[test],
        num_classes=len(class_names),
        class_names=class_names,
    )
