"""The ``jaxce`` command line: ``jaxce demo``, ``jaxce train`` and ``jaxce evaluate``.

``jaxce demo`` walks through the seed notebook (SmallNet's logits and
probabilities, a torch SmallNet's weights ported in, the cross-entropy cells),
then trains SmallNet and an ensemble briefly and prints an evaluation report.
Bad flags, unknown datasets and missing checkpoints end with a one-line error
and a non-zero exit status. Heavy imports happen only once the arguments are valid.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "demo"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


#: Upper bounds of the integer flags: what fits int32, and what keeps a run of the
#: SmallNet CLI bounded (a padded batch is allocated whole; members are built one by one).
_MAX_INT = 2**31 - 1
_MAX_BATCH = 2**20
_MAX_HIDDEN = 2**16
_MAX_MEMBERS = 1024
_MAX_SEED = 2**32 - 1
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.401298464324817e-45  # the smallest float32 above 0


def _bounded_int(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what} in [{low}, {high}], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _bounded_int(text, 1, _MAX_INT, "a positive integer")


def _batch_size(text: str) -> int:
    return _bounded_int(text, 1, _MAX_BATCH, "a positive integer")


def _hidden(text: str) -> int:
    return _bounded_int(text, 1, _MAX_HIDDEN, "a positive integer")


def _members(text: str) -> int:
    return _bounded_int(text, 1, _MAX_MEMBERS, "a positive integer")


def _int(text: str) -> int:
    """A seed: NumPy's generators and ``jax.random.key`` both take ``[0, 2**32)``."""
    return _bounded_int(text, 0, _MAX_SEED, "an integer")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails the comparison too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """A learning rate: finite and > 0 in float32, the parameters' dtype."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not _FLOAT32_TINY <= value <= _FLOAT32_MAX:  # NaN, inf, 1e39, 1e-50
        raise argparse.ArgumentTypeError(
            f"expected a finite number > 0 that float32 can hold, got {text!r}"
        )
    return value


def _dataset(text: str) -> str:
    from jaxce.data import DATASETS

    if text not in DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r}; choose one of {', '.join(DATASETS)}"
        )
    return text


def _torch_smallnet(torch):
    """The notebook's torch SmallNet, defined as in the notebook."""
    nn = torch.nn

    class SmallNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(10, 5)
            self.fc2 = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    return SmallNet()


def _row(values) -> str:
    return "[" + " ".join(f"{float(v):8.4f}" for v in values) + "]"


def _notebook_cells() -> None:
    """SmallNet's logits and probabilities, and (with torch) a torch SmallNet ported in."""
    import jax
    import numpy as np
    from flax import nnx

    import jaxce
    from jaxce.models import SmallNet, from_torch

    print("# SmallNet logits and probabilities (jaxce.models.SmallNet, seed 0)")
    model = SmallNet(rngs=nnx.Rngs(0))  # weights drawn like torch.nn.Linear: U(±1/sqrt(fan_in))
    x = jax.random.normal(jax.random.key(0), (2, 10))
    logits = model(x)
    probabilities = jaxce.softmax(logits, axis=1)
    print("Logits:")
    print(np.asarray(logits))
    print("Probabilities:")
    print(np.asarray(probabilities))

    try:
        import torch
    except ImportError:
        print("\n(torch is not installed: skipping the torch SmallNet side by side)")
        return
    print("\n# A torch SmallNet (torch.manual_seed(0)) ported with jaxce.models.from_torch")
    torch.manual_seed(0)
    torch_net = _torch_smallnet(torch)
    torch_x = torch.randn(2, 10)
    with torch.no_grad():
        torch_logits = torch_net(torch_x)
        torch_probs = torch.softmax(torch_logits, dim=1)
    ported = from_torch(torch_net.state_dict())
    jax_logits = np.asarray(ported(torch_x.numpy()))
    jax_probs = np.asarray(jaxce.softmax(jax_logits, axis=1))
    print(f"{'':18}{'torch':^29}   {'jaxce':^29}")
    for name, t, j in (
        ("logits", torch_logits, jax_logits),
        ("probabilities", torch_probs, jax_probs),
    ):
        for i in range(2):
            print(f"{name + f'[{i}]':<18}{_row(t[i].numpy())}   {_row(j[i])}")
    d_logits = float(np.max(np.abs(torch_logits.numpy() - jax_logits)))
    d_probs = float(np.max(np.abs(torch_probs.numpy() - jax_probs)))
    print(f"max |torch - jaxce|: logits {d_logits:.1e}, probabilities {d_probs:.1e}")


