"""Golden cases for jaxce's parity suite, computed with torch 2.13.0 (CPU).

Regenerate with ``make golden`` (that is ``.venv/bin/python tests/golden/generate.py``).
It rewrites two files next to this script, identically on every run (fixed seeds,
fixed archive timestamps, one torch thread):

* ``cases.json``: one record per case (function, jaxce options, what jaxce must do,
  the spec section, and torch's own result or error where jaxce deliberately differs);
* ``cases.npz``: the inputs, cotangents, torch's outputs and gradients (and, for float32
  and half-precision references, torch's own float32 error ``|f32 - f64|`` on the same
  inputs), under the keys named in ``cases.json``. Identical arrays are stored once.

``tests/test_golden.py`` replays every case through jaxce. What each case expects:

* ``value``: jaxce returns torch's loss (and gradients, for the listed arguments);
* ``nan``: a non-ignored target outside ``[0, C)`` (torch raises ``IndexError``,
  jaxce gives NaN at that position, spec section 9.3; ``jaxce.checked`` raises);
* ``error``: jaxce raises one of the listed exception types at trace time.

Where spec section 9 says jaxce differs from torch on purpose, the reference is
what jaxce should give (torch on a cast input, an explicit torch formula, or torch's
float32 result for half precision) and torch's own answer is kept in the record's
``torch`` field. torch is imported inside :func:`main`, so importing this module
(pytest's doctest collection does) needs only NumPy.
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import re
import zipfile
import zlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
JSON_PATH = HERE / "cases.json"
NPZ_PATH = HERE / "cases.npz"
TORCH_VERSION = "2.13.0"

LOW = ("float16", "bfloat16")
SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
INF, NAN = math.inf, math.nan

torch = None  # set in main()
F = None


# ---------------------------------------------------------------------------------
# small helpers


def rng_for(name: str) -> np.random.Generator:
    """A generator seeded by the case name, so adding a case never changes the others."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def jfloat(v):
    """A JSON-safe float: NaN and infinities become the strings 'nan', 'inf', '-inf'."""
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def jopt(v):
    """JSON form of an option value (floats that JSON cannot hold are tagged)."""
    if isinstance(v, float) and not math.isfinite(v):
        return {"$float": jfloat(v)}
    return v


def tdtype(name: str):
    return getattr(torch, name)


def to_torch(a, dtype: str, requires_grad=False):
    """NumPy (float64 source or integer) -> torch tensor of ``dtype`` (bf16 via float32)."""
    a = np.asarray(a)
    if dtype == "bfloat16":
        t = torch.from_numpy(np.array(a, np.float32)).to(torch.bfloat16)
    else:
        t = torch.from_numpy(np.array(a)).to(tdtype(dtype))
    if requires_grad:
        t.requires_grad_(True)
    return t


