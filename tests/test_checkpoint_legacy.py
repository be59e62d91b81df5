"""Checkpoints of jaxce 0.1 (format version 1, orbax): restored read-only with the same
checks and one-error rule as the current format, refused (not deleted) as a save target."""

from __future__ import annotations

import gc
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

from jaxce.checkpoint import CheckpointError, restore, save
from jaxce.models import Ensemble, SmallNet

ocp = pytest.importorskip("orbax.checkpoint")


def save_v1(model, path, user=None):
    """What jaxce 0.1's `jaxce.train.save` wrote."""
    ensemble = isinstance(model, Ensemble)
    meta = {
        "format": "jaxce-smallnet",
        "version": 1,
        "kind": "ensemble" if ensemble else "smallnet",
        "num_members": model.num_members if ensemble else 1,
        "in_features": model.in_features,
        "hidden_features": model.hidden_features,
        "out_features": model.out_features,
        "init": model.init,
        "user": dict(user or {}),
    }
    params = nnx.to_pure_dict(nnx.state(model.members if ensemble else model))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            path,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)
            ),
        )
    return path


def params_of(model):
    net = model.members if isinstance(model, Ensemble) else model
    return [np.asarray(net.fc1.kernel[...]), np.asarray(net.fc2.bias[...])]


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    ens = Ensemble(3, 10, 5, 3, seed=7)
    return save_v1(ens, tmp_path_factory.mktemp("v1") / "ck", {"dataset": "blobs"}), ens


def test_a_v1_checkpoint_restores_and_migrates(v1, tmp_path):
    path, ens = v1
    restored, meta = restore(path)
    assert isinstance(restored, Ensemble) and restored.num_members == 3
    assert meta == {"dataset": "blobs"}
    for a, b in zip(params_of(restored), params_of(ens), strict=True):
        np.testing.assert_array_equal(a, b)
    # Saved again in the current format, elsewhere: the same model.
    again, meta2 = restore(save(restored, tmp_path / "v2", metadata=meta))
    assert meta2 == meta
    for a, b in zip(params_of(again), params_of(ens), strict=True):
        np.testing.assert_array_equal(a, b)
    net = SmallNet(4, 3, 2, rngs=nnx.Rngs(0))
    small, _ = restore(save_v1(net, tmp_path / "small"))
    for a, b in zip(params_of(small), params_of(net), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_v1_checkpoint_is_not_a_save_target(v1, tmp_path):
    path = pathlib.Path(shutil.copytree(v1[0], tmp_path / "ck"))
    with pytest.raises(FileExistsError, match="a checkpoint of jaxce 0.1, orbax format"):
        save(SmallNet(rngs=nnx.Rngs(0)), path)
    assert restore(path)[1] == {"dataset": "blobs"}


def _meta(edit):
    def damage(path):
        file = path / "meta" / "metadata"
        doc = json.loads(file.read_text())
        edit(doc)
        file.write_text(json.dumps(doc))

    return damage


def _flip_data(path):
    for file in sorted((path / "params").rglob("*")):
        if file.is_file() and file.parent.name == "d":
            data = bytearray(file.read_bytes())
            data[len(data) // 2] ^= 1
            file.write_bytes(bytes(data))


def _huge(doc):
    doc["num_members"] = 10**6


CASES = {
    "meta garbage": ("meta/metadata", lambda p: (p / "meta" / "metadata").write_text("{x")),
    "meta removed": ("meta/metadata", lambda p: (p / "meta" / "metadata").unlink()),
    "meta a list": ("meta/metadata", lambda p: (p / "meta" / "metadata").write_text("[]")),
    "no in_features": ("meta/metadata", _meta(lambda d: d.pop("in_features"))),
    "user a list": ("meta/metadata", _meta(lambda d: d.update(user=[1]))),
    "num_members str": ("meta/metadata", _meta(lambda d: d.update(num_members="3"))),
    "num_members 10**6": ("params", _meta(_huge)),
    "hidden 6": ("params", _meta(lambda d: d.update(hidden_features=6))),
    "data bit flipped": ("params", _flip_data),
    "_METADATA removed": ("params", lambda p: (p / "params" / "_METADATA").unlink()),
    "manifest.ocdbt removed": ("params", lambda p: (p / "params" / "manifest.ocdbt").unlink()),
    "data files removed": ("params", lambda p: shutil.rmtree(p / "params" / "d")),
}


# orbax's asyncio wrappers used to leave "Event loop is closed" tracebacks behind a failed
# read (reported as unraisable exceptions): any such noise fails the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_every_damaged_v1_checkpoint_gives_one_clear_error(v1, tmp_path, capsys):
    bad = []
    for i, (label, (file, damage)) in enumerate(CASES.items()):
        path = pathlib.Path(shutil.copytree(v1[0], tmp_path / f"c{i}"))
        damage(path)
        try:
            restore(path)
        except CheckpointError as e:
            message = str(e)
            if str(path) not in message or file not in message or "\n" in message:
                bad.append(f"{label}: unclear {message!r}")
        except Exception as e:  # noqa: BLE001 (counted: an obscure outcome)
            bad.append(f"{label}: obscure {type(e).__name__}: {str(e)[:300]}")
        else:
            bad.append(f"{label}: silently restored")
    gc.collect()
    time.sleep(0.2)  # let any late callback of a storage thread fire now
    assert not bad, "\n".join(bad)
    assert capsys.readouterr().err == ""


def test_cli_on_a_damaged_v1_checkpoint_is_one_quiet_line(v1, tmp_path):
    path = pathlib.Path(shutil.copytree(v1[0], tmp_path / "ck"))
    _flip_data(path)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxce", "evaluate", "--load", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"jaxce evaluate: error: restore: damaged checkpoint '{path}'")
