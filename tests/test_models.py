"""SmallNet, Ensemble and the torch weight import, checked against real torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxce
from jaxce.models import Ensemble, SmallNet, from_torch, to_state_dict

SIZES = [(10, 5, 3), (7, 16, 4)]


def torch_smallnet(torch, sizes, seed):
    """The notebook's torch SmallNet (its sizes as parameters), seeded."""
    torch.manual_seed(seed)
    i, h, o = sizes
    net = torch.nn.Module()
    net.fc1 = torch.nn.Linear(i, h)
    net.fc2 = torch.nn.Linear(h, o)
    net.forward = lambda x: net.fc2(torch.relu(net.fc1(x)))
    return net


def params_of(model):
    return {k: np.asarray(v) for k, v in to_state_dict(model).items()}


# --- initialisation -----------------------------------------------------------------------


def test_torch_init_matches_torch_linear_distribution(torch):
    # Large layers so that the empirical range and moments are sharp.
    model = SmallNet(400, 300, 300, rngs=nnx.Rngs(0))
    torch.manual_seed(0)
    ref1, ref2 = torch.nn.Linear(400, 300), torch.nn.Linear(300, 300)
    ours = {
        "fc1.weight": np.asarray(model.fc1.kernel[...]),
        "fc1.bias": np.asarray(model.fc1.bias[...]),
        "fc2.weight": np.asarray(model.fc2.kernel[...]),
        "fc2.bias": np.asarray(model.fc2.bias[...]),
    }
    theirs = {
        "fc1.weight": ref1.weight.detach().numpy(),
        "fc1.bias": ref1.bias.detach().numpy(),
        "fc2.weight": ref2.weight.detach().numpy(),
        "fc2.bias": ref2.bias.detach().numpy(),
    }
    for key in ours:
        a, b = ours[key].ravel(), theirs[key].ravel()
        # Same support: the largest magnitudes agree to within a few percent.
        assert abs(np.abs(a).max() - np.abs(b).max()) < 0.03 * np.abs(b).max(), key
        # Same spread (a uniform's variance is bound^2 / 3) and centre, within about five
        # standard errors of the sample statistics.
        assert abs(a.std() - b.std()) < 3.5 / np.sqrt(a.size) * b.std(), key
        assert abs(a.mean()) < 5 * b.std() / np.sqrt(a.size), key
    # And the bound itself is exactly torch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert np.abs(ours["fc1.weight"]).max() <= 1 / np.sqrt(400)
    assert np.abs(ours["fc2.bias"]).max() <= 1 / np.sqrt(300)


def test_flax_init_uses_flax_defaults():
    model = SmallNet(400, 300, 3, rngs=nnx.Rngs(0), init="flax")
    assert np.all(np.asarray(model.fc1.bias[...]) == 0)
    # LeCun normal (truncated): std close to 1/sqrt(fan_in), values beyond the torch bound.
    kernel = np.asarray(model.fc1.kernel[...])
    assert abs(kernel.std() - 1 / np.sqrt(400)) < 0.1 / np.sqrt(400)
    assert np.abs(kernel).max() > 1 / np.sqrt(400)


def test_seeds_decide_the_parameters():
    a = params_of(SmallNet(rngs=nnx.Rngs(1)))
    b = params_of(SmallNet(rngs=nnx.Rngs(1)))
    c = params_of(SmallNet(rngs=nnx.Rngs(2)))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"in_features": 0}, ValueError, "in_features` must be an int in .* got 0"),
        ({"hidden_features": 2.5}, TypeError, "hidden_features` must be an int, got 2.5"),
        ({"out_features": True}, TypeError, "out_features` must be an int, got True"),
        ({"init": "kaiming"}, ValueError, "init"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        SmallNet(rngs=nnx.Rngs(0), **kwargs)


def test_call_rejects_wrong_feature_count():
    with pytest.raises(ValueError, match=r"\(\.\.\., 10\).*\(2, 9\)"):
        SmallNet(rngs=nnx.Rngs(0))(jnp.ones((2, 9)))


# --- parity with torch ---------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SIZES)
def test_ported_weights_give_torch_logits_and_probabilities(torch, sizes):
    net = torch_smallnet(torch, sizes, seed=3)
    x = torch.randn(6, sizes[0])
    with torch.no_grad():
        logits = net(x).numpy()
        probs = torch.softmax(net(x), dim=1).numpy()
    model = from_torch(net.state_dict())
    ours = np.asarray(model(x.numpy()))
    np.testing.assert_allclose(ours, logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jaxce.softmax(ours, axis=1)), probs, rtol=0, atol=1e-6)
    # One example at a time gives the same numbers as the batch.
    np.testing.assert_allclose(np.asarray(model(x.numpy()[2])), logits[2], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1},
        {"weight": [0.2, 1.0, 3.0], "ignore_index": 1},
        {"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.3, "reduction": "sum"},
    ],
)
def test_loss_and_parameter_gradients_match_torch_autograd(torch, options):
    net = torch_smallnet(torch, (10, 5, 3), seed=7)
    gen = np.random.default_rng(0)
    x = gen.normal(size=(8, 10)).astype(np.float32)
    y = gen.integers(0, 3, size=8).astype(np.int64)
    y[3] = -100  # padding, skipped by the default ignore_index
    if options.get("ignore_index") == 1:
        y[3] = 0
    t_opts = dict(options)
    j_opts = dict(options)
    if "weight" in options:
        t_opts["weight"] = torch.tensor(options["weight"])
        j_opts["weight"] = jnp.asarray(options["weight"], jnp.float32)

    t_loss = torch.nn.functional.cross_entropy(
        net(torch.from_numpy(x)), torch.from_numpy(y), **t_opts
    )
    t_loss.backward()

    model = from_torch(net.state_dict())
    graphdef, params = nnx.split(model)

    def loss_fn(p):
        return jaxce.cross_entropy(nnx.merge(graphdef, p)(x), jnp.asarray(y, jnp.int32), **j_opts)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-6, atol=1e-6)
    for layer in ("fc1", "fc2"):
        torch_layer = getattr(net, layer)
        np.testing.assert_allclose(  # kernel = weight transposed
            np.asarray(grads[layer]["kernel"][...]),
            torch_layer.weight.grad.numpy().T,
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(grads[layer]["bias"][...]),
            torch_layer.bias.grad.numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_to_state_dict_loads_into_torch(torch):
    model = SmallNet(rngs=nnx.Rngs(5))
    net = torch_smallnet(torch, (10, 5, 3), seed=0)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in to_state_dict(model).items()})
    x = np.random.default_rng(1).normal(size=(4, 10)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=0, atol=1e-6)


