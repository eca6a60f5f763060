"""Meta-training on the real MeLU data: learning, checkpoints, resume, the command line."""

from __future__ import annotations

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
from melu.config import PRESETS, MetaConfig, ModelConfig, TrainConfig
from melu.data import ColdStartData
from melu.errors import CheckpointError
from melu.maml import gather
from melu.predict import predict_queries, query_mae
from melu.tasks import TaskBatch
from melu.train import train

SMALL = TrainConfig(epochs=3, batch_size=32, device="cpu", patience=10, seed=3)


@pytest.fixture(scope="module")
def small_data(melu_data: ColdStartData) -> ColdStartData:
    """320 training and 64 validation users of the real data: seconds per epoch, not minutes."""
    rng = np.random.default_rng(0)
    warm, val = melu_data.tasks["warm"], melu_data.tasks["validation"]
    tasks = dict(melu_data.tasks)
    tasks["warm"] = warm.subset(rng.choice(len(warm), 320, replace=False))
    tasks["validation"] = val.subset(rng.choice(len(val), 64, replace=False))
    return dataclasses.replace(melu_data, tasks=tasks)


def test_training_lowers_validation_error(melu_data: ColdStartData, tmp_path: Path) -> None:
    """Two epochs on every training user beat the untrained model on every validation user.

    The untrained model already predicts about each user's support mean (the residual design),
    a baseline at MAE ~0.80, so this asks for real learning, not just a move off random weights.
    """
    cfg = dataclasses.replace(SMALL, epochs=2)
    val = melu_data.tasks["validation"]
    torch.manual_seed(cfg.seed)  # the same initial weights train() starts from
    untrained = ckpt.build_learner(melu_data.encoder, ModelConfig(), MetaConfig())
    before = query_mae(untrained, val, melu_data.user_table, melu_data.catalogue.table)
    result = train(melu_data, tmp_path, ModelConfig(), MetaConfig(), cfg, progress=False)
    history = result.metrics["history"]
    assert len(history) == 2
    assert result.metrics["best_val_mae"] < before["mae"] - 0.01
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_predictions_come_back_in_task_order(melu_data: ColdStartData) -> None:
    """Tasks are batched by support size; each row must still land at its own task."""
    torch.manual_seed(0)
    learner = ckpt.build_learner(melu_data.encoder, ModelConfig(), MetaConfig())
    val = melu_data.tasks["validation"]
    tables = (melu_data.user_table, melu_data.catalogue.table)
    batched = predict_queries(learner, val, *tables, batch_size=64)
    # The reference: every task in one batch, in its own order, no sorting.
    learner.eval()
    with torch.no_grad():
        f = gather(val.batch(np.arange(len(val)), trim=False), *tables)
        adaptation = learner.adapt(f.users, f.x_spt, f.y_spt, f.mask_spt)
        expected = learner.predict(adaptation, f.users, f.x_qry).clamp(1.0, 5.0).numpy()
    assert batched.shape == expected.shape
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-5)


