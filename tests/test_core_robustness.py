"""Bad and extreme input to every public loss (issue 10, "core edges" and "magnitudes").

A table of cases. Each is run eagerly and under ``jit``, ``vmap`` and ``grad`` (the bad
argument closed over, the good arrays traced), and each run's outcome is classified:

* ``clear``: a TypeError/ValueError whose message starts with the public function's name
  and names the argument — what the case expects;
* ``right``: a value (and gradient) equal to a float64 reference, rounded to float32;
* ``obscure``: any other exception, or a message that does not say who and what;
* ``silent``: a value other than the reference (a NaN included).

The test fails on any obscure or silent outcome and prints the tally. Float options are
decided per case: huge or subnormal ``softcap`` / ``z_loss`` raise (they cannot be held
in float32); ``softcap=1e38`` and tiny ``label_smoothing`` give the right answer; class
weights of ``1e37`` or ``1e-39`` give torch's answer under ``mean``.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxce

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(scale=2.0, size=(4, 3)), jnp.float32)
T = jnp.array([0, 2, 1, 2], jnp.int32)
H = jnp.asarray(RNG.normal(size=(4, 5)), jnp.float32)
K = jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)


def ce(x, t, **kw):
    return jaxce.cross_entropy(x, t, **kw)


def nll(x, t, **kw):
    return jaxce.nll_loss(jaxce.log_softmax(x), t, **kw)


def criterion(x, t, **kw):
    return jaxce.CrossEntropyLoss(**kw)(x, t)


def nll_criterion(x, t, **kw):
    return jaxce.NLLLoss(**kw)(jaxce.log_softmax(x), t)


def linear(x, t, **kw):
    """linear_cross_entropy of ``hidden = x`` (the logits are ``x @ K``)."""
    return jaxce.linear_cross_entropy(x, K[: x.shape[-1]], t, **kw)


W3 = jnp.asarray(RNG.uniform(0.5, 1.5, size=(4, 3)), jnp.float32)  # makes gradients non-trivial
MASK = np.array([[True, False, True]])  # broadcasts over the rows


def softmax_sum(x, t, **kw):
    return jnp.sum(jaxce.softmax(x, **kw) * W3)


def log_softmax_sum(x, t, **kw):
    out = jaxce.log_softmax(x, **kw)
    return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0) * W3)


def logsumexp_sum(x, t, **kw):
    return jnp.sum(jaxce.logsumexp(x, **kw))


def softmax_family_cases() -> list:
    """softmax, log_softmax, logsumexp: bad arguments, and masked / weighted values."""
    out = []
    for name, fn in [("softmax", softmax_sum), ("log_softmax", log_softmax_sum),
                     ("logsumexp", logsumexp_sum)]:
        arg = "a" if name == "logsumexp" else "x"
        out += [
            Case(f"{name}/str-input", fn, x=STR, raises=type_error(name, arg),
                 modes=("eager", "jit")),
            Case(f"{name}/object-input", fn, x=OBJ, raises=type_error(name, arg),
                 modes=("eager", "jit")),
            Case(f"{name}/bool-input", fn, x=np.ones((4, 3), bool),
                 raises=type_error(name, arg) if name != "logsumexp" else None,
                 reference=None if name != "logsumexp" else (
                     lambda x, t: jnp.sum(jax.nn.logsumexp(jnp.ones((4, 3)), axis=None))),
                 modes=("eager", "jit")),
            Case(f"{name}/where-shape", fn, kw=dict(where=np.ones((2, 2), bool)),
                 raises=value_error(name, "where")),
            Case(f"{name}/where-int", fn, kw=dict(where=np.ones((4, 3), np.int32)),
                 raises=type_error(name, "where")),
            Case(f"{name}/axis-out-of-range", fn, kw=dict(axis=5),
                 raises=value_error(name, "axis")),
            Case(f"{name}/axis-float", fn, kw=dict(axis=1.0), raises=type_error(name, "axis")),
        ]
    out += [
        Case("logsumexp/b-shape", logsumexp_sum, kw=dict(b=np.ones((2, 2), np.float32)),
             raises=value_error("logsumexp", "b")),
        Case("logsumexp/return_sign-int", logsumexp_sum, kw=dict(return_sign=1),
             raises=type_error("logsumexp", "return_sign")),
        Case("softmax/where-broadcast", softmax_sum, kw=dict(where=MASK),
             reference=lambda x, t: jnp.sum(jax.nn.softmax(x, where=MASK) * W3.astype(x.dtype))),
        Case("log_softmax/where-broadcast", log_softmax_sum, kw=dict(where=MASK),
             reference=lambda x, t: jnp.sum(
                 jnp.where(MASK, jax.nn.log_softmax(x, where=MASK), 0.0) * W3.astype(x.dtype))),
        Case("logsumexp/b-weights", logsumexp_sum, kw=dict(b=np.asarray(W3), axis=-1),
             reference=lambda x, t: jnp.sum(
                 jax.nn.logsumexp(x, axis=-1, b=np.asarray(W3, np.float64)))),
    ]
    return out


LOSSES = {"cross_entropy": ce, "nll_loss": nll, "CrossEntropyLoss": criterion,
          "NLLLoss": nll_criterion}


@dataclass
class Case:
    name: str
    fn: Any  # (x, t, **kw) -> loss
    x: Any = None  # None: X
    t: Any = None  # None: T
    kw: dict = field(default_factory=dict)
    raises: tuple | None = None  # (exception type, regex the message must match)
    reference: Any = None  # (x, t) -> float64 loss, for value cases
    modes: tuple = ("eager", "jit", "vmap", "grad")

    def __post_init__(self):
        self.x = X if self.x is None else self.x
        self.t = T if self.t is None else self.t


def ref_ce(*, weight=None, eps=0.0, z=0.0, softcap=None, reduction="mean"):
    """torch's cross_entropy (plus z-loss and softcap) in float64, as a JAX function."""

    def f(x, t):
        x = x.astype(jnp.float64)
        if softcap is not None:
            x = softcap * jnp.tanh(x / softcap)
        lp = jax.nn.log_softmax(x)
        c = x.shape[-1]
        w = jnp.ones(c, jnp.float64) if weight is None else jnp.asarray(weight, jnp.float64)
        w_t = w[t]
        nll = -w_t * jnp.take_along_axis(lp, t[:, None], -1)[:, 0]
        smooth = -jnp.sum(w * lp, axis=-1)
        lse = jax.nn.logsumexp(x, axis=-1)
        if reduction == "mean":
            d = jnp.sum(w_t)
            return (1 - eps) * nll.sum() / d + eps / c * smooth.sum() / d + z * jnp.sum(
                w_t * lse**2) / d
        per = (1 - eps) * nll + eps / c * smooth + z * w_t * lse**2
        return per.sum() if reduction == "sum" else per

    return f


