"""The workflow layer fed bad input, as an adversarial user would: every case is classified
as a clear error (TypeError/ValueError naming the function, the argument and, where given,
the value), a correct value, an obscure error, or a silent wrong result. Each group fails
on any obscure or silent outcome; run with ``-s`` to see the counts.

Everything runs eagerly and fails before any compute, except the few "value" cases, which
check that an accepted input gives the right answer.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from jaxce.cli import main
from jaxce.data import load_dataset, make_blobs, make_teacher
from jaxce.evaluation import evaluate, expected_calibration_error, per_example_grads
from jaxce.models import Ensemble, SmallNet, from_torch, to_state_dict
from jaxce.train import default_optimizer, fit, make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLEAR, CORRECT, OBSCURE, SILENT = "clear error", "correct value", "obscure error", "silent wrong"
COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass
class Case:
    """``call`` must raise one of ``errors`` naming ``fn`` and ``arg`` (and ``value``), or,
    with ``fn=None``, return something ``check`` accepts."""

    id: str
    call: Callable[[], Any]
    fn: str | None = None
    arg: str | None = None
    value: str | None = None
    check: Callable[[Any], bool] | None = None
    errors: tuple[type[BaseException], ...] = (TypeError, ValueError)


def bad(id_, call, fn, arg, value=None, errors=(TypeError, ValueError)):
    return Case(id_, call, fn=fn, arg=arg, value=value, errors=errors)


def good(id_, call, check):
    return Case(id_, call, check=check)


def classify(case: Case) -> tuple[str, str]:
    try:
        out = case.call()
    except case.errors as e:
        if case.fn is None:
            return OBSCURE, f"raised {type(e).__name__}: {e}"
        msg = str(e)
        named = case.fn in msg and case.arg in msg
        if named and (case.value is None or case.value in msg):
            return CLEAR, msg
        return OBSCURE, f"{type(e).__name__} without the names: {msg}"
    except Exception as e:  # noqa: BLE001 - any other error is an obscure outcome
        return OBSCURE, f"{type(e).__name__}: {e}"
    if case.fn is not None:
        return SILENT, f"returned {out!r:.100} instead of raising"
    try:
        ok = bool(case.check(out))
    except Exception as e:  # noqa: BLE001
        return SILENT, f"check failed with {type(e).__name__}: {e}"
    return (CORRECT, "") if ok else (SILENT, f"wrong value {out!r:.100}")


def run_group(name: str, cases: list[Case]) -> None:
    outcomes = [(case.id, *classify(case)) for case in cases]
    counts = collections.Counter(o for _, o, _ in outcomes)
    COUNTS.update(counts)
    print(f"\n{name}: {len(cases)} cases, " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    failures = [f"{i}: {o}: {why}" for i, o, why in outcomes if o in (OBSCURE, SILENT)]
    assert not failures, "\n".join(failures)
    assert len({case.id for case in cases}) == len(cases)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("blobs")
    return ds.x_train[:24], ds.y_train[:24]


def finite_tree(tree) -> bool:
    return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(tree))


def same_params(a, b) -> bool:
    pa, pb = to_state_dict(a), to_state_dict(b)
    return all(np.array_equal(pa[k], pb[k]) for k in pa)


NOT_FLOATS = [("nan", math.nan), ("inf", math.inf), ("neg", -1.0), ("zero", 0.0)]
NOT_REALS = [("none", None), ("str", "0.01"), ("bool", True), ("list", [0.01]), ("complex", 1j)]


# --- training ----------------------------------------------------------------------------


def test_fit(data):
    x, y = data
    model = SmallNet(rngs=nnx.Rngs(0))

    def call(**kw):
        args = {"x": x, "y": y, **kw}
        return lambda: fit(model, args.pop("x"), args.pop("y"), progress=False, **args)

    cases = []
    for tag, v in NOT_FLOATS + [("1e39", 1e39), ("1e-50", 1e-50)]:
        cases.append(bad(f"lr-{tag}", call(learning_rate=v), "fit", "learning_rate"))
    for tag, v in NOT_REALS:
        cases.append(bad(f"lr-{tag}", call(learning_rate=v), "fit", "learning_rate"))
    for tag, v in [("str", "adam"), ("float", 1e-2), ("factory", optax.adam), ("dict", {})]:
        cases.append(bad(f"optimizer-{tag}", call(optimizer=v), "fit", "optimizer"))
    for tag, v, shown in [
        ("str", "a", "'a'"),
        ("neg", -1, "-1"),
        ("2**32", 2**32, "4294967296"),
        ("float", 1.5, "1.5"),
        ("bool", True, "True"),
        ("none", None, "None"),
    ]:
        cases.append(bad(f"seed-{tag}", call(seed=v), "fit", "seed", shown))
    for tag, v, shown in [
        ("float", 1.5, "1.5"),
        ("2**40", 2**40, "1099511627776"),
        ("below-int32", -(2**31) - 1, "-2147483649"),
        ("str", "-100", "'-100'"),
        ("bool", False, "False"),
    ]:
        cases.append(bad(f"ignore_index-{tag}", call(ignore_index=v), "fit", "ignore_index", shown))
    for arg in ("epochs", "batch_size", "eval_every"):
        for tag, v in [("zero", 0), ("float", 2.0), ("bool", True), ("str", "3"), ("neg", -1)]:
            cases.append(bad(f"{arg}-{tag}", call(**{arg: v}), "fit", arg))
    for tag, v in [("nan", math.nan), ("neg", -0.1), ("big", 1.5), ("str", "0.1"), ("none", None)]:
        cases.append(
            bad(f"label_smoothing-{tag}", call(label_smoothing=v), "fit", "label_smoothing")
        )
    for tag, v in [
        ("short", np.ones(2, np.float32)),
        ("nan", np.array([1, np.nan, 1], np.float32)),
        ("neg", np.array([1, -1, 1], np.float32)),
        ("int", np.ones(3, np.int32)),
        ("complex", np.ones(3, np.complex64)),
        ("str", "balanced"),
        ("all-zero-on-labels", np.zeros(3, np.float32)),
    ]:
        cases.append(bad(f"weight-{tag}", call(weight=v), "fit", "weight"))
    for tag, v in [
        ("triple", (x, y, y)),
        ("single", (x,)),
        ("array", x),
        ("str", "test"),
        ("complex-x", (x.astype(np.complex64), y)),
        ("features", (x[:, :4], y)),
        ("float-y", (x, y.astype(np.float32))),
        ("label-7", (x, np.full_like(y, 7))),
    ]:
        cases.append(bad(f"eval_data-{tag}", call(eval_data=v), "fit", "eval_data"))
    huge = x.astype(np.float64)
    huge[3, 2] = 1e39  # finite in float64, inf in float32
    for tag, v in [
        ("complex", x.astype(np.complex64)),
        ("int", x.astype(np.int32)),
        ("bool", x > 0),
        ("str", x.astype(str)),
        ("1-D", x[0]),
        ("nan", np.where(np.eye(24, 10, dtype=bool), np.nan, x)),
        ("inf", np.where(np.eye(24, 10, dtype=bool), np.inf, x)),
        ("1e39", huge),
        ("features", x[:, :4]),
        ("none", None),
        ("ragged", [[1.0] * 10, [1.0] * 9]),
    ]:
        cases.append(bad(f"x-{tag}", call(x=v), "fit", "`x`"))
    all_ignored = np.full_like(y, -100)
    for tag, v, arg in [
        ("float", y.astype(np.float32), "`y`"),
        ("bool", y > 0, "`y`"),
        ("short", y[:-1], "`y`"),
        ("2-D", y[:, None], "`y`"),
        ("label-7", np.where(np.arange(24) == 5, 7, y), "label 7 at position 5"),
        ("all-ignored", all_ignored, "`y`"),
    ]:
        cases.append(bad(f"y-{tag}", call(y=v), "fit", arg))
    cases += [
        bad("model-object", lambda: fit(object(), x, y), "fit", "model"),
        bad("model-str", lambda: fit("SmallNet", x, y), "fit", "model"),
        bad("progress-str", lambda: fit(model, x, y, progress="no"), "fit", "progress"),
    ]

    def trained(**kw):
        return fit(SmallNet(rngs=nnx.Rngs(1)), x, y, epochs=1, progress=False, **kw).model

    cases += [
        good(
            "lr-numpy-float32",
            lambda: fit(
                SmallNet(rngs=nnx.Rngs(1)),
                x,
                y,
                epochs=1,
                learning_rate=np.float32(0.01),
                progress=False,
            ),
            lambda r: finite_tree(nnx.state(r.model)) and math.isfinite(r.history[0]["loss"]),
        ),
        good(
            "x-list-and-jax",
            lambda: (
                trained(),
                fit(
                    SmallNet(rngs=nnx.Rngs(1)), x.tolist(), jnp.asarray(y), epochs=1, progress=False
                ).model,
            ),
            lambda pair: same_params(*pair),
        ),
        good(
            "batch_size-beyond-memory",
            lambda: (trained(batch_size=len(y)), trained(batch_size=10**12)),
            lambda pair: same_params(*pair),
        ),
    ]
    run_group("fit", cases)


def test_make_train_step_and_default_optimizer():
    model = SmallNet(rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(model)
    tx = optax.sgd(0.1)

    def step(**kw):
        args = {"graphdef": graphdef, "optimizer": tx, **kw}
        return lambda: make_train_step(args.pop("graphdef"), args.pop("optimizer"), **args)

    fn = "make_train_step"
    cases = [
        bad("graphdef-model", step(graphdef=model), fn, "graphdef"),
        bad("graphdef-none", step(graphdef=None), fn, "graphdef"),
        bad("optimizer-str", step(optimizer="adam"), fn, "optimizer"),
        bad("optimizer-none", step(optimizer=None), fn, "optimizer"),
        bad("ignore_index-float", step(ignore_index=1.5), fn, "ignore_index", "1.5"),
        bad("ignore_index-2**40", step(ignore_index=2**40), fn, "ignore_index"),
        bad("label_smoothing-nan", step(label_smoothing=math.nan), fn, "label_smoothing"),
        bad("label_smoothing-2", step(label_smoothing=2), fn, "label_smoothing"),
        bad("label_smoothing-str", step(label_smoothing="0.1"), fn, "label_smoothing"),
        bad("weight-2d", step(weight=np.ones((3, 3), np.float32)), fn, "weight"),
        bad("weight-nan", step(weight=np.array([1, np.nan, 1], np.float32)), fn, "weight"),
        bad("ensemble-str", step(ensemble="yes"), fn, "ensemble"),
    ]
    fn = "default_optimizer"
    for tag, v in NOT_FLOATS + NOT_REALS + [("1e39", 1e39), ("1e-50", 1e-50)]:
        cases.append(
            bad(f"default_optimizer-{tag}", lambda v=v: default_optimizer(v), fn, "learning_rate")
        )
    cases.append(
        good(
            "default_optimizer-numpy",
            lambda: default_optimizer(np.float64(0.01)),
            lambda out: out is default_optimizer(0.01),
        )
    )
    run_group("make_train_step / default_optimizer", cases)


# --- evaluation --------------------------------------------------------------------------


def test_evaluate_and_per_example_grads(data):
    x, y = data
    model = SmallNet(rngs=nnx.Rngs(0))

    def ev(**kw):
        args = {"model": model, "x": x, "y": y, **kw}
        return lambda: evaluate(args.pop("model"), args.pop("x"), args.pop("y"), **args)

    fn = "evaluate"
    cases = [
        bad("model-object", ev(model=object()), fn, "model"),
        bad("x-complex", ev(x=x.astype(np.complex64)), fn, "`x`", "complex64"),
        bad("x-int", ev(x=x.astype(np.int64)), fn, "`x`"),
        bad("x-nan", ev(x=np.where(np.eye(24, 10, dtype=bool), np.nan, x)), fn, "`x`"),
        bad("x-1-D", ev(x=x[0]), fn, "`x`"),
        bad("x-str", ev(x="features"), fn, "`x`"),
        bad("y-float", ev(y=y.astype(np.float32)), fn, "`y`"),
        bad("y-short", ev(y=y[:3]), fn, "`y`"),
        bad("batch_size-0", ev(batch_size=0), fn, "batch_size"),
        bad("batch_size-float", ev(batch_size=8.0), fn, "batch_size"),
        bad("num_bins-0", ev(num_bins=0), fn, "num_bins"),
        bad("num_bins-2**30", ev(num_bins=2**30), fn, "num_bins"),
        bad("num_bins-float", ev(num_bins=2.5), fn, "num_bins"),
        bad("label_smoothing-nan", ev(label_smoothing=math.nan), fn, "label_smoothing"),
        bad("label_smoothing-str", ev(label_smoothing="a"), fn, "label_smoothing"),
        bad("ignore_index-float", ev(ignore_index=1.5), fn, "ignore_index"),
        bad("ignore_index-2**40", ev(ignore_index=2**40), fn, "ignore_index"),
        bad("weight-short", ev(weight=np.ones(2, np.float32)), fn, "weight"),
        bad("weight-neg", ev(weight=np.array([1, -1, 1], np.float32)), fn, "weight"),
        good(
            "batch_size-beyond-memory",
            lambda: (evaluate(model, x, y, batch_size=10**12), evaluate(model, x, y)),
            lambda pair: (
                pair[0].loss == pytest.approx(pair[1].loss, rel=1e-6)
                and np.array_equal(pair[0].confusion, pair[1].confusion)
            ),
        ),
        good(
            "x-list",
            lambda: (evaluate(model, x.tolist(), y.tolist()), evaluate(model, x, y)),
            lambda pair: pair[0].loss == pair[1].loss and pair[0].ece == pair[1].ece,
        ),
    ]

    def grads(**kw):
        args = {"model": model, "x": x, "y": y, **kw}
        return lambda: per_example_grads(args.pop("model"), args.pop("x"), args.pop("y"), **args)

    fn = "per_example_grads"
    cases += [
        bad("grads-ensemble", grads(model=Ensemble(2)), fn, "model"),
        bad("grads-x-complex", grads(x=x.astype(np.complex64)), fn, "`x`"),
        bad("grads-label_smoothing-nan", grads(label_smoothing=math.nan), fn, "label_smoothing"),
        bad("grads-label_smoothing-str", grads(label_smoothing="0.1"), fn, "label_smoothing"),
        bad("grads-weight-short", grads(weight=np.ones(2, np.float32)), fn, "weight"),
        bad("grads-ignore_index-float", grads(ignore_index=0.5), fn, "ignore_index"),
        bad("grads-label-9", grads(y=np.full_like(y, 9)), fn, "label 9"),
    ]
    fn = "expected_calibration_error"
    p = np.full((4, 2), 0.5, np.float32)
    labels = np.zeros(4, np.int32)
    cases += [
        bad("ece-1-D", lambda: expected_calibration_error(p[0], labels[:2]), fn, "probabilities"),
        bad("ece-logits", lambda: expected_calibration_error(p * 4, labels), fn, "probabilities"),
        bad(
            "ece-complex",
            lambda: expected_calibration_error(p.astype(np.complex64), labels),
            fn,
            "probabilities",
        ),
        bad("ece-labels-float", lambda: expected_calibration_error(p, labels * 1.0), fn, "labels"),
        bad("ece-labels-short", lambda: expected_calibration_error(p, labels[:3]), fn, "labels"),
        bad(
            "ece-bins-0", lambda: expected_calibration_error(p, labels, num_bins=0), fn, "num_bins"
        ),
        bad(
            "ece-bins-float",
            lambda: expected_calibration_error(p, labels, num_bins=1.5),
            fn,
            "num_bins",
        ),
        good(
            "ece-on-edge",
            lambda: expected_calibration_error(p, labels, num_bins=2),
            lambda out: out == 0.5,  # all four at 0.5, right: bin (0, 0.5], |4 - 2| / 4
        ),
    ]
    run_group("evaluate / per_example_grads / expected_calibration_error", cases)


# --- models ------------------------------------------------------------------------------


def test_smallnet_and_ensemble():
    rngs = nnx.Rngs(0)
    net = SmallNet(rngs=rngs)
    ens = Ensemble(2)
    row = np.linspace(-1, 1, 10, dtype=np.float32)
    cases = []
    for arg in ("in_features", "hidden_features", "out_features"):
        for tag, v in [("0", 0), ("float", 2.5), ("bool", True), ("2**40", 2**40), ("str", "5")]:
            cases.append(
                bad(
                    f"SmallNet-{arg}-{tag}",
                    lambda a=arg, v=v: SmallNet(rngs=rngs, **{a: v}),
                    "SmallNet",
                    arg,
                )
            )
            cases.append(
                bad(
                    f"Ensemble-{arg}-{tag}",
                    lambda a=arg, v=v: Ensemble(2, **{a: v}),
                    "Ensemble",
                    arg,
                )
            )
    for tag, v in [("kaiming", "kaiming"), ("none", None), ("list", ["torch"])]:
        cases.append(
            bad(f"SmallNet-init-{tag}", lambda v=v: SmallNet(rngs=rngs, init=v), "SmallNet", "init")
        )
    cases.append(bad("SmallNet-rngs-int", lambda: SmallNet(rngs=0), "SmallNet", "rngs"))
    for tag, v in [("0", 0), ("float", 1.5), ("bool", True), ("str", "2")]:
        cases.append(
            bad(f"Ensemble-num_members-{tag}", lambda v=v: Ensemble(v), "Ensemble", "num_members")
        )
    for tag, v, k in [("neg", -1, 2), ("2**32", 2**32, 1), ("top", 2**32 - 1, 2), ("str", "a", 2)]:
        cases.append(
            bad(f"Ensemble-seed-{tag}", lambda v=v, k=k: Ensemble(k, seed=v), "Ensemble", "seed")
        )
    for who, m in (("SmallNet", net), ("Ensemble", ens)):
        for tag, v in [
            ("complex", row.astype(np.complex64)),
            ("int", np.arange(10)),
            ("bool", row > 0),
            ("str", "row"),
            ("none", None),
            ("features", row[:9]),
            ("scalar", np.float32(1.0)),
            ("ragged", [[1.0] * 10, [1.0]]),
        ]:
            cases.append(bad(f"{who}-call-{tag}", lambda m=m, v=v: m(v), who, "input"))
    cases += [
        good("SmallNet-list", lambda: net(row.tolist()), lambda out: np.allclose(out, net(row))),
        good(
            "Ensemble-list",
            lambda: ens(row.tolist()),
            lambda out: out.shape == (2, 3) and np.allclose(out[1], ens.member(1)(row)),
        ),
        good(
            "Ensemble-seed-top-one-member",
            lambda: Ensemble(1, seed=2**32 - 1),
            lambda e: e.num_members == 1,
        ),
    ]
    for tag, v in [("ensemble", ens), ("object", object()), ("none", None)]:
        cases.append(
            bad(f"to_state_dict-{tag}", lambda v=v: to_state_dict(v), "to_state_dict", "SmallNet")
        )
    run_group("SmallNet / Ensemble / to_state_dict", cases)


def test_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file

    net = SmallNet(rngs=nnx.Rngs(3))
    sd = to_state_dict(net)
    # Weights that bfloat16 holds exactly, so every bf16 source must give the same model.
    sd16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    reference = from_torch({k: v.astype(np.float32) for k, v in sd16.items()})
    torch16 = {
        k: torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16) for k, v in sd16.items()
    }
    save_file(torch16, tmp_path / "bf16.safetensors")
    torch.save(torch16, tmp_path / "bf16.pt")

    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    good_pt = tmp_path / "good.pt"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, good_pt)
    blob = good_pt.read_bytes()
    st_blob = (tmp_path / "bf16.safetensors").read_bytes()
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"fc1.weight": Payload()}, tmp_path / "payload.pt")
    torch.save([torch.ones(3)], tmp_path / "list.pt")
    (tmp_path / "dir.pt").mkdir()
    fn = "from_torch"
    files = {
        "empty-pt": write("empty.pt", b""),
        "random-pt": write("random.pt", os.urandom(4096)),
        "text-pt": write("text.pt", b"these are not the weights you are looking for\n"),
        "truncated-pt": write("truncated.pt", blob[: len(blob) // 2]),
        "text-bin": write("weights.bin", b"hello\n"),
        "empty-safetensors": write("empty.safetensors", b""),
        "random-safetensors": write("random.safetensors", os.urandom(4096)),
        "truncated-safetensors": write("truncated.safetensors", st_blob[: len(st_blob) - 20]),
        "text-safetensors": write("text.safetensors", b"{not json"),
        "payload-pt": tmp_path / "payload.pt",
        "list-pt": tmp_path / "list.pt",
        "npz": write("weights.npz", b"PK"),
    }
    cases = [bad(tag, lambda p=p: from_torch(p), fn, p.name) for tag, p in files.items()]
    cases += [
        bad(
            "missing",
            lambda: from_torch(tmp_path / "missing.pt"),
            fn,
            "missing.pt",
            errors=(FileNotFoundError,),
        ),
        bad(
            "directory",
            lambda: from_torch(tmp_path / "dir.pt"),
            fn,
            "dir.pt",
            errors=(FileNotFoundError,),
        ),
    ]

    def with_value(key, value):
        return lambda: from_torch({**sd, key: value})

    cases += [
        bad("not-mapping", lambda: from_torch([1, 2]), fn, "state dict"),
        bad("none", lambda: from_torch(None), fn, "state dict"),
        bad("init", lambda: from_torch(sd, init="kaiming"), fn, "init"),
        bad("missing-key", lambda: from_torch({}), fn, "fc1.weight", errors=(KeyError,)),
        bad("complex", with_value("fc1.bias", sd["fc1.bias"].astype(np.complex64)), fn, "fc1.bias"),
        bad("int", with_value("fc1.bias", np.arange(5)), fn, "fc1.bias"),
        bad("str", with_value("fc1.bias", "zeros"), fn, "fc1.bias"),
        bad("list", with_value("fc1.bias", [0.0] * 5), fn, "fc1.bias"),
        bad("shape", with_value("fc2.bias", np.zeros(4, np.float32)), fn, "fc2.bias"),
        bad(
            "sparse",
            with_value("fc1.weight", torch.from_numpy(sd["fc1.weight"]).to_sparse()),
            fn,
            "fc1.weight",
        ),
        bad("meta", with_value("fc1.weight", torch.empty(5, 10, device="meta")), fn, "fc1.weight"),
        bad(
            "quantized",
            with_value("fc1.bias", torch.quantize_per_tensor(torch.ones(5), 0.1, 0, torch.qint8)),
            fn,
            "fc1.bias",
        ),
        bad("torch-int", with_value("fc2.bias", torch.arange(3)), fn, "fc2.bias"),
    ]
    same = lambda model: same_params(model, reference)  # noqa: E731
    cases += [
        good("bf16-safetensors", lambda: from_torch(tmp_path / "bf16.safetensors"), same),
        good("bf16-pt", lambda: from_torch(tmp_path / "bf16.pt"), same),
        good("bf16-torch", lambda: from_torch(torch16), same),
        good("bf16-numpy", lambda: from_torch(sd16), same),
        good("bf16-jax", lambda: from_torch({k: jnp.asarray(v) for k, v in sd16.items()}), same),
        good(
            "float64",
            lambda: from_torch({k: v.astype(np.float64) for k, v in sd.items()}),
            lambda model: same_params(model, net),
        ),
    ]
    run_group("from_torch", cases)
    assert not marker.exists(), "a pickled payload ran"


# --- data --------------------------------------------------------------------------------


def test_datasets():
    cases = []
    for tag, v in [("unknown", "mnist"), ("none", None), ("int", 3)]:
        cases.append(
            bad(f"load_dataset-name-{tag}", lambda v=v: load_dataset(v), "load_dataset", "dataset")
        )
    for tag, v, shown in [
        ("neg", -1, "-1"),
        ("2**32", 2**32, "4294967296"),
        ("str", "a", "'a'"),
        ("float", 1.5, "1.5"),
    ]:
        cases.append(
            bad(
                f"load_dataset-seed-{tag}",
                lambda v=v: load_dataset(seed=v),
                "load_dataset",
                "seed",
                shown,
            )
        )
    for tag, v in [
        ("0", 0),
        ("1", 1),
        ("nan", math.nan),
        ("str", "0.2"),
        ("none", None),
        ("neg", -0.5),
    ]:
        cases.append(
            bad(
                f"load_dataset-test_fraction-{tag}",
                lambda v=v: load_dataset(test_fraction=v),
                "load_dataset",
                "test_fraction",
            )
        )
    for name, f in (("make_blobs", make_blobs), ("make_teacher", make_teacher)):
        for arg, v in [
            ("num_examples", 0),
            ("num_examples", 1.5),
            ("num_features", 0),
            ("num_classes", 1),
            ("seed", -1),
            ("seed", "a"),
            ("seed", 2**32),
            ("seed", None),
        ]:
            cases.append(bad(f"{name}-{arg}-{v!r}", lambda f=f, a=arg, v=v: f(**{a: v}), name, arg))
    cases.append(
        bad("make_teacher-hidden-0", lambda: make_teacher(hidden=0), "make_teacher", "hidden")
    )
    cases.append(
        good(
            "load_dataset-seed-top",
            lambda: load_dataset(seed=2**32 - 1),
            lambda d: d.num_classes == 3,
        )
    )
    run_group("load_dataset / make_blobs / make_teacher", cases)


# --- the command line --------------------------------------------------------------------

FLAG_CASES = (
    [
        (["train", "--lr", v], "--lr")
        for v in ("inf", "-inf", "nan", "-1", "0", "1e39", "1e-50", "x")
    ]
    + [
        (["train", "--seed", v], "--seed")
        for v in ("-1", "4294967296", "18446744073709551616", "1.5", "x", "")
    ]
    + [
        (["train", flag, v], flag)
        for flag in ("--epochs", "--batch-size", "--hidden", "--ensemble")
        for v in ("0", "-3", "1.5", "9" * 30, "two")
    ]
    + [
        (["train", "--label-smoothing", v], "--label-smoothing")
        for v in ("nan", "-0.1", "1.5", "inf")
    ]
    + [
        (["train", "--dataset", "mnist"], "--dataset"),
        (["evaluate", "--load", "x", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "--load", "x", "--dataset", "nope"], "--dataset"),
        (["demo", "--epochs", "0"], "--epochs"),
    ]
)


def test_cli_flags_in_process(capsys):
    def flag_case(args, flag):
        def call():
            try:
                code = main(args)
            except SystemExit as e:
                code = e.code
            err = capsys.readouterr().err
            if code != 2 or len(err.strip().splitlines()) != 1 or flag not in err:
                raise RuntimeError(f"exit {code}, stderr {err!r}")
            raise ValueError(err)

        return bad(" ".join(args), call, "jaxce", flag)

    run_group("CLI flags", [flag_case(a, f) for a, f in FLAG_CASES])


def test_cli_seed_range_of_an_ensemble_is_one_line(capsys):
    """--seed fits, but seed + K - 1 does not: refused before training, exit 1, one line."""
    assert main(["train", "--ensemble", "2", "--seed", str(2**32 - 1), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "`seed`" in err and "4294967295" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "args, flag",
    [(["train", "--lr", "inf"], "--lr"), (["train", "--seed", "18446744073709551616"], "--seed")],
)
def test_cli_flag_errors_have_no_traceback_in_a_subprocess(args, flag):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxce", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and flag in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