def to_numpy(t) -> np.ndarray:
    """torch -> NumPy; bfloat16 is stored as (exact) float32 values."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def err_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:200]}"


# ---------------------------------------------------------------------------------
# torch references


def torch_call(fn, x, t, w, opts):
    """The torch function a jaxce call corresponds to (torch layout: class axis 1, or 0 for 1-D)."""
    if fn == "log_softmax":
        return F.log_softmax(x, dim=opts["axis"])
    if fn == "softmax":
        return F.softmax(x, dim=opts["axis"])
    if fn == "logsumexp":
        return torch.logsumexp(x, dim=opts["axis"])
    kw = {
        "weight": w,
        "ignore_index": opts.get("ignore_index", -100),
        "reduction": opts.get("reduction", "mean"),
    }
    if fn == "nll_loss":
        return F.nll_loss(x, t, **kw)
    if fn == "nll_log_softmax":
        return F.nll_loss(F.log_softmax(x, dim=1 if x.ndim > 1 else 0), t, **kw)
    if fn == "cross_entropy":
        ls = opts.get("label_smoothing", 0.0)
        if isinstance(ls, dict):  # a 0-d array in jaxce, a 0-d tensor in torch
            ls = torch.tensor(ls["value"], dtype=tdtype(ls["$array"]))
        return F.cross_entropy(x, t, label_smoothing=ls, **kw)
    raise ValueError(fn)


def explicit_class_index(fn, x, t, w, opts):
    """torch's class-index loss written out with differentiable ops (spec 2.2, 2.3, 3.2).

    torch refuses gradients with respect to ``weight``; jaxce gives them (spec 9.7).
    This formula is checked against ``F.cross_entropy``/``F.nll_loss`` before its
    weight gradient is used as the reference.
    """
    cd = 1 if x.ndim > 1 else 0
    if x.ndim == 1:
        t = t.reshape(())
    ii = opts.get("ignore_index", -100)
    valid = t != ii
    ts = torch.where(valid, t, torch.zeros_like(t))
    if fn == "nll_loss":
        lp = x
    else:
        xs = torch.where(valid.unsqueeze(cd), x, torch.zeros_like(x))
        lp = F.log_softmax(xs, dim=cd)
    picked = lp.gather(cd, ts.unsqueeze(cd)).squeeze(cd)
    wt = w[ts]
    zero = torch.zeros((), dtype=x.dtype)
    nll = torch.where(valid, -wt * picked, zero)
    eps = opts.get("label_smoothing", 0.0)
    eps = eps if isinstance(eps, float) and eps > 0 else 0.0
    shape = [1] * x.ndim
    shape[cd] = -1
    smooth = torch.where(valid, -(lp * w.reshape(shape)).sum(cd), zero)
    c = x.shape[cd]
    red = opts.get("reduction", "mean")
    if red == "none":
        return (1 - eps) * nll + eps / c * smooth if eps else nll
    if red == "sum":
        return (1 - eps) * nll.sum() + eps / c * smooth.sum() if eps else nll.sum()
    d = torch.where(valid, wt, zero).sum()
    return (1 - eps) * nll.sum() / d + eps / c * smooth.sum() / d if eps else nll.sum() / d


# ---------------------------------------------------------------------------------
# the case table


class Golden:
    def __init__(self):
        self.cases: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.by_content: dict[tuple, str] = {}
        self.ids: set[str] = set()

    # -- storage ---------------------------------------------------------------
    def put(self, cid: str, name: str, a: np.ndarray) -> str:
        """Stores ``a`` once: identical arrays (same dtype, shape, bytes) share a key."""
        a = np.array(a)
        content = (a.dtype.str, a.shape, a.tobytes())
        if content in self.by_content:
            return self.by_content[content]
        key = re.sub(r"[^A-Za-z0-9_.-]", ".", cid) + "__" + name
        assert key not in self.arrays, key
        self.arrays[key] = a
        self.by_content[content] = key
        return key

    def put_input(self, cid, name, a, dtype) -> dict:
        """Stores an input in the dtype jaxce receives (bfloat16 as exact float32 values)."""
        a = np.asarray(a)
        if dtype == "bfloat16":
            stored = to_numpy(to_torch(a, "bfloat16"))
        elif dtype == "bool":
            stored = a.astype(np.bool_)
        else:
            stored = a.astype(np.dtype(dtype))
            if np.issubdtype(stored.dtype, np.integer):
                assert np.array_equal(stored.astype(np.int64), a.astype(np.int64)), (cid, name)
        return {"key": self.put(cid, name, stored), "dtype": dtype}

    def new_id(self, cid):
        assert cid not in self.ids, cid
        self.ids.add(cid)
        return cid

    # -- value / nan cases -------------------------------------------------------
    def value(
        self,
        name,
        fn,
        x,
        target=None,
        weight=None,
        *,
        category,
        spec,
        note="",
        dtypes=("float64", "float32"),
        target_dtype="int64",
        weight_dtype=None,
        prob_dtype=None,
        cot=None,
        layouts=None,
        exact=None,
        module=False,
        torch_native_target=False,
        no_grad=False,
        checked=False,
        **options,
    ):
        """A case where jaxce must return a value (torch's, or NaN where torch raises).

        ``x``, ``target`` (probabilities) and ``weight`` are float64 sources cast to each
        dtype in ``dtypes``. ``exact`` maps a dtype to the literal float torch gives.
        """
        for dtype in dtypes:
            self._value_one(
                name,
                fn,
                x,
                target,
                weight,
                dtype,
                category=category,
                spec=spec,
                note=note,
                target_dtype=target_dtype,
                weight_dtype=weight_dtype,
                prob_dtype=prob_dtype,
                cot=cot,
                layouts=layouts,
                exact=(exact or {}).get(dtype),
                module=module,
                torch_native_target=torch_native_target,
                no_grad=no_grad,
                checked=checked,
                options=options,
            )

    def _value_one(
        self,
        name,
        fn,
        x,
        target,
        weight,
        dtype,
        *,
        category,
        spec,
        note,
        target_dtype,
        weight_dtype,
        prob_dtype,
        cot,
        layouts,
        exact,
        module,
        torch_native_target,
        no_grad,
        checked,
        options,
    ):
        cid = self.new_id(f"{name}/{SHORT[dtype]}")
        x = np.asarray(x, np.float64)
        low = dtype in LOW
        wdt = weight_dtype or dtype
        probabilities = (
            fn == "cross_entropy" and target is not None and np.asarray(target).dtype.kind == "f"
        )
        pdt = (prob_dtype or dtype) if probabilities else None
        opts = dict(options)
        if fn in ("nll_loss", "cross_entropy", "nll_log_softmax") and x.ndim > 2:
            opts.setdefault("axis", 1)
        torch_opts = dict(opts)
        if fn in ("log_softmax", "softmax", "logsumexp"):
            torch_opts.setdefault("axis", -1)

        rec = {
            "id": cid,
            "fn": fn,
            "category": category,
            "spec": spec,
            "note": note,
            "dtype": dtype,
            "expect": "value",
            "inputs": {},
            "options": {},
            "torch": {},
        }
        # inputs in jaxce's dtypes
        rec["inputs"]["x"] = self.put_input(cid, "x", x, dtype)
        if target is not None:
            tdt = pdt if probabilities else target_dtype
            rec["inputs"]["target"] = self.put_input(cid, "target", target, tdt)
        if weight is not None:
            rec["inputs"]["weight"] = self.put_input(cid, "weight", weight, wdt)
        for k, v in opts.items():
            rec["options"][k] = jopt(v)

        # torch reference inputs: exactly the stored values, in the reference dtype
        def tin(key, ref):
            arr = np.asarray(self.arrays[rec["inputs"][key]["key"]])
            d = rec["inputs"][key]["dtype"]
            return to_torch(arr, "float32" if (d in LOW and ref) else d)

        xt = tin("x", True).requires_grad_(True)
        tt = None
        bad = None
        if target is not None:
            if probabilities:
                tt = tin("target", True).requires_grad_(True)
            else:
                traw = np.asarray(target).astype(np.int64)
                ii = opts.get("ignore_index", -100)
                c = x.shape[1 if x.ndim > 1 else 0]
                bad = (traw != ii) & ((traw < 0) | (traw >= c))
                tt = torch.from_numpy(np.where(bad, ii, traw))
        wt = tin("weight", True) if weight is not None else None

        # what torch itself says for the native dtypes, where jaxce deliberately differs
        native = self._torch_native(fn, rec, opts, torch_native_target, bad)
        if native:
            rec["torch"]["native"] = native

        # the reference computation
        mixed = weight is not None and not probabilities and wt.dtype != xt.dtype
        out = self._forward(fn, xt, tt, wt, torch_opts, mixed)
        result_dtype = self._result_dtype(fn, dtype, wdt, pdt)
        precisions = [dtype, wdt] + ([pdt] if pdt else [])
        rec["tol"] = "f64" if all(p == "float64" for p in precisions) else "f32"

        # cotangent (nan cases get one too, so that they run the same jaxce program)
        rng = rng_for(name + "/cot")
        if cot is None:
            if out.ndim == 0:
                c64 = np.asarray(rng.uniform(0.5, 2.0))
            else:
                c64 = rng.uniform(-1.0, 1.0, size=tuple(out.shape))
        else:
            c64 = np.broadcast_to(np.asarray(cot, np.float64), tuple(out.shape))
        cot_store = self.put_input(cid, "cot", c64, result_dtype)
        rec["cot"] = cot_store["key"]

        if bad is not None and bad.any():
            rec["expect"] = "nan"
            loss = to_numpy(out)
            if loss.ndim == 0:
                loss = np.asarray(np.nan, loss.dtype)
            else:
                loss = np.where(bad, np.nan, loss).astype(loss.dtype)
            rec["result"] = {
                "dtype": result_dtype,
                "shape": list(loss.shape),
                "loss": self.put(cid, "loss", loss),
            }
            rec["bad_targets"] = [int(v) for v in np.asarray(target).ravel()[bad.ravel()]]
            rec["x64"] = self._needs_x64(rec)
            if checked:
                rec["checked"] = True
            self.cases.append(rec)
            return

        ct = to_torch(self.arrays[cot_store["key"]], str(out.dtype).replace("torch.", ""))
        wrt = [] if no_grad else ["x"] + (["target"] if probabilities else [])
        grads = self._backward(cid, rec, fn, out, xt, tt, wt, torch_opts, ct, wrt)
        loss_np = to_numpy(out)
        refs = {"loss": loss_np}
        rec["grads"] = {}
        for n, gr in grads.items():
            if n == "x" and fn == "cross_entropy" and not probabilities:
                gr = self._zero_ignored_rows(rec, gr, x.ndim, opts)
            refs[n] = gr
        # spec 9.7: weight gradients (class-index: explicit formula; probabilities: torch)
        if weight is not None and not low and not no_grad and np.all(np.isfinite(loss_np)):
            gw = self._weight_grad(fn, rec, probabilities, xt, tt, wt, opts, c64, out)
            if gw is not None:
                refs["weight"] = gw
        for n, a in refs.items():
            if n != "loss":
                rec["grads"][n] = self.put(cid, "grad_" + n, a)

        # torch's own float32 error, |f32 - f64| on the same inputs, widens the f32 tolerance
        if rec["tol"] == "f32" or low:
            err = self._f32_error(
                fn, rec, xt, tt, wt, torch_opts, c64, refs, probabilities, opts, wrt
            )
            if err:
                rec["err"] = {n: self.put(cid, "err_" + n, e) for n, e in err.items()}

        rec["result"] = {
            "dtype": result_dtype,
            "shape": list(loss_np.shape),
            "loss": self.put(cid, "loss", loss_np),
        }
        if loss_np.ndim == 0 and loss_np == 0 and "empty" in name:
            rec["signed_zero"] = True  # spec 2.3/3.3: +0. (class indices), -0. (probabilities)
        if exact is not None:
            assert loss_np.dtype == np.float32 and float(loss_np) == exact, (cid, float(loss_np))
            rec["exact"] = exact
        if layouts:
            rec["layouts"] = list(layouts)
        if module:
            rec["module"] = True
        rec["x64"] = self._needs_x64(rec)
        self.cases.append(rec)

    def _forward(self, fn, xt, tt, wt, torch_opts, mixed):
        if mixed:
            # spec 9.7: the weight is promoted. The log-softmax stays in the logits' dtype
            # (as on torch's probability path); CE of those log-probabilities in the
            # promoted dtype re-normalises them, which moves them by rounding only.
            promoted = torch.promote_types(xt.dtype, wt.dtype)
            cd = 1 if xt.ndim > 1 else 0
            base = F.log_softmax(xt, dim=cd) if fn == "cross_entropy" else xt
            return torch_call(fn, base.to(promoted), tt, wt.to(promoted), torch_opts)
        return torch_call(fn, xt, tt, wt, torch_opts)

    def _backward(self, cid, rec, fn, out, xt, tt, wt, torch_opts, ct, wrt):
        if not wrt:
            return {}
        ins = {"x": xt, "target": tt}
        try:
            grads = torch.autograd.grad(out, [ins[n] for n in wrt], ct, retain_graph=True)
        except RuntimeError as e:
            # torch's backward rejects a (1,) target for (C,) input with reduction='none'
            # (the forward accepts it); the 0-d target gives the same function.
            assert xt.ndim == 1 and tt.shape == (1,), (cid, e)
            if rec is not None:
                rec["torch"]["grad_x"] = (
                    f"backward raises {err_text(e)}; gradient of the 0-d target"
                )
            out2 = torch_call(fn, xt, tt.reshape(()), wt, torch_opts)
            grads = torch.autograd.grad(out2, [ins[n] for n in wrt], ct)
        return {n: to_numpy(gr) for n, gr in zip(wrt, grads, strict=True)}

    def _f32_error(self, fn, rec, xt, tt, wt, torch_opts, c64, refs, probabilities, opts, wrt):
        """``|ref - torch_f64(same inputs)|`` for every reference array (None where 0)."""
        x64 = xt.detach().double().requires_grad_(True)
        t64 = tt.detach().double().requires_grad_(True) if probabilities else tt
        w64 = wt.double() if wt is not None else None
        out = torch_call(fn, x64, t64, w64, torch_opts)
        ct = torch.from_numpy(np.array(c64, np.float64))
        ref64 = {"loss": to_numpy(out)}
        ref64.update(self._backward(rec["id"], None, fn, out, x64, t64, w64, torch_opts, ct, wrt))
        if "weight" in refs:
            gw = self._weight_grad(fn, rec, probabilities, x64, t64, w64, opts, c64, out)
            ref64["weight"] = gw
        if "x" in ref64 and fn == "cross_entropy" and not probabilities:
            ref64["x"] = self._zero_ignored_rows(rec, ref64["x"], xt.ndim, opts, note=False)
        err = {}
        for n, r in refs.items():
            with np.errstate(invalid="ignore"):
                e = np.abs(r.astype(np.float64) - ref64[n])
            e = np.where(np.isfinite(e), e, 0.0).astype(np.float32)
            if np.any(e > 0):
                err[n] = e
        return err

    def _result_dtype(self, fn, dtype, wdt, pdt):
        names = [dtype] + ([wdt] if wdt else []) + ([pdt] if pdt else [])
        if fn in ("log_softmax", "softmax", "logsumexp"):
            return dtype
        order = ["bfloat16", "float16", "float32", "float64"]
        if "bfloat16" in names and "float16" in names:
            return "float32"
        return max(names, key=order.index)

    def _needs_x64(self, rec):
        dts = [i["dtype"] for i in rec["inputs"].values()]
        if "float64" in dts:
            return True
        t = rec["inputs"].get("target")
        if t and t["dtype"] == "int64":
            v = self.arrays[t["key"]]
            if v.size and (v.max() > np.iinfo(np.int32).max or v.min() < np.iinfo(np.int32).min):
                return True
        ii = rec["options"].get("ignore_index")
        if isinstance(ii, int) and t and t["dtype"] == "int64" and not -(2**31) <= ii < 2**31:
            v = self.arrays[t["key"]]
            return bool(np.any(v == ii))
        return False

    def _zero_ignored_rows(self, rec, g, ndim, opts, note=True):
        """spec 9.6: jaxce's gradient is exactly 0 on ignored positions (torch: NaN rows)."""
        ii = opts.get("ignore_index", -100)
        t = self.arrays[rec["inputs"]["target"]["key"]].astype(np.int64)
        if ndim == 1:
            ignored = np.full(g.shape, bool(np.all(t == ii)))
        else:
            ignored = np.broadcast_to(np.expand_dims(t == ii, 1), g.shape)
        if note and np.isnan(g[ignored]).any():
            rec["torch"]["grad_x"] = "NaN on ignored rows (spec 4); jaxce gives 0 (spec 9.6)"
        return np.where(ignored, np.zeros((), g.dtype), g)

    def _weight_grad(self, fn, rec, probabilities, xt, tt, wt, opts, c64, out):
        dt = xt.dtype
        x2 = xt.detach().clone().requires_grad_(True)
        w2 = wt.detach().clone().requires_grad_(True)
        if w2.dtype != dt:
            return None  # mixed dtypes: the value is checked, the weight gradient is not
        if probabilities:
            t2 = tt.detach()
            o2 = F.cross_entropy(
                x2,
                t2,
                weight=w2,
                reduction=opts.get("reduction", "mean"),
                label_smoothing=opts.get("label_smoothing", 0.0),
                ignore_index=opts.get("ignore_index", -100),
            )
        else:
            if isinstance(opts.get("label_smoothing", 0.0), dict):
                return None
            o2 = explicit_class_index(fn, x2, tt, w2, opts)
            if o2.shape != out.shape:
                o2 = o2.reshape(out.shape)
            ok = torch.allclose(
                o2.detach(),
                out.detach(),
                rtol=1e-12 if dt == torch.float64 else 2e-6,
                atol=1e-12 if dt == torch.float64 else 1e-6,
                equal_nan=True,
            )
            assert ok, (rec["id"], o2, out)
        ct = torch.from_numpy(np.asarray(c64)).to(o2.dtype)
        (gw,) = torch.autograd.grad(o2, [w2], ct)
        return to_numpy(gw)

    def _torch_native(self, fn, rec, opts, torch_native_target, bad):
        """torch's answer on jaxce's exact inputs (dtypes included), for the record."""
        ins = rec["inputs"]
        dts = {k: v["dtype"] for k, v in ins.items()}
        deviates = (
            dts["x"] in LOW
            or torch_native_target
            or (bad is not None and bad.any())
            or ("weight" in dts and dts["weight"] != dts["x"])
            or ("target" in dts and dts["target"] in LOW)
        )
        if not deviates:
            return None
        x = to_torch(self.arrays[ins["x"]["key"]], dts["x"])
        t = None
        if "target" in ins:
            t = to_torch(self.arrays[ins["target"]["key"]], dts["target"])
        w = to_torch(self.arrays[ins["weight"]["key"]], dts["weight"]) if "weight" in ins else None
        topts = dict(opts)
        if fn in ("log_softmax", "softmax", "logsumexp"):
            topts.setdefault("axis", -1)
        try:
            out = torch_call(fn, x, t, w, topts)
        except Exception as e:  # noqa: BLE001 - recording torch's error is the point
            return err_text(e)
        v = out.detach().float()
        if v.ndim == 0:
            return f"{jfloat(v.item())!r} ({str(out.dtype).replace('torch.', '')})"
        head = [jfloat(a) for a in v.ravel()[:4].tolist()]
        return f"{head!r}" if v.numel() <= 4 else f"shape {list(v.shape)}, first {head!r}"

    # -- error cases -------------------------------------------------------------
    def error(
        self,
        name,
        fn,
        x,
        target=None,
        weight=None,
        *,
        types,
        category,
        spec,
        note="",
        x_dtype="float32",
        target_dtype="int64",
        weight_dtype="float32",
        construct=False,
        **options,
    ):
        """jaxce must raise one of ``types`` (trace time); torch's error is recorded.

        ``weight`` may be a Python list (kept as a list: jaxce must reject it).
        """
        cid = self.new_id(f"{name}/error")
        rec = {
            "id": cid,
            "fn": fn,
            "category": category,
            "spec": spec,
            "note": note,
            "expect": "error",
            "types": list(types),
            "inputs": {},
            "options": {},
            "torch": {},
            "x64": False,
        }
        if construct:
            rec["construct"] = True
        rec["inputs"]["x"] = self.put_input(cid, "x", x, x_dtype)
        if target is not None:
            rec["inputs"]["target"] = self.put_input(cid, "target", target, target_dtype)
        if isinstance(weight, list):
            rec["options"]["weight"] = {"$list": weight}
        elif weight is not None:
            rec["inputs"]["weight"] = self.put_input(cid, "weight", weight, weight_dtype)
        for k, v in options.items():
            rec["options"][k] = jopt(v)

        xt = to_torch(self.arrays[rec["inputs"]["x"]["key"]], x_dtype)
        tt = None
        if target is not None:
            tt = to_torch(self.arrays[rec["inputs"]["target"]["key"]], target_dtype)
        wt = weight
        if isinstance(weight, list):
            wt = weight
        elif weight is not None:
            wt = to_torch(self.arrays[rec["inputs"]["weight"]["key"]], weight_dtype)
        topts = dict(options)
        if fn in ("log_softmax", "softmax", "logsumexp"):
            topts.setdefault("axis", -1)
        tfn = "cross_entropy" if fn == "CrossEntropyLoss" else fn
        try:
            if tfn == "cross_entropy" and construct:
                ls = topts.pop("label_smoothing", 0.0)
                crit = torch.nn.CrossEntropyLoss(label_smoothing=ls, **topts)
                rec["torch"]["construct"] = "constructed without error"
                res = crit(xt, tt)
            else:
                res = torch_call(tfn, xt, tt, wt, topts)
            rec["torch"]["error"] = None
            rec["torch"]["result"] = repr(res.detach().tolist())
        except Exception as e:  # noqa: BLE001
            rec["torch"]["error"] = err_text(e)
        self.cases.append(rec)
        return rec

    # -- output ------------------------------------------------------------------
    def write(self):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key in sorted(self.arrays):
                data = io.BytesIO()
                np.lib.format.write_array(data, np.array(self.arrays[key]), allow_pickle=False)
                info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data.getvalue(), compresslevel=9)
        NPZ_PATH.write_bytes(buf.getvalue())
        # one case per line: compact, and a regenerated file diffs case by case
        head = {"torch_version": TORCH_VERSION, "generator": "tests/golden/generate.py"}
        lines = [json.dumps(c, allow_nan=False, separators=(",", ":")) for c in self.cases]
        text = json.dumps(head)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
        json.loads(text)
        JSON_PATH.write_text(text)