def type_error(fn_name, arg):
    return (TypeError, rf"^{re.escape(fn_name)}\b.*`{arg}`")


def value_error(fn_name, arg):
    return (ValueError, rf"^{re.escape(fn_name)}\b.*`{arg}`")


STR = np.array([["a", "b", "c"]] * 4)
OBJ = np.array([[1.0, 2.0, 3.0]] * 4, dtype=object)


def cases() -> list[Case]:
    out = []
    for name, fn in LOSSES.items():
        is_nll = name in ("nll_loss", "NLLLoss")
        # object- and str-dtype arrays: a TypeError naming the argument and the dtype
        out += [
            Case(f"{name}/str-target", fn, t=np.array(["a", "b", "c", "d"]),
                 raises=type_error("cross_entropy" if not is_nll else "nll_loss", "target")),
            Case(f"{name}/object-target", fn, t=np.array([0, 1, 2, 1], dtype=object),
                 raises=type_error("cross_entropy" if not is_nll else "nll_loss", "target")),
        ]
        if name == "cross_entropy":
            out += [
                Case(f"{name}/str-logits", fn, x=STR, raises=type_error(name, "logits"),
                     modes=("eager", "jit")),
                Case(f"{name}/object-logits", fn, x=OBJ, raises=type_error(name, "logits"),
                     modes=("eager", "jit")),
                Case(f"{name}/object-weight", fn, kw=dict(weight=np.ones(3, dtype=object)),
                     raises=type_error(name, "weight")),
                Case(f"{name}/int-where", fn, kw=dict(where=np.ones(4, np.int32)),
                     raises=type_error(name, "where")),
                Case(f"{name}/where-shape", fn, kw=dict(where=np.ones((2, 2), bool)),
                     raises=value_error(name, "where")),
                Case(f"{name}/axis-empty-tuple", fn, kw=dict(axis=()),
                     raises=value_error(name, "axis")),
                Case(f"{name}/axis-repeated", fn, kw=dict(axis=(1, -1)),
                     raises=value_error(name, "axis")),
                Case(f"{name}/axis-list", fn, kw=dict(axis=[1]), raises=type_error(name, "axis")),
                Case(f"{name}/axis-float", fn, kw=dict(axis=1.0), raises=type_error(name, "axis")),
                Case(f"{name}/prob-target-no-broadcast", fn, t=jnp.ones((4, 2)) / 2,
                     raises=value_error(name, "target")),
            ]
    lce = "linear_cross_entropy"
    out += [
        Case(f"{lce}/str-target", linear, x=H, t=np.array(["a", "b", "c", "d"]),
             raises=type_error(lce, "target")),
        Case(f"{lce}/object-target", linear, x=H, t=np.array([0, 1, 2, 1], dtype=object),
             raises=type_error(lce, "target")),
    ]
    ce_name = "cross_entropy"
    # float options: a clear error where the value cannot be held in float32 ...
    for kw, arg in [
        (dict(softcap=1e39), "softcap"),
        (dict(softcap=1e-45), "softcap"),
        (dict(softcap=1e-39), "softcap"),
        (dict(softcap=float("inf")), "softcap"),
        (dict(softcap=float("nan")), "softcap"),
        (dict(softcap=0.0), "softcap"),
        (dict(z_loss=1e39), "z_loss"),
        (dict(z_loss=1e-40), "z_loss"),
        (dict(z_loss=float("nan")), "z_loss"),
        (dict(label_smoothing=1.5), "label_smoothing"),
        (dict(label_smoothing=float("nan")), "label_smoothing"),
    ]:
        out.append(Case(f"{ce_name}/{arg}={kw[arg]}", ce, kw=kw, raises=value_error(ce_name, arg)))
        if arg in ("softcap", "z_loss") and kw[arg] != 0.0:
            out.append(Case(f"CrossEntropyLoss/{arg}={kw[arg]}", criterion, kw=kw,
                            raises=value_error("cross_entropy", arg)
                            if kw[arg] == kw[arg] and abs(kw[arg]) != float("inf") and not (
                                arg == "softcap" and kw[arg] <= 0)
                            else value_error("CrossEntropyLoss", arg)))
    # ... and the right float32 answer elsewhere
    w37 = np.array([1e37, 3e37, 2e37], np.float32)
    w_big = np.array([3e38, 2e38, 1e38], np.float32)
    w_sub = np.array([1e-39, 3e-39, 2e-39], np.float32)
    for kw, ref in [
        (dict(softcap=1e38), ref_ce(softcap=1e38)),
        (dict(softcap=1e-30), ref_ce(softcap=1e-30)),
        (dict(z_loss=1e30), ref_ce(z=1e30)),
        (dict(label_smoothing=1e-40), ref_ce(eps=1e-40)),
        (dict(weight=jnp.asarray(w37)), ref_ce(weight=w37)),
        (dict(weight=jnp.asarray(w_big)), ref_ce(weight=w_big)),
        (dict(weight=jnp.asarray(w_sub)), ref_ce(weight=w_sub)),
        (dict(weight=jnp.asarray(w37), label_smoothing=0.1, z_loss=1e-3),
         ref_ce(weight=w37, eps=0.1, z=1e-3)),
    ]:
        label = ",".join(f"{k}={'w' if k == 'weight' else v}" for k, v in kw.items())
        out.append(Case(f"{ce_name}/{label}", ce, kw=kw, reference=ref))
        if "weight" in kw and "label_smoothing" not in kw:
            out.append(Case(f"nll_loss/{label}", nll, kw=kw, reference=ref))
    return out + softmax_family_cases()


