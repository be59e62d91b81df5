"""Text, tokenizer and packed batches for the language-model example.

The text ships with the Python interpreter, so nothing is downloaded: the
reference-manual topics in ``pydoc_data.topics`` (what ``help("with")`` shows) and
the docstrings of the standard library's modules, classes and functions, read with
:mod:`ast` from the source files (nothing is imported, so no module's import-time
side effects run).

A byte-level BPE tokenizer is trained on that text with Hugging Face ``tokenizers``
and cached, with the token ids of every document, under ``cache_dir`` (keyed by the
Python version, the vocabulary size and the text's hash), so only the first run pays
for it. Documents are split into train / held-out by a hash of their name (stable
across runs and machines), and packed whole into rows of ``seq_len + 1`` tokens; the
rest of a row is padding, whose targets are ``ignore_index``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import itertools
import os
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_CHARS = 40  # shorter docstrings ("Return self.") are mostly noise


def documents(limit: int | None = None) -> list[tuple[str, str]]:
    """``(name, text)`` pairs: the pydoc topics, then stdlib docstrings, in a fixed order.

    ``limit`` keeps the first ``limit`` (and reads no further source files).
    """
    return list(itertools.islice(_documents(), limit))


def _documents() -> Iterator[tuple[str, str]]:
    import pydoc_data.topics

    for k, v in sorted(pydoc_data.topics.topics.items()):
        yield f"topic:{k}", v
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for fname in sorted(filenames):
            if fname.endswith(".py"):
                path = Path(dirpath, fname)
                yield from _docstrings(path, path.relative_to(root).as_posix())


def _docstrings(path: Path, rel: str) -> Iterator[tuple[str, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return  # a few files are templates or Python-2 era leftovers
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_CHARS:
            yield f"{rel}:{getattr(node, 'name', '')}:{getattr(node, 'lineno', 0)}", doc


def is_heldout(name: str, fraction: float) -> bool:
    """A stable split by document name (not by position, which would follow the tree walk)."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return h / 2**64 < fraction


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on ``texts``; ids 0 and 1 are EOS and PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxce-examples-lm"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Corpus:
    """The tokenizer, and the token ids of the train and held-out documents.

    Attributes:
      tokenizer: the ``tokenizers.Tokenizer``.
      vocab_size: its vocabulary size (the model's ``V``).
      train, heldout: lists of int32 arrays, one per document, each ending with EOS.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        heldout_fraction: float = 0.05,
        max_docs: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        docs = documents(max_docs)
        texts = [t for _, t in docs]
        digest = hashlib.sha256()
        for name, text in docs:
            digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        key = (
            f"py{sys.version_info[0]}{sys.version_info[1]}-v{vocab_size}-{digest.hexdigest()[:16]}"
        )
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        tok_path, ids_path = cache / f"{key}.tokenizer.json", cache / f"{key}.ids.npz"
        from tokenizers import Tokenizer

        if tok_path.is_file() and ids_path.is_file():
            self.tokenizer = Tokenizer.from_file(str(tok_path))
            with np.load(ids_path) as z:
                flat, offsets = z["flat"], z["offsets"]
        else:
            self.tokenizer = train_tokenizer(texts, vocab_size)
            eos = self.tokenizer.token_to_id(EOS)
            ids = [e.ids + [eos] for e in self.tokenizer.encode_batch(texts)]
            offsets = np.cumsum([0] + [len(i) for i in ids])
            flat = np.concatenate([np.asarray(i, np.int32) for i in ids])
            _atomic_write(tok_path, self.tokenizer.to_str().encode())
            buf = io.BytesIO()
            np.savez(buf, flat=flat, offsets=offsets)
            _atomic_write(ids_path, buf.getvalue())
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.eos_id = self.tokenizer.token_to_id(EOS)
        self.pad_id = self.tokenizer.token_to_id(PAD)
        split = [is_heldout(name, heldout_fraction) for name, _ in docs]
        arrays = [flat[offsets[i] : offsets[i + 1]] for i in range(len(docs))]
        self.train = [a for a, h in zip(arrays, split, strict=True) if not h]
        self.heldout = [a for a, h in zip(arrays, split, strict=True) if h]
        self.num_chars = sum(len(t) for t in texts)

    def describe(self) -> str:
        ntrain = sum(len(a) for a in self.train)
        nheld = sum(len(a) for a in self.heldout)
        return (
            f"{len(self.train) + len(self.heldout)} documents, {self.num_chars / 1e6:.1f} M chars; "
            f"BPE vocabulary {self.vocab_size}; {ntrain / 1e6:.2f} M train tokens, "
            f"{nheld / 1e3:.0f} k held-out tokens"
        )


def pack(
    docs: list[np.ndarray], seq_len: int, pad_id: int, *, ignore_index: int = -100
) -> dict[str, np.ndarray]:
    """Pack whole documents into rows of ``seq_len + 1`` tokens, first fit in order.

    A document longer than a row is cut into row-sized pieces. Returns int32 arrays of
    shape ``(rows, seq_len)``: ``inputs``, ``targets`` (the next token, or
    ``ignore_index`` on padding and where the next token starts another document) and
    ``segments`` (1, 2, ... per document in the row, 0 on padding) for the attention
    mask, so that a document attends only to itself.
    """
    width = seq_len + 1
    pieces = [d[i : i + width] for d in docs for i in range(0, len(d), width)]
    rows: list[list[np.ndarray]] = []
    fill = 0
    for p in pieces:
        if not rows or fill + len(p) > width:
            rows.append([])
            fill = 0
        rows[-1].append(p)
        fill += len(p)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    segs = np.zeros((len(rows), width), np.int32)
    for r, row in enumerate(rows):
        at = 0
        for s, p in enumerate(row, start=1):
            tokens[r, at : at + len(p)] = p
            segs[r, at : at + len(p)] = s
            at += len(p)
    targets = tokens[:, 1:].copy()
    same_doc = (segs[:, 1:] == segs[:, :-1]) & (segs[:, 1:] > 0)
    targets[~same_doc] = ignore_index
    return {"inputs": tokens[:, :-1], "targets": targets, "segments": segs[:, :-1]}


def batches(packed: dict[str, np.ndarray], batch_size: int, seed: int) -> Iterator[dict]:
    """Endless shuffled batches of ``batch_size`` rows (a fresh permutation every epoch)."""
    rng = np.random.default_rng(seed)
    n = len(packed["inputs"])
    if n < batch_size:
        raise ValueError(f"batches: {n} packed rows < batch_size={batch_size}")
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = np.sort(perm[i : i + batch_size])
            yield {k: v[idx] for k, v in packed.items()}
