"""Damaged and crafted checkpoints: every file of a saved checkpoint removed, truncated,
extended, bit-flipped or replaced in turn, and manifests crafted with a valid checksum but
wrong keys, types, ranges or shapes. Each must end in one CheckpointError naming the
checkpoint, the file and what is wrong; the outcomes are counted and any obscure error or
silent success fails the test."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxce._checkpoint_format as checkpoint_format
import jaxce.checkpoint as ck
from jaxce.checkpoint import CheckpointError, restore, save
from jaxce.cli import main
from jaxce.models import Ensemble

MANIFEST = ck.MANIFEST


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    ens = Ensemble(3, 10, 5, 3, seed=1)
    return save(ens, tmp_path_factory.mktemp("saved") / "ck", metadata={"dataset": "blobs"})


def _doc(path):
    return json.loads((path / MANIFEST).read_text())


def _rewrite(path, doc):
    """The manifest ``doc`` with a correct self-checksum: a crafted, not a damaged, file."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    text = json.dumps({**body, "sha256": hashlib.sha256(canonical).hexdigest()})
    (path / MANIFEST).write_text(text)


def _file(path, name):
    """The path of an array file (``fc1.bias``) or of the manifest (``MANIFEST``)."""
    return path / MANIFEST if name == MANIFEST else path / _doc(path)["data"] / f"{name}.npy"


# --- damage to any file -------------------------------------------------------------------


def _flip(at):
    def damage(f):
        data = bytearray(f.read_bytes())
        data[at(len(data))] ^= 0x01
        f.write_bytes(bytes(data))

    return damage


def _to_symlink(f):
    shutil.copy(f, f.with_name(f.name + ".real"))
    f.unlink()
    f.symlink_to(f.with_name(f.name + ".real"))


def _to_dir(f):
    f.unlink()
    f.mkdir()