# ---------------------------------------------------------------------------------
# input helpers


def logits(rng, shape, scale=2.0):
    return rng.standard_normal(shape) * scale


def labels(rng, shape, c):
    return rng.integers(0, c, size=shape).astype(np.int64)


def class_weight(rng, c):
    return rng.uniform(0.25, 2.0, size=c)


def probs(rng, shape, axis=1):
    z = np.exp(rng.standard_normal(shape))
    return z / z.sum(axis=axis, keepdims=True)


def with_ignored(t, rng, ii=-100, frac=0.3):
    t = t.copy()
    m = rng.uniform(size=t.shape) < frac
    if t.size and not m.any():
        m.flat[0] = True
    t[m] = ii
    return t


# ---------------------------------------------------------------------------------
# the cases, by spec section
#
# Cases are grouped in families that share a shape and the static options, so that the
# test compiles one jaxce program per family and replays the data variants through it
# (compiling is what costs time). The 2-D class-index/probability family is (6, 4).

REDS = ("mean", "sum", "none")


def softmax_cases(g: Golden):
    cat = "softmax"
    for fn in ("log_softmax", "softmax"):
        r = rng_for(fn)
        E = dict(category=cat, spec="1.1")
        g.value(f"{fn}/1d", fn, logits(r, (7,)), axis=-1, **E)
        g.value(f"{fn}/2d/axis-1", fn, logits(r, (4, 5)), axis=-1, **E)
        x3 = logits(r, (2, 3, 4))
        g.value(f"{fn}/3d/axis0", fn, x3, axis=0, **E)
        g.value(f"{fn}/3d/axis1", fn, x3, axis=1, **E)
        if fn == "log_softmax":
            g.value(f"{fn}/wide", fn, logits(r, (3, 257), 4.0), axis=-1, **E)
        g.value(
            f"{fn}/0d",
            fn,
            np.asarray(0.7),
            category=cat,
            spec="1.1",
            note="0-d input with dim=0: torch gives 0. (log_softmax) / 1. (softmax)",
            axis=0,
        )
        # non-finite rows and large values (spec 1.3), all in one (2, 3) family
        E = dict(category=cat, spec="1.3", axis=-1)
        g.value(
            f"{fn}/neginf-entry",
            fn,
            [[0.0, -INF, 1.0], [0.5, 0.25, -1.0]],
            cot=[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            note="d lp[0]/dx = [0.731, 0, -0.731]",
            **E,
        )
        g.value(f"{fn}/neginf-entries", fn, [[0.0, -INF, 1.0], [-INF, 2.0, -INF]], **E)
        g.value(
            f"{fn}/all-neginf-row",
            fn,
            [[-INF, -INF, -INF], [0.5, 0.25, -1.0]],
            note="NaN row, NaN gradient",
            **E,
        )
        g.value(f"{fn}/posinf-row", fn, [[1.0, INF, 0.0], [0.5, 0.25, -1.0]], **E)
        g.value(f"{fn}/nan-row", fn, [[1.0, NAN, 0.0], [0.5, 0.25, -1.0]], **E)
        g.value(f"{fn}/large", fn, [[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, 1000.0]], **E)
        g.value(
            f"{fn}/near-max-f32",
            fn,
            [[3e38, 3e38, -3e38], [0.5, 0.25, -1.0]],
            dtypes=("float32",),
            note="the shift overflows to -inf",
            **E,
        )
        for dt in ("float64", "float32"):
            lo = float(np.finfo(dt).min)
            g.value(
                f"{fn}/finfo-min-{SHORT[dt]}", fn, [[lo, lo, lo], [lo, 0.0, lo]], dtypes=(dt,), **E
            )
    # logsumexp: not in the spec; torch.logsumexp on finite and -inf inputs
    r = rng_for("logsumexp")
    E = dict(category="logsumexp", spec="-")
    g.value("logsumexp/2d", "logsumexp", logits(r, (2, 3)), axis=-1, **E)
    g.value("logsumexp/axis0", "logsumexp", logits(r, (4, 5)), axis=0, **E)
    g.value("logsumexp/neginf", "logsumexp", [[0.0, -INF, 1.0], [3.0, 2.0, -INF]], axis=-1, **E)
    g.value(
        "logsumexp/all-neginf",
        "logsumexp",
        [[-INF, -INF, -INF], [3.0, 2.0, -INF]],
        axis=-1,
        note="-inf, NaN gradient",
        **E,
    )


def half_softmax_cases(g: Golden):
    E = dict(category="half", spec="1.5/9.5")
    for dt in LOW:
        r = rng_for("half-softmax-" + dt)
        for fn in ("log_softmax", "softmax"):
            g.value(f"{fn}/half/last", fn, logits(r, (4, 33), 3.0), dtypes=(dt,), axis=-1, **E)
        g.value(
            "log_softmax/half/axis0",
            "log_softmax",
            logits(r, (6, 5), 3.0),
            dtypes=(dt,),
            axis=0,
            **E,
        )
        g.value(
            "log_softmax/half/row-10",
            "log_softmax",
            [[10.0, -1.0, 0.5]],
            dtypes=(dt,),
            note="torch fp16 gives 0.0 at index 0, f32-then-round gives -9.155e-5",
            axis=-1,
            **E,
        )
        g.value(
            "log_softmax/half/70000-zeros",
            "log_softmax",
            np.zeros((1, 70000)),
            dtypes=(dt,),
            cot=np.tile([1.0, 0.0, 0.5, -1.0], (1, 17500)),
            note="torch fp16 gives -inf (the f16 sum overflows); jaxce sums in f32",
            axis=-1,
            **E,
        )


def class_index_cases(g: Golden, fn: str):
    """nll_loss / cross_entropy without smoothing: shapes, reductions, weights, ignore_index,
    target dtypes, out-of-range targets. ``nll_loss`` gets a subset (same code path)."""
    full = fn == "cross_entropy"
    cat = "ce" if full else "nll"
    r = rng_for(fn + "-classes")
    x = logits(r, (6, 4))
    t = labels(r, (6,), 4)
    w = class_weight(r, 4)
    ti = with_ignored(t, r)
    E = dict(category=cat)

    # ---- the (6, 4) families: reductions, with and without weight
    families = [(red, weighted) for red in REDS for weighted in (False, True)]
    if not full:
        families = [("mean", False), ("mean", True), ("none", False), ("sum", True)]
    for red, weighted in families:
        if not weighted:
            g.value(
                f"{fn}/2d/{red}", fn, x, t, spec="2.3", module=(red == "mean"), reduction=red, **E
            )
            g.value(f"{fn}/2d/ignore/{red}", fn, x, ti, spec="2.2", reduction=red, **E)
            g.value(
                f"{fn}/all-ignored/{red}",
                fn,
                x,
                np.full(6, -100),
                spec="2.3",
                note="mean nan with zero gradient, sum 0, none zeros",
                reduction=red,
                **E,
            )
            g.value(
                f"{fn}/oob-C/{red}",
                fn,
                x,
                np.array([0, 4, 1, 3, 2, 1]),
                spec="2.2/9.3",
                checked=(red == "none"),
                reduction=red,
                **E,
            )
        else:
            g.value(
                f"{fn}/2d/weight/{red}",
                fn,
                x,
                t,
                w,
                spec="2.3",
                note="weighted mean divides by sum w[t]",
                module=(red == "mean"),
                reduction=red,
                **E,
            )
            g.value(f"{fn}/2d/ignore-weight/{red}", fn, x, ti, w, spec="2.2", reduction=red, **E)
            g.value(
                f"{fn}/all-ignored-weight/{red}",
                fn,
                x,
                np.full(6, -100),
                w,
                spec="2.3",
                reduction=red,
                **E,
            )
            g.value(
                f"{fn}/oob-neg1-weight/{red}",
                fn,
                x,
                np.array([0, 1, -1, 3, -100, 1]),
                w,
                spec="2.2/9.3",
                checked=(red == "mean"),
                reduction=red,
                **E,
            )
    # weights: negative, zero-sum denominators (spec 2.3 / 4), NaN (spec 2.6)
    g.value(
        f"{fn}/weight-negative",
        fn,
        x,
        t,
        np.array([1.5, -0.5, 2.0, -1.0]),
        spec="2.3",
        reduction="mean",
        **E,
    )
    tz = np.array([0, 1, 0, 1, -100, -100])
    for red in REDS if full else ("mean", "sum"):
        g.value(
            f"{fn}/weight-sum-zero-inf/{red}",
            fn,
            x,
            tz,
            np.array([1.0, -1.0, 1.0, 1.0]),
            spec="2.3/4",
            note="D = 0 with a non-zero numerator: mean is -inf or +inf",
            reduction=red,
            **E,
        )
    g.value(
        f"{fn}/weight-zero-used",
        fn,
        x,
        np.array([0, 0, 2, -100, 2, 0]),
        np.array([0.0, 1.0, 0.0, 1.0]),
        spec="2.3/4",
        note="D = 0: mean nan, gradient NaN on non-ignored rows",
        reduction="mean",
        **E,
    )
    g.value(
        f"{fn}/weight-nan-unused",
        fn,
        x,
        np.array([0, 1, 0, 1, 2, 2]),
        np.array([1.0, 2.0, 0.5, NAN]),
        spec="2.6",
        reduction="mean",
        **E,
    )
    g.value(
        f"{fn}/weight-nan-used",
        fn,
        x,
        np.array([0, 3, 0, 1, 2, 2]),
        np.array([1.0, 2.0, 0.5, NAN]),
        spec="2.6",
        reduction="sum",
        **E,
    )
    # NaN logits: an ignored NaN row is never read (spec 3.5)
    xn = x.copy()
    xn[1, :] = NAN
    tn = t.copy()
    tn[1] = -100
    for red in ("mean", "none"):
        g.value(
            f"{fn}/nan-row-ignored/{red}",
            fn,
            xn,
            tn,
            spec="3.5/4/9.6",
            note="the ignored NaN row is never read",
            reduction=red,
            **E,
        )
    g.value(f"{fn}/nan-row-used", fn, xn, t, spec="3.5", reduction="mean", **E)
    g.value(
        f"{fn}/spec-example",
        fn,
        [[5.0, -3.0, 0, 0], [0.5, 2.0, 0, 0]] * 3,
        np.array([0, 1] * 3),
        spec="2.1",
        reduction="mean",
        note="nll: the input is not checked to be log-probabilities (-3.5)",
        **E,
    )

    # ---- ignore_index variants (each value is a static option: one program each)
    g.value(
        f"{fn}/ii-neg1",
        fn,
        x,
        np.array([0, -1, 1, 3, -1, 2]),
        spec="2.2",
        ignore_index=-1,
        reduction="mean",
        **E,
    )
    g.value(
        f"{fn}/oob-neg2-ii-neg1",
        fn,
        x,
        np.array([0, -1, -2, 3, 2, 1]),
        spec="2.2/9.3",
        ignore_index=-1,
        reduction="mean",
        **E,
    )
    g.value(
        f"{fn}/ii-real-class/none",
        fn,
        x,
        np.array([0, 3, 1, 3, 2, 1]),
        w,
        spec="2.2",
        note="ignore_index=3 is a real class: every 3 is dropped",
        ignore_index=3,
        reduction="none",
        **E,
    )
    if full:
        g.value(
            f"{fn}/ii-out-of-range",
            fn,
            x,
            np.array([0, 5, 1, 5, 2, 1]),
            spec="2.2",
            ignore_index=5,
            reduction="sum",
            **E,
        )
        g.value(
            f"{fn}/ii-2pow40-unused",
            fn,
            x,
            t,
            spec="2.2",
            ignore_index=2**40,
            reduction="mean",
            **E,
        )
        g.value(
            f"{fn}/ii-2pow40-used",
            fn,
            x,
            np.array([0, 2**40, 1, 3, 2**40, 2]),
            spec="2.2",
            dtypes=("float64",),
            ignore_index=2**40,
            reduction="mean",
            **E,
        )
        g.value(
            f"{fn}/oob-2pow40",
            fn,
            x,
            np.array([0, 1, 2**40, 3, 2, 1]),
            spec="2.2/9.3",
            dtypes=("float64",),
            checked=True,
            reduction="none",
            **E,
        )
        g.value(
            f"{fn}/ii-255-uint8",
            fn,
            x,
            np.array([0, 255, 1, 3, 255, 2]),
            spec="2.2/9.2",
            target_dtype="uint8",
            ignore_index=255,
            reduction="mean",
            **E,
        )

    # ---- integer target dtypes (spec 9.2): torch needs int64 (uint8 for 1-D/2-D input)
    tdts = {"float64": ["int32", "uint8"], "float32": ["int16", "uint8"]}
    if full:
        tdts = {"float64": ["int32", "uint8", "uint32"], "float32": ["int16", "uint8", "int8"]}
    for dt, names in tdts.items():
        for tdt in names:
            red = "none" if tdt == "uint8" else "mean"
            g.value(
                f"{fn}/target-{tdt}",
                fn,
                x,
                t,
                spec="2.5/9.2",
                dtypes=(dt,),
                target_dtype=tdt,
                torch_native_target=True,
                reduction=red,
                **E,
            )
            if tdt == "uint8":
                g.value(
                    f"{fn}/oob-uint8-200",
                    fn,
                    x,
                    np.array([0, 1, 200, 3, 2, 1]),
                    spec="2.2/9.3",
                    dtypes=(dt,),
                    target_dtype="uint8",
                    checked=full,
                    reduction="none",
                    **E,
                )

    # ---- 1-D input: () and (1,) targets
    x1 = x[0]
    g.value(f"{fn}/1d/mean", fn, x1, np.asarray(3), spec="2.1", reduction="mean", **E)
    g.value(
        f"{fn}/1d/ignored/mean",
        fn,
        x1,
        np.asarray(-100),
        spec="2.3",
        note="all ignored: nan",
        reduction="mean",
        **E,
    )
    g.value(f"{fn}/1d/weight/sum", fn, x1, np.asarray(2), w, spec="2.3", reduction="sum", **E)
    g.value(
        f"{fn}/1d/ignored-weight/sum", fn, x1, np.asarray(-100), w, spec="2.3", reduction="sum", **E
    )
    g.value(f"{fn}/1d/oob", fn, x1, np.asarray(4), w, spec="2.2/9.3", reduction="sum", **E)
    g.value(
        f"{fn}/1d-target1/none",
        fn,
        x1,
        np.asarray([1]),
        spec="2.1",
        note="(1,) target for (C,) input",
        reduction="none",
        **E,
    )

    # ---- K-dim (torch layout, axis=1) and the moved-axis layout (axis=-1)
    kd = {
        (2, 3, 4): [("plain", "mean", False), ("weight-ignore", "none", True)],
        (2, 4, 3, 2): [("weight-ignore", "mean", True)],
        (2, 3, 2, 2, 2): [("weight-ignore", "none", True)],
    }
    if not full:
        kd = {
            (2, 3, 4): [("weight-ignore", "none", True)],
            (2, 4, 3, 2): [("weight-ignore", "mean", False)],
        }
    for shape, variants in kd.items():
        k = len(shape) - 2
        xk = logits(r, shape)
        tk = labels(r, (shape[0],) + shape[2:], shape[1])
        wk = class_weight(r, shape[1])
        tki = with_ignored(tk, r)
        for kind, red, last in variants:
            lay = ("torch", "last") if last else None
            if kind == "plain":
                g.value(
                    f"{fn}/{k}d-spatial/{red}",
                    fn,
                    xk,
                    tk,
                    spec="2.1",
                    layouts=lay,
                    reduction=red,
                    **E,
                )
                continue
            g.value(
                f"{fn}/{k}d-spatial/weight-ignore/{red}",
                fn,
                xk,
                tki,
                wk,
                spec="2.1",
                layouts=lay,
                reduction=red,
                **E,
            )
            if red == "mean":
                g.value(
                    f"{fn}/{k}d-spatial/all-ignored/mean",
                    fn,
                    xk,
                    np.full_like(tk, -100),
                    wk,
                    spec="2.3",
                    reduction="mean",
                    **E,
                )
            if red == "none":
                bad = tk.copy()
                bad.flat[1] = -1
                bad.flat[-1] = shape[1]
                g.value(
                    f"{fn}/{k}d-spatial/oob/none",
                    fn,
                    xk,
                    bad,
                    wk,
                    spec="2.2/9.3",
                    reduction="none",
                    **E,
                )

    # ---- empty inputs (spec 2.3) and C = 1 (spec 3.5)
    for red in REDS if full else ("mean",):
        g.value(
            f"{fn}/empty-n0/{red}",
            fn,
            np.zeros((0, 4)),
            np.zeros((0,), np.int64),
            spec="2.3",
            reduction=red,
            **E,
        )
    for red in ("sum", "none") if full else ("none",):
        g.value(
            f"{fn}/empty-spatial/{red}",
            fn,
            np.zeros((2, 4, 0)),
            np.zeros((2, 0), np.int64),
            spec="2.3",
            reduction=red,
            **E,
        )
    g.value(
        f"{fn}/c1/mean",
        fn,
        logits(r, (3, 1)),
        np.zeros(3, np.int64),
        spec="3.5",
        reduction="mean",
        **E,
    )

    # ---- weight dtype differs from the logits (spec 9.7)
    g.value(
        f"{fn}/weight-f64-logits-f32",
        fn,
        x,
        t,
        w,
        spec="2.6/9.7",
        dtypes=("float32",),
        weight_dtype="float64",
        reduction="mean",
        **E,
    )
    if full:
        g.value(
            f"{fn}/weight-f32-logits-f64",
            fn,
            x,
            t,
            w,
            spec="2.6/9.7",
            dtypes=("float64",),
            weight_dtype="float32",
            reduction="none",
            **E,
        )


def nll_specific_cases(g: Golden):
    g.value(
        "nll_loss/1d-c1-target1",
        "nll_loss",
        [0.5],
        np.array([0]),
        category="nll",
        spec="2.1",
        note="(C,) input with a (1,) target, C = 1",
        reduction="none",
    )
    r = rng_for("nll-composite")
    x = logits(r, (6, 4))
    t = with_ignored(labels(r, (6,), 4), r)
    w = class_weight(r, 4)
    for red in REDS:
        g.value(
            f"nll_log_softmax/{red}",
            "nll_log_softmax",
            x,
            t,
            w,
            category="ce",
            spec="3.1",
            note="nll_loss(log_softmax(x)) == cross_entropy",
            reduction=red,
        )
    g.value(
        "nll_log_softmax/notebook",
        "nll_log_softmax",
        [[1.2, -0.5, 0.8, 2.1]],
        np.array([2]),
        category="notebook",
        spec="3.1/7.2",
        exact={"float32": 1.8615424633026123},
        reduction="mean",
    )


def ce_specific_cases(g: Golden):
    fn = "cross_entropy"
    g.value(
        "cross_entropy/notebook-1",
        fn,
        [[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]],
        np.array([0, 1]),
        category="notebook",
        spec="3.1/7.2",
        module=True,
        exact={"float32": 0.3774033188819885},
        reduction="mean",
    )
    g.value(
        "cross_entropy/notebook-2",
        fn,
        [[1.2, -0.5, 0.8, 2.1]],
        np.array([2]),
        category="notebook",
        spec="3.1/7.2",
        module=True,
        exact={"float32": 1.8615424633026123},
        reduction="mean",
    )
    r = rng_for("cross_entropy-classes")  # the (6, 4) family's inputs
    x = logits(r, (6, 4))
    t = labels(r, (6,), 4)
    w = class_weight(r, 4)
    E = dict(category="ce")
    # -inf logits (spec 4)
    xa = x.copy()
    xa[0, 1] = -INF
    xa[2, 0] = -INF
    ta = np.array([0, 2, 1, 1, 3, 0])
    for red in ("mean", "none"):
        g.value(
            f"ce/neginf-away/{red}",
            fn,
            xa,
            ta,
            spec="4",
            note="finite loss, zero gradient at the -inf logits",
            reduction=red,
            **E,
        )
    g.value(
        "ce/neginf-at-target",
        fn,
        xa,
        np.array([1, 2, 0, 1, 3, 0]),
        spec="4",
        note="loss inf, finite gradient (p - e_t)/N",
        reduction="mean",
        **E,
    )
    # rows all -inf / NaN, ignored (spec 4, 7.3 and 9.6)
    xi = x.copy()
    xi[1, :] = -INF
    xi[3, :] = NAN
    ti = np.array([0, -100, 1, -100, 3, 2])
    for red in REDS:
        g.value(
            f"ce/bad-rows-ignored/{red}",
            fn,
            xi,
            ti,
            spec="4/7.3/9.6",
            note="torch: finite loss, NaN gradient on those rows; jaxce: zero gradient",
            reduction=red,
            **E,
        )
    g.value(
        "ce/all-neginf-row-used",
        fn,
        xi,
        np.array([0, 2, 1, -100, 3, 2]),
        spec="1.3/4",
        note="a used all -inf row: nan",
        reduction="mean",
        **E,
    )
    # label_smoothing as a Python int and as a 0-d float32 array (spec 3.4)
    g.value("ce/ls-int-1", fn, x, t, spec="3.4", label_smoothing=1, reduction="mean", **E)
    g.value(
        "ce/ls-array-f32",
        fn,
        x,
        t,
        spec="3.4",
        note="a 0-d float32 0.1 is 0.10000000149",
        label_smoothing={"$array": "float32", "value": 0.1},
        reduction="mean",
        **E,
    )
    # uint8 target with LS and weight: torch raises, jaxce accepts (9.2)
    g.value(
        "ce/uint8-ls-weight",
        fn,
        x,
        t,
        w,
        spec="3.2/9.2",
        target_dtype="uint8",
        torch_native_target=True,
        label_smoothing=0.1,
        reduction="mean",
        **E,
    )


def label_smoothing_cases(g: Golden):
    """Class-index targets with label smoothing, on the (6, 4) family's inputs."""
    fn = "cross_entropy"
    r = rng_for("cross_entropy-classes")
    x = logits(r, (6, 4))
    t = labels(r, (6,), 4)
    w = class_weight(r, 4)
    ti = with_ignored(t, r)
    E = dict(category="ls", spec="3.2")
    plan = {
        0.05: [("weight-ignore", "mean")],
        0.1: [
            ("weight-ignore", "mean"),
            ("weight-ignore", "sum"),
            ("weight-ignore", "none"),
            ("plain", "mean"),
        ],
        0.5: [("weight-ignore", "none"), ("plain", "sum")],
        1.0: [("plain", "mean"), ("weight-ignore", "sum")],
    }
    for eps, variants in plan.items():
        for kind, red in variants:
            if kind == "plain":
                g.value(f"ls/{eps}/{red}", fn, x, t, label_smoothing=eps, reduction=red, **E)
            else:
                g.value(
                    f"ls/{eps}/weight-ignore/{red}",
                    fn,
                    x,
                    ti,
                    w,
                    label_smoothing=eps,
                    module=(eps == 0.1 and red == "mean"),
                    reduction=red,
                    **E,
                )
    # data variants on the eps=0.1 programs
    ls = dict(label_smoothing=0.1, **E)
    g.value(
        "ls/spec-weight-example",
        fn,
        x,
        t % 3,
        np.array([1.0, 2.0, 0.5, 1.0]),
        note="each class c is weighted by its own w[c]",
        reduction="mean",
        **ls,
    )
    g.value(
        "ls/weight-nan-unused-class",
        fn,
        x,
        t % 3,
        np.array([1.0, 2.0, 0.5, NAN]),
        note="the smoothing term reads every class: nan",
        reduction="mean",
        **ls,
    )
    g.value(
        "ls/weight-sum-zero",
        fn,
        x,
        np.array([0, 0, 2, -100, 2, 0]),
        np.array([0.0, 1.0, 0.0, 1.0]),
        note="D = 0 with LS: nan (spec 3.2 / 4)",
        reduction="mean",
        **ls,
    )
    for red in REDS:
        g.value(
            f"ls/all-ignored-weight/{red}",
            fn,
            x,
            np.full(6, -100),
            w,
            note="mean nan, zero gradient",
            reduction=red,
            **ls,
        )
    xa = x.copy()
    xa[0, 1] = -INF
    g.value(
        "ls/neginf-away",
        fn,
        xa,
        np.array([0, 2, 1, 1, 3, 0]),
        w,
        note="the smoothing term holds -lp = +inf: loss inf, finite gradient",
        reduction="mean",
        **ls,
    )
    xi = x.copy()
    xi[1, :] = -INF
    xi[3, :] = NAN
    g.value(
        "ls/bad-rows-ignored-weight",
        fn,
        xi,
        np.array([0, -100, 1, -100, 3, 2]),
        w,
        note="zero gradient on the ignored rows (9.6)",
        reduction="sum",
        **ls,
    )
    # out-of-range targets are never smoothed (spec 3.2 / 9.3)
    for red in REDS:
        g.value(
            f"ls/oob/{red}",
            fn,
            x,
            np.array([0, 4, 1, -100, 2, -7]),
            w,
            checked=(red == "sum"),
            reduction=red,
            **ls,
        )
    # other shapes
    g.value("ls/1d", fn, x[0], np.asarray(2), label_smoothing=0.2, reduction="none", **E)
    g.value(
        "ls/c1",
        fn,
        logits(r, (3, 1)),
        np.zeros(3, np.int64),
        label_smoothing=0.3,
        reduction="mean",
        **E,
    )
    g.value(
        "ls/empty-n0/mean",
        fn,
        np.zeros((0, 4)),
        np.zeros((0,), np.int64),
        label_smoothing=0.1,
        reduction="mean",
        **E,
    )
    xk = logits(r, (2, 3, 2, 2))
    tk = with_ignored(labels(r, (2, 2, 2), 3), r)
    g.value(
        "ls/2d-spatial/weight-ignore",
        fn,
        xk,
        tk,
        class_weight(r, 3),
        layouts=("torch", "last"),
        label_smoothing=0.1,
        reduction="mean",
        **E,
    )


def probability_cases(g: Golden):
    fn = "cross_entropy"
    r = rng_for("probabilities")
    x = logits(r, (6, 4))
    q = probs(r, (6, 4))
    w = class_weight(r, 4)
    qun = r.uniform(0.0, 2.0, size=(6, 4))
    qneg = r.uniform(-1.0, 1.0, size=(6, 4))
    E = dict(category="prob", spec="3.3")
    for red in REDS:
        g.value(f"prob/{red}", fn, x, q, module=(red == "mean"), reduction=red, **E)
        g.value(
            f"prob/weight/{red}",
            fn,
            x,
            q,
            w,
            reduction=red,
            note="mean divides by the number of positions, not the weights",
            **E,
        )
        g.value(f"prob/unnormalized/{red}", fn, x, qun, reduction=red, **E)
        g.value(f"prob/negative-weight/{red}", fn, x, qneg, w, reduction=red, **E)
    onehot = np.eye(4)[np.array([0, 3, 1, 2, 2, 0])]
    g.value(
        "prob/onehot-weight",
        fn,
        x,
        onehot,
        w,
        reduction="mean",
        note="differs from the class-index weighted CE",
        **E,
    )
    xa = x.copy()
    xa[1, 2] = -INF
    qa = q.copy()
    qa[1] = [0.5, 0.5, 0.0, 0.0]
    g.value(
        "prob/neginf-zero-prob",
        fn,
        xa,
        qa,
        reduction="none",
        note="0 * -inf: nan loss, finite gradient",
        **E,
    )
    plan = {
        0.05: [("weight", "sum")],
        0.1: [("plain", "mean"), ("weight", "none")],
        0.5: [("weight", "mean")],
        1.0: [("plain", "mean")],
    }
    for eps, variants in plan.items():
        for kind, red in variants:
            g.value(
                f"prob/ls{eps}/{kind}/{red}",
                fn,
                x,
                qun,
                w if kind == "weight" else None,
                label_smoothing=eps,
                reduction=red,
                **E,
            )
    g.value(
        "prob/ignore_index-1",
        fn,
        x,
        q,
        dtypes=("float64",),
        ignore_index=-1,
        note="a negative ignore_index has no effect",
        reduction="mean",
        **E,
    )
    g.value(
        "prob/ignore_index-5",
        fn,
        x,
        q,
        dtypes=("float32",),
        ignore_index=-5,
        note="a negative ignore_index has no effect",
        reduction="mean",
        **E,
    )
    g.value("prob/1d/weight/none", fn, x[0], q[0], w, reduction="none", **E)
    g.value("prob/1d/mean", fn, x[0], q[0], reduction="mean", **E)
    xk = logits(r, (2, 3, 2, 2))
    qk = probs(r, (2, 3, 2, 2))
    wk = class_weight(r, 3)
    g.value(
        "prob/2d-spatial/weight-ls/mean", fn, xk, qk, wk, label_smoothing=0.1, reduction="mean", **E
    )
    g.value(
        "prob/2d-spatial/weight-ls/none",
        fn,
        xk,
        qk,
        wk,
        layouts=("torch", "last"),
        label_smoothing=0.1,
        reduction="none",
        **E,
    )
    for red in ("mean", "sum"):
        g.value(
            f"prob/empty-n0/{red}",
            fn,
            np.zeros((0, 4)),
            np.zeros((0, 4)),
            note="sum is -0.0 on this path",
            reduction=red,
            **E,
        )
    g.value(
        "prob/empty-spatial/none",
        fn,
        np.zeros((2, 4, 0)),
        np.zeros((2, 4, 0)),
        reduction="none",
        **E,
    )
    # dtype promotion on this path (torch promotes too)
    g.value(
        "prob/target-f64-logits-f32",
        fn,
        x,
        q,
        dtypes=("float32",),
        prob_dtype="float64",
        reduction="mean",
        **E,
    )
    g.value(
        "prob/target-f32-logits-f64",
        fn,
        x,
        q,
        dtypes=("float64",),
        prob_dtype="float32",
        reduction="none",
        **E,
    )
    g.value(
        "prob/weight-f32-logits-f64",
        fn,
        x,
        q,
        w,
        dtypes=("float64",),
        weight_dtype="float32",
        reduction="mean",
        **E,
    )


def half_loss_cases(g: Golden):
    fn = "cross_entropy"
    E = dict(category="half", spec="9.5")
    for dt in LOW:
        r = rng_for("half-loss-" + dt)
        D = dict(dtypes=(dt,), **E)
        g.value(
            "cross_entropy/notebook-1/half",
            fn,
            [[1.2, 0.5, -1.0], [0.3, 1.8, -0.5]],
            np.array([0, 1]),
            note="torch CPU: f16 0.37744140625, bf16 0.37890625",
            reduction="mean",
            **D,
        )
        x = logits(r, (8, 5))
        t = with_ignored(labels(r, (8,), 5), r)
        w = class_weight(r, 5)
        for red in ("mean", "none"):
            g.value(f"ce/half/weight-ignore/{red}", fn, x, t, w, reduction=red, **D)
        g.value("ce/half/ls-weight", fn, x, t, w, label_smoothing=0.1, reduction="mean", **D)
        g.value(
            "ce/half/3d",
            fn,
            logits(r, (2, 3, 4)),
            labels(r, (2, 4), 3),
            layouts=("torch", "last"),
            reduction="none",
            **D,
        )
        g.value("prob/half", fn, x, probs(r, (8, 5)), reduction="mean", **D)
        g.value(
            "prob/half/target-f32",
            fn,
            x,
            probs(r, (8, 5)),
            w,
            prob_dtype="float32",
            weight_dtype="float32",
            reduction="none",
            note="promoted to f32; jaxce log-softmaxes the upcast logits",
            **D,
        )
        g.value(
            "ce/half/weight-f32",
            fn,
            x,
            t,
            w,
            weight_dtype="float32",
            reduction="mean",
            note="spec 9.7: promoted to f32",
            **D,
        )
    # torch's CPU quirks that jaxce does not copy (9.5)
    g.value(
        "ce/half/100000-zeros",
        fn,
        np.zeros((1, 100000)),
        np.array([0]),
        dtypes=("float16",),
        category="half",
        spec="1.5/9.5",
        note="torch fp16: inf",
        reduction="mean",
    )
    r = rng_for("half-big-sum")
    xb = r.integers(-8, 8, size=(20000, 5)).astype(np.float64)  # the f16 sum overflows
    tb = labels(r, (20000,), 5)
    for red in ("sum", "mean"):
        g.value(
            f"ce/half/n20000/{red}",
            fn,
            xb,
            tb,
            dtypes=("float16",),
            category="half",
            spec="2.4/9.5",
            note="torch accumulates in fp16: mean inf; jaxce sums in f32 (the sum is > 65504)",
            no_grad=True,
            reduction=red,
        )
    xc = r.integers(-8, 8, size=(3000, 3)) / 4.0
    g.value(
        "ce/half/n3000-bf16",
        fn,
        xc,
        labels(r, (3000,), 3),
        dtypes=("bfloat16",),
        category="half",
        spec="2.4/9.5",
        note="torch rounds the count 3000 to 3008 in bf16",
        reduction="mean",
    )


def error_cases(g: Golden):
    r = rng_for("errors")
    x = logits(r, (4, 3))
    t = np.array([0, 1, 2, 1])
    V, T = "ValueError", "TypeError"
    E = dict(category="error", spec="6")
    for fn in ("log_softmax", "softmax"):
        g.error(f"{fn}/axis-out-of-range", fn, x, types=[V], axis=2, **E)
        g.error(
            f"{fn}/integer-input",
            fn,
            np.array([[1, 2, 3]]),
            types=[T],
            x_dtype="int64",
            axis=-1,
            **E,
        )
    for fn in ("nll_loss", "cross_entropy"):
        g.error(
            f"{fn}/target-bool",
            fn,
            x,
            np.array([True, False, True, True]),
            types=[T],
            target_dtype="bool",
            **E,
        )
        g.error(
            f"{fn}/target-float-class-shape",
            fn,
            x,
            np.array([0.0, 1.0, 2.0, 1.0]),
            types=[T],
            target_dtype="float32",
            **E,
        )
        g.error(f"{fn}/batch-mismatch", fn, x, np.array([0, 1, 2]), types=[V], **E)
        g.error(f"{fn}/multi-target", fn, x, t[:, None], types=[V], **E)
        g.error(f"{fn}/0d-target", fn, x, np.asarray(1), types=[V], **E)
        g.error(
            f"{fn}/3d-spatial-mismatch",
            fn,
            logits(r, (2, 3, 4)),
            np.zeros((2, 5)),
            types=[V],
            axis=1,
            **E,
        )
        g.error(
            f"{fn}/4d-target-not-3d",
            fn,
            logits(r, (2, 3, 2, 2)),
            np.zeros((2, 2)),
            types=[V],
            axis=1,
            **E,
        )
        g.error(
            f"{fn}/4d-size-mismatch",
            fn,
            logits(r, (2, 3, 2, 2)),
            np.zeros((2, 2, 3)),
            types=[V],
            axis=1,
            **E,
        )
        g.error(
            f"{fn}/5d-spatial-mismatch",
            fn,
            logits(r, (2, 3, 2, 2, 2)),
            np.zeros((2, 2, 2, 3)),
            types=[V],
            axis=1,
            **E,
        )
        g.error(f"{fn}/weight-length", fn, x, t, np.ones(4), types=[V], **E)
        g.error(f"{fn}/weight-2d", fn, x, t, np.ones((1, 3)), types=[V], **E)
        g.error(f"{fn}/weight-list", fn, x, t, [1.0, 2.0, 3.0], types=[T], **E)
        g.error(f"{fn}/reduction-avg", fn, x, t, types=[V], reduction="avg", **E)
        g.error(f"{fn}/ignore-index-float", fn, x, t, types=[T], ignore_index=1.5, **E)
        g.error(
            f"{fn}/integer-input",
            fn,
            np.array([[1, 2, 3]]),
            np.array([0]),
            types=[T],
            x_dtype="int64",
            **E,
        )
        g.error(f"{fn}/1d-target-2", fn, x[0], np.array([0, 1]), types=[V], **E)
    g.error("nll_loss/0d-input", "nll_loss", np.asarray(0.5), np.asarray(0), types=[V], **E)
    ce = "cross_entropy"
    g.error(
        "cross_entropy/0d-input-int-target", ce, np.asarray(0.5), np.asarray(0), types=[V, T], **E
    )
    g.error(
        "cross_entropy/0d-input-float-target",
        ce,
        np.asarray(0.5),
        np.asarray(0.5),
        types=[V, T],
        target_dtype="float32",
        **E,
    )
    g.error("cross_entropy/int-target-input-shape", ce, x, np.zeros((4, 3)), types=[V, T], **E)
    g.error(
        "cross_entropy/int-target-input-shape-1d", ce, x[0], np.array([0, 1, 2]), types=[V, T], **E
    )
    g.error(
        "cross_entropy/int-target-input-shape-c1",
        ce,
        np.array([0.3]),
        np.array([0]),
        types=[V, T],
        **E,
    )
    g.error(
        "cross_entropy/float-target-other-shape",
        ce,
        x,
        np.zeros((4, 4)),
        types=[V, T],
        target_dtype="float32",
        **E,
    )
    g.error(
        "cross_entropy/prob-weight-length",
        ce,
        x,
        probs(r, (4, 3)),
        np.ones(4),
        types=[V],
        target_dtype="float32",
        **E,
    )
    for eps in (1.5, 1.0000001, INF):
        g.error(f"cross_entropy/ls-{eps}", ce, x, t, types=[V], label_smoothing=eps, **E)
        g.error(
            f"cross_entropy/prob-ls-{eps}",
            ce,
            x,
            probs(r, (4, 3)),
            types=[V],
            target_dtype="float32",
            label_smoothing=eps,
            **E,
        )
    # spec 9.4: torch silently ignores these, jaxce raises
    for eps in (-0.1, -5.0, NAN):
        g.error(
            f"cross_entropy/ls-{eps}",
            ce,
            x,
            t,
            types=[V],
            category="error",
            spec="3.4/9.4",
            note="torch: silently no smoothing",
            label_smoothing=eps,
        )
        g.error(
            f"cross_entropy/prob-ls-{eps}",
            ce,
            x,
            probs(r, (4, 3)),
            types=[V],
            category="error",
            spec="3.4/9.4",
            note="torch: silently no smoothing",
            target_dtype="float32",
            label_smoothing=eps,
        )
    for ii in (0, 2, 100):
        g.error(
            f"cross_entropy/prob-ignore-index-{ii}",
            ce,
            x,
            probs(r, (4, 3)),
            types=[V],
            target_dtype="float32",
            ignore_index=ii,
            **E,
        )
    g.error(
        "CrossEntropyLoss/ls-1.5",
        "CrossEntropyLoss",
        x,
        t,
        types=[V],
        construct=True,
        category="error",
        spec="3.4",
        note="torch raises when called; jaxce may raise when built",
        label_smoothing=1.5,
    )
    g.error(
        "cross_entropy/c0",
        ce,
        np.zeros((2, 0)),
        np.array([0, 0]),
        types=[V],
        category="error-or-nan",
        spec="3.5/9.3",
        note="C = 0: torch IndexError; jaxce may raise, or give NaN (9.3)",
        reduction="none",
    )


def main():
    global torch, F
    import torch as _torch
    import torch.nn.functional as _F

    torch, F = _torch, _F
    assert torch.__version__.split("+")[0] == TORCH_VERSION, torch.__version__
    torch.set_num_threads(1)
    torch.manual_seed(0)

    g = Golden()
    softmax_cases(g)
    half_softmax_cases(g)
    class_index_cases(g, "nll_loss")
    class_index_cases(g, "cross_entropy")
    nll_specific_cases(g)
    ce_specific_cases(g)
    label_smoothing_cases(g)
    probability_cases(g)
    half_loss_cases(g)
    error_cases(g)

    # spec cross-checks, so a wrong spec statement fails here rather than in the suite
    by_id = {c["id"]: c for c in g.cases}
    f64nb = g.arrays[by_id["cross_entropy/notebook-1/f64"]["result"]["loss"]]
    assert float(f64nb) == 0.37740333118877123, float(f64nb)
    assert float(g.arrays[by_id["cross_entropy/notebook-2/f64"]["result"]["loss"]]) == (
        1.8615425197315818
    )
    assert float(g.arrays[by_id["nll_loss/spec-example/f64"]["result"]["loss"]]) == -3.5
    for c in g.cases:
        if c["expect"] == "error" and c["category"] == "error":
            # every recorded error case is an error in torch too, except 9.4's values
            assert (c["torch"]["error"] is not None) == ("9.4" not in c["spec"]), c
    g.write()
    counts: dict[str, int] = {}
    for c in g.cases:
        counts[c["expect"]] = counts.get(c["expect"], 0) + 1
    size = NPZ_PATH.stat().st_size + JSON_PATH.stat().st_size
    print(f"wrote {len(g.cases)} cases {counts} ({size / 1e6:.2f} MB) to {HERE}")


if __name__ == "__main__":
    main()
