"""vmap-batched evaluation, per-example gradients and ensemble reports, against torch and
independent NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxce
from jaxce import evaluate as evaluate_fn
from jaxce.data import load_dataset
from jaxce.evaluation import _eval_batch, expected_calibration_error, per_example_grads
from jaxce.models import Ensemble, SmallNet, to_state_dict


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("blobs")
    return ds.x_test[:150], ds.y_test[:150]


def torch_logits(torch, model, x):
    sd = to_state_dict(model)
    h = torch.relu(
        torch.from_numpy(x) @ torch.from_numpy(sd["fc1.weight"]).T
        + torch.from_numpy(sd["fc1.bias"])
    )
    return h @ torch.from_numpy(sd["fc2.weight"]).T + torch.from_numpy(sd["fc2.bias"])


def confusion_reference(y, pred, c):
    out = np.zeros((c, c), np.int64)
    for t, p in zip(y, pred, strict=True):
        out[t, p] += 1
    return out


def test_jaxce_evaluate_is_the_function():
    assert jaxce.evaluate is evaluate_fn and callable(jaxce.evaluate)


@pytest.mark.parametrize(
    "options",
    [{}, {"weight": [0.3, 1.0, 2.5], "label_smoothing": 0.15}],
    ids=["plain", "weight+smoothing"],
)
def test_report_matches_torch_and_numpy(torch, data, options):
    x, y = data
    model = SmallNet(rngs=nnx.Rngs(3))
    j_opts = dict(options)
    t_opts = dict(options)
    if "weight" in options:
        j_opts["weight"] = np.asarray(options["weight"], np.float32)
        t_opts["weight"] = torch.tensor(options["weight"])
    report = jaxce.evaluate(model, x, y, batch_size=64, **j_opts)  # 150 = 64 + 64 + 22 (padded)

    logits = torch_logits(torch, model, x)
    yt = torch.from_numpy(y).long()
    F = torch.nn.functional
    per_example = F.cross_entropy(logits, yt, reduction="none", **t_opts).numpy()
    mean = F.cross_entropy(logits, yt, **t_opts).item()
    probs = torch.softmax(logits, dim=1).numpy()
    pred = probs.argmax(axis=1)

    np.testing.assert_allclose(report.per_example_loss, per_example, rtol=1e-5, atol=1e-6)
    assert report.loss == pytest.approx(mean, rel=1e-5)
    np.testing.assert_allclose(report.probabilities, probs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(report.predictions, pred)
    assert report.num_examples == 150
    assert report.accuracy == pytest.approx(np.mean(pred == y))
    np.testing.assert_array_equal(report.confusion, confusion_reference(y, pred, 3))
    assert report.ece == pytest.approx(expected_calibration_error(probs, y), abs=1e-6)
    assert report.member_accuracy is None


def test_expected_calibration_error_reference():
    # Two bins by hand: confidences 0.9 (correct), 0.8 (wrong), 0.55 and 0.6 (both correct).
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1])
    # bins of width 0.5: (0.5, 1.0] holds all four: |3 - 2.85| / 4
    assert expected_calibration_error(p, y, num_bins=2) == pytest.approx(0.15 / 4)
    # width 0.1: {0.9}: |1-0.9|; {0.8}: |0-0.8|; {0.55, 0.6}: |2-1.15|
    assert expected_calibration_error(p, y, num_bins=10) == pytest.approx((0.1 + 0.8 + 0.85) / 4)


class Logits(nnx.Module):
    """An evaluation model whose logits are its input: confidences can be placed exactly."""

    def __call__(self, x):
        return x


def ece_by_hand(probabilities, labels, num_bins):
    """Plain NumPy ECE, one bin at a time: bin k holds confidences c with
    edge(k) < c <= edge(k + 1), the edges k/M rounded to the confidences' dtype."""
    conf = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = [conf.dtype.type(k / num_bins) for k in range(num_bins + 1)]
    total = 0.0
    for k in range(num_bins):
        inside = (conf > edges[k]) & (conf <= edges[k + 1])
        if k == 0:
            inside |= conf <= edges[0]
        total += abs(float(correct[inside].sum()) - float(conf[inside].astype(np.float64).sum()))
    return total / len(labels)


