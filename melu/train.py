"""Meta-training: Adam on the meta-parameters, validation-user early stopping, atomic
checkpoints every epoch, exact resume, and data parallelism under ``torchrun``."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from melu import checkpoint as ckpt
from melu.config import MetaConfig, ModelConfig, TrainConfig
from melu.data import ColdStartData
from melu.distributed import World, init_from_env
from melu.errors import MeluError
from melu.maml import MetaLearner, TaskFeatures, gather
from melu.objectives import WatchEpisode, sample_episodes
from melu.predict import catalogue_recall, query_mae

log = logging.getLogger(__name__)
Batch = TypeVar("Batch", TaskFeatures, WatchEpisode)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
# Tasks are sorted by support size within pools of this many batches (see TaskSet.batches).
BUCKET_BATCHES = 8
# Parameters of the watch model (objective "rating+watch"); they share nothing with the rating
# model's, so each part keeps the weights of its own best validation epoch.
WATCH_PREFIX = "net.watch."
# The watch model is selected on validation Recall@10 from this many ratings per user.
SELECT_SUPPORT = 5


def stop_measures(watch: bool) -> str:
    """The validation measures early stopping watches, in words: training stops after
    ``patience`` epochs in which none of them improved."""
    if not watch:
        return "validation MAE"
    return f"validation MAE or Recall@10 from {SELECT_SUPPORT} ratings"


def kept_weights(metrics: dict[str, Any]) -> str:
    """Which epochs' weights a checkpoint holds, and why: the rating network's from its best
    validation MAE, the watch model's (when there is one) from its best validation Recall@10."""
    text = (
        f"the rating network from epoch {metrics.get('best_epoch')} (best validation MAE "
        f"{float(metrics.get('best_val_mae', math.nan)):.4f})"
    )
    if "best_recall_epoch" in metrics:
        text += (
            f" and the watch model from epoch {metrics['best_recall_epoch']} (best validation "
            f"Recall@10 from {SELECT_SUPPORT} ratings {float(metrics['best_val_recall']):.4f})"
        )
    return text


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MeluError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise MeluError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def _dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


def _shard(f: Batch, world: World) -> Batch:
    """This rank's tasks of a batch (a NamedTuple of tensors with a leading task dim)."""
    part = world.shard(f.users.shape[0])
    return type(f)(*(t[part] for t in f))


def _clip(learner: MetaLearner, max_norm: float) -> None:
    """Clip the rating model's and the watch model's gradients apart: the watch loss's larger
    gradients must not shrink the rating model's steps (it then trains as it would alone)."""
    rating: list[torch.nn.Parameter] = []
    watch: list[torch.nn.Parameter] = []
    for name, param in learner.named_parameters():
        (watch if name.startswith(WATCH_PREFIX) else rating).append(param)
    for group in (rating, watch):
        if group:
            torch.nn.utils.clip_grad_norm_(group, max_norm)