def _same_error(err, raises):
    kind, pattern = raises
    return isinstance(err, kind) and re.search(pattern, str(err), re.S) is not None


def _close(a, b, rtol=2e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b), initial=0.0)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=False)


def run_case(case: Case, mode: str):
    """``(outcome, detail)`` of one case in one mode."""
    x, t, kw = case.x, case.t, case.kw
    good_x = isinstance(x, jax.Array)
    good_t = isinstance(t, jax.Array)

    def call(x_, t_):
        return case.fn(x_ if good_x else x, t_ if good_t else t, **kw)

    try:
        if mode == "eager":
            got = call(x, t)
        elif mode == "jit":
            got = jax.jit(call)(x if good_x else None, t if good_t else None)
        elif mode == "vmap":
            stack = lambda a: jnp.stack([a, a]) if isinstance(a, jax.Array) else None  # noqa: E731
            got = jax.vmap(call, in_axes=(0 if good_x else None, 0 if good_t else None))(
                stack(x), stack(t))
        else:  # grad with respect to the logits
            got = jax.grad(lambda x_: call(x_, t))(x if good_x else None)
    except (TypeError, ValueError) as err:
        if case.raises and _same_error(err, case.raises):
            return "clear", ""
        return "obscure", f"{type(err).__name__}: {str(err)[:200]}"
    except Exception as err:  # noqa: BLE001 - classifying every failure is the point
        return "obscure", f"{type(err).__name__}: {str(err)[:200]}"
    if case.raises:
        return "silent", f"expected {case.raises[0].__name__}, got a value {got!r:.80}"
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x), jnp.float64)
        t64 = jnp.asarray(np.asarray(t))
        if mode == "grad":
            want = jax.grad(case.reference)(x64, t64)
        else:
            want = case.reference(x64, t64)
        want = np.asarray(want, np.float64)
    if mode == "vmap":
        want = np.stack([want, want])
    want32 = want.astype(np.float32)  # the right float32 answer (inf where it overflows)
    if not _close(got, want32):
        return "silent", f"got {np.asarray(got)!r:.120} want {want32!r:.120}"
    return "right", ""


