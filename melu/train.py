"""Meta-training: Adam on the meta-parameters, validation-user early stopping, atomic
checkpoints every epoch, exact resume, and data parallelism under ``torchrun``."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from melu import checkpoint as ckpt
from melu.config import FAST_WEIGHTS, MetaConfig, ModelConfig, TrainConfig, adapted_fast_weights
from melu.data import ColdStartData
from melu.distributed import World, init_from_env
from melu.errors import MeluError
from melu.fold_in import MAX_ITEMS
from melu.learners import Learner, build_learner, fit_to_training, training_pairs
from melu.maml import TaskFeatures, gather
from melu.objectives import Episode, sample_episodes
from melu.predict import catalogue_recall, query_mae
from melu.schedule import choose_fold_in, choose_rating_calibration, choose_step_schedule
from melu.scoring import CatalogueScorer
from melu.tasks import TaskBatch, TaskSet
from melu.taste_learner import TasteLearner

log = logging.getLogger(__name__)
Batch = TypeVar("Batch", TaskFeatures, Episode)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
# Tasks are sorted by support size within pools of this many batches (see TaskSet.batches).
BUCKET_BATCHES = 8
# The taste model is selected on validation Recall@10 from this many ratings per user.
SELECT_SUPPORT = 5


def stop_measures(lists: bool) -> str:
    """The validation measure early stopping watches and selects on, in words: the taste
    model's list (``lists``), MeLU's rating network's MAE."""
    if not lists:
        return "validation MAE"
    return f"validation Recall@10 from {SELECT_SUPPORT} ratings"


def kept_weights(metrics: dict[str, Any]) -> str:
    """Which epoch's weights a checkpoint holds, and why."""
    if "best_recall_epoch" in metrics:
        decay = float(metrics.get("average_decay", 0.0))
        which = f"the weights' moving average (decay {decay:g}) at" if decay else "the weights of"
        return (
            f"{which} epoch {metrics['best_recall_epoch']} (best validation Recall@10 "
            f"from {SELECT_SUPPORT} ratings {float(metrics['best_val_recall']):.4f}; validation "
            f"MAE {float(metrics.get('best_val_mae', math.nan)):.4f})"
        )
    return (
        f"the weights of epoch {metrics.get('best_epoch')} (best validation MAE "
        f"{float(metrics.get('best_val_mae', math.nan)):.4f})"
    )


def check_options(model_cfg: ModelConfig, meta_cfg: MetaConfig, train_cfg: TrainConfig) -> None:
    """Refuse options the taste model would silently ignore or cannot train with: they belong
    to MeLU's rating network. (torch.compile: aot_autograd has no double backward for the
    second-order steps, and the first-order meta-gradient it compiled differed from eager by
    8e-4 in float64.)"""
    if meta_cfg.genre_local_lr is not None and not model_cfg.genre_preference:
        raise MeluError("--genre-local-lr: only with --genre-preference (the taste model's)")
    if model_cfg.objective != "taste":
        if tuple(meta_cfg.fast_weights) != FAST_WEIGHTS:
            raise MeluError(
                "--fast-weights: only for the taste model (the default preset); MeLU's "
                "network adapts its decision layers (--adapt)"
            )
        if meta_cfg.rating_local_lr is not None:
            raise MeluError(
                "--rating-local-lr: only for the taste model (the default preset); MeLU's "
                "network has one local rate (--local-lr)"
            )
        return
    adapted = adapted_fast_weights(model_cfg, meta_cfg)
    inert = [name for name in adapted if name not in model_cfg.taste_fast_weights]
    if inert:
        raise MeluError(
            f"--fast-weights: {' '.join(inert)}: not in this model (--cooccurrence adds the "
            "co-occurrence term's two, --genre-preference the genre preference)"
        )
    given = [
        flag
        for flag, on in (
            ("--adapt all", meta_cfg.adapt == "all"),
            ("--learn-local-lr", meta_cfg.learn_local_lr),
            ("--local-update vmap", meta_cfg.local_update == "vmap"),
            ("--compile", train_cfg.compile),
        )
        if on
    ]
    if given:
        raise MeluError(
            f"{', '.join(given)}: only for MeLU's rating network (--preset melu or --objective "
            "rating); the taste model adapts its own fast weights with learned step sizes, "
            "and torch.compile cannot differentiate its local steps"
        )


