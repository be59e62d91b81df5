"""The on-disk format of a jaxce checkpoint, and the checks :func:`jaxce.checkpoint.restore`
makes before it builds anything: the manifest's size, JSON, self-checksum and schema, then
each array file's type, size, SHA-256 and ``.npy`` header. See :mod:`jaxce.checkpoint`.

Only NumPy is imported at module level (the writer in a test child runs without jax).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import pathlib
import re
import stat
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

FORMAT = "jaxce-checkpoint"
VERSION = 2
MANIFEST = "jaxce-checkpoint.json"
ARRAYS = ("fc1.kernel", "fc1.bias", "fc2.kernel", "fc2.bias")
FILES = tuple(f"{name}.npy" for name in ARRAYS)
KINDS = ("smallnet", "ensemble")
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_SIZE = 2**31 - 1  # bound on every size and on the member count
_MAX_NPY_HEADER = 4096
_DATA_RE = re.compile(r"jaxce-data-[0-9a-f]{32}\Z")
_TMP_RE = re.compile(r"jaxce-checkpoint\.json\.[0-9a-f]{32}\.tmp\Z")
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
_MODEL_KEYS = ("kind", "num_members", "in_features", "hidden_features", "out_features", "init")
_ARRAY_KEYS = ("file", "shape", "dtype", "size", "sha256")
_TOP_KEYS = ("format", "version", "data", "model", "arrays", "user", "sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored: not a jaxce checkpoint, or damaged.

    The message names the checkpoint, the file and what is wrong.
    """

    __module__ = "jaxce.checkpoint"  # where users import it from


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _damaged(path: pathlib.Path, file: str, what: str) -> CheckpointError:
    return CheckpointError(f"restore: damaged checkpoint {str(path)!r}: {file}: {what}")


def _read_bounded(file: pathlib.Path, limit: int) -> bytes:
    with open(file, "rb") as f:
        return f.read(limit + 1)


def _shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    i, h, o = model["in_features"], model["hidden_features"], model["out_features"]
    lead = (model["num_members"],) if model["kind"] == "ensemble" else ()
    return {
        "fc1.kernel": (*lead, i, h),
        "fc1.bias": (*lead, h),
        "fc2.kernel": (*lead, h, o),
        "fc2.bias": (*lead, o),
    }


def _is_int(value: Any, low: int, high: int) -> bool:
    return (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high
    )