DAMAGES = {
    "removed": lambda f: f.unlink(),
    "emptied": lambda f: f.write_bytes(b""),
    "halved": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "last byte cut": lambda f: f.write_bytes(f.read_bytes()[:-1]),
    "byte appended": lambda f: f.write_bytes(f.read_bytes() + b"\0"),
    "first bit flipped": _flip(lambda n: 0),
    "middle bit flipped": _flip(lambda n: n // 2),
    "last bit flipped": _flip(lambda n: n - 1),
    "a directory": _to_dir,
    "a symlink": _to_symlink,
}
FILES = (MANIFEST, *ck.ARRAYS)


# --- crafted manifests (valid checksum) -----------------------------------------------------


def _set(*keys, value):
    def craft(doc):
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return craft


def _drop(*keys):
    def craft(doc):
        target = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return craft


def _huge_consistent(doc):
    """num_members = 10**6 with every shape and size in the manifest made to agree."""
    k = 10**6
    doc["model"]["num_members"] = k
    for entry in doc["arrays"].values():
        entry["shape"][0] = k
        entry["size"] = 128 + 4 * int(np.prod(entry["shape"]))


CRAFTED = {
    **{f"no {key}": _drop(key) for key in ("format", "version", "data", "model", "arrays", "user")},
    **{f"no model.{key}": _drop("model", key) for key in checkpoint_format._MODEL_KEYS},
    "no arrays.fc2.bias": _drop("arrays", "fc2.bias"),
    "no arrays.fc1.kernel.sha256": _drop("arrays", "fc1.kernel", "sha256"),
    "extra key": _set("extra", value=1),
    "format other": _set("format", value="other"),
    "version 3": _set("version", value=3),
    "model a list": _set("model", value=[1, 2]),
    "arrays a list": _set("arrays", value=[]),
    "user a list": _set("user", value=[1]),
    "kind mlp": _set("model", "kind", value="mlp"),
    "init xavier": _set("model", "init", value="xavier"),
    "num_members str": _set("model", "num_members", value="3"),
    "num_members float": _set("model", "num_members", value=3.0),
    "num_members bool": _set("model", "num_members", value=True),
    "num_members 0": _set("model", "num_members", value=0),
    "num_members 10**6": _set("model", "num_members", value=10**6),
    "num_members 2**40": _set("model", "num_members", value=2**40),
    "num_members 10**6 consistent": _huge_consistent,
    "smallnet of 3": _set("model", "kind", value="smallnet"),
    "in_features -1": _set("model", "in_features", value=-1),
    "hidden_features 6": _set("model", "hidden_features", value=6),
    "out_features null": _set("model", "out_features", value=None),
    "data escapes": _set("data", value="../elsewhere"),
    "data absent": _set("data", value="jaxce-data-" + "0" * 32),
    "file escapes": _set("arrays", "fc1.bias", "file", value="../../x.npy"),
    "dtype float64": _set("arrays", "fc1.bias", "dtype", value="float64"),
    "shape wrong": _set("arrays", "fc2.kernel", "shape", value=[3, 3, 5]),
    "size wrong": _set("arrays", "fc1.bias", "size", value=10),
    "size str": _set("arrays", "fc1.bias", "size", value="188"),
    "sha256 short": _set("arrays", "fc1.bias", "sha256", value="abc"),
    "sha256 other": _set("arrays", "fc1.bias", "sha256", value="0" * 64),
}

RAW_MANIFESTS = {
    "garbage": b"{not json at all",
    "truncated JSON": None,  # the real manifest, cut
    "dataset edited": "blobs",  # the real manifest with "blobs" changed to "blobr"
    "empty": b"",
    "not UTF-8": b"\xff\xfe{}",
    "a JSON list": b"[]",
    "JSON null": b"null",
    "NaN": b'{"format": NaN}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "17 MiB": b" " * (17 * 2**20),
}


def _npy(array, **kwargs):
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


CRAFTED_ARRAYS = {  # fc1.bias, shape (3, 5) float32, replaced; the manifest agrees on its bytes
    "shape (3, 6)": _npy(np.zeros((3, 6), np.float32)),
    "float64": _npy(np.zeros((3, 5))),
    "big-endian": _npy(np.zeros((3, 5), ">f4")),
    "Fortran order": _npy(np.asfortranarray(np.zeros((3, 5), np.float32))),
    "pickled objects": _npy(np.array([[print] * 5] * 3, dtype=object), allow_pickle=True),
    "not .npy": b"\x93NUMPY garbage" + b"\0" * 100,
}


def _cases():
    for name in FILES:
        for damage in DAMAGES:
            yield f"{name} {damage}", name, ("damage", name, damage)
    # These manifests are consistent in themselves: the array file they point at is blamed.
    blamed = {
        "num_members 10**6 consistent": "fc1.kernel.npy",
        "data absent": "fc1.kernel.npy",
        "sha256 other": "fc1.bias.npy",
    }
    for label in CRAFTED:
        yield f"crafted: {label}", blamed.get(label, MANIFEST), ("crafted", label)
    for label in RAW_MANIFESTS:
        yield f"manifest {label}", MANIFEST, ("raw", label)
    for label in CRAFTED_ARRAYS:
        yield f"fc1.bias {label}", "fc1.bias.npy", ("array", label)
    yield "data directory removed", "fc1.kernel.npy", ("datadir", "removed")
    yield "data directory a file", "fc1.kernel.npy", ("datadir", "file")


def _apply(path, how):
    kind = how[0]
    if kind == "damage":
        DAMAGES[how[2]](_file(path, how[1]))
    elif kind == "crafted":
        doc = _doc(path)
        CRAFTED[how[1]](doc)
        _rewrite(path, doc)
    elif kind == "raw":
        raw = RAW_MANIFESTS[how[1]]
        if raw is None:
            raw = (path / MANIFEST).read_bytes()[:200]
        elif raw == "blobs":
            raw = (path / MANIFEST).read_bytes().replace(b'"blobs"', b'"blobr"')
        (path / MANIFEST).write_bytes(raw)
    elif kind == "array":
        blob = CRAFTED_ARRAYS[how[1]]
        doc = _doc(path)
        _file(path, "fc1.bias").write_bytes(blob)
        doc["arrays"]["fc1.bias"].update(size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
        _rewrite(path, doc)
    else:
        data = path / _doc(path)["data"]
        shutil.rmtree(data)
        if how[1] == "file":
            data.write_text("x")


def test_every_damaged_or_crafted_checkpoint_gives_one_clear_error(saved, tmp_path):
    outcomes = {"clear": 0, "harmless": []}
    bad = []
    original = restore(saved)
    slowest = 0.0
    cases = list(_cases())
    for i, (label, file, how) in enumerate(cases):
        path = pathlib.Path(shutil.copytree(saved, tmp_path / f"c{i}"))
        _apply(path, how)
        start = time.perf_counter()
        try:
            restore(path)
        except CheckpointError as e:
            message = str(e)
            if str(path) in message and file in message and "\n" not in message:
                outcomes["clear"] += 1
            else:
                bad.append(f"{label}: unclear message {message!r}")
        except Exception as e:  # noqa: BLE001 (counted: an obscure outcome)
            bad.append(f"{label}: obscure {type(e).__name__}: {e}")
        else:
            bad.append(f"{label}: silently restored")
            model, meta = restore(path)
            got, want = ck._model_record(model)[1], ck._model_record(original[0])[1]
            same = meta == original[1] and all(np.array_equal(got[k], want[k]) for k in want)
            if same:  # the very model and metadata saved: not a silent wrong result
                bad.pop()
                outcomes["harmless"].append(label)
        slowest = max(slowest, time.perf_counter() - start)
        shutil.rmtree(path)
    assert not bad, "\n".join(bad)
    # Only the manifest's final newline can go without changing a thing.
    assert outcomes["harmless"] == [f"{MANIFEST} last byte cut"]
    assert (
        outcomes["clear"] + 1
        == len(cases)
        == 5 * len(DAMAGES) + len(CRAFTED) + len(RAW_MANIFESTS) + len(CRAFTED_ARRAYS) + 2
    )
    assert slowest < 2.0  # the crafted 10**6 members included: nothing is built from a number


def test_messages_say_what_is_wrong(saved, tmp_path):
    def message(how):
        path = pathlib.Path(shutil.copytree(saved, tmp_path / f"c{len(os.listdir(tmp_path))}"))
        _apply(path, how)
        with pytest.raises(CheckpointError) as e:
            restore(path)
        return str(e.value)

    assert "is missing" in message(("damage", "fc2.kernel", "removed"))
    assert "manifest says" in message(("damage", "fc1.bias", "last byte cut"))
    assert "SHA-256 does not match" in message(("damage", "fc1.bias", "middle bit flipped"))
    assert "checksum does not match" in message(("raw", "dataset edited"))
    assert "is not valid JSON" in message(("raw", "truncated JSON"))
    assert "has no jaxce-checkpoint.json" in message(("damage", MANIFEST, "removed"))
    assert "missing keys ['in_features']" in message(("crafted", "no model.in_features"))
    assert "needs [1000000, 10, 5]" in message(("crafted", "num_members 10**6"))
    assert "must be an int in [1, " in message(("crafted", "num_members str"))
    assert "version 3; this jaxce reads version 2" in message(("crafted", "version 3"))
    assert "holds float64[3, 5]" in message(("array", "float64"))
    assert "holds object[3, 5]" in message(("array", "pickled objects"))


def test_cli_evaluate_answers_damage_in_one_line(saved, tmp_path, capsys):
    for i, how in enumerate(
        [("damage", "fc1.kernel", "halved"), ("crafted", "no model"), ("raw", "garbage")]
    ):
        path = pathlib.Path(shutil.copytree(saved, tmp_path / f"c{i}"))
        _apply(path, how)
        assert main(["evaluate", "--load", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("jaxce evaluate: error: restore: damaged checkpoint"), err
        assert len(err.strip().splitlines()) == 1
    # Crafted user metadata: a dataset that does not exist, a seed that is not an int.
    for i, user in enumerate([{"dataset": ["blobs"]}, {"dataset": "blobs", "seed": "x"}]):
        path = pathlib.Path(shutil.copytree(saved, tmp_path / f"u{i}"))
        doc = _doc(path)
        doc["user"] = user
        _rewrite(path, doc)
        assert main(["evaluate", "--load", str(path)]) == 1
        err = capsys.readouterr().err
        assert "the metadata of checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "how",
    [("crafted", "num_members 10**6 consistent")],
    ids=["huge-num-members"],
)
def test_cli_subprocess_stderr_is_one_line_without_noise(saved, tmp_path, how):
    path = pathlib.Path(shutil.copytree(saved, tmp_path / "ck"))
    _apply(path, how)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jaxce", "evaluate", "--load", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.perf_counter() - start < 60
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"jaxce evaluate: error: restore: damaged checkpoint '{path}'")
    assert "Traceback" not in proc.stderr and "Event loop" not in proc.stderr