def test_empty_padding_tasks_change_no_loss_or_gradient(melu_data: ColdStartData) -> None:
    """--compile pads the last batch of an epoch with empty tasks to keep one shape."""
    torch.manual_seed(0)
    learner = ckpt.build_learner(melu_data.encoder, ModelConfig(), MetaConfig()).double().eval()
    tasks = melu_data.tasks["warm"].to("cpu", torch.float64)
    tables = (melu_data.user_table, melu_data.catalogue.table)
    batch = tasks.batch(np.arange(8))

    def losses_and_grads(b: TaskBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        learner.zero_grad(set_to_none=True)
        losses = learner.task_losses(gather(b, *tables))
        losses.sum().backward()
        return losses.detach(), [p.grad.clone() for p in learner.parameters()]  # type: ignore[union-attr]

    losses, grads = losses_and_grads(batch)
    padded = batch.pad_tasks(12)
    assert len(padded) == 12 and not padded.mask_spt[8:].any() and not padded.mask_qry[8:].any()
    padded_losses, padded_grads = losses_and_grads(padded)
    assert torch.equal(padded_losses[8:], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(padded_losses[:8], losses, rtol=1e-12, atol=1e-12)
    for got, expected in zip(padded_grads, grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_checkpoint_round_trips(small_data: ColdStartData, tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, epochs=1)
    result = train(small_data, tmp_path, ModelConfig(), MetaConfig(), cfg, progress=False)
    loaded = ckpt.load(tmp_path / "checkpoint.pt")
    assert (loaded.data, loaded.model, loaded.meta, loaded.train) == (
        small_data.config, ModelConfig(), MetaConfig(), cfg
    )  # fmt: skip
    assert loaded.encoder == small_data.encoder
    assert np.array_equal(loaded.catalogue.item_ids, small_data.catalogue.item_ids)
    assert torch.equal(loaded.catalogue.table, small_data.catalogue.table)
    assert loaded.versions["torch"] == str(torch.__version__)
    learner = loaded.learner()
    for name, value in learner.state_dict().items():
        assert torch.equal(value, result.state[name])
    # The rebuilt model predicts exactly what validation measured during training.
    val = query_mae(
        learner, small_data.tasks["validation"], small_data.user_table, small_data.catalogue.table
    )
    assert val["mae"] == pytest.approx(result.metrics["best_val_mae"], abs=1e-6)
    # A re-saved checkpoint loads to the same thing.
    ckpt.save(tmp_path / "copy.pt", loaded)
    again = ckpt.load(tmp_path / "copy.pt")
    assert again.metrics == loaded.metrics


def test_resumed_run_equals_uninterrupted_run(small_data: ColdStartData, tmp_path: Path) -> None:
    full = train(small_data, tmp_path / "full", ModelConfig(), MetaConfig(), SMALL, progress=False)
    part = tmp_path / "interrupted"
    train(small_data, part, ModelConfig(), MetaConfig(), SMALL, progress=False, stop_after_epoch=1)
    assert len(ckpt.load(part / "checkpoint.pt").metrics["history"]) == 1
    # Options given on resume are overridden by the saved run's configuration.
    other = dataclasses.replace(SMALL, epochs=7, lr=0.5)
    resumed = train(
        small_data, part, ModelConfig(), MetaConfig(), other, resume=True, progress=False
    )
    assert resumed.train == SMALL
    assert resumed.metrics["history"] == [
        {**row, "seconds": resumed.metrics["history"][i]["seconds"]}
        for i, row in enumerate(full.metrics["history"])
    ]
    for name, value in full.resume["model"].items():
        assert torch.equal(value, resumed.resume["model"][name]), name
    for name, value in full.state.items():
        assert torch.equal(value, resumed.state[name]), name


def test_early_stop_says_what_stopped_it_and_what_is_kept(
    small_data: ColdStartData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a learning rate of 0 no validation measure can improve after epoch 1, so the
    default model (rating network and watch model) stops after 1 + patience epochs, and the
    log says by which measures and which epoch's weights of each part the checkpoint holds.
    The rule is "neither measure improved": a run used to go on past its best MAE epoch while
    the log and --patience spoke of MAE alone."""
    cfg = dataclasses.replace(SMALL, epochs=6, patience=2, lr=0.0)
    with caplog.at_level(logging.INFO, logger="melu.train"):
        result = train(small_data, tmp_path, PRESETS["default"], MetaConfig(), cfg, progress=False)
    history = result.metrics["history"]
    assert len(history) == 3 and result.metrics["stopped_early"]
    assert len({row["val_mae"] for row in history}) == len({r["val_recall"] for r in history}) == 1
    assert result.metrics["best_epoch"] == result.metrics["best_recall_epoch"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("; 2 of 2 epochs without a better validation MAE or Recall@10 from 5 "
                          "ratings") for m in messages), messages  # fmt: skip
    (stop,) = [m for m in messages if m.startswith("early stop")]
    assert stop.startswith(
        "early stop after epoch 3: no better validation MAE or Recall@10 from 5 ratings for 2 "
        "epochs; the checkpoint keeps the rating network from epoch 1 (best validation MAE "
    )
    assert "and the watch model from epoch 1 (best validation Recall@10 from 5 ratings " in stop


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
    out = tmp_path / "run"
    common = ["--data-dir", str(shared_data), "--out", str(out), "--no-progress", "--epochs", "1"]
    result = run_cli(
        "--threads", "1", "train", *common, "--local-steps", "1", "--batch-size", "256",
        "--local-update", "vmap",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The closing line says which epoch's weights of each part the checkpoint holds.
    assert "training finished all 1 epochs; " in result.stderr
    assert "keeps the rating network from epoch 1 (best validation MAE " in result.stderr
    assert "the watch model from epoch 1 (best validation Recall@10 from 5 ratings " in (
        result.stderr
    )
    saved = ckpt.load(out / "checkpoint.pt")
    assert saved.meta.local_steps == 1 and saved.train.batch_size == 256
    assert saved.meta.local_update == "vmap"  # the generic path, end to end
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