def _loss_cells() -> None:
    import jax.numpy as jnp

    import jaxce

    print("# torch.nn.CrossEntropyLoss, in jaxce")
    logits = jnp.array([[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]])
    labels = jnp.array([0, 1])
    criterion = jaxce.CrossEntropyLoss()
    print("Loss:", float(criterion(logits, labels)))

    print("\n# The same loss three ways")
    input_logits = jnp.array([[1.2, -0.5, 0.8, 2.1]])
    target = jnp.array([2])
    probabilities = jaxce.softmax(input_logits, axis=1)
    print("Probabilities (Softmax):", probabilities)
    log_probabilities = jnp.log(probabilities)
    print("Loss (softmax + log + NLL):", float(-jnp.mean(log_probabilities[0, target])))
    log_softmaxed = jaxce.log_softmax(input_logits, axis=1)
    print("Loss (log_softmax + nll_loss):", float(jaxce.nll_loss(log_softmaxed, target)))
    print("Loss (cross_entropy):", float(jaxce.cross_entropy(input_logits, target)))


def _training_cells(*, epochs: int, members: int, progress: bool) -> None:
    from flax import nnx

    import jaxce
    from jaxce.data import load_dataset
    from jaxce.models import Ensemble, SmallNet
    from jaxce.train import fit

    ds = load_dataset("blobs")
    print(
        f"\n# Training SmallNet on the embedded dataset, {epochs} epochs "
        "(Adam, jaxce.cross_entropy with label_smoothing=0.05)"
    )
    print(ds.summary())
    model = SmallNet(ds.num_features, 5, ds.num_classes, rngs=nnx.Rngs(0))
    result = fit(
        model,
        ds.x_train,
        ds.y_train,
        epochs=epochs,
        label_smoothing=0.05,
        eval_data=(ds.x_test, ds.y_test),
        eval_every=max(1, epochs // 2),
        progress=progress,
    )
    last = result.history[-1]
    print(
        f"epoch {last['epoch']}: train loss {last['loss']:.4f}, train accuracy "
        f"{last['accuracy']:.4f}, held-out accuracy {last['test_accuracy']:.4f}"
    )

    print("\n# Evaluation on the held-out split (jaxce.evaluate, vmap-batched)")
    report = jaxce.evaluate(model, ds.x_test, ds.y_test)
    print(report.format(ds.class_names))

    print(
        f"\n# An ensemble of {members} SmallNets (seeds 0..{members - 1}), trained and "
        "evaluated together in one jitted step"
    )
    ensemble = Ensemble(members, ds.num_features, 5, ds.num_classes, seed=0)
    fit(ensemble, ds.x_train, ds.y_train, epochs=epochs, label_smoothing=0.05, progress=progress)
    report = jaxce.evaluate(ensemble, ds.x_test, ds.y_test)
    accs = " ".join(f"{a:.3f}" for a in report.member_accuracy)
    print(f"member accuracy: {accs}")
    print(f"mean member accuracy: {float(report.member_accuracy.mean()):.4f}")
    print(f"ensemble (mean-probability) accuracy: {report.accuracy:.4f}, ECE {report.ece:.4f}")


def demo(*, epochs: int = 10, members: int = 8, progress: bool = True) -> None:
    """Walks through the seed notebook with jaxce, then trains and evaluates SmallNet.

    Args:
      epochs: training epochs of the SmallNet and of the ensemble.
      members: ensemble size.
      progress: show progress bars while training.

    Examples:
      From a shell (``make demo`` runs the same)::

        $ jaxce demo
        # SmallNet logits and probabilities (jaxce.models.SmallNet, seed 0)
        ...
        Loss: 0.3774033188819885
        ...
        Loss (cross_entropy): 1.8615424633026123
        ...
    """
    start = time.perf_counter()
    _notebook_cells()
    print()
    _loss_cells()
    _training_cells(epochs=epochs, members=members, progress=progress)
    print(f"\n(demo finished in {time.perf_counter() - start:.1f} s)")


def _train(args: argparse.Namespace) -> None:
    from flax import nnx

    from jaxce.checkpoint import check_save_directory, save
    from jaxce.data import load_dataset
    from jaxce.models import Ensemble, SmallNet
    from jaxce.train import fit

    if args.save is not None:
        # Fails before training, not after: a file in the way, a foreign or unwritable
        # directory. save() checks again, under a lock, when it writes.
        check_save_directory(args.save)
    ds = load_dataset(args.dataset, seed=args.seed)
    print(ds.summary())
    sizes = (ds.num_features, args.hidden, ds.num_classes)
    if args.ensemble > 1:
        model = Ensemble(args.ensemble, *sizes, seed=args.seed)
        print(
            f"training an ensemble of {args.ensemble} SmallNet{sizes} "
            f"(seeds {args.seed}..{args.seed + args.ensemble - 1})"
        )
    else:
        model = SmallNet(*sizes, rngs=nnx.Rngs(args.seed))
        print(f"training SmallNet{sizes} (seed {args.seed})")
    result = fit(
        model,
        ds.x_train,
        ds.y_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        label_smoothing=args.label_smoothing,
        eval_data=(ds.x_test, ds.y_test),
        eval_every=max(1, args.epochs // 5),
        seed=args.seed,
        progress=not args.quiet,
    )
    for record in result.history:
        if "test_accuracy" in record:
            print(
                f"epoch {record['epoch']:>3}: loss {record['loss']:.4f}, accuracy "
                f"{record['accuracy']:.4f}, held-out loss {record['test_loss']:.4f}, "
                f"held-out accuracy {record['test_accuracy']:.4f}"
            )
    print(f"\n# Evaluation on the held-out split of {ds.name!r}")
    print(result.report.format(ds.class_names))
    if args.save is not None:
        meta = {
            "dataset": ds.name,
            "seed": args.seed,
            "epochs": args.epochs,
            "label_smoothing": args.label_smoothing,
        }
        path = save(model, args.save, metadata=meta)
        print(f"\nsaved checkpoint to {path}")


def _evaluate(args: argparse.Namespace) -> None:
    import pathlib

    path = pathlib.Path(args.load).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r} (save one with `jaxce train --save DIR`)"
        )
    import jaxce
    from jaxce.checkpoint import CheckpointError, restore
    from jaxce.data import DATASETS, load_dataset
    from jaxce.models import Ensemble

    model, meta = restore(path)  # every failure is one CheckpointError (a ValueError)
    name = args.dataset
    if name is None:
        name = meta.get("dataset", "blobs")
        if not isinstance(name, str) or name not in DATASETS:
            raise CheckpointError(
                f"the metadata of checkpoint {str(path)!r} names dataset {name!r:.80}, which is "
                f"not one of {', '.join(DATASETS)}; choose one with --dataset"
            )
    seed = meta.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CheckpointError(
            f"the metadata of checkpoint {str(path)!r} has seed {seed!r:.80}, expected a "
            "non-negative int"
        )
    ds = load_dataset(name, seed=seed)
    if (ds.num_features, ds.num_classes) != (model.in_features, model.out_features):
        raise ValueError(
            f"the checkpoint's model takes {model.in_features} features and predicts "
            f"{model.out_features} classes, but dataset {name!r} has {ds.num_features} "
            f"features and {ds.num_classes} classes"
        )
    kind = (
        f"ensemble of {model.num_members} SmallNets" if isinstance(model, Ensemble) else "SmallNet"
    )
    print(
        f"loaded {kind} ({model.in_features}, {model.hidden_features}, "
        f"{model.out_features}) from {path}"
    )
    print(ds.summary())
    print(f"\n# Evaluation on the held-out split of {name!r} (seed {seed})")
    report = jaxce.evaluate(model, ds.x_test, ds.y_test, batch_size=args.batch_size)
    print(report.format(ds.class_names))


