"""Vocab- and data-parallel plumbing for the fused loss (:mod:`jaxce.linear`).

JAX's own SPMD partitioner is the distributed engine: ``cross_entropy`` on sharded
logits needs nothing from this module (its row reductions are partitioned by GSPMD,
also under ``AxisType.Explicit``, and the logits are never gathered). The fused
``linear_cross_entropy`` loops over blocks of the vocabulary and of the tokens
with dynamic slices, which GSPMD cannot partition along a sharded axis; there the
loop runs inside :func:`jax.shard_map` on each device's shard, and the few
per-token statistics of the online logsumexp are combined across the vocab axis:

* ``m = pmax(m_local)``,
* ``s = psum(s_local · exp(m_local - m))``,
* the target logit ``psum(x_t_local)`` (one shard holds it, the others add 0),
* ``Σ_c w_c (x_c - m) = psum(wsh_local + (m_local - m) · W_local)``.

Everything here is internal; the public switch is ``linear_cross_entropy``'s
``data_axis`` / ``vocab_axis`` / ``mesh`` arguments (or, under explicit sharding,
the inputs' own shardings).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, PartitionSpec

from jaxce._spmd import explicit_spec as _spec_of

__all__: list[str] = []


class Layout(NamedTuple):
    """How the fused loss is laid out on a mesh (static, hashable).

    ``lead_spec``: the partition of ``hidden``'s leading (token) axes, one entry per
    axis; ``vocab``: the mesh axis (or axes) sharding the class axis of ``kernel``;
    ``data_axes``: every mesh axis named in ``lead_spec`` (the axes that partial sums
    over tokens are reduced across).
    """

    mesh: Any
    lead_spec: tuple
    vocab: Any

    @property
    def data_axes(self) -> tuple:
        return _flat_axes(self.lead_spec)

    @property
    def vocab_axes(self) -> tuple:
        return _flat_axes((self.vocab,))


def _flat_axes(entries) -> tuple:
    out: list = []
    for e in entries:
        if e is None:
            continue
        out.extend(e if isinstance(e, tuple) else (e,))
    return tuple(out)


def _normalize_name(fn: str, name: str, value: Any):
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        return value if len(value) > 1 else value[0]
    raise TypeError(
        f"{fn}: `{name}` must be a mesh axis name (str), a tuple of names, or None, "
        f"got {type(value).__name__} {value!r}"
    )


def _axis_size(mesh, entry) -> int:
    size = 1
    for a in _flat_axes((entry,)):
        size *= mesh.shape[a]
    return size


def resolve(
    fn: str,
    *,
    mesh: Any,
    data_axis: Any,
    vocab_axis: Any,
    hidden: jax.Array,
    kernel: jax.Array,
    vocab_args: dict,
    class_axis: int = 1,
) -> Layout | None:
    """The layout of the fused loss, or None for the plain single-program path.

    With ``data_axis`` / ``vocab_axis`` given, the mesh is ``mesh`` or the one set by
    :func:`jax.set_mesh`. Without them, inputs whose types carry an explicit
    sharding (``AxisType.Explicit`` meshes) are laid out as they are sharded.
    ``vocab_args`` are the per-class arrays (bias, weight) that must follow ``kernel``,
    whose class axis is ``class_axis`` (1 for a ``(D, V)`` kernel, 0 for ``(V, D)``).
    """
    if mesh is not None and not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
        raise TypeError(
            f"{fn}: `mesh` must be a jax.sharding.Mesh (or AbstractMesh) or None, got "
            f"{type(mesh).__name__} {mesh!r:.80}"
        )
    data_axis = _normalize_name(fn, "data_axis", data_axis)
    vocab_axis = _normalize_name(fn, "vocab_axis", vocab_axis)
    lead = hidden.ndim - 1
    if data_axis is None and vocab_axis is None:
        h_spec, k_spec = _spec_of(hidden), _spec_of(kernel)
        if h_spec is None and k_spec is None:
            if mesh is not None:
                raise ValueError(
                    f"{fn}: `mesh` was given but neither `data_axis` nor `vocab_axis`; "
                    "name the mesh axes that shard the tokens and/or the vocabulary"
                )
            return None
        # Explicit sharding: follow the inputs' own types.
        h_spec = h_spec or (None,) * hidden.ndim
        k_spec = k_spec or (None, None)
        if h_spec[-1] is not None or k_spec[1 - class_axis] is not None:
            raise ValueError(
                f"{fn}: sharding the hidden dimension is not supported (`hidden` is sharded "
                f"as {PartitionSpec(*h_spec)}, `kernel` as {PartitionSpec(*k_spec)}); "
                "reshard so that only the token axes and the class axis are sharded"
            )
        mesh = jax.typeof(hidden if _spec_of(hidden) is not None else kernel).sharding.mesh
        layout = Layout(mesh, tuple(h_spec[:-1]), k_spec[class_axis])
    else:
        if mesh is None:
            mesh = jax.sharding.get_abstract_mesh()
            if mesh.empty:
                raise ValueError(
                    f"{fn}: `data_axis`={data_axis!r} / `vocab_axis`={vocab_axis!r} need a "
                    "mesh: pass `mesh=` or set one with `jax.set_mesh(mesh)`"
                )
        names = tuple(mesh.axis_names)
        for label, entry in (("data_axis", data_axis), ("vocab_axis", vocab_axis)):
            for a in _flat_axes((entry,)):
                if a not in names:
                    raise ValueError(
                        f"{fn}: `{label}`={entry!r} is not an axis of the mesh (axes {names})"
                    )
        if lead == 0 and data_axis is not None:
            raise ValueError(
                f"{fn}: `data_axis`={data_axis!r} needs token axes, but `hidden` has shape "
                f"{tuple(hidden.shape)} (a single position)"
            )
        overlap = set(_flat_axes((data_axis,))) & set(_flat_axes((vocab_axis,)))
        if overlap:
            raise ValueError(
                f"{fn}: `data_axis`={data_axis!r} and `vocab_axis`={vocab_axis!r} share the "
                f"mesh axes {sorted(overlap)}"
            )
        lead_spec = (data_axis,) + (None,) * (lead - 1) if lead else ()
        layout = Layout(mesh, lead_spec, vocab_axis)

    for i, entry in enumerate(layout.lead_spec):
        size = _axis_size(layout.mesh, entry)
        if hidden.shape[i] % size:
            raise ValueError(
                f"{fn}: `hidden` axis {i} (size {hidden.shape[i]}) must be divisible by the "
                f"{size} devices of mesh axes {entry!r} it is sharded over"
            )
    vsize = _axis_size(layout.mesh, layout.vocab)
    if kernel.shape[class_axis] % vsize:
        raise ValueError(
            f"{fn}: the number of classes ({kernel.shape[class_axis]}, `kernel` axis "
            f"{class_axis}) must be "
            f"divisible by the {vsize} devices of the vocab axis {layout.vocab!r}"
        )
    for name, arr in vocab_args.items():
        spec = None if arr is None else _spec_of(arr)
        if spec is not None and spec[0] != layout.vocab:
            raise ValueError(
                f"{fn}: `{name}` is sharded as {PartitionSpec(*spec)} but the class axis of "
                f"`kernel` as {PartitionSpec(layout.vocab)}; shard them alike"
            )
    return layout


def is_explicit(layout: Layout | None) -> bool:
    if layout is None:
        return False
    axis_types = getattr(layout.mesh, "axis_types", ())
    return any(t == AxisType.Explicit for t in axis_types)


def local_size(layout: Layout | None, global_shape: tuple, spec: tuple) -> tuple:
    """The per-device block shape of an array of ``global_shape`` partitioned by ``spec``."""
    if layout is None:
        return tuple(global_shape)
    return tuple(
        n // _axis_size(layout.mesh, e) if e is not None else n
        for n, e in zip(global_shape, spec, strict=False)
    )


def vocab_offset(layout: Layout | None, v_local: int) -> jax.Array | int:
    """The first class index of this device's vocab shard (0 without a vocab axis)."""
    if layout is None or layout.vocab is None:
        return 0
    return lax.axis_index(layout.vocab) * v_local


