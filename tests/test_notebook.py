"""The cold-start metrics notebook runs headless, start to finish, in its small configuration,
and reads a report ``melu evaluate --json`` wrote instead of evaluating again."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _execute(extra: str = "") -> tuple[list[Any], str]:
    """Run the notebook (plus the code ``extra`` in a last cell); its outputs and their text.

    The notebook file itself is never written."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if extra:
        nb.cells.append(nbformat.v4.new_code_cell(extra))
    client = NotebookClient(
        nb,
        timeout=600,  # per cell; the evaluation cell takes a minute or two on a busy CPU
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    return outputs, text


def _images(outputs: list[Any]) -> int:
    return len([out for out in outputs if "image/png" in out.get("data", {})])


def _verdict(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- ")]


def test_notebook_executes(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _ensure_kernel()
    # The kernel inherits this environment: small mode, the test data (the command line's
    # variable), no checkpoint (so the notebook trains its own one-epoch model), and one torch
    # thread through the notebook's own setting: on a CPU shared with other jobs, two OpenMP
    # threads waiting on each other are many times slower. OpenBLAS (numpy) gets one too.
    monkeypatch.setenv("MELU_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MELU_DATA_DIR", str(shared_data))
    monkeypatch.setenv("MELU_THREADS", "1")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    for name in ("MELU_CHECKPOINT", "MELU_COMPARE_CHECKPOINT", "MELU_RECOMPUTE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # no compare: as before
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = NOTEBOOK.read_bytes()

    # A last cell keeps what this run trained and measured, as `make run` leaves a run.
    run = tmp_path / "run"
    run.mkdir()
    keep = (
        "import shutil\n"
        f"shutil.copy(CHECKPOINT, {str(run / 'checkpoint.pt')!r})\n"
        f"Path({str(tmp_path / 'report.json')!r}).write_text(report.to_json())\n"
    )
    outputs, text = _execute(keep)
    assert NOTEBOOK.read_bytes() == before
    # Recall@10 by ratings given (catalogue), the new-releases shelf, the loved-genre test, the
    # predicted ratings' error and calibration by ratings given, onboarding (Recall@10 against
    # items shown), MeLU's protocol MAE (the zero-step row on its own scale) and nDCG@3. No
    # compare checkpoint adds no figure.
    assert _images(outputs) == 7
    assert "small mode: True | torch threads: 1" in text
    # The executed notebook says which checkpoint it evaluated, and how good it was.
    assert "checkpoint used: " in text
    assert "checkpoint.pt (one epoch, trained above" in text
    assert "objective taste" in text  # the default model
    assert "ranking score = taste logit + 0.5 x predicted rating" in text
    assert "rating_taste" in text  # what the fine-tuning changes, in words
    assert "compare checkpoint used" not in text
    assert "report read from" not in text
    assert "best epoch 1 of 1 run, validation MAE " in text
    verdict = _verdict(text)
    assert "- new_user (catalogue), 5 ratings: melu Recall@10" in "\n".join(verdict)
    # The zero-step row's MAE is computed, not quoted from an older run.
    assert "melu (zero local steps) MAE over the scenarios: " in text
    # The onboarding table: scenario x strategy with effort and Recall@10.
    html = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert "items_shown" in html and "reached_5" in html and "random_ratings" in html
    # The predicted ratings' table: calibration by number of ratings, the floor's share.
    assert "calibration_error" in html and "top_above_mean" in html

    # With report.json beside the checkpoint, newer than it (melu evaluate --json, make run),
    # the notebook reads it instead of evaluating again: the same verdict and figures.
    shutil.copy(tmp_path / "report.json", run / "report.json")
    monkeypatch.setenv("MELU_CHECKPOINT", str(run))
    outputs, text = _execute()
    assert f"report read from {run / 'report.json'}" in text
    assert "(from MELU_CHECKPOINT; objective taste)" in text
    assert _verdict(text) == verdict
    assert _images(outputs) == 7