def _merge(
    rating_state: dict[str, torch.Tensor], watch_state: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The rating model's best weights with the watch model's best weights."""
    if watch_state is None:
        return rating_state
    return {**rating_state, **{k: v for k, v in watch_state.items() if k.startswith(WATCH_PREFIX)}}


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the checkpoint's history, so a resumed run never duplicates lines.
    lines = "".join(json.dumps(row) + "\n" for row in history)
    ckpt.atomic_write_text(run_dir / METRICS_NAME, lines)


def train(
    data: ColdStartData,
    run_dir: Path,
    model_cfg: ModelConfig,
    meta_cfg: MetaConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> ckpt.Checkpoint:
    """Meta-train on ``data.tasks["warm"]``, early-stopping on ``data.tasks["validation"]``.

    Training stops after ``train_cfg.patience`` epochs in which neither validation MAE nor (a
    watch model's) validation Recall@10 improved; the checkpoint holds the rating network of
    the best MAE epoch and the watch model of the best Recall@10 epoch (:func:`kept_weights`).

    ``stop_after_epoch`` ends the run after that many epochs as if interrupted (tests use it
    to check that ``resume`` continues to the same result).
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    device = resolve_device(train_cfg.device)
    world = init_from_env(device)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    previous = ckpt.load(path, map_location=device) if resume and path.exists() else None
    if previous is not None and previous.resume:
        # The run continues under the configs it started with, so that it ends where an
        # uninterrupted run would.
        given = (model_cfg, meta_cfg, train_cfg)
        model_cfg, meta_cfg, train_cfg = previous.model, previous.meta, previous.train
        if given != (model_cfg, meta_cfg, train_cfg) and world.is_main:
            log.warning("resuming with the configuration saved in %s, not the options given", path)
    elif path.exists() and world.is_main:
        log.warning("%s exists and will be overwritten (use --resume to continue it)", path)

    dtype = _dtype(train_cfg.dtype)
    torch.manual_seed(train_cfg.seed)
    learner = ckpt.build_learner(data.encoder, model_cfg, meta_cfg).to(device=device, dtype=dtype)
    optimizer = torch.optim.Adam(
        learner.parameters(),
        lr=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
        # One kernel for the whole update on the GPU instead of several per parameter.
        fused=True if device.type == "cuda" else None,
    )
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, train_cfg.epochs))
        if train_cfg.schedule == "cosine"
        else None
    )
    start_epoch, history, bad_epochs = 0, [], 0
    best: dict[str, Any] = {"val_mae": math.inf, "epoch": -1, "state": None}
    watch = learner.watch is not None
    best_watch: dict[str, Any] = {"recall": -math.inf, "epoch": -1, "state": None}

    if previous is not None and previous.resume:
        learner.load_state_dict(previous.resume["model"])
        optimizer.load_state_dict(previous.resume["optimizer"])
        if scheduler is not None and previous.resume.get("scheduler"):
            scheduler.load_state_dict(previous.resume["scheduler"])
        start_epoch = int(previous.resume["epoch"])
        bad_epochs = int(previous.resume["bad_epochs"])
        _set_rng_state(previous.resume["rng"], device)
        history = list(previous.metrics.get("history", []))
        best = {
            "val_mae": float(previous.metrics["best_val_mae"]),
            "epoch": int(previous.metrics["best_epoch"]),
            "state": previous.state,
        }
        if watch:
            best_watch = {
                "recall": float(previous.metrics["best_val_recall"]),
                "epoch": int(previous.metrics["best_recall_epoch"]),
                "state": previous.state,
            }
        log.info("resuming %s after epoch %d", path, start_epoch)

    model: torch.nn.Module = learner
    if world.enabled:
        model = DistributedDataParallel(
            learner, device_ids=[device.index] if device.type == "cuda" else None
        )
    user_table = data.user_table.to(device)
    item_table = data.catalogue.table.to(device)
    # Ratings in the training dtype once here, not per step.
    train_tasks = data.tasks["warm"].to(device, dtype)
    val_tasks = data.tasks["validation"].to(device, dtype)
    if len(train_tasks) == 0 or len(val_tasks) == 0:
        raise MeluError("no training or validation tasks: is the dataset complete?")
    # A compiled meta-loss gives the same gradients (tested); it pays off on GPUs, where CUDA
    # graphs ("reduce-overhead") remove the launch cost of its many small kernels. Every batch
    # is padded to the longest support and the last one with empty tasks (loss and gradient
    # exactly 0), so one shape covers an epoch: on a GPU padding costs next to nothing, each
    # new shape a compilation. (Dynamic shapes failed to compile with torch 2.11's inductor.)
    loss_fn = (
        torch.compile(
            model, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else "default"
        )
        if train_cfg.compile
        else model
    )
    full_width = train_tasks.batch_all.x_spt.shape[1]

    for epoch in range(start_epoch, train_cfg.epochs):
        started = time.perf_counter()
        learner.train()
        rng = np.random.default_rng((train_cfg.seed, epoch))
        episodes = train_tasks.resample_queries(rng) if train_cfg.resample_queries else train_tasks
        batches = episodes.batches(train_cfg.batch_size, rng, bucket=BUCKET_BATCHES)
        total = torch.zeros((), device=device, dtype=dtype)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
            disable=not (progress and world.is_main),
            leave=False,
        )
        for step, batch in enumerate(bar):
            size = len(batch)
            if train_cfg.compile:
                batch = batch.pad_support(full_width).pad_tasks(train_cfg.batch_size)
                if device.type == "cuda":
                    # A new iteration: CUDA graphs may reuse the last one's output memory.
                    torch.compiler.cudagraph_mark_step_begin()
            features = _shard(gather(batch, user_table, item_table), world)
            if watch:
                episode = sample_episodes(
                    batch, user_table, item_table, meta_cfg.watch_support, meta_cfg.watch_target_min
                )
                losses = loss_fn(features, _shard(episode, world), item_table)
            else:
                losses = loss_fn(features)
            # Sum over this rank's tasks / global batch size, times the world size that
            # DDP's gradient averaging divides by: the gradient of the global mean loss.
            loss = losses.sum() * world.size / size
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip > 0:
                _clip(learner, train_cfg.grad_clip)
            optimizer.step()
            total += losses.detach().sum()
            if progress and world.is_main and step % 10 == 0:
                bar.set_postfix(loss=f"{total.item() / ((step + 1) * size):.4f}")
        if scheduler is not None:
            scheduler.step()
        if world.enabled:
            torch.distributed.all_reduce(total)
        val = query_mae(learner, val_tasks, user_table, item_table)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(total.item()) / len(train_tasks),
            "val_mae": val["mae"],
            "val_rmse": val["rmse"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        improved = False
        if val["mae"] < best["val_mae"]:
            best = {"val_mae": val["mae"], "epoch": epoch + 1, "state": _cpu_state(learner)}
            improved = True
        if watch:
            recall = catalogue_recall(
                learner, val_tasks, user_table, item_table, SELECT_SUPPORT, seed=train_cfg.seed
            )
            row["val_recall"] = recall
            if recall > best_watch["recall"]:
                best_watch = {"recall": recall, "epoch": epoch + 1, "state": _cpu_state(learner)}
                improved = True
        row["seconds"] = round(time.perf_counter() - started, 3)
        history.append(row)
        bad_epochs = 0 if improved else bad_epochs + 1
        stop = bad_epochs >= train_cfg.patience
        metrics: dict[str, Any] = {
            "history": history,
            "best_epoch": best["epoch"],
            "best_val_mae": best["val_mae"],
            "stopped_early": stop,
        }
        if watch:
            metrics["best_val_recall"] = best_watch["recall"]
            metrics["best_recall_epoch"] = best_watch["epoch"]
        if world.is_main:
            log.info(
                "epoch %d: train loss %.4f, validation MAE %.4f (best %.4f at epoch %d)%s, %.1fs%s",
                epoch + 1,
                row["train_loss"],
                val["mae"],
                best["val_mae"],
                best["epoch"],
                f", recall@10 {row['val_recall']:.4f} (best {best_watch['recall']:.4f} at "
                f"epoch {best_watch['epoch']})"
                if watch
                else "",
                row["seconds"],
                # How close early stopping is, so that a run going on past its best MAE epoch
                # is no surprise.
                f"; {bad_epochs} of {train_cfg.patience} epochs without a better "
                f"{stop_measures(watch)}"
                if bad_epochs
                else "",
            )
            checkpoint = ckpt.Checkpoint(
                data=data.config,
                model=model_cfg,
                meta=meta_cfg,
                train=train_cfg,
                encoder=data.encoder,
                catalogue=data.catalogue,
                state=_merge(best["state"], best_watch["state"]),
                metrics=metrics,
                resume={
                    "model": _cpu_state(learner),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "epoch": epoch + 1 if not stop else train_cfg.epochs,
                    "bad_epochs": bad_epochs,
                    "rng": _rng_state(device),
                },
            )
            ckpt.save(path, checkpoint)
            _write_metrics(run_dir, history)
        if stop and world.is_main:
            log.info(
                "early stop after epoch %d: no better %s for %d epochs; the checkpoint keeps %s",
                epoch + 1,
                stop_measures(watch),
                train_cfg.patience,
                kept_weights(metrics),
            )
        if stop:
            break
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if world.enabled:
        torch.distributed.barrier()
    return ckpt.load(path)


def _cpu_state(learner: MetaLearner) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in learner.state_dict().items()}
