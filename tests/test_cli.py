"""The ``jaxce`` command line, run in subprocesses as a user would (plus in-process error paths)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxce.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "jaxce", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def floats_after(label, text):
    return [float(v) for v in re.findall(re.escape(label) + r"\s*([-0-9.e]+)", text)]


def test_demo_walks_through_the_notebook(torch):
    proc = run("demo", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    # The notebook's numbers, printed exactly as the seed notebook prints them.
    assert "Loss: 0.3774033188819885" in out
    for label in (
        "Loss (softmax + log + NLL):",
        "Loss (log_softmax + nll_loss):",
        "Loss (cross_entropy):",
    ):
        assert f"{label} 1.8615424633026123" in out
    # SmallNet's logits and probabilities: 2 rows of 3, the probabilities summing to 1.
    probs = out.split("Probabilities:\n", 1)[1].split("\n\n", 1)[0]
    rows = [[float(v) for v in r.strip(" []").split()] for r in probs.strip().splitlines()]
    assert len(rows) == 2 and all(len(r) == 3 and abs(sum(r) - 1) < 1e-5 for r in rows)
    # The torch port, side by side, agrees to float32 rounding.
    (d_logits, d_probs) = re.search(
        r"max \|torch - jaxce\|: logits ([0-9.e+-]+), probabilities ([0-9.e+-]+)", out
    ).groups()
    assert float(d_logits) <= 1e-6 and float(d_probs) <= 1e-6
    # Training and the evaluation report.
    assert "# Evaluation on the held-out split" in out
    accuracy = floats_after("accuracy:", out)[0]
    assert 0.7 < accuracy <= 1.0
    assert "confusion matrix" in out
    assert floats_after("ensemble (mean-probability) accuracy:", out)[0] > 0.7
    assert re.search(r"demo finished in [0-9.]+ s", out)


def test_train_save_then_evaluate_load(tmp_path, capsys):
    try:
        import sklearn  # noqa: F401

        dataset = "wine"  # a real dataset: the model is sized from it (13 features)
    except ImportError:
        dataset = "blobs"
    ckpt = tmp_path / "ckpt"
    proc = run(
        "train",
        "--dataset",
        dataset,
        "--epochs",
        "10",
        "--ensemble",
        "2",
        "--label-smoothing",
        "0.1",
        "--save",
        str(ckpt),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert "saved checkpoint to" in proc.stdout and ckpt.is_dir()
    assert "member accuracy (K=2)" in proc.stdout
    trained = floats_after("\naccuracy:", proc.stdout)
    assert len(trained) == 1 and trained[0] > 0.8

    # Restored from disk in another process than the one that trained it.
    assert main(["evaluate", "--load", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "loaded ensemble of 2 SmallNets" in out
    assert f"held-out split of '{dataset}'" in out
    # The restored model gives the report printed right after training.
    assert floats_after("\naccuracy:", out) == trained

    if dataset == "wine":  # a dataset of another shape is refused in one line
        assert main(["evaluate", "--load", str(ckpt), "--dataset", "blobs"]) == 1
        err = capsys.readouterr().err
        assert "takes 13 features" in err and "'blobs' has 10 features" in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["train", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["train", "--dataset", "mnist"], 2, "unknown dataset 'mnist'; choose one of blobs"),
        (["evaluate", "--load", "/nonexistent/ckpt"], 1, "no checkpoint at '/nonexistent/ckpt'"),
    ],
    ids=["flag", "dataset", "checkpoint"],
)
def test_errors_are_one_line_without_traceback(args, code, message):
    proc = run(*args)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "argument --epochs: expected a positive integer in [1, "),
        (["train", "--label-smoothing", "1.5"], "expected a number in [0, 1], got '1.5'"),
        (
            ["train", "--ensemble", "two"],
            "--ensemble: expected a positive integer in [1, 1024], got 'two'",
        ),
        (["train", "--lr", "inf"], "argument --lr: expected a finite number > 0"),
        (["train", "--lr", "1e39"], "argument --lr: expected a finite number > 0"),
        (["train", "--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295]"),
        (["evaluate"], "the following arguments are required: --load"),
        (["fly"], "invalid choice: 'fly'"),
        ([], "the following arguments are required: {demo,train,evaluate}"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_failures_after_parsing_exit_1_with_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    # Refused before any training starts, and nothing is deleted.
    assert main(["train", "--save", str(tmp_path / "notes"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes" / "keep.txt").exists()
    assert main(["evaluate", "--load", str(tmp_path / "notes")]) == 1
    assert "is not a jaxce checkpoint" in capsys.readouterr().err


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).parent / "jaxce"
    if not script.exists():
        pytest.skip("jaxce is not installed as a console script in this environment")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "{demo,train,evaluate}" in proc.stdout


@pytest.mark.parametrize(
    "error", [RuntimeError("boom\nsecond line"), MemoryError(), TypeError("x")]
)
def test_unexpected_errors_are_still_one_line(monkeypatch, capsys, error):
    from jaxce import cli

    def failing(args):
        raise error

    monkeypatch.setattr(cli, "_train", failing)
    assert cli.main(["train", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"jaxce train: internal error: {type(error).__name__}"), err
    assert "Traceback" not in err
