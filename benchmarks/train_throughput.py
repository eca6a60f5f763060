"""Meta-training throughput of both models: MeLU's rating network (a per-task loop vs melu's
batched paths) and the taste model (the default preset's).

All variants compute the meta-gradient (forward and backward) of the same batches of real MeLU
tasks, side by side in one run; the table reports tasks per second and, for MeLU's network,
the ratio to the loop. MeLU's network (``ModelConfig()``, 5 local steps of the decision
layers): ``loop`` (the reference below), ``vmap`` (``torch.func.grad`` per task under
``vmap``: melu's generic path), ``closed`` (the closed-form head update of
``melu.closed_form``, batched matmuls) and ``compiled`` (``torch.compile`` of the closed form;
CUDA graphs on a GPU). The taste model (``PRESETS["default"]``): ``eager``, its meta-loss on
the cold-start episodes training draws from those tasks (``melu.objectives.sample_episodes``,
drawn before timing), one local step of every fast weight against the whole catalogue.
(``torch.compile`` cannot differentiate its second-order steps: ``melu.train.check_options``.)

    python benchmarks/train_throughput.py --data-dir ../shared/data/movielens --json out.json
    python benchmarks/train_throughput.py --device cuda --batches 32 256   # on a GPU
    python benchmarks/train_throughput.py --batches --train-epochs 30 --train-models taste

``--train-epochs N`` also times N real epochs of ``melu.train`` per model (validation every
epoch, a checkpoint every epoch, early stopping off; for the taste model also choosing its
step schedule once they end).

The loop is what public MeLU code does: one task at a time, the whole network re-run at every
local step, fast weights from ``torch.autograd.grad(create_graph=True)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from melu.config import PRESETS, DataConfig, MetaConfig, ModelConfig, Preset, TrainConfig
from melu.data import ColdStartData, prepare
from melu.learners import build_learner, fit_to_training
from melu.maml import MetaLearner, TaskFeatures, gather, masked_mse, support_stats
from melu.objectives import Episode, sample_episodes
from melu.taste_learner import TasteLearner
from melu.train import resolve_device, train

log = logging.getLogger("benchmarks.train_throughput")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens"
# The two models, as training builds them: MeLU's rating network with melu's defaults, and
# the default preset's taste model.
MODELS: dict[str, Preset] = {
    "rating": Preset(ModelConfig(), MetaConfig()),
    "taste": PRESETS["default"],
}


def loop_meta_loss(learner: MetaLearner, f: TaskFeatures) -> torch.Tensor:
    """The reference: a Python loop over tasks, each at its own support size."""
    params = learner.meta_params()
    names = learner.adapted
    losses = []
    for t in range(f.users.shape[0]):
        n = int(f.mask_spt[t].sum())
        users, xs, ys = f.users[t], f.x_spt[t, :n], f.y_spt[t, :n]
        mean, context = support_stats(ys, f.mask_spt[t, :n])
        offset = mean if learner.net.cfg.residual else 0.0
        fast = {k: params[k] for k in names}
        for _ in range(learner.cfg.local_steps):
            pred = functional_call(learner.net, {**params, **fast}, (users, xs, context)) + offset
            loss = ((pred - ys) ** 2).mean()
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=not learner.cfg.first_order
            )
            fast = {
                k: w - learner.cfg.local_lr * g
                for (k, w), g in zip(fast.items(), grads, strict=True)
            }
        pred = functional_call(learner.net, {**params, **fast}, (users, f.x_qry[t], context))
        losses.append(masked_mse(pred + offset, f.y_qry[t], f.mask_qry[t]))
    return torch.stack(losses).mean()


def time_variant(
    fn: Callable[[Any], torch.Tensor],
    learner: torch.nn.Module,
    batches: Sequence[TaskFeatures | Episode],
    device: torch.device,
    warmup: int,
) -> float:
    """Median seconds per meta-gradient over ``batches`` after ``warmup`` untimed steps."""

    def step(f: TaskFeatures | Episode) -> None:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a no-op unless CUDA graphs run
        learner.zero_grad(set_to_none=True)
        fn(f).backward()

    for f in batches[:warmup]:
        step(f)
    times = []
    for f in batches[warmup:]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(f)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_batches(
    data: ColdStartData, size: int, count: int, device: torch.device, pad_to: int | None, seed: int
) -> list[TaskFeatures]:
    tasks = data.tasks["warm"]
    rng = np.random.default_rng(seed)
    user_table = data.user_table.to(device)
    item_table = data.catalogue.table.to(device)
    out = []
    for _ in range(count):
        batch = tasks.batch(rng.choice(len(tasks), size, replace=False), trim=pad_to is None)
        if pad_to is not None:
            batch = batch.pad_support(pad_to)
        out.append(gather(batch.to(device), user_table, item_table))
    return out


def make_episodes(
    data: ColdStartData, size: int, count: int, device: torch.device, preset: Preset, seed: int
) -> list[Episode]:
    """Cold-start episodes as ``melu.train`` draws them for the taste model, from the tasks
    :func:`make_batches` takes with the same seed."""
    tasks = data.tasks["warm"]
    rng = np.random.default_rng(seed)
    user_table = data.user_table.to(device)
    item_table = data.catalogue.table.to(device)
    vocab = data.encoder.item_specs()[0].vocab_size
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(count):
        batch = tasks.batch(rng.choice(len(tasks), size, replace=False)).to(device)
        out.append(
            sample_episodes(
                batch, user_table, item_table, preset.meta.episode_support,
                preset.model.liked_rating, vocab_size=vocab, generator=generator,
            )
        )  # fmt: skip
    return out


def taste_learner(data: ColdStartData, preset: Preset, device: torch.device) -> TasteLearner:
    """The taste model as training starts it: seeded weights, co-occurrence fitted."""
    torch.manual_seed(0)
    learner = build_learner(data.encoder, preset.model, preset.meta, data.scale)
    assert isinstance(learner, TasteLearner)
    table = data.catalogue.table.numpy()
    fit_to_training(learner, data.train_ratings, data.catalogue.rows, table)
    return learner.to(device).train()


def taste_meta_loss(
    learner: TasteLearner, table: torch.Tensor, recommendable: torch.Tensor, episode: Episode
) -> torch.Tensor:
    """The mean query loss of a batch of episodes, as ``melu.train`` differentiates it."""
    return learner.losses(episode, table, recommendable).mean()


def benchmark_taste(
    args: argparse.Namespace, data: ColdStartData, device: torch.device
) -> list[dict[str, object]]:
    """Seconds per meta-gradient of the taste model's episodes, per order and batch size."""
    rows: list[dict[str, object]] = []
    table = data.catalogue.table.to(device)
    recommendable = data.catalogue.recommendable.to(device)
    for order in args.orders:
        preset = MODELS["taste"]
        preset = Preset(
            preset.model, dataclasses.replace(preset.meta, first_order=order == "first")
        )
        learner = taste_learner(data, preset, device)
        for size in args.batches:
            episodes = make_episodes(
                data, size, args.warmup + args.repeats, device, preset, seed=size
            )
            meta_loss = functools.partial(taste_meta_loss, learner, table, recommendable)
            seconds = time_variant(meta_loss, learner, episodes, device, args.warmup)
            rows.append(
                {
                    "model": "taste", "variant": "eager", "order": order, "batch": size,
                    "seconds_per_step": seconds, "tasks_per_s": size / seconds,
                    "ratio_vs_loop": None,
                }
            )  # fmt: skip
            log.info("taste %s-order batch %d: %.1f tasks/s", order, size, size / seconds)
    return rows


