"""Meta-training on the real MeLU data, for both models (MeLU's rating network, selected on
validation MAE; the taste model, selected on validation Recall@10 from 5 ratings): learning,
checkpoints, the step schedule chosen once at the end, resume, early stopping, the command
line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from melu import checkpoint as ckpt
from melu import cli
from melu import train as train_module
from melu.config import FAST_WEIGHTS, PRESETS, MetaConfig, ModelConfig, Preset, TrainConfig
from melu.data import ColdStartData
from melu.errors import CheckpointError
from melu.evaluation import metrics as M
from melu.fold_in import DROPOUTS, REGULARISERS
from melu.learners import Learner, build_learner, fit_to_training
from melu.maml import MetaLearner, gather
from melu.objectives import Episode, sample_episodes
from melu.predict import catalogue_recall, predict_queries, query_mae
from melu.schedule import (
    BUCKET_SIZES,
    DRAWS,
    FOLD_IN_WEIGHTS,
    MIN_SLOPE,
    MULTIPLES,
    heldout_predictions,
)
from melu.scoring import CatalogueScorer
from melu.tasks import TaskBatch
from melu.taste_learner import TasteLearner
from melu.train import SELECT_SUPPORT, train, unchosen

# One thread: the resumed run must equal the uninterrupted one bit for bit, and the CPU is
# shared.
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = TrainConfig(epochs=3, batch_size=32, device="cpu", patience=10, seed=3)
# MeLU's rating network (with melu's improvements: year, residual, dropout) and the default
# preset's taste model.
RATING = Preset(ModelConfig(), MetaConfig())
TASTE = PRESETS["default"]
MODELS = {"rating": RATING, "taste": TASTE}


def subset(data: ColdStartData, n_warm: int, n_val: int) -> ColdStartData:
    rng = np.random.default_rng(0)
    warm, val = data.tasks["warm"], data.tasks["validation"]
    data = data.restrict("warm", rng.choice(len(warm), n_warm, replace=False))
    return data.restrict("validation", rng.choice(len(val), n_val, replace=False))


@pytest.fixture(scope="module")
def small_data(melu_data: ColdStartData) -> ColdStartData:
    """320 training and 64 validation users of the real data: seconds per epoch, not minutes."""
    return subset(melu_data, 320, 64)


@pytest.fixture(scope="module")
def tiny_data(melu_data: ColdStartData) -> ColdStartData:
    """96 training and 32 validation users: for runs whose weights do not matter."""
    return subset(melu_data, 96, 32)


@pytest.fixture(scope="module")
def taste_run(small_data: ColdStartData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The taste model trained for SMALL's 3 epochs, uninterrupted (about 30 s): shared by the
    tests of learning, the checkpoint, the schedule and resume."""
    out = tmp_path_factory.mktemp("taste-run")
    train(small_data, out, TASTE.model, TASTE.meta, SMALL, progress=False)
    return out / "checkpoint.pt"


def untrained(data: ColdStartData, preset: Preset, seed: int) -> Learner:
    """The model ``train`` starts from with ``seed``: same initial weights, co-occurrence."""
    torch.manual_seed(seed)
    learner = build_learner(data.encoder, preset.model, preset.meta, data.scale)
    table = data.catalogue.table.numpy()
    fit_to_training(learner, data.train_ratings, data.catalogue.rows, table)
    return learner.eval()


def scorer_of(learner: Learner, data: ColdStartData) -> CatalogueScorer:
    return CatalogueScorer(learner.eval(), data.catalogue.table, data.catalogue.recommendable)


def validation_recall(learner: Learner, data: ColdStartData, seed: int) -> float:
    """What training selects the taste model on: Recall@10 from 5 ratings, seeded draws."""
    scorer = scorer_of(learner, data)
    liked = learner.net.cfg.liked_rating
    val = data.tasks["validation"]
    return catalogue_recall(scorer, val, data.user_table, liked, SELECT_SUPPORT, seed=seed)


# --- learning -----------------------------------------------------------------------------------


def test_training_lowers_validation_error(melu_data: ColdStartData, tmp_path: Path) -> None:
    """MeLU's network: two epochs on every training user beat the untrained model on every
    validation user.

    The untrained model already predicts about each user's support mean (the residual design),
    a baseline at MAE ~0.80, so this asks for real learning, not just a move off random weights.
    """
    cfg = dataclasses.replace(SMALL, epochs=2)
    val = melu_data.tasks["validation"]
    before = query_mae(
        untrained(melu_data, RATING, cfg.seed), val, melu_data.user_table,
        melu_data.catalogue.table, melu_data.scale,
    )  # fmt: skip
    result = train(melu_data, tmp_path, RATING.model, RATING.meta, cfg, progress=False)
    history = result.metrics["history"]
    assert len(history) == 2
    assert result.metrics["best_val_mae"] < before["mae"] - 0.01
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "val_recall" not in history[0] and "step_schedule" not in result.metrics


