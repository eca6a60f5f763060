"""The cold-start metrics notebook runs headless, start to finish, in its small configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "cold_start_metrics.ipynb"
KERNEL = "python3"


def _ensure_kernel() -> None:
    """Register this interpreter's ipykernel inside the venv when no python3 kernel exists."""
    if KERNEL in KernelSpecManager().find_kernel_specs():
        return
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True)


def test_notebook_executes(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ensure_kernel()
    # The kernel inherits this environment: small mode, the test data, no checkpoint (so the
    # notebook trains its own one-epoch model), and one OpenMP thread, which on a CPU shared
    # with other jobs is many times faster than two threads waiting on each other.
    monkeypatch.setenv("MELU_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MELU_SHARED_DATA", str(shared_data))
    monkeypatch.delenv("MELU_CHECKPOINT", raising=False)
    monkeypatch.delenv("MELU_COMPARE_CHECKPOINT", raising=False)  # no compare: as before
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,  # per cell; the evaluation cell takes a minute or two on a busy CPU
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    # Recall@10 by ratings given (catalogue), the new-releases shelf, the loved-genre test,
    # onboarding (Recall@10 against items shown), MeLU's protocol MAE (melu_no_adapt on its own
    # scale) and nDCG@3. No compare checkpoint adds no figure.
    assert len(images) == 6
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "small mode: True" in text
    # The executed notebook says which checkpoint it evaluated, and how good it was.
    assert "checkpoint used: " in text
    assert "checkpoint.pt (one epoch, trained above" in text
    assert "objective rating+watch" in text  # the default model
    assert "compare checkpoint used" not in text
    assert "best epoch 1 of 1 run, validation MAE " in text
    assert "new_user (catalogue), 5 ratings: melu Recall@10" in text  # the verdict
    # The onboarding table: scenario x strategy with effort and Recall@10.
    html = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert "items_shown" in html and "reached_5" in html and "random_ratings" in html
