"""The language-model example (examples/lm) in a tiny configuration, so that it never rots.

Both heads (materialised logits + cross_entropy, and linear_cross_entropy), tied and
untied, from the same seed on the same batches, must give the same loss at every step;
the tied table stored (D, V) must give the same losses as (V, D); and the fused runs on
a simulated 2×4 data×vocab mesh (its own process) must match the single-device run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("tokenizers")

LM_DIR = Path(__file__).resolve().parents[1] / "examples" / "lm"
sys.path.insert(0, str(LM_DIR))

import corpus  # noqa: E402
import train  # noqa: E402

TINY = [
    "--vocab", "384", "--d-model", "32", "--layers", "1", "--heads", "2", "--seq-len", "32",
    "--batch", "4", "--steps", "4", "--eval-every", "4", "--eval-batches", "1",
    "--max-docs", "150", "--warmup", "1", "--lr", "1e-2",
]  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser()
    train.add_args(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("lm-cache"))
    args = parse([*TINY, "--cache-dir", cache])
    data, train_packed, held_packed = train.load_data(args)
    hist = train.train(
        train.ALL_RUNS, args, train_packed, held_packed, data.vocab_size, log=lambda *a: None
    )
    return args, data, (train_packed, held_packed), hist


def test_pack_marks_padding_and_document_starts_ignored():
    docs = [np.array([5, 6, 7]), np.array([8, 9]), np.array([1, 2, 3, 4, 5, 6])]
    out = corpus.pack(docs, 4, pad_id=0, ignore_index=-100)  # rows of 5 tokens
    # [5 6 7 8 9] | [1 2 3 4 5] | [6 pad pad pad pad]
    np.testing.assert_array_equal(out["inputs"], [[5, 6, 7, 8], [1, 2, 3, 4], [6, 0, 0, 0]])
    np.testing.assert_array_equal(
        out["targets"], [[6, 7, -100, 9], [2, 3, 4, 5], [-100, -100, -100, -100]]
    )
    np.testing.assert_array_equal(out["segments"], [[1, 1, 1, 2], [1, 1, 1, 1], [1, 0, 0, 0]])


def test_corpus_is_real_text_and_split_is_stable(tiny):
    _, data, (train_packed, held_packed), _ = tiny
    assert data.vocab_size == 384
    assert data.train and data.heldout
    # byte-level BPE round-trips each document exactly; each ends with EOS
    docs = corpus.documents(150)
    train_texts = [text for name, text in docs if not corpus.is_heldout(name, 0.05)]
    assert len(train_texts) == len(data.train) and len(data.heldout) == len(docs) - len(data.train)
    for ids, text in zip(data.train[:5], train_texts[:5], strict=True):
        assert ids[-1] == data.eos_id
        assert data.tokenizer.decode([int(t) for t in ids[:-1]]) == text
    assert docs[0][0].startswith("topic:")
    for packed in (train_packed, held_packed):
        ignored = packed["targets"] == -100
        assert ignored.any() and not ignored.all()
        assert (packed["segments"][ignored.all(axis=1)] <= 1).all()


def test_heads_agree_step_by_step(tiny):
    args, _, _, hist = tiny
    for tying in ("tied", "untied"):
        mat, fused = hist[f"materialised-{tying}"], hist[f"fused-{tying}"]
        assert len(mat.loss) == len(fused.loss) == args.steps
        assert np.all(np.isfinite(mat.loss))
        np.testing.assert_allclose(fused.loss, mat.loss, rtol=2e-6, err_msg=tying)
        np.testing.assert_allclose(
            [v for _, v in fused.heldout], [v for _, v in mat.heldout], rtol=2e-6
        )
        assert [s for s, _ in mat.heldout] == [4]
        # the steps do train: the losses are not all equal
        assert np.ptp(mat.loss) > 1e-3
    # tied and untied are different models
    assert not np.allclose(hist["fused-tied"].loss[1:], hist["fused-untied"].loss[1:])
    for h in hist.values():
        assert h.temp_bytes > 0
        assert h.hlo_transposes == [] or h.run.tied


def test_tied_table_stored_dv_gives_the_same_losses(tiny):
    args, data, packed, hist = tiny
    no_eval = argparse.Namespace(**{**vars(args), "eval_batches": 0})
    run = train.RunSpec("fused", True, "dv")
    out = train.train([run], no_eval, *packed, data.vocab_size, log=lambda *a: None)
    assert run.name == "fused-tied-dv"
    np.testing.assert_allclose(out[run.name].loss, hist["fused-tied"].loss, rtol=2e-6)
    assert out[run.name].hlo_transposes == []


def test_sharded_run_matches_single_device(tiny, tmp_path):
    args, _, _, hist = tiny
    out = tmp_path / "sharded.json"
    cmd = [sys.executable, str(LM_DIR / "sharded.py"), *train.config_argv(args), "--mesh", "2x4"]
    cmd += ["--runs", "fused-tied,fused-untied", "--json", str(out), "--eval-batches", "0"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(out.read_text())
    assert sorted(sharded) == ["fused-tied", "fused-untied"]
    for name, losses in sharded.items():
        np.testing.assert_allclose(losses, hist[name].loss, rtol=1e-5, err_msg=name)


def test_bfloat16_compute_with_remat_heads_agree(tiny):
    """bfloat16 compute (float32 parameters and optimizer state) under jax.checkpoint."""
    args, data, packed, hist = tiny
    opts = {**vars(args), "eval_batches": 0, "dtype": "bfloat16", "remat": True, "steps": 2}
    bf16 = argparse.Namespace(**opts)
    runs = [train.RunSpec("materialised", True), train.RunSpec("fused", True)]
    # flax's LayerNorm promotes bfloat16 with float32 itself (nnx/nn/normalization.py),
    # which the suite's strict promotion refuses
    with jax.numpy_dtype_promotion("standard"):
        out = train.train(runs, bf16, *packed, data.vocab_size, log=lambda *a: None)
    mat, fused = out["materialised-tied"].loss, out["fused-tied"].loss
    assert np.all(np.isfinite(mat))
    # both read the same bfloat16 hidden states and table; the sums are float32 in both
    np.testing.assert_allclose(fused, mat, rtol=2e-3)
    # and near the float32 run (bfloat16 rounding of a 1-layer model)
    np.testing.assert_allclose(fused, hist["fused-tied"].loss[:2], rtol=2e-2)
    assert not np.allclose(fused, hist["fused-tied"].loss[:2], rtol=1e-7, atol=0)