def _parser() -> argparse.ArgumentParser:
    from jaxce.data import DATASETS

    names = ", ".join(DATASETS)
    parser = _Parser(
        prog="jaxce",
        description="PyTorch-exact cross-entropy in JAX: demo, "
        "training and evaluation of the seed notebook's SmallNet.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,evaluate}")
    p = sub.add_parser("demo", help="walk through the seed notebook, then train and evaluate")
    p.add_argument("--epochs", type=_positive_int, default=10, help="training epochs (10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train SmallNet (or an ensemble) on a dataset")
    p.add_argument("--dataset", type=_dataset, default="blobs", help=f"one of: {names}")
    p.add_argument(
        "--ensemble",
        type=_members,
        default=1,
        metavar="K",
        help=f"train K SmallNets together, K <= {_MAX_MEMBERS} (1)",
    )
    p.add_argument("--epochs", type=_positive_int, default=20, metavar="N", help="(20)")
    p.add_argument(
        "--label-smoothing",
        type=_fraction,
        default=0.0,
        metavar="E",
        help="label smoothing in [0, 1] (0)",
    )
    p.add_argument("--batch-size", type=_batch_size, default=32, help="(32)")
    p.add_argument(
        "--lr", type=_positive_float, default=1e-2, help="Adam learning rate, finite > 0 (0.01)"
    )
    p.add_argument("--hidden", type=_hidden, default=5, help=f"hidden units <= {_MAX_HIDDEN} (5)")
    p.add_argument(
        "--seed", type=_int, default=0, help=f"model and shuffling seed in [0, {_MAX_SEED}] (0)"
    )
    p.add_argument("--save", metavar="DIR", help="save the trained model to DIR (crash-safe)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset's held-out split")
    p.add_argument("--load", metavar="DIR", required=True, help="checkpoint directory")
    p.add_argument(
        "--dataset",
        type=_dataset,
        default=None,
        help="dataset (default: the one it was trained on)",
    )
    p.add_argument("--batch-size", type=_batch_size, default=256, help="(256)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``jaxce`` command line; returns the exit status.

    Args:
      argv: the arguments (default ``sys.argv[1:]``).

    Returns:
      0 on success, 1 for a failed command (one-line error on stderr), 2 for bad
      arguments, 130 when interrupted.

    Examples:
      >>> from jaxce.cli import main
      >>> main(["train", "--dataset", "nope"])
      Traceback (most recent call last):
      ...
      SystemExit: 2
    """
    args = _parser().parse_args(argv)
    from jaxce._extras import missing_nn_packages

    missing = missing_nn_packages()
    if missing:
        from jaxce._extras import INSTALL_HINT

        print(
            f"jaxce {args.command}: error: needs the nn extra (missing: {', '.join(missing)}); "
            f"install it with {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    try:
        if args.command == "demo":
            demo(epochs=args.epochs, progress=not args.quiet)
        elif args.command == "train":
            _train(args)
        else:
            _evaluate(args)
    except (ValueError, OSError, ImportError) as e:
        print(f"jaxce {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxce: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug or an exhausted machine: still one line
        print(
            f"jaxce {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
            "(please report it)",
            file=sys.stderr,
        )
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