def _check_keys(bad, where: str, value: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise bad(f"`{where}` must be a JSON object, got {type(value).__name__} {value!r:.80}")
    if set(value) != set(keys):
        missing = sorted(set(keys) - set(value))
        extra = sorted(set(value) - set(keys))
        parts = [f"missing keys {missing}"] * bool(missing) + [f"unexpected keys {extra}"] * bool(
            extra
        )
        raise bad(f"`{where}` has {' and '.join(parts)}")


def check_model(bad: Callable[[str], Exception], model: dict, prefix: str) -> None:
    """Checks the model record's values (its keys are checked already)."""
    if model["kind"] not in KINDS:
        raise bad(f"`{prefix}kind` must be one of {KINDS}, got {model['kind']!r:.80}")
    for key in _MODEL_KEYS[1:5]:
        if not _is_int(model[key], 1, MAX_SIZE):
            raise bad(f"`{prefix}{key}` must be an int in [1, {MAX_SIZE}], got {model[key]!r:.80}")
    if model["kind"] == "smallnet" and model["num_members"] != 1:
        raise bad(f"`{prefix}num_members` must be 1 for a smallnet, got {model['num_members']!r}")
    from jaxce.models import INITS

    if model["init"] not in INITS:
        raise bad(f"`{prefix}init` must be one of {INITS}, got {model['init']!r:.80}")


def load_manifest(path: pathlib.Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        names = os.listdir(path)
        if any(_DATA_RE.match(n) for n in names):
            hint = "; a save into it was interrupted before it completed, or it was removed"
        else:
            hint = ""
        raise CheckpointError(
            f"restore: {str(path)!r} is not a jaxce checkpoint (it has no {MANIFEST}{hint})"
        ) from None
    except OSError as e:
        raise _damaged(path, MANIFEST, f"cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _damaged(path, MANIFEST, "is not a regular file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise _damaged(
            path,
            MANIFEST,
            f"is {info.st_size} bytes, more than a manifest may hold ({MAX_MANIFEST_BYTES})",
        )
    try:
        raw = _read_bounded(file, MAX_MANIFEST_BYTES)
    except OSError as e:
        raise _damaged(path, MANIFEST, f"cannot be read ({e.strerror})") from None

    def bad(what: str) -> CheckpointError:
        return _damaged(path, MANIFEST, what)

    def no_constant(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError as e:
        raise bad(f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise bad(f"is not valid JSON ({e}); truncated or overwritten?") from None
    except RecursionError:
        raise bad("is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f'is not a jaxce manifest (no "format": {FORMAT!r})')
    if type(doc.get("version")) is not int or doc["version"] != VERSION:
        raise bad(
            f"has checkpoint version {doc.get('version')!r:.40}; this jaxce reads version {VERSION}"
        )
    digest = doc.pop("sha256", None)
    if not isinstance(digest, str) or hashlib.sha256(_canonical(doc)).hexdigest() != digest:
        raise bad("its checksum does not match its content: the file was altered or damaged")
    doc["sha256"] = digest
    _check_keys(bad, "manifest", doc, _TOP_KEYS)
    if not isinstance(doc["data"], str) or not _DATA_RE.match(doc["data"]):
        raise bad(f"`data` must name a jaxce-data-<32 hex> directory, got {doc['data']!r:.80}")
    model = doc["model"]
    _check_keys(bad, "model", model, _MODEL_KEYS)
    check_model(bad, model, "model.")
    if not isinstance(doc["user"], dict):
        raise bad(f"`user` must be a JSON object, got {type(doc['user']).__name__}")
    _check_keys(bad, "arrays", doc["arrays"], ARRAYS)
    for name, shape in _shapes(model).items():
        entry = doc["arrays"][name]
        _check_keys(bad, f"arrays.{name}", entry, _ARRAY_KEYS)
        if entry["file"] != f"{name}.npy" or entry["dtype"] != "float32":
            raise bad(
                f"`arrays.{name}` must be file {name}.npy of dtype float32, got "
                f"{entry['file']!r:.80} of {entry['dtype']!r:.40}"
            )
        if entry["shape"] != list(shape):
            raise bad(
                f"`arrays.{name}.shape` is {entry['shape']!r:.80}, but the model "
                f"({model['kind']}, {model['num_members']} member(s), sizes "
                f"{model['in_features']}/{model['hidden_features']}/{model['out_features']}) "
                f"needs {list(shape)}"
            )
        payload = 4 * math.prod(shape)
        if not _is_int(entry["size"], payload, payload + _MAX_NPY_HEADER):
            raise bad(
                f"`arrays.{name}.size` is {entry['size']!r:.40}, but a float32{list(shape)} "
                f".npy file takes {payload} bytes plus a header"
            )
        if not isinstance(entry["sha256"], str) or not _SHA_RE.match(entry["sha256"]):
            raise bad(f"`arrays.{name}.sha256` must be 64 hex digits, got {entry['sha256']!r:.80}")
    return doc


def load_array(path: pathlib.Path, doc: dict[str, Any], name: str) -> np.ndarray:
    entry = doc["arrays"][name]
    rel = f"{doc['data']}/{entry['file']}"
    file = path / doc["data"] / entry["file"]
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        raise _damaged(path, rel, "is missing") from None
    except OSError as e:
        raise _damaged(path, rel, f"cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _damaged(path, rel, "is not a regular file")
    size = entry["size"]
    if info.st_size != size:
        raise _damaged(
            path, rel, f"is {info.st_size} bytes, the manifest says {size} (truncated or replaced)"
        )
    try:
        raw = _read_bounded(file, size)
    except OSError as e:
        raise _damaged(path, rel, f"cannot be read ({e.strerror})") from None
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise _damaged(path, rel, "its SHA-256 does not match the manifest: the file is damaged")
    buffer = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(buffer, max_header_size=_MAX_NPY_HEADER)
    except (ValueError, TypeError, SyntaxError) as e:
        raise _damaged(path, rel, f"is not a valid .npy file ({e})".replace("\n", " ")) from None
    expected = tuple(entry["shape"])
    if shape != expected or fortran or dtype != np.dtype("<f4"):
        raise _damaged(
            path,
            rel,
            f"holds {dtype}{list(shape)}{' (Fortran order)' if fortran else ''}, "
            f"the manifest says little-endian float32{list(expected)}",
        )
    offset = buffer.tell()
    if size - offset != 4 * math.prod(expected):
        raise _damaged(path, rel, f"has {size - offset} bytes of data for float32{list(expected)}")
    return np.frombuffer(raw, dtype="<f4", offset=offset).reshape(expected)


def encode_manifest(body: dict[str, Any]) -> bytes:
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    text = json.dumps({**body, "sha256": digest}, indent=1, sort_keys=True, allow_nan=False)
    return (text + "\n").encode()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