def benchmark(args: argparse.Namespace) -> list[dict[str, object]]:
    device = resolve_device(args.device)
    data = prepare(args.data_dir, DataConfig(dataset="melu"))
    rows: list[dict[str, object]] = []
    if "rating" in args.models:
        rows += benchmark_melu(args, data, device)
    if "taste" in args.models:
        rows += benchmark_taste(args, data, device)
    return rows


def benchmark_melu(
    args: argparse.Namespace, data: ColdStartData, device: torch.device
) -> list[dict[str, object]]:
    """MeLU's network: every variant's seconds per meta-gradient, per order and batch size."""
    max_support = int(data.tasks["warm"].support_sizes.max())
    model_cfg = MODELS["rating"].model
    rows: list[dict[str, object]] = []
    for order in args.orders:
        for size in args.batches:
            meta = dataclasses.replace(MODELS["rating"].meta, first_order=order == "first")
            torch.manual_seed(0)
            learner = build_learner(data.encoder, model_cfg, meta).to(device).train()
            assert isinstance(learner, MetaLearner)
            torch.manual_seed(0)
            generic = build_learner(
                data.encoder, model_cfg, dataclasses.replace(meta, local_update="vmap")
            )
            assert isinstance(generic, MetaLearner)
            generic = generic.to(device).train()
            timings: dict[str, float] = {}
            count = args.warmup + args.repeats
            trimmed = make_batches(data, size, count, device, None, seed=size)
            # The compiled path takes one fixed shape, so it sees the same tasks padded to 90.
            padded = make_batches(data, size, count, device, max_support, seed=size)
            for variant in args.variants:
                if variant == "loop":
                    loop_batches = trimmed[: args.warmup + max(1, args.loop_repeats)]
                    reference = functools.partial(loop_meta_loss, learner)
                    timings[variant] = time_variant(
                        reference, learner, loop_batches, device, args.warmup
                    )
                elif variant == "vmap":
                    timings[variant] = time_variant(
                        generic.meta_loss, generic, trimmed, device, args.warmup
                    )
                elif variant == "closed":
                    timings[variant] = time_variant(
                        learner.meta_loss, learner, trimmed, device, args.warmup
                    )
                elif variant == "compiled":
                    # CUDA graphs on the GPU remove the launch overhead of many small kernels.
                    mode = args.compile_mode or (
                        "default" if device.type == "cpu" else "reduce-overhead"
                    )
                    compiled = torch.compile(learner.meta_loss, dynamic=False, mode=mode)
                    started = time.perf_counter()
                    compiled(padded[0]).backward()  # compilation, not timed
                    log.info("compiled %s/%d in %.0fs", order, size, time.perf_counter() - started)
                    timings[variant] = time_variant(compiled, learner, padded, device, args.warmup)
            for variant, seconds in timings.items():
                rows.append(
                    {
                        "model": "rating", "variant": variant, "order": order, "batch": size,
                        "seconds_per_step": seconds, "tasks_per_s": size / seconds,
                        "ratio_vs_loop": timings["loop"] / seconds if "loop" in timings else None,
                    }
                )  # fmt: skip
                log.info("%s %s-order batch %d: %.1f tasks/s", variant, order, size, size / seconds)
    return rows