CASES = cases()


def test_every_bad_or_extreme_input_is_answered_clearly_or_rightly():
    tally, bad = collections.Counter(), []
    for case in CASES:
        for mode in case.modes:
            outcome, detail = run_case(case, mode)
            tally[outcome] += 1
            if outcome in ("obscure", "silent"):
                bad.append(f"{case.name} [{mode}]: {outcome}: {detail}")
    print(f"{sum(tally.values())} runs of {len(CASES)} cases: {dict(tally)}")
    assert tally["clear"] > 0 and tally["right"] > 0
    assert not bad, "\n".join(bad)


def test_classifier_can_fail():
    """The tally is not vacuous: a wrong reference is silent, a wrong pattern obscure."""
    wrong = Case("wrong-reference", ce, reference=lambda x, t: ref_ce()(x, t) + 1.0)
    assert run_case(wrong, "eager")[0] == "silent"
    misnamed = Case("misnamed", ce, kw=dict(softcap=1e39), raises=value_error("nll_loss", "x"))
    assert run_case(misnamed, "eager")[0] == "obscure"


# --- weights against torch, where torch has the feature -------------------------------------


@pytest.mark.parametrize("scale", [1e37, 1e-39, 1e-30, 3e38])  # 3e38: weights of 1e38..3e38
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_extreme_class_weights_match_torch(torch, scale, fn):
    """``mean`` is a ratio, so jaxce scales the weights by a power of two first: huge
    weights keep torch's non-zero gradient (1/Σw would underflow) and subnormal ones
    torch's value (XLA flushes them to zero: 0/0)."""
    import torch.nn.functional as F

    w = np.array([1.0, 3.0, 2.0], np.float32) * np.float32(min(scale, 1e38))
    assert np.all(np.isfinite(w))
    # Weights whose sums overflow float32: torch's float32 mean is inf/inf = NaN; jaxce's
    # is the exact answer, compared with torch in float64.
    tdt = torch.float64 if scale > 1e38 else torch.float32
    xt = torch.tensor(np.asarray(X), requires_grad=True, dtype=tdt)
    wt = torch.tensor(w, dtype=tdt)
    if fn == "cross_entropy":
        loss = F.cross_entropy(xt, torch.tensor(np.asarray(T), dtype=torch.long), weight=wt)
        f = lambda x: jaxce.cross_entropy(x, T, weight=jnp.asarray(w))  # noqa: E731
    else:
        loss = F.nll_loss(torch.log_softmax(xt, -1), torch.tensor(np.asarray(T),
                          dtype=torch.long), weight=wt)
        f = lambda x: jaxce.nll_loss(jax.nn.log_softmax(x), T, weight=jnp.asarray(w))  # noqa: E731
    loss.backward()
    v, g = jax.value_and_grad(f)(X)
    np.testing.assert_allclose(float(v), loss.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), xt.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(g)).max() > 0
    # the weights' own gradient is scaled back: against ordinary weights' (mean is invariant;
    # for 1e37 it is below float32's normal range, which XLA flushes to 0)
    gw = jax.grad(lambda w_: jaxce.cross_entropy(X, T, weight=w_))(jnp.asarray(w))
    g1 = jax.grad(lambda w_: jaxce.cross_entropy(X, T, weight=w_))(jnp.array([1.0, 3.0, 2.0]))
    if scale in (1e-39, 1e-30):
        np.testing.assert_allclose(np.asarray(gw) * scale, np.asarray(g1), rtol=1e-4)


