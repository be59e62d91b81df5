"""Train the example LM with a materialised and a fused head, side by side.

Every run starts from the same seed and sees the same batches; the runs advance in
lockstep (one step of each in turn), so their step times are paired under the same
machine load. At the end a table compares the loss curves, the median time per step
and the compiled train step's temporary memory, and ``loss_curves.png`` is written.
Then (unless ``--mesh none``) the fused runs are repeated for a few steps on a
simulated 8-device ``data × vocab`` mesh in a subprocess (``sharded.py``) and their
losses compared with these.

Run ``python examples/lm/train.py --help`` (or ``make lm``) for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import heads  # noqa: E402
from model import LM, Config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class RunSpec:
    head: str  # "materialised" or "fused"
    tied: bool
    # the tied table's storage (see model.Config.tied_layout); "dv" runs are the
    # alternative way to hand a tied table to the fused loss, and the materialised one
    # a rounding-only control: the same math as "materialised-tied" in another order.
    layout: str = "vd"

    @property
    def name(self) -> str:
        tying = "tied" if self.tied else "untied"
        return f"{self.head}-{tying}" + ("-dv" if self.tied and self.layout == "dv" else "")

    @property
    def reference(self) -> str:
        """The run this one is compared with: the materialised head, same tying, (V, D)."""
        return f"materialised-{'tied' if self.tied else 'untied'}"


ALL_RUNS = tuple(RunSpec(h, t) for t in (True, False) for h in heads.HEADS)
EXTRA_RUNS = tuple(RunSpec(h, True, "dv") for h in heads.HEADS)


def parse_runs(text: str) -> tuple[RunSpec, ...]:
    by_name = {r.name: r for r in ALL_RUNS + EXTRA_RUNS}
    if text == "all":
        return ALL_RUNS + EXTRA_RUNS
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in by_name]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{bad or text!r} not in {sorted(by_name)} or 'all'")
    return tuple(by_name[n] for n in names)


def add_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--vocab", type=int, default=16384, help="BPE vocabulary size (default 16384)")
    a("--d-model", type=int, default=128)
    a("--layers", type=int, default=2)
    a("--heads", type=int, default=4)
    a("--seq-len", type=int, default=128)
    a("--batch", type=int, default=8, help="rows of seq-len tokens per step")
    a("--steps", type=int, default=150)
    a("--eval-every", type=int, default=50, help="held-out loss every this many steps")
    a("--eval-batches", type=int, default=4)
    a("--lr", type=float, default=1.5e-3, help="peak AdamW learning rate")
    a("--warmup", type=int, default=20, help="linear warmup steps, then cosine decay")
    a("--weight-decay", type=float, default=0.1)
    a("--label-smoothing", type=float, default=0.1)
    a("--z-loss", type=float, default=1e-4)
    a("--seed", type=int, default=0)
    a(
        "--tied-layout",
        choices=("vd", "dv"),
        default="vd",
        help="tied table stored (V, D) (head gets .T) or (D, V) (lookup gathers columns)",
    )
    a("--dtype", choices=("float32", "bfloat16"), default="float32",
      help="compute dtype; parameters and optimizer state stay float32")  # fmt: skip
    a("--remat", action="store_true", help="jax.checkpoint the loss (recompute in backward)")
    a("--stop-after", type=int, default=None, help="stop after this many steps of the schedule")
    a("--runs", type=parse_runs, default=ALL_RUNS,
      help="comma-separated, e.g. fused-tied,fused-tied-dv; 'all' adds the -dv runs")  # fmt: skip
    a("--max-docs", type=int, default=None, help="use only the first N documents (tests)")
    a("--cache-dir", default=None, help="tokenizer cache (default ~/.cache/jaxce-examples-lm)")


def config_of(args, vocab_size: int, tied: bool, layout: str = "vd") -> Config:
    return Config(
        vocab_size, args.d_model, args.layers, args.heads, args.seq_len, tied, layout, args.dtype
    )


def load_data(args):
    data = corpus.Corpus(args.vocab, max_docs=args.max_docs, cache_dir=args.cache_dir)
    train = corpus.pack(data.train, args.seq_len, data.pad_id, ignore_index=heads.IGNORE_INDEX)
    held = corpus.pack(data.heldout, args.seq_len, data.pad_id, ignore_index=heads.IGNORE_INDEX)
    return data, train, held


def make_optimizer(args) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, args.warmup, max(args.steps, args.warmup + 1), end_value=args.lr / 10
    )
    decay = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=args.weight_decay, mask=decay),
    )


def init(cfg: Config, seed: int):
    """``(graphdef, params)`` of a fresh model: the same seed gives the same weights."""
    return nnx.split(LM(cfg, rngs=nnx.Rngs(seed)), nnx.Param)


def make_loss(graphdef, run: RunSpec, *, label_smoothing, z_loss, axes=None, remat=False):
    axes = axes or {}

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params)
        hidden = model(batch["inputs"], batch["segments"])
        return heads.head_loss(
            hidden,
            model.head_kernel(),
            batch["targets"],
            head=run.head,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            **axes,
        )

    return jax.checkpoint(loss_fn) if remat else loss_fn


def make_step(graphdef, run: RunSpec, optimizer, args, axes=None):
    loss_fn = make_loss(
        graphdef,
        run,
        label_smoothing=args.label_smoothing,
        z_loss=args.z_loss,
        axes=axes,
        remat=args.remat,
    )

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        # optax mixes Python floats with its int32 step count, which the test suite's
        # strict dtype promotion rejects; the model and the loss stay under the caller's rule.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def heldout_batches(packed, batch_size: int, count: int) -> list[dict]:
    n = min(count, len(packed["inputs"]) // batch_size)
    return [
        {k: v[i * batch_size : (i + 1) * batch_size] for k, v in packed.items()} for i in range(n)
    ]


@dataclasses.dataclass
class History:
    run: RunSpec
    loss: list = dataclasses.field(default_factory=list)
    seconds: list = dataclasses.field(default_factory=list)
    heldout: list = dataclasses.field(default_factory=list)  # (step, loss) pairs
    temp_bytes: int = 0
    hlo_transposes: list = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run"] = self.run.name
        return d


def table_transposes(hlo: str, cfg: Config) -> list[str]:
    """HLO instructions that copy or transpose a whole ``(V, D)``/``(D, V)`` table."""
    shapes = {f"[{cfg.vocab_size},{cfg.d_model}]", f"[{cfg.d_model},{cfg.vocab_size}]"}
    out = []
    for line in hlo.splitlines():
        m = re.search(r"=\s*[a-z0-9]+(\[[0-9,]*\])\S*\s+(transpose|copy)\(", line)
        if m and m.group(1) in shapes:
            out.append(line.strip()[:200])
    return out


def train(
    runs, args, train_packed, held_packed, vocab_size: int, *, mesh=None, axes=None, log=print
) -> dict[str, History]:
    """Train every run in ``runs`` in lockstep; returns their histories by name.

    With ``mesh``, parameters with a vocabulary axis are sharded over ``"vocab"``, the
    batch over ``"data"``, and ``axes`` (``data_axis``/``vocab_axis``/``mesh``) go to
    the fused loss.
    """
    optimizer = make_optimizer(args)
    states, steps, evals, hist = {}, {}, {}, {}
    batch_spec = None
    for run in runs:
        cfg = config_of(args, vocab_size, run.tied, run.layout)
        graphdef, params = init(cfg, args.seed)
        if mesh is not None:
            place = functools.partial(_place, mesh=mesh, cfg=cfg)
            params = jax.tree.map(place, params)
            batch_spec = jax.NamedSharding(mesh, jax.P("data", None))
        opt_state = optimizer.init(params)
        if mesh is not None:  # the moments like their parameters, the step count replicated
            opt_state = jax.tree.map(place, opt_state)
        step = make_step(graphdef, run, optimizer, args, axes)
        example = _put(next(corpus.batches(train_packed, args.batch, args.seed)), batch_spec)
        shard = (
            None if mesh is None else jax.tree.map(lambda x: x.sharding, (params, opt_state, None))
        )
        jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=shard)
        compiled = jitted.lower(params, opt_state, example).compile()
        h = hist[run.name] = History(run)
        h.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
        h.hlo_transposes = table_transposes(compiled.as_text(), cfg) if run.tied else []
        loss_fn = make_loss(graphdef, run, label_smoothing=0.0, z_loss=0.0, axes=axes)
        evals[run.name] = jax.jit(loss_fn)
        states[run.name], steps[run.name] = (params, opt_state), compiled
    held = [
        _put(b, batch_spec) for b in heldout_batches(held_packed, args.batch, args.eval_batches)
    ]
    data = corpus.batches(train_packed, args.batch, args.seed)
    last = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for i in range(1, last + 1):
        batch = _put(next(data), batch_spec)
        for run in runs:
            t0 = time.perf_counter()
            params, opt_state, loss = steps[run.name](*states[run.name], batch)
            loss = float(loss)  # waits for the step
            hist[run.name].seconds.append(time.perf_counter() - t0)
            hist[run.name].loss.append(loss)
            states[run.name] = (params, opt_state)
        if held and (i % args.eval_every == 0 or i == last):
            for run in runs:
                p = states[run.name][0]
                value = float(np.mean([float(evals[run.name](p, b)) for b in held]))
                hist[run.name].heldout.append((i, value))
        log(i, {name: h.loss[-1] for name, h in hist.items()}, hist)
    return hist


def probe_temp_bytes(args, train_packed, vocab_size: int, tied: bool) -> int:
    """The compiled temporaries of the train step with a one-class head instead of a loss
    over the vocabulary: the model's activations, the gradients and the optimizer's."""
    cfg = config_of(args, vocab_size, tied)
    graphdef, params = init(cfg, args.seed)
    optimizer = make_optimizer(args)
    step = make_step(graphdef, RunSpec("probe", tied), optimizer, args)
    batch = _put(next(corpus.batches(train_packed, args.batch, args.seed)), None)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, optimizer.init(params), batch)
    return int(compiled.compile().memory_analysis().temp_size_in_bytes)


def _place(x, *, mesh, cfg: Config):
    return jax.device_put(x, _spec(mesh, x, cfg))


def _spec(mesh, x, cfg: Config):
    if x.ndim == 2 and x.shape == (cfg.vocab_size, cfg.d_model):
        return jax.NamedSharding(mesh, jax.P("vocab", None))
    if x.ndim == 2 and x.shape == (cfg.d_model, cfg.vocab_size):
        return jax.NamedSharding(mesh, jax.P(None, "vocab"))
    return jax.NamedSharding(mesh, jax.P())


def _put(batch, sharding):
    return {
        k: jnp.asarray(v) if sharding is None else jax.device_put(v, sharding)
        for k, v in batch.items()
    }


CONFIG_OPTIONS = (
    "vocab", "d_model", "layers", "heads", "seq_len", "batch", "steps", "eval_every",
    "eval_batches", "lr", "warmup", "weight_decay", "label_smoothing", "z_loss", "seed",
    "max_docs", "cache_dir", "dtype",
)  # fmt: skip


def config_argv(args) -> list[str]:
    """The command-line options that reproduce ``args``' model, data and schedule."""
    out = ["--remat"] if args.remat else []
    for key in CONFIG_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def summary_rows(hist: dict[str, History]) -> list[dict[str, Any]]:
    """One row per run: its curve against the materialised run of the same tying."""
    rows = []
    for name, h in hist.items():
        ref = hist.get(h.run.reference)
        sec = statistics.median(h.seconds[1:] or h.seconds)
        row = {
            "run": name,
            "final_loss": h.loss[-1],
            "heldout": h.heldout[-1][1] if h.heldout else float("nan"),
            "max_rel_diff": float("nan"),
            "ms_per_step": 1e3 * sec,
            "time_ratio": float("nan"),
            "temp_mib": h.temp_bytes / 2**20,
            "temp_ratio": float("nan"),
        }
        if ref is not None and ref is not h:
            a, b = np.asarray(h.loss), np.asarray(ref.loss)
            row["max_rel_diff"] = float(np.max(np.abs(a - b) / np.abs(b)))
            # paired: the same step's batch, adjacent in time
            pairs = [x / y for x, y in zip(h.seconds[1:], ref.seconds[1:], strict=True)]
            row["time_ratio"] = statistics.median(pairs) if pairs else float("nan")
            row["temp_ratio"] = h.temp_bytes / max(ref.temp_bytes, 1)
        rows.append(row)
    return rows


