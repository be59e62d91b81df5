"""SmallNet, the seed notebook's two-layer MLP, as a Flax NNX module; its torch
weight import and export; and :class:`Ensemble`, K SmallNets with stacked parameters.

Layout: ``nnx.Linear`` stores ``kernel`` as ``(in, out)`` and computes
``x @ kernel + bias``; ``torch.nn.Linear`` stores ``weight`` as ``(out, in)`` and
computes ``x @ weight.T + bias``. So ``kernel = weight.T`` and the biases are equal.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import pathlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxce import _validate

__all__ = ["SmallNet", "Ensemble", "from_torch", "to_state_dict", "torch_linear_init"]

INITS = ("torch", "flax")
STATE_DICT_KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def torch_linear_init(fan_in: int):
    """The initializer ``torch.nn.Linear`` uses for its weight *and* its bias.

    ``kaiming_uniform_(a=sqrt(5))`` on the weight and the bias rule both reduce
    to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Args:
      fan_in: the layer's number of input features.

    Returns:
      An initializer ``init(key, shape, dtype=jnp.float32)``.

    Examples:
      >>> import jax
      >>> from jaxce.models import torch_linear_init
      >>> w = torch_linear_init(4)(jax.random.key(0), (1000,))
      >>> bool(abs(w).max() <= 0.5)
      True
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def _check_size(fn: str, name: str, value: Any) -> int:
    return _validate.check_int(fn, name, value, minimum=1, maximum=int(_validate.INT32.max))


def _check_init(fn: str, init: Any) -> str:
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"{fn}: `init` must be one of {INITS}, got {_validate.describe(init)}")
    return init


def _check_input(fn: str, x: Any, in_features: int) -> Any:
    """``x`` as an array of real floating ``(..., in_features)`` values (lists too)."""
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        if isinstance(x, (str, bytes)) or x is None:
            raise TypeError(
                f"{fn}: expected a floating array as input, got {_validate.describe(x)}"
            )
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{fn}: expected a floating array as input, got {_validate.describe(x)} ({e})"
            ) from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: input must hold real floating values, got dtype {x.dtype} "
            f"(shape {tuple(jnp.shape(x))}); cast it, e.g. `x.astype(jnp.float32)`"
        )
    if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != in_features:
        raise ValueError(
            f"{fn}: expected input of shape (..., {in_features}), got {tuple(jnp.shape(x))}"
        )
    return x


