"""Crash-safe saving, and bounded, validated restoring, of SmallNet and Ensemble checkpoints.

**What a jaxce checkpoint is.** A directory ``D`` holding exactly:

- ``D/jaxce-checkpoint.json``, the *manifest*: the model's kind and sizes, the user
  metadata, the name of the data directory, and for each of the four parameter
  arrays its file, shape, dtype (float32), size in bytes and SHA-256; plus the
  SHA-256 of the manifest's own content;
- ``D/jaxce-data-<32 hex digits>/``, the data directory the manifest names, holding
  ``fc1.kernel.npy``, ``fc1.bias.npy``, ``fc2.kernel.npy`` and ``fc2.bias.npy``
  (NumPy ``.npy`` files; an ensemble's arrays carry a leading member axis);
- possibly leftovers of interrupted saves, which jaxce also wrote: other
  ``jaxce-data-<32 hex>/`` directories holding nothing but files of those four
  names, and ``jaxce-checkpoint.json.<32 hex>.tmp`` files.

Anything else in ``D`` (``D/thesis.tex``, ``D/meta/``, ``D/jaxce-data-…/notes.txt``,
a symlink) makes ``D`` foreign: :func:`save` refuses it, naming the entry, and
changes nothing. Only the names above are ever deleted, and a leftover data
directory is emptied file by file by those four names, so nothing else can go.

**The save protocol.** With ``D`` created if needed and locked (``flock``) against
a concurrent save:

1. write the arrays into a new data directory ``D/jaxce-data-<new>/``, ``fsync``
   each file, then the directory and ``D``;
2. write the new manifest to ``D/jaxce-checkpoint.json.<new>.tmp`` and ``fsync`` it;
3. ``os.replace`` it onto ``D/jaxce-checkpoint.json`` (atomic) and ``fsync`` ``D``:
   this is the commit;
4. remove the previous data directory and any leftovers (best effort).

The previous checkpoint is never touched before step 3, and the new one is
complete and durable before it. So at every instant the manifest at ``D`` names a
complete data directory: a crash, ``SIGKILL``, ``SIGTERM`` or Ctrl-C anywhere
leaves ``D`` restorable to the old model (before the commit) or the new one
(after it), and restore needs no recovery step. An interrupted first save leaves
no manifest (nothing was restorable before either) and only entries the next
save removes. A ``KeyboardInterrupt`` before the commit removes the new data
directory at once.

Why not orbax (jaxce 0.1 used it): ``Checkpointer.save(force=True)``
deletes the old directory before the new one is complete, and orbax's stored
arrays are zstd-compressed, so a restore's memory cannot be bounded by the bytes
on disk; damaged files surfaced as tensorstore dumps and asyncio noise. ``.npy``
files are read with their sizes known and checked before any byte is parsed.
Those older checkpoints (format version 1) are still read, never written: see
``jaxce/_checkpoint_v1.py``.

**What restore checks**, before building anything: the manifest's size (at most
16 MiB), JSON syntax, format, version, self-checksum and schema (every key,
type and range; an ensemble's member count agrees with the arrays' shapes); then
for each array its file's type and size (against the manifest, before reading),
its SHA-256, and its ``.npy`` header (float32, C order, the shape the model
needs). Time and memory are therefore bounded by the bytes stored: a manifest
saying ``"num_members": 1000000`` beside 3-member arrays is refused without
reading them, and an ensemble is built from its stacked arrays in one go. Every
failure is one :class:`CheckpointError` naming the checkpoint, the file and what
is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pathlib
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxce import _durable
from jaxce._checkpoint_format import (
    _DATA_RE,
    _TMP_RE,
    ARRAYS,
    FILES,
    FORMAT,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    VERSION,
    CheckpointError,
    _shapes,
    encode_manifest,
    load_array,
    load_manifest,
    npy_bytes,
)
from jaxce._checkpoint_v1 import is_v1, read_v1

__all__ = ["CheckpointError", "check_save_directory", "restore", "save"]

#: Called with the name of each step of the save protocol as it is reached; ``None``
#: in normal use. The tests set it to interrupt saves at each step.
_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


# --- paths and directory contents ---------------------------------------------------------


def _as_path(fn: str, directory: Any) -> pathlib.Path:
    if not isinstance(directory, (str, os.PathLike)) or isinstance(directory, bytes):
        raise TypeError(
            f"{fn}: `directory` must be a str or os.PathLike, got "
            f"{type(directory).__name__} {directory!r}"
        )
    text = os.fspath(directory)
    if not isinstance(text, str):
        raise TypeError(f"{fn}: `directory` must be a text path, got {text!r}")
    if not text or "\0" in text:
        raise ValueError(f"{fn}: `directory` must be a non-empty path, got {text!r}")
    return pathlib.Path(text).expanduser().absolute()


def _refuse(path: pathlib.Path, entries: list[str]) -> None:
    names = sorted(e for e in entries if e != "...")
    shown = ", ".join(repr(e) for e in names[:5])
    plus = "+" if "..." in entries else ""  # the listing stopped early
    more = f" and {len(names) - 5}{plus} more" if len(names) > 5 else ""
    if "meta" in names and "params" in names and is_v1(path):
        more += (
            " (a checkpoint of jaxce 0.1, orbax format: restore it, then save it to a new "
            "directory)"
        )
    raise FileExistsError(
        f"save: {str(path)!r} holds {shown}{more}, which jaxce did not write; refusing to "
        "overwrite it (nothing was changed; choose a new or empty directory, or remove "
        "those yourself)"
    )


def _contents(path: pathlib.Path) -> tuple[bool, list[str]]:
    """``(has_manifest, other jaxce entries)`` of ``path``; refuses anything foreign."""
    has_manifest, ours, foreign = False, [], []
    with os.scandir(path) as entries:
        for entry in entries:
            name = entry.name
            if name == MANIFEST and entry.is_file(follow_symlinks=False):
                has_manifest = True
            elif _TMP_RE.match(name) and entry.is_file(follow_symlinks=False):
                ours.append(name)
            elif _DATA_RE.match(name) and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner_entries:
                    for inner in inner_entries:
                        if inner.name not in FILES or not inner.is_file(follow_symlinks=False):
                            foreign.append(f"{name}/{inner.name}")
                ours.append(name)
            else:
                foreign.append(name)
            if len(foreign) > 100:  # enough to name; no need to list a huge directory
                foreign.append("...")
                break
    if foreign:
        _refuse(path, foreign)
    return has_manifest, ours


def _check_writable(path: pathlib.Path, directory: pathlib.Path, probe: str) -> None:
    kwargs = {"effective_ids": True} if os.access in os.supports_effective_ids else {}
    if not os.access(directory, os.W_OK | os.X_OK, **kwargs):
        raise PermissionError(
            f"save: cannot write to {str(path)!r}: {str(directory)!r} is not writable"
        )
    # os.access trusts permission bits; root, pseudo file systems (/proc, /sys), ACLs and
    # network mounts can still refuse. Creating and removing an empty directory is sure.
    try:
        os.mkdir(directory / probe)
    except OSError as e:
        raise PermissionError(
            f"save: cannot write to {str(path)!r}: creating an entry in {str(directory)!r} "
            f"failed ({e.strerror})"
        ) from None
    with contextlib.suppress(FileNotFoundError):  # a save that just ran removed it
        os.rmdir(directory / probe)


def check_save_directory(directory: str | os.PathLike) -> pathlib.Path:
    """Checks that :func:`save` may write to ``directory``; returns its absolute path.

    Allowed: a path that does not exist but can be created, an empty directory, or
    a jaxce checkpoint (which :func:`save` replaces). Anything else is refused with
    an error naming the offending entry, and never deleted. Writability is tested by
    creating and at once removing an empty directory; nothing is left behind, so a
    training run can call it first and fail before it starts.

    Raises:
      FileExistsError: ``directory`` is a file, or holds anything but a jaxce
        checkpoint (the entry is named).
      NotADirectoryError: an ancestor of ``directory`` is a file.
      PermissionError: it cannot be written.

    Examples:
      >>> import tempfile
      >>> from jaxce.checkpoint import check_save_directory
      >>> check_save_directory(tempfile.mkdtemp()).is_absolute()
      True
      >>> check_save_directory("/dev/null/ckpt")
      Traceback (most recent call last):
      ...
      NotADirectoryError: save: cannot create '/dev/null/ckpt': '/dev/null' is not a directory
    """
    path = _as_path("save", directory)
    if os.path.lexists(path):
        if not path.is_dir():
            raise FileExistsError(f"save: {str(path)!r} exists and is not a directory")
        try:
            _contents(path)
        except FileExistsError:
            raise
        except OSError as e:
            raise PermissionError(
                f"save: cannot inspect {str(path)!r} ({e.strerror}); jaxce must see what a "
                "directory holds before it writes there"
            ) from None
        # Named as a leftover data directory: should this process die before removing it,
        # the next save does.
        _check_writable(path, path, f"jaxce-data-{secrets.token_hex(16)}")
        return path
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            f"save: cannot create {str(path)!r}: {str(ancestor)!r} is not a directory"
        )
    _check_writable(path, ancestor, f".jaxce-probe-{secrets.token_hex(16)}")
    return path


# --- writing ------------------------------------------------------------------------------


def _remove_ours(path: pathlib.Path, name: str) -> None:
    """Removes a jaxce entry of ``path`` by its known names only (never a tree walk)."""
    target = path / name
    if _DATA_RE.match(name):
        for file in FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target / file)
        os.rmdir(target)  # fails, keeping it, if anything else appeared inside
    elif _TMP_RE.match(name):
        os.unlink(target)


def _committed_data(path: pathlib.Path) -> str | None:
    """The data directory the manifest at ``path`` names, or None (best effort)."""
    try:
        with open(path / MANIFEST, "rb") as f:
            return json.loads(f.read(MAX_MANIFEST_BYTES)).get("data")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _write(path: pathlib.Path, arrays: Mapping[str, np.ndarray], model: dict, user: dict) -> None:
    """The save protocol of the module docstring, for checked float32 ``arrays``."""
    blobs = {name: npy_bytes(arrays[name]) for name in ARRAYS}
    token = secrets.token_hex(16)
    data, tmp = f"jaxce-data-{token}", f"{MANIFEST}.{token}.tmp"
    body = {
        "format": FORMAT,
        "version": VERSION,
        "data": data,
        "model": model,
        "arrays": {
            name: {
                "file": f"{name}.npy",
                "shape": list(arrays[name].shape),
                "dtype": "float32",
                "size": len(blobs[name]),
                "sha256": hashlib.sha256(blobs[name]).hexdigest(),
            }
            for name in ARRAYS
        },
        "user": user,
    }
    manifest = encode_manifest(body)
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise ValueError(
            f"save: `metadata` is too large ({len(manifest)} bytes of JSON with the manifest; "
            f"at most {MAX_MANIFEST_BYTES})"
        )
    _durable.makedirs(path)
    with _durable.locked(path):
        _, previous = _contents(path)  # again, under the lock: all of it goes once committed
        _step("locked")
        try:
            os.mkdir(path / data)
            _step("data-dir")
            for name in ARRAYS:
                _durable.write_file(path / data / f"{name}.npy", blobs[name])
                _step(f"array:{name}")
            _durable.fsync_dir(path / data)
            _durable.fsync_dir(path)
            _durable.write_file(path / tmp, manifest)
            _step("manifest-written")
            os.replace(path / tmp, path / MANIFEST)
            _durable.fsync_dir(path)
        except BaseException:
            # Unless the commit happened (an interrupt can land just after os.replace),
            # take back what this save wrote; the previous checkpoint was never touched.
            if _committed_data(path) != data:
                for name in (tmp, data):
                    with contextlib.suppress(OSError):
                        _remove_ours(path, name)
            raise
        _step("committed")
        for name in previous:
            with contextlib.suppress(OSError):  # a leftover stays for the next save
                _remove_ours(path, name)
            _step(f"removed:{name}")
        _durable.fsync_dir(path)


# --- save -----------------------------------------------------------------------------------


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    if depth > 100:
        raise ValueError(f"save: `metadata` is nested more than 100 levels deep at {where}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"save: `metadata` keys must be str, got {type(key).__name__} {key!r} "
                    f"in {where}"
                )
            _check_json(item, f"{where}[{key!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"save: `metadata` must hold finite numbers, got {where} = {value!r}")
    elif value is not None and not isinstance(value, (str, bool, int)):
        raise TypeError(
            "save: `metadata` must hold only JSON values (dict, list, str, int, float, bool, "
            f"None), got {where} = {type(value).__name__} {value!r}"
        )


def _model_record(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from jaxce.models import Ensemble, SmallNet

    if not isinstance(model, (SmallNet, Ensemble)):
        raise TypeError(
            f"save: `model` must be a SmallNet or an Ensemble, got {type(model).__name__}"
        )
    ensemble = isinstance(model, Ensemble)
    record = {
        "kind": "ensemble" if ensemble else "smallnet",
        "num_members": model.num_members if ensemble else 1,
        "in_features": model.in_features,
        "hidden_features": model.hidden_features,
        "out_features": model.out_features,
        "init": model.init,
    }
    net = model.members if ensemble else model
    arrays = {
        "fc1.kernel": net.fc1.kernel[...],
        "fc1.bias": net.fc1.bias[...],
        "fc2.kernel": net.fc2.kernel[...],
        "fc2.bias": net.fc2.bias[...],
    }
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, shape in _shapes(record).items():
        if arrays[name].dtype != np.float32 or arrays[name].shape != shape:
            raise ValueError(
                f"save: the model's `{name}` is {arrays[name].dtype}{list(arrays[name].shape)}, "
                f"expected float32{list(shape)} for its sizes"
            )
    return record, arrays


def save(
    model: Any, directory: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Saves a SmallNet or Ensemble as a jaxce checkpoint, crash-safely.

    ``directory`` must not exist, be empty, or hold a jaxce checkpoint, which is
    replaced atomically: at every instant of the save (a crash, ``SIGKILL`` or
    Ctrl-C included) ``directory`` restores to the old model or the new one. Any
    other content is refused, never deleted. See the module docstring for the
    protocol and the layout.

    Args:
      model: the model to save.
      directory: the checkpoint directory (created with its parents if missing).
      metadata: optional JSON object (str keys; dicts, lists, str, int, finite
        float, bool, None) stored with it and returned by :func:`restore`.

    Returns:
      The checkpoint's absolute path.

    Raises:
      TypeError: ``model`` is not a SmallNet/Ensemble, or ``metadata`` is not a
        JSON object.
      FileExistsError, NotADirectoryError, PermissionError: as
        :func:`check_save_directory`, or another save to it is in progress.

    Examples:
      >>> import tempfile, pathlib
      >>> from flax import nnx
      >>> from jaxce.models import SmallNet
      >>> from jaxce.checkpoint import save, restore
      >>> path = save(SmallNet(rngs=nnx.Rngs(0)), pathlib.Path(tempfile.mkdtemp()) / "ck",
      ...             metadata={"dataset": "blobs"})
      >>> model, meta = restore(path)
      >>> type(model).__name__, meta["dataset"]
      ('SmallNet', 'blobs')
    """
    record, arrays = _model_record(model)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"save: `metadata` must be a dict (a JSON object) or None, got "
            f"{type(metadata).__name__} {metadata!r}"
        )
    _check_json(metadata, "metadata")
    user = json.loads(json.dumps(dict(metadata), allow_nan=False))
    path = check_save_directory(directory)
    _write(path, arrays, record, user)
    return path