def print_table(rows, console) -> None:
    from rich.table import Table

    t = Table(title="heads side by side (Δ and ratios against the materialised run, same tying)")
    for col in ("run", "final loss", "held-out", "max rel Δ loss", "ms/step", "time ×",
                "temp MiB", "temp ×"):  # fmt: skip
        t.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        t.add_row(
            r["run"],
            f"{r['final_loss']:.4f}",
            f"{r['heldout']:.4f}",
            "—" if np.isnan(r["max_rel_diff"]) else f"{r['max_rel_diff']:.1e}",
            f"{r['ms_per_step']:.0f}",
            "—" if np.isnan(r["time_ratio"]) else f"{r['time_ratio']:.2f}",
            f"{r['temp_mib']:.1f}",
            "—" if np.isnan(r["temp_ratio"]) else f"{r['temp_ratio']:.3f}",
        )
    console.print(t)


def run_sharded(args, runs, console) -> dict[str, list[float]] | None:
    """The fused runs on a simulated ``data × vocab`` mesh, in a subprocess; their losses."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "sharded.json")
        cmd = [sys.executable, str(HERE / "sharded.py"), *config_argv(args), "--mesh", args.mesh]
        cmd += ["--runs", ",".join(r.name for r in runs), "--json", str(out)]
        cmd += ["--stop-after", str(args.sharded_steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            console.print(f"[red]sharded run failed[/red]:\n{proc.stderr[-3000:]}")
            return None
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--mesh", default="2x4", help="data×vocab mesh of the sharded check, or none")
    p.add_argument("--sharded-steps", type=int, default=10, help="steps of the sharded check")
    p.add_argument("--plot", default=str(HERE / "loss_curves.png"), help="'' for no plot")
    p.add_argument("--json", default=None, help="also write the histories and table here")
    args = p.parse_args(argv)
    console = Console(width=max(Console().width, 112))
    data, train_packed, held_packed = load_data(args)
    ntok = args.batch * args.seq_len
    console.print(f"corpus: {data.describe()}")
    console.print(
        f"model: d_model {args.d_model}, {args.layers} layers, {args.heads} heads; batch "
        f"{args.batch}×{args.seq_len} = {ntok} tokens/step; logits {ntok}×{data.vocab_size} "
        f"float32 = {ntok * data.vocab_size * 4 / 2**20:.0f} MiB; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; {args.dtype}{', remat' if args.remat else ''}; runs: "
        f"{', '.join(r.name for r in args.runs)}"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), TextColumn("{task.fields[losses]}"),
                  console=console) as progress:  # fmt: skip
        last = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
        task = progress.add_task("training", total=last, losses="compiling")

        def log(i, losses, hist):
            text = "  ".join(f"{k} {v:.3f}" for k, v in losses.items())
            progress.update(task, completed=i, losses=text)
            if any(h.heldout and h.heldout[-1][0] == i for h in hist.values()):
                held = "  ".join(f"{k} {h.heldout[-1][1]:.4f}" for k, h in hist.items())
                progress.console.print(f"step {i:5d}  held-out loss: {held}")

        hist = train(args.runs, args, train_packed, held_packed, data.vocab_size, log=log)
    rows = summary_rows(hist)
    print_table(rows, console)
    result = {"rows": rows, "histories": {k: h.as_json() for k, h in hist.items()}}
    for tied in sorted({r.tied for r in args.runs}, reverse=True):
        probe = probe_temp_bytes(args, train_packed, data.vocab_size, tied)
        result.setdefault("probe_temp_mib", {})["tied" if tied else "untied"] = probe / 2**20
        console.print(
            f"{'tied' if tied else 'untied'}: the same step with a one-class head (no loss over "
            f"the vocabulary) holds {probe / 2**20:.1f} MiB of temporaries"
        )
    for name, h in hist.items():
        if h.run.tied:
            what = (
                "none"
                if not h.hlo_transposes
                else f"{len(h.hlo_transposes)}, e.g. " + (h.hlo_transposes[0])
            )
            console.print(f"{name}: HLO copies/transposes of the whole embedding table: {what}")
    if args.plot:
        import plot

        plot.plot(hist, args.plot, title=f"V={data.vocab_size}, D={args.d_model}")
        console.print(f"wrote {args.plot}")
    fused = [r for r in args.runs if r.head == "fused"]
    if args.mesh != "none" and fused:
        console.print(f"sharded check: {args.sharded_steps} steps on a {args.mesh} data×vocab mesh")
        sharded = run_sharded(args, fused, console)
        if sharded is None:
            return 1
        result["sharded"] = sharded
        for name, losses in sharded.items():
            ref = np.asarray(hist[name].loss[: len(losses)])
            rel = np.max(np.abs(np.asarray(losses) - ref) / np.abs(ref))
            console.print(
                f"{name} on {args.mesh}: losses {losses[0]:.4f} … {losses[-1]:.4f}, max rel "
                f"diff from one device {rel:.1e} over {len(losses)} steps"
            )
    if args.json:
        corpus._atomic_write(Path(args.json), json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
