"""Shared fixtures: the real MovieLens files that live outside the repository."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from melu import movielens
from melu.config import PRESETS, DataConfig, MetaConfig, ModelConfig, TrainConfig
from melu.data import ColdStartData, prepare
from melu.evaluation.rankers import TrainingData
from melu.train import train

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers on two cores) each worker, and every
    process it starts, computes with one thread: two workers of two OpenMP threads each on two
    cores wait on each other, which made end-to-end tests many times slower (see one_thread)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module: on a CPU shared with other jobs, two OpenMP threads
    waiting on each other made end-to-end tests tens of times slower; one thread costs little
    when the CPU is free. Modules use it with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_data_dir() -> Path:
    """``$MELU_SHARED_DATA`` if set, else ``<repo>/../shared/data/movielens``."""
    override = os.environ.get("MELU_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data" / "movielens"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real files; missing data is a broken setup, so the test fails instead of skipping."""
    folder = shared_data_dir()
    if not (folder / "melu").is_dir() or not (folder / "ml-1m").is_dir():
        pytest.fail(
            f"MovieLens data not found at {folder} (expected melu/ and ml-1m/ there): set "
            "MELU_SHARED_DATA to a folder laid out like shared/data/movielens "
            "(see its SOURCES.md, or `melu.download.download`)",
            pytrace=False,
        )
    return folder


@pytest.fixture(scope="session")
def melu_frames(shared_data: Path) -> movielens.MovieLens:
    """MeLU's release as frames, read once; tests must not modify them."""
    return movielens.load("melu", shared_data)


@pytest.fixture(scope="session")
def toy_training() -> TrainingData:
    """60 users rating 2 to 7 of 12 items (rows 1..12; row 0 is padding), identity content."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        for item in rng.choice(np.arange(1, 13), size=rng.integers(2, 8), replace=False):
            rows.append((user, int(item), float(rng.integers(1, 6))))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    content = sparse.csr_matrix(np.eye(13))
    return TrainingData.build(frame, {i: i for i in range(1, 13)}, 13, content)


@pytest.fixture(scope="session")
def melu_data(shared_data: Path) -> ColdStartData:
    """MeLU's release prepared with the default config (a few seconds, so once per session)."""
    return prepare(shared_data, DataConfig(dataset="melu"))


@pytest.fixture(scope="session")
def latest_small_data(shared_data: Path) -> ColdStartData:
    """The real ml-latest-small prepared as `melu train --dataset ml-latest-small` does (a
    second), with its time split, half stars and no user fields."""
    return prepare(shared_data, DataConfig.for_dataset("ml-latest-small"))


def _small_run(root: Path, data: ColdStartData, model: ModelConfig, meta: MetaConfig) -> Path:
    small = data.restrict("warm", np.arange(min(160, len(data.tasks["warm"]))))
    small = small.restrict("validation", np.arange(min(32, len(data.tasks["validation"]))))
    config = TrainConfig(epochs=1, device="cpu")
    # One torch thread (see one_thread): session fixtures are set up before any module's
    # one_thread, and on 2 shared cores two threads made the ml-latest-small run 85 s
    # instead of 13 s.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(small, root, model, meta, config, progress=False)
    finally:
        torch.set_num_threads(before)
    return root / "checkpoint.pt"


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory, melu_data: ColdStartData) -> Path:
    """The default model (the taste model), one epoch on 160 real training users (seconds), with
    the full catalogue.

    For tests of serving and the page, which need a real checkpoint but not a good model.
    """
    preset = PRESETS["default"]
    return _small_run(tmp_path_factory.mktemp("small-run"), melu_data, preset.model, preset.meta)


@pytest.fixture(scope="session")
def small_rating_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, melu_data: ColdStartData
) -> Path:
    """As :func:`small_checkpoint`, MeLU's rating network."""
    return _small_run(
        tmp_path_factory.mktemp("small-rating-run"), melu_data, ModelConfig(), MetaConfig()
    )


@pytest.fixture(scope="session")
def latest_small_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, latest_small_data: ColdStartData
) -> Path:
    """As :func:`small_checkpoint`, on ml-latest-small: half stars, no user fields."""
    preset = PRESETS["default"]
    return _small_run(
        tmp_path_factory.mktemp("small-latest-run"), latest_small_data, preset.model, preset.meta
    )
