"""Training (the jitted step against torch's Adam, fit, ensembles), checkpoints, datasets."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxce
from jaxce.data import DATASETS, load_dataset, make_blobs
from jaxce.models import Ensemble, SmallNet, from_torch, to_state_dict
from jaxce.train import default_optimizer, fit, make_train_step, restore, save


def params_of(model):
    return to_state_dict(model)


def assert_same_params(a, b, **tol):
    pa, pb = params_of(a), params_of(b)
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], err_msg=key, **tol)


@pytest.fixture(scope="module")
def blobs():
    return load_dataset("blobs")


# --- the train step ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"weight": (0.5, 2.0, 1.0), "label_smoothing": 0.2}],
    ids=["plain", "weight+smoothing"],
)
def test_train_step_matches_torch_adam_and_ignores_padding(torch, blobs, options):
    """Three Adam steps on a batch whose last rows are padding (ignore_index) give the
    parameters torch's Adam gives on the same batch without those rows."""
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.fc1, net.fc2 = torch.nn.Linear(10, 5), torch.nn.Linear(5, 3)
    model = from_torch(net.state_dict())
    x, y = blobs.x_train[:32].copy(), blobs.y_train[:32].copy()
    x[27:] = 1e3  # padding rows: whatever their features, they must not count
    y[27:] = -100

    t_opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    t_opts = {"label_smoothing": options.get("label_smoothing", 0.0)}
    if "weight" in options:
        t_opts["weight"] = torch.tensor(options["weight"])
    tx_, ty_ = torch.from_numpy(x[:27]), torch.from_numpy(y[:27]).long()
    for _ in range(3):
        t_opt.zero_grad()
        logits = net.fc2(torch.relu(net.fc1(tx_)))
        t_loss = torch.nn.functional.cross_entropy(logits, ty_, **t_opts)
        t_loss.backward()
        t_opt.step()

    graphdef, params = nnx.split(model)
    tx = default_optimizer(1e-2)
    step = make_train_step(graphdef, tx, **options)
    opt_state = tx.init(params)
    for _ in range(3):
        params, opt_state, metrics = step(params, opt_state, x, y)
    nnx.update(model, params)
    ours = params_of(model)
    for key, value in net.state_dict().items():
        np.testing.assert_allclose(ours[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert int(metrics[2]) == 27  # rows counted
    # metrics[0] is the loss before the third update: recompute it from torch's side.
    assert np.isfinite(float(metrics[0]))


def test_make_train_step_validates_options():
    graphdef, _ = nnx.split(SmallNet(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="weight"):
        make_train_step(graphdef, default_optimizer(), weight=np.ones((3, 3), np.float32))
    with pytest.raises(TypeError, match="label_smoothing"):
        make_train_step(graphdef, default_optimizer(), label_smoothing="0.1")


def one_hot_net():
    """A SmallNet whose logits are relu(x[:3]): a row's prediction is chosen by its features."""
    w1 = np.zeros((5, 10), np.float32)
    w1[:3, :3] = np.eye(3)
    w2 = np.zeros((3, 5), np.float32)
    w2[:, :3] = np.eye(3)
    zeros = np.zeros
    return from_torch(
        {
            "fc1.weight": w1,
            "fc1.bias": zeros(5, np.float32),
            "fc2.weight": w2,
            "fc2.bias": zeros(3, np.float32),
        }
    )


def test_train_step_correct_count_leaves_out_rows_of_an_ignored_real_class():
    """With ignore_index=1 (a real class), rows labelled 1 that the net predicts as 1 are
    neither counted nor correct; only the other labelled rows are."""
    graphdef, params = nnx.split(one_hot_net())
    pred = np.array([0, 1, 1, 2, 1, 0, 2, 2])
    y = np.array([0, 1, 1, 0, 1, 2, 2, 0], np.int32)  # rows 1, 2, 4: class 1, ignored
    x = np.zeros((8, 10), np.float32)
    x[np.arange(8), pred] = 3.0
    tx = optax.sgd(0.1)
    step = make_train_step(graphdef, tx, ignore_index=1)
    _, _, metrics = step(params, tx.init(params), x, y)
    kept = y != 1
    assert int(metrics[2]) == kept.sum() == 5
    assert int(metrics[1]) == np.sum((pred == y) & kept) == 2  # rows 0 and 6
    # The loss is the mean over the kept rows only.
    expected = jaxce.cross_entropy(one_hot_net()(x[kept]), y[kept])
    np.testing.assert_allclose(float(metrics[0]), float(expected), rtol=1e-6)


# --- fit ---------------------------------------------------------------------------------


def test_fit_learns_the_embedded_dataset(blobs):
    model = SmallNet(rngs=nnx.Rngs(0))
    result = fit(
        model,
        blobs.x_train,
        blobs.y_train,
        epochs=4,
        eval_data=(blobs.x_test, blobs.y_test),
        eval_every=2,
        progress=False,
    )
    assert result.model is model
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert "test_accuracy" in result.history[1] and "test_accuracy" not in result.history[0]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    majority = np.bincount(blobs.y_test).max() / len(blobs.y_test)
    assert result.report.accuracy > majority + 0.2
    # The report describes the returned (trained) model.
    preds = np.asarray(model(blobs.x_test)).argmax(axis=1)
    assert result.report.accuracy == pytest.approx(np.mean(preds == blobs.y_test))


def test_ensemble_trains_like_its_members_one_by_one(blobs):
    x, y = blobs.x_train[:200], blobs.y_train[:200]
    ens = fit(Ensemble(3, seed=5), x, y, epochs=2, progress=False).model
    for i in range(3):
        single = fit(SmallNet(rngs=nnx.Rngs(5 + i)), x, y, epochs=2, progress=False).model
        assert_same_params(ens.member(i), single, rtol=1e-4, atol=1e-5)


def test_rows_labelled_ignore_index_have_no_influence(blobs):
    x, y = blobs.x_train[:150].copy(), blobs.y_train[:150].copy()
    y[::7] = -100
    x_other = x.copy()
    x_other[::7] = np.random.default_rng(0).normal(size=x[::7].shape) * 100
    options = {
        "epochs": 2,
        "weight": np.array([1.0, 2.0, 0.5], np.float32),
        "label_smoothing": 0.1,
        "progress": False,
    }
    a = fit(SmallNet(rngs=nnx.Rngs(1)), x, y, **options)
    b = fit(SmallNet(rngs=nnx.Rngs(1)), x_other, y, **options)
    assert_same_params(a.model, b.model, rtol=0, atol=0)
    assert np.isfinite(a.history[-1]["loss"])


def per_example_losses(logits, y):
    """Plain NumPy cross-entropy of each row (float64)."""
    z = np.asarray(logits, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=-1))
    return lse - np.take_along_axis(shifted, y[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("kind", ["smallnet", "weighted", "ensemble"])
def test_epoch_loss_and_accuracy_are_means_over_the_epochs_examples(blobs, kind):
    """10 rows in batches of 4 (the last holds 2 rows and 2 padding rows): the history's
    loss and accuracy are the means over the 10 examples, not means of the 3 batch means.
    The parameters are held fixed (optax.set_to_zero) so the truth is computable."""
    x, y = blobs.x_train[:10], blobs.y_train[:10]
    weight = np.array([0.3, 2.0, 1.0], np.float32) if kind == "weighted" else None
    model = Ensemble(2, seed=4) if kind == "ensemble" else SmallNet(rngs=nnx.Rngs(4))
    logits = np.asarray(model(x))  # (10, 3), or (2, 10, 3) for the ensemble
    result = fit(
        model,
        x,
        y,
        epochs=2,
        batch_size=4,
        optimizer=optax.set_to_zero(),
        weight=weight,
        progress=False,
    )
    losses = per_example_losses(logits, np.broadcast_to(y, logits.shape[:-1]))
    w = np.ones(3) if weight is None else weight.astype(np.float64)
    expected_loss = np.mean(np.sum(losses * w[y], axis=-1) / np.sum(w[y]))
    expected_accuracy = np.mean(np.mean(logits.argmax(axis=-1) == y, axis=-1))
    for record in result.history:
        assert record["loss"] == pytest.approx(expected_loss, rel=1e-6)
        assert record["accuracy"] == pytest.approx(expected_accuracy, rel=1e-12)


def test_fit_steps_with_zero_gradient_on_a_batch_without_weight(blobs):
    """A batch whose rows all have class weight 0 has a 0/0 mean loss; it must not turn the
    parameters into NaN, and the epoch loss is the mean over the rows that have weight."""
    x, y = blobs.x_train[:8], np.array([0, 0, 0, 0, 1, 2, 1, 2], np.int32)
    weight = np.array([0.0, 1.0, 1.0], np.float32)
    model = SmallNet(rngs=nnx.Rngs(0))
    # Batches of 4 in a seeded order: find a seed whose first batch is all class 0.
    seed = next(s for s in range(500) if set(y[np.random.default_rng(s).permutation(8)[:4]]) == {0})
    result = fit(model, x, y, epochs=1, batch_size=4, weight=weight, seed=seed, progress=False)
    assert all(np.isfinite(v).all() for v in to_state_dict(model).values())
    assert np.isfinite(result.history[0]["loss"])


def test_fit_shows_a_progress_bar(blobs, capsys):
    fit(
        SmallNet(rngs=nnx.Rngs(0)),
        blobs.x_train[:64],
        blobs.y_train[:64],
        epochs=2,
        eval_data=(blobs.x_test, blobs.y_test),
    )
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "loss" in out and "acc" in out and "test acc" in out


def test_fit_validates_its_inputs(blobs):
    model = SmallNet(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"shape \(N, 10\).*\(5, 4\)"):
        fit(model, np.zeros((5, 4), np.float32), np.zeros(5, np.int32), progress=False)
    y = blobs.y_train[:8].copy()
    y[3] = 7
    with pytest.raises(ValueError, match="label 7 at position 3"):
        fit(model, blobs.x_train[:8], y, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, blobs.x_train[:8], blobs.y_train[:8], epochs=0, progress=False)
    with pytest.raises(TypeError, match="SmallNet or an Ensemble"):
        fit(object(), blobs.x_train[:8], blobs.y_train[:8], progress=False)


# --- checkpoints (jaxce.checkpoint, re-exported by jaxce.train) ---------------------------


def test_save_and_restore_smallnet(tmp_path):
    model = SmallNet(7, 6, 4, rngs=nnx.Rngs(3))
    path = save(model, tmp_path / "ckpt", metadata={"dataset": "blobs", "seed": 3})
    restored, meta = restore(path)
    assert isinstance(restored, SmallNet) and meta == {"dataset": "blobs", "seed": 3}
    assert (restored.in_features, restored.hidden_features, restored.out_features) == (7, 6, 4)
    assert_same_params(restored, model, rtol=0, atol=0)
    # Saving again over a checkpoint replaces it.
    other = SmallNet(7, 6, 4, rngs=nnx.Rngs(4))
    save(other, path)
    assert_same_params(restore(path)[0], other, rtol=0, atol=0)


def test_save_and_restore_ensemble(tmp_path):
    ens = Ensemble(3, 10, 5, 3, seed=2)
    restored, meta = restore(save(ens, tmp_path / "ens"))
    assert isinstance(restored, Ensemble) and restored.num_members == 3 and meta == {}
    x = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(ens(x)))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        restore(tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a jaxce checkpoint"):
        restore(tmp_path / "notes")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save(SmallNet(rngs=nnx.Rngs(0)), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(TypeError, match="JSON"):
        save(SmallNet(rngs=nnx.Rngs(0)), tmp_path / "bad", metadata={"x": object()})


# --- datasets ----------------------------------------------------------------------------


def test_embedded_datasets_are_seeded_split_and_standardised():
    a, b, c = load_dataset("blobs"), load_dataset("blobs"), load_dataset("blobs", seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert (a.num_features, a.num_classes) == (10, 3)
    assert len(a.y_train) + len(a.y_test) == 1500 and len(a.y_test) == 300
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(a.x_train.std(axis=0), 1, atol=1e-4)
    # The split is a partition of the generated data: standardisation undone, rows match.
    x, y = make_blobs(seed=0)
    assert sorted(np.bincount(y).tolist()) == sorted(
        (np.bincount(a.y_train, minlength=3) + np.bincount(a.y_test, minlength=3)).tolist()
    )
    teacher = load_dataset("teacher")
    assert teacher.num_classes == 3 and min(np.bincount(teacher.y_train)) > 50


def test_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of blobs, teacher"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("blobs", test_fraction=1.5)


def test_scikit_learn_datasets_size_the_model():
    pytest.importorskip("sklearn")
    digits = load_dataset("digits")
    assert (digits.num_features, digits.num_classes) == (64, 10)
    assert np.isfinite(digits.x_train).all()  # constant pixels do not divide by zero
    wine = load_dataset("wine")
    assert (wine.num_features, wine.num_classes) == (13, 3)
    assert len(wine.y_train) + len(wine.y_test) == 178
    np.testing.assert_allclose(wine.x_train.mean(axis=0), 0, atol=1e-5)
    # (tests/test_cli.py trains and evaluates a SmallNet sized from wine through the CLI.)


def test_every_listed_dataset_loads_or_says_what_is_missing():
    for name in DATASETS:
        try:
            ds = load_dataset(name)
        except ImportError as e:
            assert "jaxce[datasets]" in str(e)
            continue
        assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
        assert set(np.unique(ds.y_train)) <= set(range(ds.num_classes))
        assert jax.numpy.asarray(ds.x_test).shape[1] == ds.num_features
