"""Reading the checkpoints of jaxce 0.1 (format version 1: an orbax-checkpoint
directory ``meta/`` + ``params/``), read-only, so that models saved then can be restored and
saved again in the current format.

The same rule as for version 2 holds: every check comes before anything is built, and every
failure is one :class:`~jaxce.checkpoint.CheckpointError`. The metadata (``meta/metadata``,
at most 1 MiB) is checked against the schema; each stored array is opened with tensorstore
(orbax's storage layer: zarr arrays in an OCDBT or plain-file store) and its shape and dtype
compared with what the model needs before any array is read. The arrays are stored
compressed, so their size is also bounded by the bytes on disk (at most 64 times, far above
what float32 weights compress to). tensorstore is called synchronously: orbax's asyncio
wrappers printed "Event loop is closed" tracebacks after a failed read. Errors are reduced to
their first line.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import stat
from typing import Any

import numpy as np

from jaxce._checkpoint_format import (
    _MODEL_KEYS,
    ARRAYS,
    CheckpointError,
    _damaged,
    _shapes,
    check_model,
)

META = "meta/metadata"
MAX_JSON_BYTES = 2**20
MAX_EXPANSION = 64
_REQUIRED = ("format", "version", "kind", "num_members", "in_features", "hidden_features")
_KEYS = (*_REQUIRED, "out_features", "init", "user")


def is_v1(path: pathlib.Path) -> bool:
    """Whether ``path`` looks like a version-1 (orbax) jaxce checkpoint."""
    return (path / "meta").is_dir() and (path / "params").is_dir()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [""]
    text = lines[0].split(" [tensorstore_spec=")[0]  # a kilobyte of JSON: not for a user
    return f"{type(error).__name__}: {text[:240] + '...' if len(text) > 240 else text}"


def _read_json(path: pathlib.Path, rel: str) -> Any:
    file = path / rel
    try:
        info = os.lstat(file)
        if not stat.S_ISREG(info.st_mode):
            raise _damaged(path, rel, "is not a regular file")
        if info.st_size > MAX_JSON_BYTES:
            raise _damaged(path, rel, f"is {info.st_size} bytes, more than {MAX_JSON_BYTES}")
        with open(file, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise _damaged(path, rel, "is missing") from None
    except OSError as e:
        raise _damaged(path, rel, f"cannot be read ({e.strerror})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _damaged(path, rel, f"is not valid JSON ({_first_line(e)})") from None
    return doc


def read_v1(path: pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
    """``(model record, arrays, user metadata)`` of a version-1 checkpoint, all checked."""

    def bad(what: str) -> CheckpointError:
        return _damaged(path, META, what)

    doc = _read_json(path, META)
    if not isinstance(doc, dict) or doc.get("format") != "jaxce-smallnet":
        raise bad("is not jaxce metadata (no \"format\": 'jaxce-smallnet')")
    if type(doc.get("version")) is not int or doc["version"] != 1:
        raise bad(f"has version {doc.get('version')!r:.40}, expected 1 beside meta/ and params/")
    missing = [k for k in (*_REQUIRED, "out_features") if k not in doc]
    extra = sorted(set(doc) - set(_KEYS))
    if missing or extra:
        parts = [f"missing keys {missing}"] * bool(missing)
        raise bad("has " + " and ".join(parts + [f"unexpected keys {extra}"] * bool(extra)))
    model = {key: doc.get(key, "torch") for key in _MODEL_KEYS}
    check_model(bad, model, "")
    user = doc.get("user", {})
    if not isinstance(user, dict):
        raise bad(f"`user` must be a JSON object, got {type(user).__name__}")
    shapes = _shapes(model)

    try:
        import tensorstore as ts
    except ImportError:
        raise CheckpointError(
            f"restore: {str(path)!r} is a checkpoint of jaxce 0.1 (orbax format); reading "
            "it needs tensorstore (pip install orbax-checkpoint)"
        ) from None
    params = path / "params"
    layout = _read_json(path, "params/_METADATA")  # how orbax stored them
    zarr3 = isinstance(layout, dict) and layout.get("use_zarr3") is True
    kvstore: dict[str, Any] = {"driver": "file", "path": f"{params}/"}
    if (params / "manifest.ocdbt").is_file():
        kvstore = {"driver": "ocdbt", "base": kvstore}
    stores = {}
    for name in ARRAYS:
        spec = {"driver": "zarr3" if zarr3 else "zarr", "kvstore": kvstore, "path": name}
        try:
            store = ts.open(spec, open=True, read=True).result()
            declared = (tuple(store.shape), np.dtype(store.dtype.numpy_dtype))
        except Exception as e:  # noqa: BLE001 (tensorstore raises several types)
            raise _damaged(path, "params", f"cannot open `{name}` ({_first_line(e)})") from None
        if declared != (shapes[name], np.dtype(np.float32)):
            raise _damaged(
                path,
                "params",
                f"stores `{name}` as {declared[1]}{list(declared[0])}, but {META} describes a "
                f"model that needs float32{list(shapes[name])}",
            )
        stores[name] = store
    stored = sum(f.stat().st_size for f in params.rglob("*") if f.is_file() and not f.is_symlink())
    wanted = sum(4 * math.prod(shape) for shape in shapes.values())
    if wanted > MAX_EXPANSION * stored + 2**20:
        raise _damaged(
            path,
            "params",
            f"declares {wanted} bytes of arrays in {stored} bytes on disk; refusing to "
            "decompress that much",
        )
    arrays = {}
    for name, store in stores.items():
        try:
            arrays[name] = np.asarray(store.read().result())
        except Exception as e:  # noqa: BLE001
            raise _damaged(path, "params", f"cannot read `{name}` ({_first_line(e)})") from None
    for name in ARRAYS:
        if arrays[name].shape != shapes[name] or arrays[name].dtype != np.float32:
            raise _damaged(
                path,
                "params",
                f"`{name}` read back as {arrays[name].dtype}"
                f"{list(arrays[name].shape)}, expected float32{list(shapes[name])}",
            )
    return model, arrays, user