def test_from_torch_accepts_numpy_arrays(torch):
    net = torch_smallnet(torch, (10, 5, 3), seed=1)
    as_numpy = {k: v.numpy() for k, v in net.state_dict().items()}
    a, b = params_of(from_torch(as_numpy)), params_of(from_torch(net.state_dict()))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], as_numpy[key])


# --- files -------------------------------------------------------------------------------


def test_from_pt_file(torch, tmp_path):
    net = torch_smallnet(torch, (7, 16, 4), seed=2)
    path = tmp_path / "smallnet.pt"
    torch.save(net.state_dict(), path)
    loaded = params_of(from_torch(path))
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(loaded[key], value.numpy())
    assert from_torch(str(path)).hidden_features == 16


def test_from_safetensors_file(torch, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    net = torch_smallnet(torch, (10, 5, 3), seed=4)
    path = tmp_path / "smallnet.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    loaded = params_of(from_torch(path))
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(loaded[key], value.numpy())


def test_pickled_module_is_refused(torch, tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    path = tmp_path / "whole_module.pt"
    torch.save(net, path)  # pickles the module's classes: must not be loaded
    with pytest.raises(ValueError, match="weights_only"):
        from_torch(path)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        from_torch(tmp_path / "missing.pt")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported file type '\.npz'"):
        from_torch(other)


# --- malformed state dicts ---------------------------------------------------------------


def good_state_dict():
    gen = np.random.default_rng(0)
    return {
        "fc1.weight": gen.normal(size=(5, 10)).astype(np.float32),
        "fc1.bias": gen.normal(size=5).astype(np.float32),
        "fc2.weight": gen.normal(size=(3, 5)).astype(np.float32),
        "fc2.bias": gen.normal(size=3).astype(np.float32),
    }


def test_missing_and_unexpected_keys_are_named():
    sd = good_state_dict()
    del sd["fc2.bias"]
    sd["fc3.weight"] = np.zeros((2, 3), np.float32)
    with pytest.raises(
        KeyError,
        match=r"missing keys \['fc2.bias'\].*unexpected keys "
        r"\['fc3.weight'\]",
    ):
        from_torch(sd)


@pytest.mark.parametrize(
    "key, shape, message",
    [
        ("fc1.bias", (4,), r"`fc1.bias` has shape \(4,\), expected \(5,\)"),
        ("fc2.weight", (3, 6), r"`fc2.weight` has shape \(3, 6\), expected \(3, 5\)"),
        ("fc2.bias", (2,), r"`fc2.bias` has shape \(2,\), expected \(3,\)"),
        ("fc1.weight", (50,), r"`fc1.weight` must be 2-D .* got shape \(50,\)"),
        ("fc2.weight", (15,), r"`fc2.weight` must be 2-D .* got shape \(15,\)"),
    ],
)
def test_mismatched_shapes_are_named(key, shape, message):
    sd = good_state_dict()
    sd[key] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=message):
        from_torch(sd)


def test_non_floating_values_are_refused(torch):
    sd = good_state_dict()
    sd["fc1.bias"] = np.arange(5)
    with pytest.raises(TypeError, match="fc1.bias"):
        from_torch(sd)
    sd = good_state_dict()
    sd["fc2.bias"] = torch.arange(3)
    with pytest.raises(TypeError, match="fc2.bias"):
        from_torch(sd)
    sd = good_state_dict()
    sd["fc2.bias"] = [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="fc2.bias.*list"):
        from_torch(sd)


# --- ensembles ---------------------------------------------------------------------------


def test_ensemble_members_are_seeded_smallnets():
    ens = Ensemble(4, 10, 5, 3, seed=10)
    x = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    logits = np.asarray(ens(x))
    assert logits.shape == (4, 3, 3)
    for i in range(4):
        single = SmallNet(10, 5, 3, rngs=nnx.Rngs(10 + i))
        a, b = params_of(ens.member(i)), params_of(single)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_allclose(logits[i], np.asarray(single(x)), rtol=1e-6, atol=1e-6)


def test_ensemble_from_members_round_trip():
    nets = [SmallNet(rngs=nnx.Rngs(s)) for s in (3, 1, 4)]
    ens = Ensemble.from_members(nets)
    assert ens.num_members == 3 and ens.hidden_features == 5
    for i, net in enumerate(nets):
        a, b = params_of(ens.member(i)), params_of(net)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="share their sizes"):
        wider = {
            k: np.zeros((6,) + v.shape[1:] if k.startswith("fc1") else (3, 6), np.float32)
            for k, v in good_state_dict().items()
        }
        wider["fc2.bias"] = np.zeros(3, np.float32)
        Ensemble.from_members([nets[0], from_torch(wider)])
    with pytest.raises(IndexError, match="index 3 out of range for 3 members"):
        ens.member(3)