def test_training_raises_validation_recall(small_data: ColdStartData, taste_run: Path) -> None:
    """The taste model: three epochs on 320 training users give a better validation Recall@10
    from 5 ratings (on the same supports) than the model they start from, whose co-occurrence
    alone already ranks well (about 0.22 here), so this asks for learning too."""
    before = validation_recall(untrained(small_data, TASTE, SMALL.seed), small_data, SMALL.seed)
    result = ckpt.load(taste_run)
    history = result.metrics["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(0.0 < row["val_recall"] < 1.0 for row in history)
    assert result.metrics["best_val_recall"] == max(row["val_recall"] for row in history)
    assert result.metrics["best_val_recall"] > before + 0.03, (before, history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    lines = (taste_run.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["val_recall"] for line in lines] == [r["val_recall"] for r in history]


# --- validation's batching ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["rating", "taste"])
def test_predictions_come_back_in_task_order(melu_data: ColdStartData, model: str) -> None:
    """Tasks are batched by support size; each row must still land at its own task."""
    learner = untrained(melu_data, MODELS[model], 0)
    val = melu_data.tasks["validation"]
    tables = (melu_data.user_table, melu_data.catalogue.table)
    batched = predict_queries(learner, val, *tables, melu_data.scale, batch_size=64)
    # The reference: every task in one batch, in its own order, no sorting.
    with torch.no_grad():
        everything = val.batch(np.arange(len(val)), trim=False)
        f = gather(everything, *tables)
        if isinstance(learner, MetaLearner):
            adaptation = learner.adapt(f.users, f.x_spt, f.y_spt, f.mask_spt)
            expected = learner.predict(adaptation, f.users, f.x_qry)
        else:
            state = scorer_of(learner, melu_data).adapt(
                f.users, everything.x_spt, f.y_spt, f.mask_spt
            )
            expected = learner.predict(state, f.x_qry)  # type: ignore[arg-type]
    expected = expected.clamp(1.0, 5.0).numpy()
    assert batched.shape == expected.shape
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-5)


def _slice(episode: Episode, count: int) -> Episode:
    return Episode(*(None if t is None else t[:count] for t in episode))


@pytest.mark.parametrize("model", ["rating", "taste"])
def test_empty_padding_tasks_change_no_loss_or_gradient(
    melu_data: ColdStartData, model: str
) -> None:
    """--compile pads the last batch of an epoch with empty tasks to keep one shape (for the
    taste model, before its episodes are drawn: an empty task gives an empty episode)."""
    preset = MODELS[model]
    learner = untrained(melu_data, preset, 0).double()
    tasks = melu_data.tasks["warm"].to("cpu", torch.float64)
    tables = (melu_data.user_table, melu_data.catalogue.table)
    batch = tasks.batch(np.arange(8))
    padded = batch.pad_tasks(12)
    assert len(padded) == 12 and not padded.mask_spt[8:].any() and not padded.mask_qry[8:].any()

    def losses_and_grads(b: TaskBatch | Episode) -> tuple[torch.Tensor, list[torch.Tensor]]:
        learner.zero_grad(set_to_none=True)
        if isinstance(b, TaskBatch):
            assert isinstance(learner, MetaLearner)
            losses = learner.task_losses(gather(b, *tables))
        else:
            losses = learner(b, melu_data.catalogue.table, melu_data.catalogue.recommendable)
        losses.sum().backward()
        return losses.detach(), [p.grad.clone() for p in learner.parameters()]  # type: ignore[union-attr]

    if model == "rating":
        real, with_empty = batch, padded
    else:
        vocab = melu_data.encoder.item_specs()[0].vocab_size
        with_empty = sample_episodes(
            padded, *tables, preset.meta.episode_support, preset.model.liked_rating,
            vocab_size=vocab, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert not with_empty.mask_spt[8:].any() and not with_empty.target_mask[8:].any()
        real = _slice(with_empty, 8)
    losses, grads = losses_and_grads(real)
    padded_losses, padded_grads = losses_and_grads(with_empty)
    assert torch.equal(padded_losses[8:], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(padded_losses[:8], losses, rtol=1e-12, atol=1e-12)
    for got, expected in zip(padded_grads, grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# --- checkpoints --------------------------------------------------------------------------------


def _check_saved_run(
    loaded: ckpt.Checkpoint, data: ColdStartData, preset: Preset, cfg: TrainConfig
) -> None:
    assert (loaded.data, loaded.model, loaded.meta, loaded.train) == (
        data.config, preset.model, preset.meta, cfg
    )  # fmt: skip
    assert loaded.encoder == data.encoder
    assert np.array_equal(loaded.catalogue.item_ids, data.catalogue.item_ids)
    assert torch.equal(loaded.catalogue.table, data.catalogue.table)
    assert torch.equal(loaded.catalogue.recommendable, data.catalogue.recommendable)
    assert loaded.versions["torch"] == str(torch.__version__)


def test_checkpoint_round_trips(small_data: ColdStartData, tmp_path: Path) -> None:
    """MeLU's network: the rebuilt model predicts what validation measured in training."""
    cfg = dataclasses.replace(SMALL, epochs=1)
    result = train(small_data, tmp_path, RATING.model, RATING.meta, cfg, progress=False)
    loaded = ckpt.load(tmp_path / "checkpoint.pt")
    _check_saved_run(loaded, small_data, RATING, cfg)
    learner = loaded.learner()
    for name, value in learner.state_dict().items():
        assert torch.equal(value, result.state[name])
    val = query_mae(
        learner, small_data.tasks["validation"], small_data.user_table,
        small_data.catalogue.table, small_data.scale,
    )  # fmt: skip
    assert val["mae"] == pytest.approx(result.metrics["best_val_mae"], abs=1e-6)
    # A re-saved checkpoint loads to the same thing.
    ckpt.save(tmp_path / "copy.pt", loaded)
    again = ckpt.load(tmp_path / "copy.pt")
    assert again.metrics == loaded.metrics


def test_taste_checkpoint_round_trips_with_its_step_schedule(
    small_data: ColdStartData, taste_run: Path, tmp_path: Path
) -> None:
    """The taste model's checkpoint holds the best epoch's weights (and no co-occurrence
    lists: the default model has no such term) and the step schedule chosen after training:
    the rebuilt model gives the validation Recall@10 that selected it (under the schedule of
    training, every multiple 1) and the Recall@10 the schedule was chosen by (under the stored
    one)."""
    loaded = ckpt.load(taste_run)
    _check_saved_run(loaded, small_data, TASTE, SMALL)
    metrics = loaded.metrics
    best = metrics["best_recall_epoch"]
    assert metrics["best_epoch"] == best
    assert metrics["best_val_recall"] == metrics["history"][best - 1]["val_recall"]
    assert metrics["best_val_mae"] == metrics["history"][best - 1]["val_mae"]
    learner = loaded.learner()
    for name, value in learner.state_dict().items():
        assert torch.equal(value, loaded.state[name]), name
    assert not any(name.startswith("net.cooccurrence") for name in loaded.state)

    # The schedule: chosen once training ended, in the metrics and in the weights; chosen
    # last on the served lists (the fold-in blended in), its first choice on the model's own
    # lists kept beside it.
    schedule = metrics["step_schedule"]
    assert loaded.state["net.step_schedule"].tolist() == schedule["chosen"]
    assert set(schedule["chosen"]) <= set(MULTIPLES)
    assert list(schedule["recall@10"]) == [str(size) for size in BUCKET_SIZES]
    assert schedule["lists"] == "served"
    assert set(schedule["own_lists"]["chosen"]) <= set(MULTIPLES)
    assert list(schedule["own_lists"]["recall@10"]) == [str(size) for size in BUCKET_SIZES]
    # The fold-in, fitted and weighed after the schedule: at 5 ratings the stored fold-in
    # gives the Recall@10 it was chosen by.
    net = learner.net
    val, liked = small_data.tasks["validation"], net.cfg.liked_rating
    assert net.fold_in is not None and net.fold_in.fitted
    fold_in = metrics["fold_in"]
    assert net.fold_in.weight.tolist() == fold_in["weights"]
    assert set(fold_in["weights"]) <= set(FOLD_IN_WEIGHTS)
    setting = f"p={fold_in['dropout']:g}, lambda={fold_in['l2']:g}"
    assert len(fold_in["recall@10"]) == len(DROPOUTS) * len(REGULARISERS)
    weight = fold_in["weights"][1]
    scorer = scorer_of(learner, small_data)
    # The ratings' recalibration, fitted last: the stored lines are the ones the scorer
    # applies (the calibration error of the 4-7 bucket's fit recomputed from the scored
    # ratings), and in sample they leave no mean error.
    calibration = metrics["rating_calibration"]
    assert loaded.state[ckpt.CALIBRATION].tolist() == calibration["lines"]
    assert net.rating_calibration.tolist() == calibration["lines"]
    fit = calibration["fits"]["4-7"]
    predicted, actual = heldout_predictions(
        scorer, val, small_data.user_table, (5,), SMALL.seed, liked, small_data.scale
    )
    assert len(actual) == fit["ratings"]
    assert M.calibration_error(predicted, actual) == pytest.approx(
        fit["calibration_error_after"], abs=1e-4
    )
    assert fit["calibration_error_after"] <= fit["calibration_error"]
    assert abs(predicted.mean() - actual.mean()) < 0.05
    assert all(slope >= MIN_SLOPE for _, slope in calibration["lines"])

    # The served lists at 5 ratings give the Recall@10 the recalibration reports after it;
    # with the identity, the Recall@10 the fold-in was chosen by (and it reports before).
    at_5 = BUCKET_SIZES.index(5)

    def recall_at_5() -> float:
        return (
            sum(
                catalogue_recall(
                    scorer, val, small_data.user_table, liked, 5, seed=SMALL.seed * 1000 + d
                )
                for d in range(DRAWS)
            )
            / DRAWS
        )

    assert recall_at_5() == pytest.approx(calibration["recall@10"]["after"][at_5], abs=1e-5)
    # With the identity: the Recall@10 the stored schedule was chosen by on the served lists
    # (at 5 ratings, the bucket of 4-7), which the recalibration reports before it.
    with torch.no_grad():
        net.rating_calibration.copy_(torch.tensor([[0.0, 1.0]] * len(calibration["lines"])))
    chosen = schedule["chosen"][1]
    tried = schedule["recall@10"]["5"][MULTIPLES.index(chosen)]
    assert recall_at_5() == pytest.approx(tried, abs=1e-5)
    assert tried == max(schedule["recall@10"]["5"])
    assert calibration["recall@10"]["before"][at_5] == pytest.approx(tried, abs=1e-5)
    # Under the first schedule, the Recall@10 the fold-in was chosen by.
    own = schedule["own_lists"]
    with torch.no_grad():
        net.step_schedule.copy_(torch.tensor(own["chosen"]))
    tried = fold_in["recall@10"][setting]["5"][FOLD_IN_WEIGHTS.index(weight)]
    assert recall_at_5() == pytest.approx(tried, abs=1e-5)
    assert tried == max(fold_in["recall@10"][setting]["5"])

    # Without the fold-in, which was chosen after it, the first schedule gives the Recall@10 it
    # was chosen by on the model's own lists.
    with torch.no_grad():
        net.fold_in.weight.zero_()
    tried = own["recall@10"]["5"][MULTIPLES.index(own["chosen"][1])]
    assert recall_at_5() == pytest.approx(tried, abs=1e-5)
    assert tried == max(own["recall@10"]["5"])

    # Under training's schedule (and ratings) the model is the one selected, with its
    # validation measures.
    with torch.no_grad():
        net.step_schedule.fill_(1.0)
    assert validation_recall(learner, small_data, SMALL.seed) == pytest.approx(
        metrics["best_val_recall"], abs=1e-6
    )
    mae = query_mae(
        learner, val, small_data.user_table, small_data.catalogue.table, small_data.scale,
        scorer=scorer,
    )  # fmt: skip
    assert mae["mae"] == pytest.approx(metrics["best_val_mae"], abs=1e-6)
    ckpt.save(tmp_path / "copy.pt", loaded)
    assert ckpt.load(tmp_path / "copy.pt").metrics == metrics


def test_a_cooccurrence_run_fits_its_lists_and_writes_them_once(
    tiny_data: ColdStartData, tmp_path: Path
) -> None:
    """A taste model with the co-occurrence term (``ModelConfig.cooccurrence``, checkpoints
    before stop 34) trains: its lists are fitted on the training ratings, and, most of its
    weights, shared by the kept state and the resume state, so the file holds them once."""
    model = dataclasses.replace(TASTE.model, cooccurrence=True, fold_in_neighbours=0)
    meta = dataclasses.replace(TASTE.meta, fast_weights=FAST_WEIGHTS)
    train(tiny_data, tmp_path, model, meta, dataclasses.replace(SMALL, epochs=1), progress=False)
    path = tmp_path / "checkpoint.pt"
    loaded = ckpt.load(path)
    assert int(loaded.state["net.cooccurrence_table.index"].count_nonzero()) > 0
    shared = ("net.cooccurrence_table.index", "net.cooccurrence_table.value")

    def nbytes(tensors: object) -> int:
        if isinstance(tensors, torch.Tensor):
            return tensors.numel() * tensors.element_size()
        if isinstance(tensors, dict):
            return sum(nbytes(v) for v in tensors.values())
        if isinstance(tensors, list | tuple):
            return sum(nbytes(v) for v in tensors)
        return 0

    for name in shared:
        kept, latest = loaded.state[name], loaded.resume["model"][name]
        assert kept.untyped_storage().data_ptr() == latest.untyped_storage().data_ptr(), name
    once = nbytes(loaded.state) + nbytes(loaded.resume) - nbytes([loaded.state[n] for n in shared])
    twice = once + nbytes([loaded.state[n] for n in shared])
    # Within pickling's overhead of the size with the lists once, well below it with them twice.
    assert path.stat().st_size < once + 0.5 * (twice - once)


def test_bad_checkpoints_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ckpt.load(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a melu checkpoint"):
        ckpt.load(tmp_path / "foreign.pt")
    torch.save({"format": ckpt.FORMAT, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        ckpt.load(tmp_path / "future.pt")
    # A checkpoint of the rating+watch objective (format 1) is refused, saying what to do.
    torch.save({"format": ckpt.FORMAT, "format_version": 1}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"format version 1 .*retrain with `melu train`"):
        ckpt.load(tmp_path / "old.pt")


# --- resume -------------------------------------------------------------------------------------


def _same_run(full: ckpt.Checkpoint, resumed: ckpt.Checkpoint) -> None:
    assert resumed.train == SMALL
    assert resumed.metrics["history"] == [
        {**row, "seconds": resumed.metrics["history"][i]["seconds"]}
        for i, row in enumerate(full.metrics["history"])
    ]
    for name, value in full.resume["model"].items():
        assert torch.equal(value, resumed.resume["model"][name]), name
    if full.resume.get("average") is None:
        assert resumed.resume.get("average") is None
    else:
        for value, again in zip(full.resume["average"], resumed.resume["average"], strict=True):
            assert torch.equal(value, again)
    assert full.state.keys() == resumed.state.keys()
    for name, value in full.state.items():
        assert torch.equal(value, resumed.state[name]), name


def _interrupt_and_resume(data: ColdStartData, preset: Preset, out: Path) -> ckpt.Checkpoint:
    train(data, out, preset.model, preset.meta, SMALL, progress=False, stop_after_epoch=1)
    assert len(ckpt.load(out / "checkpoint.pt").metrics["history"]) == 1
    # Options given on resume are overridden by the saved run's configuration.
    other = dataclasses.replace(SMALL, epochs=7, lr=0.5)
    return train(data, out, preset.model, preset.meta, other, resume=True, progress=False)


def test_resumed_run_equals_uninterrupted_run(small_data: ColdStartData, tmp_path: Path) -> None:
    """MeLU's network, bit for bit on one thread."""
    full = train(small_data, tmp_path / "full", RATING.model, RATING.meta, SMALL, progress=False)
    resumed = _interrupt_and_resume(small_data, RATING, tmp_path / "interrupted")
    _same_run(full, resumed)


def test_resumed_taste_run_equals_uninterrupted_run_and_chooses_its_schedule_once(
    small_data: ColdStartData, taste_run: Path, tmp_path: Path
) -> None:
    """The taste model, bit for bit on one thread: its episodes and dropout draw from the
    saved RNG state, its co-occurrence comes back from the checkpoint. The step schedule is
    chosen once, when training ends: an interrupted run has none yet (every multiple 1), the
    resumed run chooses the uninterrupted run's, and resuming a finished run changes
    nothing."""
    out = tmp_path / "interrupted"
    train(small_data, out, TASTE.model, TASTE.meta, SMALL, progress=False, stop_after_epoch=1)
    interrupted = ckpt.load(out / "checkpoint.pt")
    assert "step_schedule" not in interrupted.metrics
    assert interrupted.state["net.step_schedule"].tolist() == [1.0] * 5
    other = dataclasses.replace(SMALL, epochs=7, lr=0.5)
    resumed = train(small_data, out, TASTE.model, TASTE.meta, other, resume=True, progress=False)
    full = ckpt.load(taste_run)
    _same_run(full, resumed)
    assert resumed.metrics["step_schedule"] == full.metrics["step_schedule"]
    assert resumed.metrics["best_val_recall"] == full.metrics["best_val_recall"]
    # A finished run: nothing trains, nothing is chosen again, the file is left alone.
    written = (out / "checkpoint.pt").stat().st_mtime_ns
    again = train(small_data, out, TASTE.model, TASTE.meta, SMALL, resume=True, progress=False)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == written
    assert again.metrics == resumed.metrics


def test_the_taste_model_keeps_the_moving_average_of_its_epochs(
    small_data: ColdStartData, taste_run: Path, tmp_path: Path
) -> None:
    """``average_decay`` 0.5: after epoch e the average is ``a_e = a_(e-1) + 0.5 (w_e -
    a_(e-1))`` of the epochs' own weights ``w_e`` (``a_1 = w_1``), training goes on from
    ``w_e`` (the resume state holds both), and the checkpoint keeps the average of the
    selected epoch. The own weights of epochs 1 and 2 come from a run stopped after each."""
    assert SMALL.average_decay == 0.5
    out = tmp_path / "stepwise"
    own = []
    for epochs in (1, 2):
        resume = epochs > 1
        train(small_data, out, TASTE.model, TASTE.meta, SMALL, resume=resume, progress=False,
              stop_after_epoch=epochs)  # fmt: skip
        own.append(ckpt.load(out / "checkpoint.pt").resume["model"])
    full = ckpt.load(taste_run)
    own.append(full.resume["model"])
    names = [name for name, _ in untrained(small_data, TASTE, 0).named_parameters()]
    averages = [{name: own[0][name] for name in names}]
    for weights in own[1:]:
        last = averages[-1]
        averages.append({name: last[name].lerp(weights[name], 0.5) for name in names})
    for name, value in zip(names, full.resume["average"], strict=True):
        assert torch.allclose(value, averages[-1][name], rtol=0, atol=1e-6), name
    # The average is not any epoch's own weights: the test would pass vacuously otherwise.
    assert not torch.allclose(averages[-1][names[0]], own[-1][names[0]])
    kept = averages[full.metrics["best_recall_epoch"] - 1]
    for name in names:
        assert torch.allclose(full.state[name], kept[name], rtol=0, atol=1e-6), name


def test_a_failed_fold_in_choice_keeps_the_step_schedule(
    small_data: ColdStartData, taste_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of training chooses the step schedule, then the fold-in, then the schedule
    again on the served lists, then the ratings' recalibration. When the fold-in's choice
    fails, the first schedule is on disk already, and the resumed end chooses only the rest:
    the uninterrupted run's."""
    full = ckpt.load(taste_run)
    # The finished run as it stood before any choice.
    state = dict(full.state)
    state["net.step_schedule"] = torch.ones_like(state["net.step_schedule"])
    state["net.fold_in.index"] = torch.zeros(0, 0, dtype=torch.long)
    state["net.fold_in.value"] = torch.zeros(0, 0)
    state["net.fold_in.weight"] = torch.zeros_like(state["net.fold_in.weight"])
    state[ckpt.CALIBRATION] = torch.tensor([[0.0, 1.0]] * 5).to(state[ckpt.CALIBRATION])
    chosen_after = ("step_schedule", "fold_in", "rating_calibration")
    metrics = {k: v for k, v in full.metrics.items() if k not in chosen_after}
    path = tmp_path / "checkpoint.pt"
    ckpt.save(path, dataclasses.replace(full, state=state, metrics=metrics))

    def fails(*args: object, **kwargs: object) -> dict[str, object]:
        raise MemoryError("the fold-in's gram")

    monkeypatch.setattr(train_module, "choose_fold_in", fails)
    with pytest.raises(MemoryError):
        train_module._schedule_steps(path, small_data, torch.device("cpu"), SMALL.seed)
    kept = ckpt.load(path)
    assert kept.metrics["step_schedule"] == full.metrics["step_schedule"]["own_lists"]
    assert "fold_in" not in kept.metrics and "rating_calibration" not in kept.metrics
    monkeypatch.undo()

    chosen: list[object] = []
    real = train_module.choose_step_schedule

    def counted(*args: object, **kwargs: object) -> object:
        chosen.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "choose_step_schedule", counted)
    train_module._schedule_steps(path, small_data, torch.device("cpu"), SMALL.seed)
    resumed = ckpt.load(path)
    # The first choice is not made again; only the one on the served lists, after the fold-in.
    assert len(chosen) == (1 if any(full.metrics["fold_in"]["weights"]) else 0)
    assert resumed.metrics["step_schedule"] == full.metrics["step_schedule"]
    assert torch.equal(resumed.state["net.step_schedule"], full.state["net.step_schedule"])
    assert resumed.metrics["fold_in"] == full.metrics["fold_in"]
    for name in ("index", "value", "weight"):
        assert torch.equal(resumed.state[f"net.fold_in.{name}"], full.state[f"net.fold_in.{name}"])
    assert resumed.metrics["rating_calibration"] == full.metrics["rating_calibration"]
    assert torch.equal(resumed.state[ckpt.CALIBRATION], full.state[ckpt.CALIBRATION])


def test_resuming_a_run_finished_before_the_recalibration_fits_it(
    small_data: ColdStartData, taste_run: Path, tmp_path: Path
) -> None:
    """A taste run finished by an older melu lacks the ratings' recalibration: `melu train
    --resume` over it is not "nothing to resume" but the end's missing choice, which trains
    nothing and fits the uninterrupted run's lines; over a complete run it is."""
    full = ckpt.load(taste_run)
    out = tmp_path / "older"
    out.mkdir()
    state = {k: v for k, v in full.state.items() if k != ckpt.CALIBRATION}
    metrics = {k: v for k, v in full.metrics.items() if k != "rating_calibration"}
    model = {k: v for k, v in full.resume["model"].items() if k != ckpt.CALIBRATION}
    resume = {**full.resume, "model": model}
    older = dataclasses.replace(full, state=state, metrics=metrics, resume=resume)
    ckpt.save(out / "checkpoint.pt", older)
    assert unchosen(ckpt.load(out / "checkpoint.pt")) == ["rating_calibration"]
    assert unchosen(full) == []

    def resumable(folder: Path) -> bool:
        args = argparse.Namespace(out=folder, resume=True, dataset=full.data.dataset)
        return cli._check_resume(args, {})

    assert resumable(out)
    assert not resumable(taste_run.parent)
    resumed = train(small_data, out, TASTE.model, TASTE.meta, SMALL, resume=True, progress=False)
    assert resumed.metrics["history"] == full.metrics["history"]
    assert resumed.metrics["rating_calibration"] == full.metrics["rating_calibration"]
    assert torch.equal(resumed.state[ckpt.CALIBRATION], full.state[ckpt.CALIBRATION])
    assert not resumable(out)


def test_resuming_a_run_whose_schedule_saw_only_its_own_lists_chooses_it_on_the_served_ones(
    small_data: ColdStartData, taste_run: Path, tmp_path: Path
) -> None:
    """A taste run finished by an older melu chose its step schedule on the model's own lists
    only and fitted its recalibration after that: `melu train --resume` chooses the schedule
    again on the served lists and fits the recalibration again, which gives exactly the run
    a new melu trains (schedule, its metrics and the calibration lines)."""
    full = ckpt.load(taste_run)
    own = full.metrics["step_schedule"]["own_lists"]
    out = tmp_path / "older"
    out.mkdir()
    state = dict(full.state)
    state["net.step_schedule"] = torch.tensor(own["chosen"]).to(state["net.step_schedule"])
    # Lines fitted under the old schedule: whatever they were, the resumed run fits its own.
    state[ckpt.CALIBRATION] = torch.tensor([[0.5, 0.8]] * 5).to(state[ckpt.CALIBRATION])
    metrics = {**full.metrics, "step_schedule": own, "rating_calibration": {"lines": []}}
    model = {**full.resume["model"], "net.step_schedule": state["net.step_schedule"]}
    model[ckpt.CALIBRATION] = state[ckpt.CALIBRATION]
    older = dataclasses.replace(
        full, state=state, metrics=metrics, resume={**full.resume, "model": model}
    )
    ckpt.save(out / "checkpoint.pt", older)
    assert unchosen(ckpt.load(out / "checkpoint.pt")) == [train_module.SERVED_SCHEDULE]
    resumed = train(small_data, out, TASTE.model, TASTE.meta, SMALL, resume=True, progress=False)
    assert resumed.metrics["step_schedule"] == full.metrics["step_schedule"]
    assert torch.equal(resumed.state["net.step_schedule"], full.state["net.step_schedule"])
    assert resumed.metrics["rating_calibration"] == full.metrics["rating_calibration"]
    assert torch.equal(resumed.state[ckpt.CALIBRATION], full.state[ckpt.CALIBRATION])
    assert unchosen(resumed) == []


def test_a_checkpoint_from_before_the_recalibration_loads_with_the_identity(
    taste_run: Path,
) -> None:
    """A taste checkpoint written before the ratings were recalibrated has no
    ``net.rating_calibration``: it loads with the identity, what that model predicted with."""
    full = ckpt.load(taste_run)
    identity = [[0.0, 1.0]] * 5
    fitted = full.learner()
    assert isinstance(fitted, TasteLearner)
    assert fitted.net.rating_calibration.tolist() != identity
    state = {k: v for k, v in full.state.items() if k != ckpt.CALIBRATION}
    older = dataclasses.replace(full, state=state).learner()
    assert isinstance(older, TasteLearner)
    assert older.net.rating_calibration.tolist() == identity


# --- early stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "measure"),
    [("rating", "validation MAE"), ("taste", "validation Recall@10 from 5 ratings")],
)
def test_early_stop_says_what_stopped_it_and_what_is_kept(
    tiny_data: ColdStartData,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    model: str,
    measure: str,
) -> None:
    """With a learning rate of 0 no validation measure can improve after epoch 1, so a run
    stops after 1 + patience epochs, and the log says by which measure each model is selected
    (MeLU's network: validation MAE; the taste model: Recall@10 from 5 ratings, not MAE) and
    which epoch's weights the checkpoint holds."""
    preset = MODELS[model]
    cfg = dataclasses.replace(SMALL, epochs=6, patience=2, lr=0.0)
    with caplog.at_level(logging.INFO, logger="melu.train"):
        result = train(tiny_data, tmp_path, preset.model, preset.meta, cfg, progress=False)
    metrics, history = result.metrics, result.metrics["history"]
    assert len(history) == 3 and metrics["stopped_early"]
    assert len({row["val_mae"] for row in history}) == 1
    assert metrics["best_epoch"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "melu.train"]
    assert any(m.endswith(f"; 2 of 2 epochs without a better {measure}") for m in messages), (
        messages
    )
    (stop,) = [m for m in messages if m.startswith("early stop")]
    kept = f"best validation MAE {metrics['best_val_mae']:.4f})"
    if model == "taste":
        assert len({row["val_recall"] for row in history}) == 1
        assert metrics["best_recall_epoch"] == 1
        kept = (
            f"best validation Recall@10 from 5 ratings {metrics['best_val_recall']:.4f}; "
            f"validation MAE {metrics['best_val_mae']:.4f})"
        )
        # A run that stopped early has ended: its step schedule is chosen.
        assert set(metrics["step_schedule"]["chosen"]) <= set(MULTIPLES)
    which = "the weights' moving average (decay 0.5) at" if model == "taste" else "the weights of"
    assert stop == (
        f"early stop after epoch 3: no better {measure} for 2 epochs; the checkpoint keeps "
        f"{which} epoch 1 ({kept}"
    )


# --- the command line ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melu", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--out", "x", "--epochs", "0"], "--epochs: expected a positive integer"),
        (["train", "--out", "x", "--dataset", "nope"], "argument --dataset: invalid choice"),
        (["train", "--out", "x", "--data-dir", "/nonexistent"], "warm_state.json: file not found"),
        (["train", "--out", "x", "--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["train", "--out", "x", "--average-decay", "1"], "expected a number in [0, 1)"),
        (["train", "--out", "x", "--objective", "rating+watch"], "--objective: invalid choice"),
        (["evaluate", "--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
        (["serve", "--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
        (["data", "summary", "--data-dir", "/nonexistent"], "file not found"),
        (["frobnicate"], "invalid choice"),
        (["--threads", "0", "train", "--out", "x"], "--threads: expected a positive integer"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr


def test_cli_trains_and_resumes(shared_data: Path, tmp_path: Path) -> None:
    """MeLU's preset through its generic local update (torch.func under vmap), end to end: the
    options reach the checkpoint, the onboarding lists are stored, the closing line says which
    weights are kept and why. (The taste model's run and messages: the tests above and
    tests/test_cli.py.)"""
    out = tmp_path / "run"
    common = ["--data-dir", str(shared_data), "--out", str(out), "--no-progress", "--epochs", "1"]
    result = run_cli(
        "--threads", "1", "train", *common, "--preset", "melu", "--local-steps", "1",
        "--batch-size", "256", "--local-update", "vmap",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "training finished all 1 epochs; " in result.stderr
    assert "keeps the weights of epoch 1 (best validation MAE " in result.stderr
    saved = ckpt.load(out / "checkpoint.pt")
    assert saved.model == PRESETS["melu"].model
    assert saved.meta.local_steps == 1 and saved.train.batch_size == 256
    assert saved.meta.local_update == "vmap"  # the generic path, end to end
    assert len(saved.onboarding["lists"]["evidence"]) > 0
    again = run_cli("train", *common, "--resume")
    assert again.returncode == 0, again.stderr
    # A finished run says so instead of "resuming after epoch 1" (tests/test_cli.py).
    assert "already finished all 1 epochs" in again.stderr


def test_data_summary_json_gives_melu_counts(shared_data: Path) -> None:
    result = run_cli(
        "data", "summary", "--dataset", "melu", "--data-dir", str(shared_data), "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["scenarios"]
    assert summary["warm"]["tasks"] + summary["validation"]["tasks"] == 2653
    assert summary["new_user"]["tasks"] == 668
    assert summary["new_item"]["tasks"] == 2863
    assert summary["new_user_new_item"]["tasks"] == 723
    assert json.loads(result.stdout)["totals"]["ratings"] == 1_000_209
    assert json.loads(result.stdout)["totals"]["users"] == 6040


def test_a_catalogue_too_large_for_the_fold_in_gets_the_cooccurrence_term() -> None:
    """The default model's item-item view is EDLAE's fold-in; where the catalogue has more
    rated items than the fold-in is fitted for, training switches the co-occurrence term on
    instead (and saves that config), so that the list keeps one; other models are left as
    configured."""
    from melu.fold_in import MAX_ITEMS
    from melu.train import item_item_view

    model = TASTE.model
    assert not model.cooccurrence and model.fold_in_neighbours > 0
    assert item_item_view(model, 2648) == model
    assert item_item_view(model, MAX_ITEMS) == model
    large = item_item_view(model, MAX_ITEMS + 1)
    assert large == dataclasses.replace(model, cooccurrence=True)
    without_fold_in = dataclasses.replace(model, fold_in_neighbours=0)
    assert item_item_view(without_fold_in, MAX_ITEMS + 1) == without_fold_in
    assert item_item_view(RATING.model, MAX_ITEMS + 1) == RATING.model