# --- restore ----------------------------------------------------------------------------


def _build(model: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    """The model, from already checked arrays: one abstract SmallNet, filled in."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxce.models import Ensemble, SmallNet

    sizes = (model["in_features"], model["hidden_features"], model["out_features"])
    init = model["init"]
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: SmallNet(*sizes, rngs=nnx.Rngs(0), init=init))
    )
    nnx.replace_by_pure_dict(
        state,
        {
            layer: {part: jnp.asarray(arrays[f"{layer}.{part}"]) for part in ("kernel", "bias")}
            for layer in ("fc1", "fc2")
        },
    )
    net = nnx.merge(graphdef, state)
    if model["kind"] == "smallnet":
        return net
    # A one-member abstract Ensemble, given the stored stacked members: building K
    # members one by one would cost time linear in a number read from the manifest.
    ensemble = nnx.eval_shape(lambda: Ensemble(1, *sizes, init=init))
    ensemble.members = net
    ensemble.num_members = model["num_members"]
    return ensemble


def restore(directory: str | os.PathLike) -> tuple[Any, dict]:
    """Restores a model saved by :func:`save`, after checking every file.

    Everything is validated before anything is built (see the module docstring),
    so time and memory are bounded by the bytes stored.

    Args:
      directory: the checkpoint directory.

    Returns:
      ``(model, metadata)``: a SmallNet or Ensemble, and the user metadata dict.

    Raises:
      FileNotFoundError: no such directory.
      CheckpointError: (a ValueError) the directory is not a jaxce checkpoint, or
        is damaged; the message names the file and what is wrong.

    Examples:
      >>> from jaxce.checkpoint import restore
      >>> restore("/nonexistent/checkpoint")
      Traceback (most recent call last):
      ...
      FileNotFoundError: restore: no checkpoint at '/nonexistent/checkpoint' ...
    """
    path = _as_path("restore", directory)
    if not path.is_dir():
        raise FileNotFoundError(
            f"restore: no checkpoint at {str(path)!r} (save one with `jaxce train --save DIR`)"
        )
    if not os.path.lexists(path / MANIFEST) and is_v1(path):
        model, arrays, user = read_v1(path)  # jaxce 0.1's orbax layout, read-only
        return _build(model, arrays), user
    doc = load_manifest(path)
    arrays = {name: load_array(path, doc, name) for name in ARRAYS}
    return _build(doc["model"], arrays), doc["user"]