def test_ece_bins_at_edges_and_in_the_top_bins():
    """Confidences exactly on bin edges (0.5 = 5/10 with two equal logits, 0.2 = 1/5 with five)
    and at or near 1.0 (in the top bin, never dropped), placed so that a confidence moved to
    the neighbouring bin, or lost, changes the ECE. The device ECE, the NumPy reference and
    a bin-by-bin hand computation agree, and match the value worked out by hand."""
    two = np.array([[0.0, 0.0], [0.2, 0.0], [100.0, 0.0], [16.0, 0.0], [2.2, 0.0]], np.float32)
    y2 = np.array([0, 1, 1, 0, 1], np.int32)  # on-edge right, wrong, wrong at 1.0, right, wrong
    report = jaxce.evaluate(Logits(), two, y2, num_bins=10)
    conf = report.probabilities.max(axis=1).astype(np.float64)
    assert conf[0] == 0.5 and conf[2] == 1.0 and 0.9999 < conf[3] < 1.0
    # (0.4, 0.5]: row 0; (0.5, 0.6]: row 1; (0.9, 1.0]: rows 2, 3, 4.
    by_hand = (abs(1 - conf[0]) + abs(0 - conf[1]) + abs(1 - conf[2:].sum())) / 5
    assert report.ece == pytest.approx(by_hand, rel=1e-6)
    five = np.array([[0.0] * 5, [0.3, 0, 0, 0, 0], [9.0, 0, 0, 0, 0]], np.float32)
    y5 = np.array([0, 1, 0], np.int32)  # conf 1/5 right; 0.25 wrong; 0.99 right
    for x, y, num_bins in ((two, y2, 10), (two, y2, 1), (five, y5, 5), (five, y5, 10)):
        report = jaxce.evaluate(Logits(), x, y, num_bins=num_bins)
        reference = expected_calibration_error(report.probabilities, y, num_bins=num_bins)
        hand = ece_by_hand(report.probabilities, y, num_bins)
        assert report.ece == pytest.approx(hand, rel=1e-6, abs=1e-7), num_bins
        assert reference == pytest.approx(hand, rel=1e-12, abs=1e-12), num_bins
    # 1/5 sits on the edge of (0, 0.2] with 5 bins and must stay out of (0.2, 0.4]:
    report = jaxce.evaluate(Logits(), five, y5, num_bins=5)
    c = report.probabilities.max(axis=1).astype(np.float64)
    assert c[0] == np.float32(0.2) and 0.2 < c[1] <= 0.4
    assert report.ece == pytest.approx((abs(1 - c[0]) + c[1] + abs(1 - c[2])) / 3, rel=1e-6)


def test_batches_compile_once_for_any_dataset_size(data):
    x, y = data
    model = SmallNet(10, 7, 3, rngs=nnx.Rngs(0))  # a structure no other test evaluates
    before = _eval_batch._cache_size()
    reports = [jaxce.evaluate(model, x[:n], y[:n], batch_size=32) for n in (5, 32, 33, 150)]
    assert _eval_batch._cache_size() == before + 1
    # And padding changes nothing: the first rows get the same numbers every time.
    for r in reports[1:]:
        np.testing.assert_array_equal(r.per_example_loss[:5], reports[0].per_example_loss)


def test_ignored_labels_are_left_out(data):
    x, y = data
    model = SmallNet(rngs=nnx.Rngs(1))
    y_ignored = y.copy()
    y_ignored[::4] = -100
    keep = y_ignored != -100
    full = jaxce.evaluate(model, x, y_ignored, batch_size=64)
    subset = jaxce.evaluate(model, x[keep], y[keep], batch_size=64)
    assert full.num_examples == keep.sum() == subset.num_examples
    assert full.accuracy == pytest.approx(subset.accuracy)
    assert full.loss == pytest.approx(subset.loss, rel=1e-6)
    assert full.ece == pytest.approx(subset.ece, abs=1e-7)
    np.testing.assert_array_equal(full.confusion, subset.confusion)
    assert np.all(full.per_example_loss[~keep] == 0)


