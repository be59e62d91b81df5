"""The ``jaxce`` command line. ``jaxce demo`` reproduces the seed notebook's loss cells."""

from __future__ import annotations

import argparse
import sys


def demo() -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="walk through the seed notebook with jaxce")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