def item_item_view(model_cfg: ModelConfig, n_rated: int) -> ModelConfig:
    """The taste model's item-item view for a catalogue of ``n_rated`` items with training
    ratings: EDLAE's fold-in where it is fitted (:data:`melu.fold_in.MAX_ITEMS` items at
    most), else the co-occurrence term, switched on here (its fast weights keep their
    meta-learned start unless ``--fast-weights`` names them). Without either, the lists of a
    large catalogue would have none: on MeLU's new users the default model's own list, without
    the fold-in, is 0.376 Recall@10 from 10 ratings against EDLAE's 0.399 (docs/results.md).
    The returned config is the one saved in the checkpoint."""
    if (
        model_cfg.objective != "taste"
        or model_cfg.cooccurrence
        or model_cfg.fold_in_neighbours == 0
        or n_rated <= MAX_ITEMS
    ):
        return model_cfg
    log.info(
        "%d rated items, more than EDLAE's fold-in takes (%d): the co-occurrence term instead",
        n_rated,
        MAX_ITEMS,
    )
    return dataclasses.replace(model_cfg, cooccurrence=True)


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
    """This rank's tasks of a batch (a NamedTuple of tensors, or None, with a leading task
    dim)."""
    part = world.shard(f.users.shape[0])
    return type(f)(*(None if t is None else t[part] for t in f))  # type: ignore[arg-type]


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

    Training stops after ``train_cfg.patience`` epochs in which the selection measure did not
    improve (:func:`stop_measures`: the taste model's validation Recall@10 from 5 ratings, MeLU
    network's validation MAE); the checkpoint holds the weights of its best epoch
    (:func:`kept_weights`).

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

    check_options(model_cfg, meta_cfg, train_cfg)
    if previous is None or not previous.resume:
        model_cfg = item_item_view(model_cfg, int(data.catalogue.recommendable.sum()))
    dtype = _dtype(train_cfg.dtype)
    torch.manual_seed(train_cfg.seed)
    learner = build_learner(data.encoder, model_cfg, meta_cfg, data.scale)
    if previous is None or not previous.resume:
        fit_to_training(
            learner, data.train_ratings, data.catalogue.rows, data.catalogue.table.numpy()
        )
    learner = learner.to(device=device, dtype=dtype)
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
    lists = isinstance(learner, TasteLearner)
    best_list: dict[str, Any] = {"recall": -math.inf, "epoch": -1, "state": None}
    decay = train_cfg.average_decay if lists else 0.0
    # The parameters' moving average over epochs (TrainConfig.average_decay), in
    # learner.parameters() order; None before the first epoch, and without an average.
    average: list[torch.Tensor] | None = None

    if previous is not None and previous.resume:
        learner.load_state_dict(ckpt.completed(previous.resume["model"], learner))
        optimizer.load_state_dict(previous.resume["optimizer"])
        if scheduler is not None and previous.resume.get("scheduler"):
            scheduler.load_state_dict(previous.resume["scheduler"])
        start_epoch = int(previous.resume["epoch"])
        bad_epochs = int(previous.resume["bad_epochs"])
        if previous.resume.get("average") is not None:
            average = [t.to(device=device, dtype=dtype) for t in previous.resume["average"]]
        _set_rng_state(previous.resume["rng"], device)
        history = list(previous.metrics.get("history", []))
        best = {
            "val_mae": float(previous.metrics["best_val_mae"]),
            "epoch": int(previous.metrics["best_epoch"]),
            "state": previous.state,
        }
        if lists:
            best_list = {
                "recall": float(previous.metrics["best_val_recall"]),
                "epoch": int(previous.metrics["best_recall_epoch"]),
                "state": previous.state,
            }
        log.info("resuming %s after epoch %d", path, start_epoch)
    # Training never changes the buffers (the taste model's co-occurrence lists and its step
    # schedule): every state a checkpoint holds shares one CPU copy of them, so that torch.save
    # writes them once (a taste model's checkpoint on MeLU's data: 187 -> 102 MB).
    buffers = dict(learner.named_buffers())
    frozen = {
        name: value.detach().to("cpu", copy=True)
        for name, value in learner.state_dict().items()
        if name in buffers
    }
    for kept in (best, best_list):
        if kept["state"] is not None:
            kept["state"] = {**kept["state"], **frozen}

    model: torch.nn.Module = learner
    if world.enabled:
        model = DistributedDataParallel(
            learner,
            device_ids=[device.index] if device.type == "cuda" else None,
            # The buffers (the taste model's co-occurrence lists, 112 MB on MeLU's data, and
            # its step schedule) are fitted before DDP copies rank 0's state to every rank and
            # never change in training: broadcasting them before every step only costs.
            broadcast_buffers=False,
        )
    user_table = data.user_table.to(device)
    item_table = data.catalogue.table.to(device)
    recommendable = data.catalogue.recommendable.to(device)
    vocab = data.encoder.item_specs()[0].vocab_size
    # The taste model streams its batches from the flat tasks, so that no tensor of every
    # training task ever exists (25M ratings); MeLU's network reads the padded tasks, whose
    # queries it redraws every epoch. Ratings in the training dtype once here, not per step.
    flat_train = data.flat_tasks.get("warm") if lists else None
    train_tasks = None if flat_train is not None else data.tasks["warm"].to(device, dtype)
    n_train = len(flat_train) if flat_train is not None else len(data.tasks["warm"])
    val_tasks = data.tasks["validation"].to(device, dtype)
    if n_train == 0 or len(val_tasks) == 0:
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
    full_width = int(data.tasks["warm"].support_sizes.max()) if train_cfg.compile else 0

    for epoch in range(start_epoch, train_cfg.epochs):
        started = time.perf_counter()
        learner.train()
        rng = np.random.default_rng((train_cfg.seed, epoch))
        batches: Iterable[TaskBatch]
        if flat_train is not None:
            # An episode draws its support from all of a task's ratings: no query redraw.
            streamed = flat_train.batches(train_cfg.batch_size, rng, bucket=BUCKET_BATCHES)
            batches = (b.to(device, dtype) for b in streamed)
        else:
            assert train_tasks is not None
            episodes = (
                train_tasks.resample_queries(rng) if train_cfg.resample_queries else train_tasks
            )
            batches = episodes.batches(train_cfg.batch_size, rng, bucket=BUCKET_BATCHES)
        total = torch.zeros((), device=device, dtype=dtype)
        bar = tqdm(
            batches,
            total=math.ceil(n_train / train_cfg.batch_size),
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
            if lists:
                episode = sample_episodes(
                    batch,
                    user_table,
                    item_table,
                    meta_cfg.episode_support,
                    model_cfg.liked_rating,
                    # The user's own items: only the co-occurrence leaves them out.
                    vocab_size=vocab if model_cfg.cooccurrence else None,
                )
                losses = loss_fn(_shard(episode, world), item_table, recommendable)
            else:
                losses = loss_fn(_shard(gather(batch, user_table, item_table), world))
            # Sum over this rank's tasks / global batch size, times the world size that
            # DDP's gradient averaging divides by: the gradient of the global mean loss.
            loss = losses.sum() * world.size / size
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(learner.parameters(), train_cfg.grad_clip)
            optimizer.step()
            total += losses.detach().sum()
            if progress and world.is_main and step % 10 == 0:
                bar.set_postfix(loss=f"{total.item() / ((step + 1) * size):.4f}")
        if scheduler is not None:
            scheduler.step()
        if world.enabled:
            torch.distributed.all_reduce(total)
        learner.eval()
        # Judged, and kept when best, with the average's weights; training goes on from its
        # own (restored below, before the resume state is saved).
        own = _swap_in_average(learner, average, decay)
        if own is not None:
            average = [p.detach().clone() for p in learner.parameters()]
        scorer = CatalogueScorer(learner, item_table, recommendable) if lists else None
        val = query_mae(learner, val_tasks, user_table, item_table, data.scale, scorer=scorer)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(total.item()) / n_train,
            "val_mae": val["mae"],
            "val_rmse": val["rmse"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        improved = False
        if scorer is not None:
            recall = catalogue_recall(
                scorer,
                val_tasks,
                user_table,
                model_cfg.liked_rating,
                SELECT_SUPPORT,
                seed=train_cfg.seed,
            )
            row["val_recall"] = recall
            if recall > best_list["recall"]:
                best_list = {
                    "recall": recall,
                    "epoch": epoch + 1,
                    "state": _cpu_state(learner, frozen),
                }
                best = {"val_mae": val["mae"], "epoch": epoch + 1, "state": best_list["state"]}
                improved = True
        elif val["mae"] < best["val_mae"]:
            best = {"val_mae": val["mae"], "epoch": epoch + 1, "state": _cpu_state(learner, frozen)}
            improved = True
        if own is not None:
            with torch.no_grad():
                for param, value in zip(learner.parameters(), own, strict=True):
                    param.copy_(value)
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
        if lists:
            metrics["average_decay"] = decay
            metrics["best_val_recall"] = best_list["recall"]
            metrics["best_recall_epoch"] = best_list["epoch"]
        if world.is_main:
            log.info(
                "epoch %d: train loss %.4f, validation MAE %.4f%s, %.1fs%s",
                epoch + 1,
                row["train_loss"],
                val["mae"],
                f", Recall@10 {row['val_recall']:.4f} (best {best_list['recall']:.4f} at "
                f"epoch {best_list['epoch']})"
                if lists
                else f" (best {best['val_mae']:.4f} at epoch {best['epoch']})",
                row["seconds"],
                # How close early stopping is, so that a run going on past its best MAE epoch
                # is no surprise.
                f"; {bad_epochs} of {train_cfg.patience} epochs without a better "
                f"{stop_measures(lists)}"
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
                state=best["state"],
                metrics=metrics,
                resume={
                    "model": _cpu_state(learner, frozen),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "epoch": epoch + 1 if not stop else train_cfg.epochs,
                    "bad_epochs": bad_epochs,
                    "rng": _rng_state(device),
                    "average": None if average is None else [t.cpu() for t in average],
                },
            )
            ckpt.save(path, checkpoint)
            _write_metrics(run_dir, history)
        if stop and world.is_main:
            log.info(
                "early stop after epoch %d: no better %s for %d epochs; the checkpoint keeps %s",
                epoch + 1,
                stop_measures(lists),
                train_cfg.patience,
                kept_weights(metrics),
            )
        if stop:
            break
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if world.is_main and lists and path.exists():
        _schedule_steps(path, data, device, train_cfg.seed)
    if world.enabled:
        torch.distributed.barrier()
    return ckpt.load(path)


# The name :func:`unchosen` gives the step schedule's second choice, on the served lists.
SERVED_SCHEDULE = "served_step_schedule"


def unchosen(checkpoint: ckpt.Checkpoint) -> list[str]:
    """What a taste run still has to choose on validation users once training ends (the
    names its metrics keep them under): all of it before the end, and for a run finished by
    an older melu the choices added since (the ratings' recalibration; the step schedule
    chosen again on the lists with the fold-in, :data:`SERVED_SCHEDULE`)."""
    if checkpoint.model.objective != "taste":
        return []
    wanted = ["step_schedule", "rating_calibration"]
    if checkpoint.model.fold_in_neighbours > 0:
        wanted[1:1] = ["fold_in", SERVED_SCHEDULE]
    metrics = checkpoint.metrics
    served = metrics.get("step_schedule", {}).get("lists") == "served"
    return [
        name for name in wanted if (not served if name == SERVED_SCHEDULE else name not in metrics)
    ]


def _schedule_steps(path: Path, data: ColdStartData, device: torch.device, seed: int) -> None:
    """Once training has ended: choose how far the taste model's steps go per support size on
    validation users (:mod:`melu.schedule`), then its fold-in, then the steps again on the
    lists the fold-in blends into, then its ratings' recalibration, into the kept weights. A
    run interrupted before its end leaves this to the resumed run; a finished one has it
    already."""
    checkpoint = ckpt.load(path, map_location=device)
    finished = int(checkpoint.resume.get("epoch", 0)) >= checkpoint.train.epochs
    missing = unchosen(checkpoint)
    if not finished or not missing:
        return
    steps_done = "step_schedule" not in missing
    fold_in_done = "fold_in" not in missing
    served_done = SERVED_SCHEDULE not in missing
    calibrated = "rating_calibration" not in missing
    learner = checkpoint.learner(device)
    assert isinstance(learner, TasteLearner)
    table = data.catalogue.table.to(device)
    recommendable = data.catalogue.recommendable.to(device)
    validation = data.tasks["validation"].to(device, next(learner.parameters()).dtype)
    user_table = data.user_table.to(device)
    # In the dtype the run was trained in (the learner above is built in float32).
    trained = checkpoint.state["net.step_schedule"].dtype
    if not steps_done:
        tried = choose_step_schedule(learner, table, recommendable, validation, user_table, seed)
        schedule = learner.net.step_schedule.detach().cpu()
        checkpoint.state["net.step_schedule"] = schedule.to(trained, copy=True)
        checkpoint.metrics["step_schedule"] = {"chosen": schedule.tolist(), "recall@10": tried}
        # Kept before the fold-in's choice, which takes minutes and may fail: a resumed run
        # then chooses only the fold-in.
        ckpt.save(path, checkpoint)
    if not fold_in_done:
        assert learner.net.fold_in is not None
        ratings = training_pairs(data.train_ratings, data.catalogue.rows, data.catalogue.table)
        checkpoint.metrics["fold_in"] = choose_fold_in(
            learner, table, recommendable, validation, user_table, ratings, seed
        )
        for name, value in learner.net.fold_in.state_dict().items():
            # The weights in the run's dtype, as the schedule; the lists stay float32.
            value = value.detach().cpu()
            checkpoint.state[f"net.fold_in.{name}"] = (
                value.to(trained) if name == "weight" else value
            )
        ckpt.save(path, checkpoint)
    if not served_done:
        _schedule_served(learner, checkpoint, table, recommendable, validation, user_table, seed)
        checkpoint.state["net.step_schedule"] = (
            learner.net.step_schedule.detach().cpu().to(trained, copy=True)
        )
        # The ratings the recalibration fits depend on the steps: a run that had its lines
        # (finished by an older melu) fits them again, as a new run does after this choice.
        calibrated = False
        ckpt.save(path, checkpoint)
    if not calibrated:
        # Last: the floor compares the recalibrated ratings, so the lists it reports are the
        # served ones.
        checkpoint.metrics["rating_calibration"] = choose_rating_calibration(
            learner, table, recommendable, validation, user_table, seed
        )
        line = learner.net.rating_calibration.detach().cpu()
        checkpoint.state[ckpt.CALIBRATION] = line.to(trained, copy=True)
        ckpt.save(path, checkpoint)


@torch.no_grad()
def _schedule_served(
    learner: TasteLearner,
    checkpoint: ckpt.Checkpoint,
    table: torch.Tensor,
    recommendable: torch.Tensor,
    validation: TaskSet,
    user_table: torch.Tensor,
    seed: int,
) -> None:
    """Choose the step schedule again on the served lists, the fold-in blended in, and keep
    the first choice (on the model's own lists, which the fold-in's choice needs) beside it
    in the metrics. On MeLU's validation users the two disagree: over 16 fresh support draws
    (``benchmarks/schedule_draws_probe.py``, seeds 0-2) the step at x1 against zero steps is
    -0.0015 / -0.0002 / -0.0008 Recall@10 from 10 ratings on the model's own lists and
    +0.0037 / +0.0048 / +0.0017 on the served ones, so the first choice switched off a step
    that the served list gains from. Judged before the recalibration, as the first choice and
    the fold-in are."""
    first = checkpoint.metrics["step_schedule"]
    net = learner.net
    if net.blends:
        net.uncalibrate()
        tried = choose_step_schedule(learner, table, recommendable, validation, user_table, seed)
    else:
        # Nothing blended: the served lists are the model's own, and so is the choice (the
        # net holds it already).
        tried = first["recall@10"]
    checkpoint.metrics["step_schedule"] = {
        "chosen": net.step_schedule.detach().cpu().tolist(),
        "recall@10": tried,
        "lists": "served",
        "own_lists": first,
    }


@torch.no_grad()
def _swap_in_average(
    learner: Learner, average: list[torch.Tensor] | None, decay: float
) -> list[torch.Tensor] | None:
    """With ``decay`` > 0: fold this epoch's weights into the moving ``average`` (the first
    epoch starts it) and put the average into the learner; returns the learner's own weights,
    to restore once it has been judged. With 0: None, the learner untouched."""
    if decay <= 0:
        return None
    params = list(learner.parameters())
    own = [p.detach().clone() for p in params]
    if average is not None:
        for param, mean in zip(params, average, strict=True):
            param.copy_(mean.lerp(param, 1.0 - decay))
    return own


def _cpu_state(learner: Learner, frozen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy of the learner's state, with the ``frozen`` tensors (its buffers) shared."""
    return {
        k: frozen[k] if k in frozen else v.detach().to("cpu", copy=True)
        for k, v in learner.state_dict().items()
    }
