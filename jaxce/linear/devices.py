"""Running a sweep on the devices: directly, or under ``shard_map`` on a mesh.

:func:`on_devices` flattens the token axes per device and, for a call laid out on a
mesh (:class:`jaxce.sharding.Layout`), maps the sweep over each device's shard;
:func:`loss_values` (the forward sweep) and :func:`sweep` (the gradient sweep) reduce
their per-device sums across the data axes and the hidden gradient across the vocab
axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxce import rule, sharding
from jaxce.linear.grads import gradient_sweep
from jaxce.linear.plan import Need
from jaxce.linear.stats import forward_values, zero_terms

# The fused function's array arguments, in order; then the extra per-token arrays the
# backward pass passes along (row cotangents and saved statistics).
ARGS = ("hidden", "kernel", "bias", "weight", "w_t", "total", "eps", "t", "valid", "bad")
DIFF = ("hidden", "kernel", "bias", "weight", "w_t", "total", "eps")
STATS = ("m", "log_s", "shifted_t", "wsh")
ROW_KEYS = ("w_t", "t", "valid", "bad", "r") + STATS
ALL = ARGS + ("r",) + STATS


def spec_table(cfg) -> dict:
    lead, voc = cfg.layout.lead_spec, cfg.layout.vocab
    table = {
        "hidden": P(*lead, None),
        "kernel": P(voc, None) if cfg.vd else P(None, voc),
        "bias": P(voc),
        "weight": P(voc),
        "total": P(),
        "eps": P(),
    }
    table.update({k: P(*lead) for k in ROW_KEYS})
    return table


def on_devices(cfg, fn, args: dict, out_specs):
    """Runs ``fn(a, lead_shape)`` on the local blocks: under ``shard_map`` when the call is
    laid out on a mesh, directly otherwise. Token arrays arrive with their leading axes
    and are flattened per device (no global reshape of a sharded axis is needed);
    ``lead_shape`` is the local leading shape, for ``fn`` to shape its outputs."""
    present = {k: v for k, v in args.items() if v is not None}

    def flat(kw):
        lead = kw["hidden"].shape[:-1]
        a = dict.fromkeys(ALL)
        a.update(kw)
        a["hidden"] = a["hidden"].reshape(-1, cfg.d)
        for k in ROW_KEYS:
            if a[k] is not None:
                a[k] = a[k].reshape(-1)
        return fn(a, lead)

    if cfg.layout is None:
        return flat(present)
    table = spec_table(cfg)
    if sharding.is_explicit(cfg.layout):
        # Under explicit axes shard_map takes its inputs as they are typed: lay out
        # the derived arrays (row cotangents, saved statistics) as declared.
        present = {k: jax.sharding.reshard(v, table[k]) for k, v in present.items()}
    mapped = jax.shard_map(
        flat,
        mesh=cfg.layout.mesh,
        in_specs=({k: table[k] for k in present},),
        out_specs=out_specs,
        check_vma=False,
    )
    return mapped(present)


NEED_KEY = dict(zip(DIFF, Need._fields, strict=True))


def mesh_axes(cfg):
    if cfg.layout is None:
        return (), ()
    return cfg.layout.data_axes, cfg.layout.vocab_axes


def loss_values(cfg, per_row: bool, args: dict, with_stats: bool):
    """``((out, term_sums), stats)``: the losses (per token, or their sum), the sums of
    the rule's terms when ``cfg.split_terms`` (else None) and, optionally, the saved
    statistics."""
    data_axes, _ = mesh_axes(cfg)

    def fn(a, lead):
        loss, terms, stats = forward_values(cfg, a, with_stats)
        out = loss.reshape(lead) if per_row else sharding.psum(jnp.sum(loss), data_axes)
        if stats is not None:
            pairs = zip(STATS, stats, strict=True)
            stats = {k: s.reshape(lead) for k, s in pairs if s is not None}
        return (out, psum_terms(terms, data_axes)), stats

    if cfg.layout is None:
        return on_devices(cfg, fn, args, None)
    row = P(*cfg.layout.lead_spec)
    stat_specs = None
    if with_stats:
        stat_specs = {k: row for k in STATS if k != "wsh" or cfg.smoothing}
    out_spec = (row if per_row else P(), terms_spec(cfg))
    return on_devices(cfg, fn, args, (out_spec, stat_specs))


def psum_terms(terms, axes):
    if terms is None:
        return None
    return rule.Terms(*(None if v is None else sharding.psum(v, axes) for v in terms))


def terms_spec(cfg):
    t = zero_terms(cfg)
    return None if t is None else rule.Terms(*(None if v is None else P() for v in t))


def sweep(cfg, need: Need, args: dict):
    """``((loss_sum, term_sums), grads)`` from :func:`gradient_sweep`, reduced across
    devices."""
    data_axes, vocab_axes = mesh_axes(cfg)

    def fn(a, lead):
        (loss_sum, terms), dh, acc, d_w_t, d_total, d_eps = gradient_sweep(cfg, need, a)
        g = {}
        if need.hidden:
            g["hidden"] = sharding.psum(dh, vocab_axes).reshape(lead + (cfg.d,))
        if need.kernel:
            g["kernel"] = sharding.psum(acc.kernel, data_axes)
        if need.bias:
            g["bias"] = sharding.psum(acc.bias, data_axes)
        if acc.weight is not None:
            g["weight"] = sharding.psum(acc.weight, data_axes)
        if need.w_t:
            g["w_t"] = d_w_t.reshape(lead)
        if need.total_weight:
            g["total"] = sharding.psum(d_total, data_axes)
        if need.eps:
            g["eps"] = sharding.psum(d_eps, data_axes)
        return (sharding.psum(loss_sum, data_axes), psum_terms(terms, data_axes)), g

    if cfg.layout is None:
        return on_devices(cfg, fn, args, None)
    table = spec_table(cfg)
    keys = [k for k in DIFF if getattr(need, NEED_KEY[k])]
    if "weight" in keys and not cfg.smoothing:
        keys.remove("weight")
    return on_devices(cfg, fn, args, ((P(), terms_spec(cfg)), {k: table[k] for k in keys}))