def psum(x, axes: tuple):
    return lax.psum(x, axes) if axes else x


def combine_stats(m, s, xt, wsh, wseen, layout: Layout | None):
    """Merges per-shard online-logsumexp statistics across the vocab axis.

    ``m``: local running max (``-inf`` where a shard saw nothing finite); ``s``:
    ``Σ exp(x - safe(m))``; ``xt``: the target logit (0 on shards without it);
    ``wsh``: ``Σ_c w_c (x_c - safe(m))``; ``wseen``: the shard's ``Σ_c w_c``.
    Returns ``(m, s, xt, wsh)`` relative to the global ``safe(m)``.
    """
    if layout is None or layout.vocab is None:
        return safe_max(m), s, xt, wsh
    axes = layout.vocab_axes
    m_g = safe_max(lax.pmax(m, axes))
    s = lax.psum(s * jnp.exp(m - m_g), axes)
    xt = lax.psum(xt, axes)
    if wsh is not None:
        wsh = lax.psum(wsh + (safe_max(m) - m_g) * wseen, axes)
    return m_g, s, xt, wsh


def safe_max(m):
    """``m`` with ``-inf`` (nothing finite seen) replaced by 0, as the plain path's shift."""
    return jnp.where(m == -jnp.inf, jnp.zeros((), m.dtype), m)