# --- the checked path and check_targets ---------------------------------------------------


@pytest.mark.parametrize("fn", [jaxce.cross_entropy, jaxce.nll_loss])
def test_checked_empty_batch_answers_as_unchecked(fn):
    x, t = jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)
    safe = jaxce.checked(fn)
    assert np.isnan(float(safe(x, t))) and np.isnan(float(fn(x, t)))
    assert float(safe(x, t, reduction="sum")) == float(fn(x, t, reduction="sum")) == 0.0
    assert safe(x, t, reduction="none").shape == (0,)
    # and masked empty: nothing takes part
    assert np.isnan(float(safe(jnp.zeros((2, 3)), jnp.array([0, 1]),
                               where=jnp.zeros(2, bool))))


def test_checked_linear_cross_entropy_on_empty_batch():
    h, t = jnp.zeros((0, 5)), jnp.zeros((0,), jnp.int32)
    safe = jaxce.checked(jaxce.linear_cross_entropy)
    assert np.isnan(float(safe(h, K, t)))
    assert float(safe(h, K, t, reduction="sum")) == 0.0


def test_check_targets_on_empty_input_passes():
    err, _ = checkify.checkify(lambda t: jaxce.check_targets(t, 3))(jnp.zeros((0,), jnp.int32))
    err.throw()  # nothing to report


@pytest.mark.parametrize(
    ("num_classes", "kind"),
    [(3.5, TypeError), (None, TypeError), ("3", TypeError), (jnp.array(3), TypeError),
     (np.array([3]), TypeError), (True, TypeError), (-1, ValueError)],
)
def test_check_targets_validates_num_classes(num_classes, kind):
    def f(t):
        jaxce.check_targets(t, num_classes)

    for run in (lambda: checkify.checkify(f)(T), lambda: jax.jit(checkify.checkify(f))(T)):
        with pytest.raises(kind, match=r"^check_targets: `num_classes`"):
            run()


def test_check_targets_accepts_numpy_integers_and_where():
    err, _ = checkify.checkify(lambda t: jaxce.check_targets(t, np.int64(3)))(T)
    err.throw()
    bad = jnp.array([0, 7, 1, 2])
    err, _ = checkify.checkify(
        lambda t: jaxce.check_targets(t, 3, where=jnp.array([1, 0, 1, 1], bool)))(bad)
    err.throw()  # the bad target is left out
    err, _ = checkify.checkify(lambda t: jaxce.check_targets(t, 3))(bad)
    with pytest.raises(ValueError, match="target value 7 at flattened position 1"):
        err.throw()


@pytest.mark.parametrize("fn", [None, 3, "cross_entropy"])
def test_checked_refuses_a_non_callable_when_wrapping(fn):
    with pytest.raises(TypeError, match=r"^checked: `fn` must be callable"):
        jaxce.checked(fn)