class SmallNet(nnx.Module):
    """``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``: the notebook's SmallNet.

    Args:
      in_features: input features (10 in the notebook).
      hidden_features: hidden units (5).
      out_features: classes, i.e. logits per example (3).
      rngs: the ``nnx.Rngs`` the parameters are drawn from (its ``params`` stream).
      init: ``"torch"`` (default) draws every weight and bias from
        ``U(±1/sqrt(fan_in))`` as ``torch.nn.Linear`` does; ``"flax"`` uses
        ``nnx.Linear``'s defaults (LeCun-normal kernel, zero bias).

    Calling it on real floating ``x`` of shape ``(..., in_features)`` (one example or a
    batch; an array or a nested list) returns logits of shape ``(..., out_features)``.
    Complex, integer or boolean input is refused with a TypeError.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxce.models import SmallNet
      >>> model = SmallNet(rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 10))).shape, model(jnp.ones(10)).shape
      ((2, 3), (3,))
    """

    def __init__(
        self,
        in_features: int = 10,
        hidden_features: int = 5,
        out_features: int = 3,
        *,
        rngs: nnx.Rngs,
        init: str = "torch",
    ):
        fn = "SmallNet"
        self.in_features = _check_size(fn, "in_features", in_features)
        self.hidden_features = _check_size(fn, "hidden_features", hidden_features)
        self.out_features = _check_size(fn, "out_features", out_features)
        self.init = _check_init(fn, init)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{fn}: `rngs` must be an nnx.Rngs, got {type(rngs).__name__}")

        def linear(fan_in: int, fan_out: int) -> nnx.Linear:
            if init == "torch":
                u = torch_linear_init(fan_in)
                return nnx.Linear(fan_in, fan_out, kernel_init=u, bias_init=u, rngs=rngs)
            return nnx.Linear(fan_in, fan_out, rngs=rngs)

        self.fc1 = linear(self.in_features, self.hidden_features)
        self.fc2 = linear(self.hidden_features, self.out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(..., out_features)`` for ``x`` of shape ``(..., in_features)``."""
        x = _check_input("SmallNet", x, self.in_features)
        return self.fc2(jax.nn.relu(self.fc1(x)))


def _stack(*leaves):
    if any(isinstance(a, jax.core.Tracer) for a in leaves):  # under nnx.eval_shape / jit
        return jnp.stack(leaves)
    # On the host: stacking a few small arrays needs no compiled kernel.
    return jnp.asarray(np.stack([np.asarray(a) for a in leaves]))


def _stack_states(states: Sequence[nnx.State]) -> nnx.State:
    return jax.tree.map(_stack, *states)


@functools.partial(jax.jit, static_argnames="graphdef")
def _apply_members(graphdef, state, x):
    return jax.vmap(lambda s: nnx.merge(graphdef, s)(x))(state)


class Ensemble(nnx.Module):
    """K SmallNets of one shape whose parameters are stacked on a leading axis.

    Member ``i`` is drawn exactly as ``SmallNet(..., rngs=nnx.Rngs(seed + i))``.
    All members run together in one vectorised computation (``jax.vmap`` over the
    stacked parameters), which is what makes training and evaluating K models in
    one jitted step cheap.

    Args:
      num_members: K, at least 1.
      in_features, hidden_features, out_features: each member's sizes.
      seed: member ``i`` is seeded with ``seed + i``; every ``seed + i`` must lie in
        ``[0, 2**32)``.
      init: ``"torch"`` or ``"flax"``, as for :class:`SmallNet`.

    Calling it on ``x`` of shape ``(..., in_features)`` (what :class:`SmallNet`
    accepts) returns every member's logits, shape ``(K, ..., out_features)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxce.models import Ensemble
      >>> ens = Ensemble(4)
      >>> ens(jnp.ones((2, 10))).shape, ens.num_members
      ((4, 2, 3), 4)
    """

    def __init__(
        self,
        num_members: int,
        in_features: int = 10,
        hidden_features: int = 5,
        out_features: int = 3,
        *,
        seed: int = 0,
        init: str = "torch",
    ):
        fn = "Ensemble"
        self.num_members = _check_size(fn, "num_members", num_members)
        sizes = (
            _check_size(fn, "in_features", in_features),
            _check_size(fn, "hidden_features", hidden_features),
            _check_size(fn, "out_features", out_features),
        )
        self.in_features, self.hidden_features, self.out_features = sizes
        self.init = _check_init(fn, init)
        seed = _validate.check_seed(fn, "seed", seed, count=self.num_members)

        # Built one by one and stacked on the host: after the first member every draw
        # reuses compiled kernels, which is far cheaper than compiling a vmapped init.
        stacked = _stack_states(
            [
                nnx.state(SmallNet(*sizes, rngs=nnx.Rngs(int(seed) + i), init=init))
                for i in range(self.num_members)
            ]
        )
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: SmallNet(*sizes, rngs=nnx.Rngs(0))))
        #: A SmallNet whose parameters carry a leading member axis (call it through vmap).
        self.members = nnx.merge(graphdef, stacked)

    @classmethod
    def from_members(cls, members: Sequence[SmallNet]) -> Ensemble:
        """Stacks existing SmallNets (all of one shape) into an ensemble.

        Examples:
          >>> from flax import nnx
          >>> from jaxce.models import Ensemble, SmallNet
          >>> nets = [SmallNet(rngs=nnx.Rngs(s)) for s in (7, 8)]
          >>> Ensemble.from_members(nets).num_members
          2
        """
        members = list(members)
        if not members or not all(isinstance(m, SmallNet) for m in members):
            raise TypeError("Ensemble.from_members: expected a non-empty sequence of SmallNet")
        sizes = {(m.in_features, m.hidden_features, m.out_features) for m in members}
        if len(sizes) != 1:
            raise ValueError(
                f"Ensemble.from_members: members must share their sizes, got {sorted(sizes)}"
            )
        sizes = sizes.pop()
        ens = nnx.eval_shape(lambda: cls(len(members), *sizes, init=members[0].init))
        nnx.update(ens.members, _stack_states([nnx.state(m) for m in members]))
        return ens

    def member(self, i: int) -> SmallNet:
        """Member ``i`` as a standalone SmallNet (a copy of its parameters).

        Examples:
          >>> from jaxce.models import Ensemble
          >>> Ensemble(3).member(2).fc1.kernel.shape
          (10, 5)
        """
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"Ensemble.member: `i` must be an int, got {i!r}")
        if not -self.num_members <= i < self.num_members:
            raise IndexError(
                f"Ensemble.member: index {i} out of range for {self.num_members} members"
            )
        graphdef, state = nnx.split(self.members)
        return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[i]), state))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Every member's logits, ``(K, ..., out_features)``."""
        x = _check_input("Ensemble", x, self.in_features)
        graphdef, state = nnx.split(self.members)
        return _apply_members(graphdef, state, x)


def _to_numpy(key: str, value: Any) -> np.ndarray:
    """A float32 NumPy copy of a torch tensor, NumPy or JAX array of any real floating dtype."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor (torch not imported)
        layout = str(getattr(value, "layout", "torch.strided"))
        if layout != "torch.strided":
            raise TypeError(
                f"from_torch: `{key}` must be a dense tensor, got layout {layout}; "
                "convert it with `.to_dense()`"
            )
        if getattr(value, "is_meta", False):
            raise ValueError(
                f"from_torch: `{key}` is a meta tensor: it has a shape "
                f"{tuple(value.shape)} but no values to load"
            )
        if getattr(value, "is_quantized", False):
            raise TypeError(
                f"from_torch: `{key}` is a quantized tensor; dequantize it with `.dequantize()`"
            )
        if not value.is_floating_point():
            raise TypeError(f"from_torch: `{key}` must be a floating tensor, got {value.dtype}")
        return value.detach().cpu().float().numpy()  # bfloat16 and float16 widen exactly
    if not isinstance(value, (np.ndarray, np.generic, jax.Array)):
        raise TypeError(
            f"from_torch: `{key}` must be a torch tensor or a NumPy or JAX array, "
            f"got {type(value).__name__}"
        )
    array = np.asarray(value)
    # jnp.issubdtype also knows ml_dtypes' bfloat16 (safetensors' and JAX's), which NumPy's
    # own issubdtype does not count as floating.
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"from_torch: `{key}` must be floating, got dtype {array.dtype}")
    return array.astype(np.float32)


def _read_error(path: pathlib.Path, what: str, e: BaseException) -> ValueError:
    cause = f"{type(e).__name__}: {e}".strip().rstrip(":")
    return ValueError(
        f"from_torch: cannot read {str(path)!r} as a {what} state dict (damaged, truncated "
        f"or another kind of file): {cause:.200}"
    )


def _load_file(path: pathlib.Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"from_torch: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(
            f"from_torch: unsupported file type {suffix!r} for {str(path)!r}; "
            "expected .safetensors, .pt, .pth or .bin"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"from_torch: {str(path)!r} is empty (0 bytes)")
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(
                "from_torch: reading .safetensors needs `pip install safetensors`"
            ) from e
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors' own error types; re-raised named
            raise _read_error(path, "safetensors", e) from e
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"from_torch: reading {suffix} files needs torch installed") from e
    try:
        # weights_only=True: tensors and plain containers only, never arbitrary objects.
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise _read_error(path, "torch", e) from e
        raise ValueError(
            f"from_torch: {str(path)!r} holds more than tensors (a pickled module or "
            "other objects) and is refused (weights_only=True); save "
            "`model.state_dict()` instead"
        ) from e
    except Exception as e:  # noqa: BLE001 - EOFError, RuntimeError, KeyError... from torch
        raise _read_error(path, "torch", e) from e
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"from_torch: {str(path)!r} holds a {type(loaded).__name__}, expected a "
            "state dict (a mapping of names to tensors)"
        )
    return loaded


def from_torch(
    state_dict: Mapping[str, Any] | str | os.PathLike, *, init: str = "torch"
) -> SmallNet:
    """A SmallNet holding the weights of a torch SmallNet.

    Sizes are inferred from the shapes. Loading never unpickles arbitrary
    objects: ``.pt``/``.pth``/``.bin`` files go through
    ``torch.load(weights_only=True)``, ``.safetensors`` through safetensors.

    Args:
      state_dict: a mapping with exactly ``fc1.weight`` ``(H, I)``, ``fc1.bias``
        ``(H,)``, ``fc2.weight`` ``(O, H)``, ``fc2.bias`` ``(O,)`` (torch tensors or
        NumPy arrays), or a path to a ``.safetensors``, ``.pt``, ``.pth`` or ``.bin``
        file holding one.
      init: recorded on the model (it decides nothing here: every value is loaded).

    Values may be float32, float64, float16 or bfloat16 (torch tensors, NumPy arrays
    including ``ml_dtypes.bfloat16``, JAX arrays, or a bf16 ``.safetensors`` file as
    Hugging Face ships them); they are converted to float32 (exactly from 16 bits).

    Returns:
      A float32 :class:`SmallNet` with ``kernel = weight.T`` and ``bias = bias``.

    Raises:
      KeyError: a key is missing or unexpected (all are named).
      ValueError: a shape is wrong (the message names the key, its shape and the
        expected one), a tensor is a meta tensor (no values), or the file is empty,
        truncated, damaged, of another kind, or not a plain state dict.
      TypeError: a value is not a dense floating tensor/array.
      FileNotFoundError: the path does not exist.

    Examples:
      >>> import numpy as np
      >>> from jaxce.models import from_torch
      >>> sd = {"fc1.weight": np.ones((5, 10), np.float32), "fc1.bias": np.zeros(5, np.float32),
      ...       "fc2.weight": np.ones((3, 5), np.float32), "fc2.bias": np.zeros(3, np.float32)}
      >>> model = from_torch(sd)
      >>> model.fc1.kernel.shape, float(model(np.ones((1, 10), np.float32))[0, 0])
      ((10, 5), 50.0)
    """
    init = _check_init("from_torch", init)
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _load_file(pathlib.Path(state_dict))
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "from_torch: expected a state dict (mapping) or a path, "
            f"got {type(state_dict).__name__}"
        )
    keys = set(state_dict)
    missing = [k for k in STATE_DICT_KEYS if k not in keys]
    unexpected = sorted(str(k) for k in keys - set(STATE_DICT_KEYS))
    if missing or unexpected:
        raise KeyError(
            f"from_torch: state dict does not match SmallNet: missing keys {missing}, "
            f"unexpected keys {unexpected}; expected exactly {list(STATE_DICT_KEYS)}"
        )
    arrays = {k: _to_numpy(k, state_dict[k]) for k in STATE_DICT_KEYS}
    w1 = arrays["fc1.weight"]
    if w1.ndim != 2:
        raise ValueError(f"from_torch: `fc1.weight` must be 2-D (hidden, in), got shape {w1.shape}")
    hidden, inp = w1.shape
    w2 = arrays["fc2.weight"]
    if w2.ndim != 2:
        raise ValueError(
            f"from_torch: `fc2.weight` must be 2-D (out, hidden={hidden}), got shape {w2.shape}"
        )
    out = w2.shape[0]
    expected = {"fc1.bias": (hidden,), "fc2.weight": (out, hidden), "fc2.bias": (out,)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(
                f"from_torch: `{key}` has shape {arrays[key].shape}, expected {shape} "
                f"(fc1.weight is {w1.shape}, fc2.weight is {w2.shape})"
            )
    if min(hidden, inp, out) < 1:
        raise ValueError(f"from_torch: empty layer (fc1.weight {w1.shape}, fc2.weight {w2.shape})")
    # An abstract SmallNet (shapes only: no random draw, nothing compiled), then filled in.
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: SmallNet(inp, hidden, out, rngs=nnx.Rngs(0), init=init))
    )
    nnx.replace_by_pure_dict(
        state,
        {
            "fc1": {"kernel": jnp.asarray(w1.T), "bias": jnp.asarray(arrays["fc1.bias"])},
            "fc2": {"kernel": jnp.asarray(w2.T), "bias": jnp.asarray(arrays["fc2.bias"])},
        },
    )
    return nnx.merge(graphdef, state)


def to_state_dict(model: SmallNet) -> dict[str, np.ndarray]:
    """The model's parameters as a torch-layout state dict of NumPy arrays.

    The inverse of :func:`from_torch`: ``torch_model.load_state_dict({k:
    torch.from_numpy(v) for k, v in to_state_dict(model).items()})`` loads them.

    Examples:
      >>> from flax import nnx
      >>> from jaxce.models import SmallNet, to_state_dict
      >>> {k: v.shape for k, v in to_state_dict(SmallNet(rngs=nnx.Rngs(0))).items()}
      {'fc1.weight': (5, 10), 'fc1.bias': (5,), 'fc2.weight': (3, 5), 'fc2.bias': (3,)}
    """
    if not isinstance(model, SmallNet):
        raise TypeError(f"to_state_dict: expected a SmallNet, got {type(model).__name__}")
    return {
        "fc1.weight": np.array(model.fc1.kernel[...]).T.copy(),
        "fc1.bias": np.array(model.fc1.bias[...]),
        "fc2.weight": np.array(model.fc2.kernel[...]).T.copy(),
        "fc2.bias": np.array(model.fc2.bias[...]),
    }
