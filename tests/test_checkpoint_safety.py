"""Checkpoints: saves interrupted for real (SIGKILL, SIGTERM, SIGINT at every step of the
protocol, and at random instants), refusals that keep user files, and every file of a saved
checkpoint damaged in turn, each answered by one clear CheckpointError."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from flax import nnx

import jaxce.checkpoint as ck
from jaxce.checkpoint import check_save_directory, restore, save
from jaxce.cli import main
from jaxce.models import Ensemble, SmallNet

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = (10, 5, 3)
K = 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved 3-member ensemble (the "old" checkpoint every test starts from)."""
    ens = Ensemble(K, *SIZES, seed=5)
    path = save(ens, tmp_path_factory.mktemp("saved") / "ck", metadata={"dataset": "blobs"})
    return path, np.asarray(ens.members.fc1.kernel[...])


def copy_of(saved, tmp_path, name="ck") -> pathlib.Path:
    return pathlib.Path(shutil.copytree(saved[0], tmp_path / name))


def snapshot(root: pathlib.Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` with its bytes (None for a directory)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def manifest(path: pathlib.Path) -> dict:
    return json.loads((path / ck.MANIFEST).read_text())


def rewrite_manifest(path: pathlib.Path, doc: dict) -> None:
    """Writes ``doc`` as the manifest with a correct self-checksum (a crafted checkpoint)."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    (path / ck.MANIFEST).write_text(
        json.dumps({**body, "sha256": hashlib.sha256(canonical).hexdigest()})
    )


# --- refusals: nothing jaxce did not write is deleted, and nothing is created -------------


@pytest.mark.parametrize(
    "layout, offender",
    [
        ({"thesis.tex": "x", "meta/": None, "params/": None}, "thesis.tex"),  # the case
        ({"meta/notes.txt": "x", "params/": None}, "meta"),
        ({"jaxce-data-" + "0" * 32 + "/notes.txt": "x"}, "notes.txt"),
        ({"jaxce-data-" + "0" * 32 + "/fc1.bias.npy/": None}, "fc1.bias.npy"),
        ({"jaxce-data-" + "0" * 31 + "g/": None}, "jaxce-data-"),
        ({"jaxce-checkpoint.json/": None}, "jaxce-checkpoint.json"),
        ({".hidden": ""}, ".hidden"),
    ],
    ids=["issue", "meta-file", "data-extra", "data-subdir", "bad-name", "manifest-dir", "hidden"],
)
def test_foreign_content_is_refused_naming_it_and_kept(tmp_path, layout, offender):
    target = tmp_path / "D"
    target.mkdir()
    for rel, text in layout.items():
        p = target / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    before = snapshot(tmp_path)
    for call in (
        lambda: check_save_directory(target),
        lambda: save(SmallNet(rngs=nnx.Rngs(0)), target),
    ):
        with pytest.raises(FileExistsError, match="refusing to overwrite") as e:
            call()
        assert offender in str(e.value) and str(target) in str(e.value)
    assert snapshot(tmp_path) == before


def test_a_user_file_added_to_a_checkpoint_is_refused_and_kept(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    data = manifest(path)["data"]
    (path / data / "README").write_text("mine")
    (path / "notes.txt").write_text("mine too")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="README|notes.txt"):
        save(SmallNet(rngs=nnx.Rngs(0)), path)
    assert snapshot(tmp_path) == before
    assert restore(path)[0].num_members == K  # extra files do not stop a restore


def test_unwritable_targets_fail_up_front_without_creating_anything(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    # Accepted targets: checked by creating and removing a probe, which leaves nothing.
    assert check_save_directory(tmp_path / "new" / "ck") == tmp_path / "new" / "ck"
    assert check_save_directory(tmp_path / "empty") == tmp_path / "empty"
    assert snapshot(tmp_path) == before
    with pytest.raises(NotADirectoryError, match="'.*file' is not a directory"):
        check_save_directory(tmp_path / "file" / "sub" / "ck")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        check_save_directory(tmp_path / "file")
    with pytest.raises(ValueError, match="non-empty path"):
        check_save_directory("")
    with pytest.raises(TypeError, match="`directory` must be a str or os.PathLike, got NoneType"):
        save(SmallNet(rngs=nnx.Rngs(0)), None)
    if os.path.isdir("/sys"):  # permission bits let root in; the file system does not
        with pytest.raises(PermissionError, match="cannot write to '/sys/jaxce-ck'"):
            check_save_directory("/sys/jaxce-ck")
    if os.geteuid() != 0:  # root writes anywhere: a read-only parent stops only others
        (tmp_path / "ro").mkdir(mode=0o555)
        before = snapshot(tmp_path)
        with pytest.raises(PermissionError, match="is not writable"):
            check_save_directory(tmp_path / "ro" / "ck")
    # The CLI stops before loading data or training, in one line.
    assert main(["train", "--save", str(tmp_path / "file" / "ck"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_save_replaces_a_checkpoint_and_removes_only_its_own_leftovers(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    (tmp_path / "sibling.txt").write_text("keep")
    leftover = path / ("jaxce-data-" + "a" * 32)
    leftover.mkdir()
    (leftover / "fc1.kernel.npy").write_bytes(b"partial")
    (path / f"{ck.MANIFEST}.{'b' * 32}.tmp").write_text("{")
    model = SmallNet(*SIZES, rngs=nnx.Rngs(9))
    save(model, path, metadata={"seed": 9})
    restored, meta = restore(path)
    assert meta == {"seed": 9} and isinstance(restored, SmallNet)
    np.testing.assert_array_equal(restored.fc1.kernel[...], model.fc1.kernel[...])
    assert sorted(os.listdir(path)) == sorted([ck.MANIFEST, manifest(path)["data"]])
    assert (tmp_path / "sibling.txt").read_text() == "keep"


def test_a_concurrent_save_is_refused(saved, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    path = copy_of(saved, tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(FileExistsError, match="another save .* is in progress"):
            save(SmallNet(*SIZES, rngs=nnx.Rngs(1)), path)
    finally:
        os.close(fd)
    assert restore(path)[0].num_members == K


def test_bad_metadata_is_refused_before_writing(tmp_path):
    model = SmallNet(rngs=nnx.Rngs(0))
    for metadata, error, match in [
        ([1, 2], TypeError, "`metadata` must be a dict .* got list \\[1, 2\\]"),
        ({"x": object()}, TypeError, "JSON values"),
        ({1: "a"}, TypeError, "keys must be str, got int 1"),
        ({"lr": float("nan")}, ValueError, "finite numbers, got metadata\\['lr'\\] = nan"),
    ]:
        with pytest.raises(error, match=match):
            save(model, tmp_path / "ck", metadata=metadata)
    assert not (tmp_path / "ck").exists()


# --- interruptions ------------------------------------------------------------------------

# A child that saves with the protocol code of jaxce/checkpoint.py, the jaxce package
# standing in by its path only: the checkpoint modules need only NumPy, and without
# jaxce/__init__.py (which imports jax) a child starts in a fraction of a second.
CHILD = r"""
import pathlib, sys, time, types
import numpy as np
package = types.ModuleType("jaxce")
package.__path__ = [sys.argv[1]]
sys.modules["jaxce"] = package
import jaxce.checkpoint as ck
assert "jax" not in sys.modules
target, pause, loop = pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "loop"
def hook(name):
    if name.startswith(pause):
        print("AT", name, flush=True)
        time.sleep(60)
ck._step_hook = hook
model = {"kind": "ensemble", "num_members": 3, "in_features": 10, "hidden_features": 5,
         "out_features": 3, "init": "torch"}
shapes = {"fc1.kernel": (3, 10, 5), "fc1.bias": (3, 5), "fc2.kernel": (3, 5, 3),
          "fc2.bias": (3, 3)}
print("READY", flush=True)
value, saves = 2.0, 0
while True:
    ck._write(target, {k: np.full(s, value, np.float32) for k, s in shapes.items()}, model,
              {"value": value})
    if not loop:
        break
    if saves == 0:
        print("SAVED", flush=True)  # once: a full pipe would stall the loop
    saves += 1
    value = 5.0 - value  # 2.0, 3.0, 2.0, ...
print("DONE", flush=True)
"""

STEPS = [
    "locked",
    "data-dir",
    "array:fc1.kernel",
    "array:fc1.bias",
    "array:fc2.kernel",
    "array:fc2.bias",
    "manifest-written",
    "committed",
    "removed:",
]
COMMITTED = {"committed", "removed:"}


def _spawn(target, pause, loop=False):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ROOT / "jaxce"),
            str(target),
            pause,
            "loop" if loop else "once",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc, prefix, timeout=60.0):
    watchdog = threading.Timer(timeout, proc.kill)  # a stuck child fails the test, not CI
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                return line
    finally:
        watchdog.cancel()
    raise AssertionError(f"child never reached {prefix!r}: {proc.stderr.read()}")


def _restored_value(path, old_kernel):
    """'old' or the new value the child wrote, from a full restore."""
    model, meta = restore(path)
    kernel = np.asarray(model.members.fc1.kernel[...])
    if np.array_equal(kernel, old_kernel):
        return "old"
    assert np.all(kernel == meta["value"]), "a restore mixes two saves"
    return meta["value"]


def test_saves_interrupted_by_signals_at_every_step_keep_old_or_new(saved, tmp_path):
    """SIGKILL and SIGINT at every step of the protocol, SIGTERM at some (it kills like
    SIGKILL: no handler); the children run in parallel."""
    (tmp_path / "thesis.tex").write_text("user file beside the checkpoints")
    trials = [(sig, step) for sig in (signal.SIGKILL, signal.SIGINT) for step in STEPS]
    trials += [(signal.SIGTERM, step) for step in ("data-dir", "manifest-written", "committed")]
    procs = []
    for i, (sig, step) in enumerate(trials):
        path = copy_of(saved, tmp_path, f"ck{i}")
        procs.append((path, sig, step, _spawn(path, step)))
    outcomes = {}
    for _, sig, _, proc in procs:
        _wait_for(proc, "AT")
        proc.send_signal(sig)
    for path, sig, step, proc in procs:
        proc.wait(timeout=60)
        assert proc.returncode != 0
        got = _restored_value(path, saved[1])
        assert got == (2.0 if step in COMMITTED else "old"), (sig, step)
        if sig == signal.SIGINT and step not in COMMITTED:
            # Ctrl-C before the commit takes back everything the save wrote.
            assert snapshot(path) == snapshot(saved[0]), step
        outcomes[got] = outcomes.get(got, 0) + 1
        # Whatever an interrupted save left behind, the next save accepts and cleans up.
        save(SmallNet(*SIZES, rngs=nnx.Rngs(1)), path)
        assert len(os.listdir(path)) == 2 and isinstance(restore(path)[0], SmallNet)
    assert outcomes == {"old": 7 * 2 + 2, 2.0: 2 * 2 + 1}
    assert (tmp_path / "thesis.tex").read_text() == "user file beside the checkpoints"


def test_saves_killed_at_random_instants_keep_a_restorable_checkpoint(saved, tmp_path):
    """A child saving in a loop, SIGKILLed at a random instant after its first save: the
    directory restores to one of the two models it alternates, never to neither."""
    rng = random.Random(0)
    seen = set()
    for i in range(8):
        path = copy_of(saved, tmp_path, f"ck{i}")
        proc = _spawn(path, "never", loop=True)
        _wait_for(proc, "SAVED")
        time.sleep(rng.uniform(0.0, 0.1))
        proc.kill()
        proc.wait(timeout=60)
        seen.add(_restored_value(path, saved[1]))
    assert seen and seen <= {2.0, 3.0}, seen  # one save had completed: never the old one


@pytest.mark.parametrize("step", STEPS)
def test_keyboard_interrupt_in_process(saved, tmp_path, monkeypatch, step):
    path = copy_of(saved, tmp_path)
    before = snapshot(path)

    def hook(name):
        if name.startswith(step):
            raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_step_hook", hook)
    new = SmallNet(*SIZES, rngs=nnx.Rngs(4))
    with pytest.raises(KeyboardInterrupt):
        save(new, path)
    monkeypatch.setattr(ck, "_step_hook", None)
    if step in COMMITTED:
        np.testing.assert_array_equal(restore(path)[0].fc1.kernel[...], new.fc1.kernel[...])
    else:
        assert snapshot(path) == before


def test_an_interrupt_right_after_the_commit_keeps_the_new_checkpoint(saved, tmp_path, monkeypatch):
    path = copy_of(saved, tmp_path)
    real = os.replace

    def replace_then_interrupt(src, dst, **kwargs):
        real(src, dst, **kwargs)
        # os.replace is patched for the whole process: interrupt only this save's commit.
        if pathlib.Path(dst).resolve().parent == path.resolve():
            raise KeyboardInterrupt

    monkeypatch.setattr(ck.os, "replace", replace_then_interrupt)
    new = SmallNet(*SIZES, rngs=nnx.Rngs(4))
    with pytest.raises(KeyboardInterrupt):
        save(new, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(restore(path)[0].fc1.kernel[...], new.fc1.kernel[...])


CLI_CHILD = r"""
import sys, time
import jaxce.checkpoint as ck
from jaxce.cli import main

def hook(name):
    if name == "array:fc2.kernel":
        print("AT", name, flush=True)
        time.sleep(60)

ck._step_hook = hook
# Training is beside the point here (and compiling it costs seconds): a stand-in returns
# the untrained model's result, and the CLI goes on to save as after a real run.
import jaxce.train

class Report:
    def format(self, names):
        return "(report)"

class Result:
    history, report = [], Report()

jaxce.train.fit = lambda *args, **kwargs: Result()
sys.exit(main(["train", "--quiet", "--save", sys.argv[1]]))
"""


def test_ctrl_c_while_jaxce_train_saves_keeps_the_old_checkpoint(saved, tmp_path):
    """The issue's case: `jaxce train --save DIR` onto a checkpoint, Ctrl-C while saving."""
    path = copy_of(saved, tmp_path)
    before = snapshot(path)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(proc, "AT")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "jaxce: interrupted", err
    assert snapshot(path) == before
    assert _restored_value(path, saved[1]) == "old"