def test_evaluate_errors_name_the_problem(data):
    x, y = data
    model = SmallNet(rngs=nnx.Rngs(0))
    bad = y.copy()
    bad[7] = 3
    with pytest.raises(ValueError, match=r"label 3 at position 7 is not a class in \[0, 3\)"):
        jaxce.evaluate(model, x, bad)
    with pytest.raises(ValueError, match="cannot take examples with 4 features"):
        jaxce.evaluate(model, x[:, :4], y)
    with pytest.raises(ValueError, match="one label per row"):
        jaxce.evaluate(model, x, y[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        jaxce.evaluate(model, x, y, batch_size=0)
    with pytest.raises(TypeError, match="nnx.Module"):
        jaxce.evaluate(lambda v: v, x, y)


# --- per-example gradients ---------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"weight": np.array([0.5, 2.0, 1.0], np.float32), "label_smoothing": 0.2}],
    ids=["plain", "weight+smoothing"],
)
def test_per_example_grads_equal_a_loop_of_single_gradients(data, options):
    x, y = data[0][:9], data[1][:9].copy()
    y[4] = -100
    model = SmallNet(rngs=nnx.Rngs(2))
    grads = per_example_grads(model, x, y, **options)
    graphdef, params = nnx.split(model)

    def single_loss(p, xi, yi):
        logits = nnx.merge(graphdef, p)(xi[None])
        return jaxce.cross_entropy(logits, yi[None], reduction="sum", **options)

    grad_fn = jax.jit(jax.grad(single_loss))
    for i in range(len(y)):
        g = grad_fn(params, jnp.asarray(x[i]), jnp.asarray(y[i]))
        for path, leaf in jax.tree_util.tree_leaves_with_path(g):
            batched = jax.tree_util.tree_leaves_with_path(grads)
            match = dict(batched)[path]
            np.testing.assert_allclose(
                np.asarray(match)[i],
                np.asarray(leaf),
                rtol=1e-5,
                atol=1e-7,
                err_msg=f"{path} example {i}",
            )
    assert all(np.all(np.asarray(leaf)[4] == 0) for leaf in jax.tree.leaves(grads))
    # Summed, they are the gradient of the reduction="sum" loss of the batch.
    total = jax.jit(
        jax.grad(
            lambda p: jaxce.cross_entropy(nnx.merge(graphdef, p)(x), y, reduction="sum", **options)
        )
    )(params)
    for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(np.asarray(b).sum(axis=0), np.asarray(a), rtol=1e-5, atol=1e-6)


# --- ensembles ---------------------------------------------------------------------------


def test_ensemble_report_per_member_and_mean_probability(data):
    x, y = data
    ens = Ensemble(4, seed=0)
    report = jaxce.evaluate(ens, x, y, batch_size=64)
    member_probs = []
    for i in range(4):
        member = jaxce.evaluate(ens.member(i), x, y, batch_size=64)
        assert report.member_accuracy[i] == pytest.approx(member.accuracy)
        member_probs.append(member.probabilities)
    mean_probs = np.mean(member_probs, axis=0)
    np.testing.assert_allclose(report.probabilities, mean_probs, rtol=1e-5, atol=1e-6)
    assert report.accuracy == pytest.approx(np.mean(mean_probs.argmax(axis=1) == y))
    np.testing.assert_allclose(
        report.per_example_loss, -np.log(mean_probs[np.arange(len(y)), y]), rtol=1e-4
    )
    text = report.format()
    assert "member accuracy (K=4)" in text and "ensemble (mean-probability) accuracy" in text