def epoch_timing(
    args: argparse.Namespace, out: Path, compiled: bool, model: str
) -> dict[str, object]:
    """Real meta-training epochs through ``melu.train`` (MeLU protocol, every training and
    validation user) of one of :data:`MODELS`.

    ``total_s`` is the wall time of the whole run (data preparation excluded, compilation and
    the taste model's co-occurrence and step schedule included); ``steady_epoch_s`` the median
    epoch after the first, which pays compilation; ``after_epochs_s`` what the epochs' own
    times leave of the total (setup, checkpoint writes, the step schedule).
    """
    data = prepare(args.data_dir, DataConfig(dataset="melu"))
    cfg = TrainConfig(
        epochs=args.train_epochs, device=args.device, patience=10**6, compile=compiled
    )
    preset = MODELS[model]
    started = time.perf_counter()
    result = train(data, out, preset.model, preset.meta, cfg, progress=False)
    total = time.perf_counter() - started
    history = result.metrics["history"]
    seconds = [float(row["seconds"]) for row in history]
    row: dict[str, object] = {
        "model": model,
        "mode": "compiled" if compiled else "eager",
        "epochs": len(seconds),
        "first_epoch_s": seconds[0],
        "steady_epoch_s": statistics.median(seconds[1:] or seconds),
        "total_s": total,
        "after_epochs_s": total - sum(seconds),
        "best_val_mae": float(result.metrics["best_val_mae"]),
    }
    if "best_val_recall" in result.metrics:
        row["best_val_recall"] = float(result.metrics["best_val_recall"])
        row["step_schedule"] = result.metrics["step_schedule"]["chosen"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--models",
        nargs="*",
        choices=tuple(MODELS),
        default=list(MODELS),
        help="meta-batch throughput of which models (none: only --train-epochs)",
    )
    p.add_argument("--batches", type=int, nargs="*", default=[32, 256])
    p.add_argument("--orders", nargs="+", choices=("second", "first"), default=["second", "first"])
    p.add_argument("--variants", nargs="+", choices=("loop", "vmap", "closed", "compiled"),
                   default=["loop", "vmap", "closed", "compiled"])  # fmt: skip
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--loop-repeats", type=int, default=3, help="the loop is slow: fewer repeats")
    p.add_argument("--train-epochs", type=int, default=0, help="also time N real epochs")
    p.add_argument("--train-modes", nargs="+", choices=("eager", "compiled"), default=["eager"])
    p.add_argument("--train-models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    p.add_argument("--json", type=Path, dest="json_out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_float32_matmul_precision("high")

    # The build machine's cores are shared: the load says how much of them this run had.
    load_before = os.getloadavg()
    rows = benchmark(args)
    report: dict[str, object] = {
        "date": dt.date.today().isoformat(),
        "device": (
            torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "rows": rows,
    }  # fmt: skip
    if args.train_epochs:
        import tempfile

        report["training"] = []
        for model in args.train_models:
            for mode in args.train_modes:
                if model == "taste" and mode == "compiled":
                    continue  # refused: see melu.train.check_options
                with tempfile.TemporaryDirectory() as tmp:
                    row = epoch_timing(args, Path(tmp), compiled=mode == "compiled", model=model)
                report["training"].append(row)  # type: ignore[attr-defined]
                log.info("training %s %s: %s", model, mode, row)
    report["load_average_1min"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")

    header = (
        f"{'model':<7}{'variant':<10}{'order':<8}{'batch':>6}{'tasks/s':>12}{'ms/step':>10}"
        f"{'vs loop':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = f"{r['ratio_vs_loop']:.1f}x" if r["ratio_vs_loop"] else "-"
        lines.append(
            f"{r['model']:<7}{r['variant']:<10}{r['order']:<8}{r['batch']:>6}"
            f"{r['tasks_per_s']:>12.1f}{1000 * float(r['seconds_per_step']):>10.1f}{ratio:>9}"  # type: ignore[arg-type]
        )
    for t in report.get("training", []):  # type: ignore[attr-defined]
        recall = (
            f", best validation Recall@10 {t['best_val_recall']:.4f}, step schedule "
            f"{t['step_schedule']}"
            if "best_val_recall" in t
            else ""
        )
        lines.append(
            f"training {t['model']} {t['mode']}: {t['epochs']} epochs in {t['total_s']:.1f} s "
            f"(first {t['first_epoch_s']:.2f} s, then {t['steady_epoch_s']:.2f} s/epoch; "
            f"{t['after_epochs_s']:.1f} s outside epochs), best validation MAE "
            f"{t['best_val_mae']:.4f}{recall}"
        )
    load = report["load_average_1min"]
    lines.append(f"load average (1 min) on {os.cpu_count()} cores: {load}")  # shared machines
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
