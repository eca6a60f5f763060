"""Data-parallel meta-training (gloo, 2 processes on the CPU) matches one process, for MeLU's
network and for the taste model (whose meta-batches are sharded as cold-start episodes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from melu import checkpoint as ckpt
from melu.distributed import World
from melu.objectives import Episode
from melu.train import _shard

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_worker(out: Path, shared: Path, model: str, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(WORKER), str(out), str(shared), model]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *args,
        ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("model", ["rating", "taste", "taste-latest-small"])
def test_two_gloo_processes_match_one(shared_data: Path, tmp_path: Path, model: str) -> None:
    """``taste-latest-small``: torchrun runs unchanged on a CSV release (issue 21)."""
    run_worker(tmp_path / "single", shared_data, model, 1)
    run_worker(tmp_path / "ddp", shared_data, model, 2)
    single = ckpt.load(tmp_path / "single" / "checkpoint.pt")
    ddp = ckpt.load(tmp_path / "ddp" / "checkpoint.pt")
    assert single.model.objective == ddp.model.objective == model.split("-")[0]
    if model.endswith("latest-small"):
        assert ddp.data.dataset == "ml-latest-small" and ddp.data.scale.step == 0.5
    assert len(ddp.metrics["history"]) == len(single.metrics["history"]) == 2
    measures = ["val_mae", "train_loss"] + (["val_recall"] if model != "rating" else [])
    for a, b in zip(single.metrics["history"], ddp.metrics["history"], strict=True):
        for measure in measures:
            assert abs(a[measure] - b[measure]) < 1e-9, measure
    for name, value in single.resume["model"].items():
        torch.testing.assert_close(ddp.resume["model"][name], value, rtol=1e-8, atol=1e-10)
    for name, value in single.state.items():
        torch.testing.assert_close(ddp.state[name], value, rtol=1e-8, atol=1e-10)
    if model != "rating":
        # Chosen once, by rank 0, after training: the same schedule as one process chose,
        # stored in the run's dtype like every other weight.
        assert ddp.metrics["step_schedule"] == single.metrics["step_schedule"]
        assert ddp.state["net.step_schedule"].dtype == torch.float64
    if model == "taste":
        # The fold-in, chosen by rank 0 after training as well (not on ml-latest-small, where
        # the worker leaves it out for time).
        assert "weights" in ddp.metrics["fold_in"]
        assert ddp.metrics["fold_in"] == single.metrics["fold_in"]
    # Only rank 0 wrote: one checkpoint, one metrics file, no stray temporary files.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
    ]


@pytest.mark.parametrize("own", [False, True])
def test_ranks_shard_episodes_whose_own_may_be_none(own: bool) -> None:
    """Each rank takes a strided share of a batch of episodes (5 tasks over 2 ranks: 3 and
    2), every field cut alike; ``own`` (the users' items, None where nothing is left out of
    the co-occurrence) stays None or is cut too."""
    n = 5
    fields = {
        name: torch.arange(n * 2).view(n, 2) + 100 * i for i, name in enumerate(Episode._fields)
    }
    episode = Episode(**{**fields, "own": fields["own"] if own else None})
    shards = [_shard(episode, World(rank=rank, size=2)) for rank in range(2)]
    assert [len(s.users) for s in shards] == [3, 2]
    for name in Episode._fields:
        if name == "own" and not own:
            assert all(s.own is None for s in shards)
            continue
        parts = [getattr(s, name) for s in shards]
        assert torch.equal(torch.cat(parts).sort(0).values, fields[name].sort(0).values), name
        assert torch.equal(parts[1], fields[name][1::2]), name
