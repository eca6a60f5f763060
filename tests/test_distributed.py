"""Data-parallel meta-training (gloo, 2 processes on the CPU) matches one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from melu import checkpoint as ckpt

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_worker(out: Path, shared: Path, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(shared)]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", str(WORKER), str(out), str(shared),
        ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_gloo_processes_match_one(shared_data: Path, tmp_path: Path) -> None:
    run_worker(tmp_path / "single", shared_data, 1)
    run_worker(tmp_path / "ddp", shared_data, 2)
    single = ckpt.load(tmp_path / "single" / "checkpoint.pt")
    ddp = ckpt.load(tmp_path / "ddp" / "checkpoint.pt")
    assert len(ddp.metrics["history"]) == len(single.metrics["history"]) == 2
    for a, b in zip(single.metrics["history"], ddp.metrics["history"], strict=True):
        assert abs(a["val_mae"] - b["val_mae"]) < 1e-9
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-9
    for name, value in single.resume["model"].items():
        torch.testing.assert_close(ddp.resume["model"][name], value, rtol=1e-8, atol=1e-10)
    # Only rank 0 wrote: one checkpoint, one metrics file, no stray temporary files.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
    ]
