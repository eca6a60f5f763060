"""Validation-only probe for issue 17's "a request without demographics loses at most 0.005":
would training the all-fields-missing request directly (every user field dropped together with
probability ``q``, besides the preset's per-field dropout) shrink the loss?

Per-field dropout 0.5 leaves all four of MeLU's user fields missing in 1 training episode of
16, while most requests (the page, most API clients) send none. For each seed the default
preset is trained with whole-user dropout ``q`` (a wrapper around
``TasteNet.demographics``: no option of the package, since it is a probe), then its served
lists, and those of a checkpoint trained without it (``--baselines``, the same seeds; e.g.
``benchmarks/quality.py``'s default runs), are judged on validation users with and without
demographics exactly as ``benchmarks/served_list_probe.py`` part (a) judges them. No new user
is read. One torch thread:

    .venv/bin/python benchmarks/user_dropout_probe.py --data-dir ../shared/data/movielens \
        --out /tmp/user-dropout --baselines RUNS/default-seed0/checkpoint.pt \
        RUNS/default-seed1/checkpoint.pt RUNS/default-seed2/checkpoint.pt \
        --json results/user_dropout_probe.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.checkpoint import atomic_write_text
from melu.config import PRESETS, DataConfig, TrainConfig
from melu.data import prepare
from melu.taste import TasteNet
from melu.taste_learner import TasteLearner
from melu.train import train

log = logging.getLogger("user_dropout_probe")
HERE = Path(__file__).resolve().parent


def _served_list_probe() -> Any:
    spec = importlib.util.spec_from_file_location(
        "served_list_probe", HERE / "served_list_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drop_whole_users(q: float) -> None:
    """Wrap ``TasteNet.demographics`` so that in training every field of a user is "not given"
    together with probability ``q`` (the per-field dropout still applies after it)."""
    original = TasteNet.demographics

    def demographics(self: TasteNet, users: torch.Tensor) -> torch.Tensor:
        if self.training and q > 0:
            whole = torch.rand(users.shape[0], 1, device=users.device) < q
            users = torch.where(whole, torch.zeros_like(users), users)
        return original(self, users)

    TasteNet.demographics = demographics  # type: ignore[method-assign]


def judged(path: Path, data_dir: Path, probe: Any) -> list[dict[str, Any]]:
    ck = ckpt.load(path)
    learner = ck.learner("cpu")
    assert isinstance(learner, TasteLearner)
    data = prepare(data_dir, ck.data, ck.encoder)
    rows: list[dict[str, Any]] = probe.demographics_rows(path, data, learner, ck.train.seed)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--baselines", type=Path, nargs="+", required=True)
    parser.add_argument("--q", type=float, default=0.25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    missing = [str(p) for p in args.baselines if not p.is_file()]
    if missing or not 0 < args.q < 1:
        print(f"user_dropout_probe: no checkpoint at {missing} or q not in (0, 1)", file=sys.stderr)
        return 2
    probe = _served_list_probe()
    drop_whole_users(args.q)
    preset = PRESETS["default"]
    rows: list[dict[str, Any]] = []
    for baseline in args.baselines:
        seed = ckpt.load(baseline).train.seed
        run = args.out / f"seed{seed}-q{args.q:g}"
        data = prepare(args.data_dir, DataConfig.for_dataset("melu", seed=seed))
        train(data, run, preset.model, preset.meta, TrainConfig(seed=seed), progress=False)
        for name, path in (("baseline", baseline), (f"q={args.q:g}", run / "checkpoint.pt")):
            rows += [{**r, "run": name} for r in judged(path, args.data_dir, probe)]
    lines = [f"{'seed':>4} {'run':>8} {'S':>3} {'given':>7} {'none':>7} {'loss':>8}"]
    for r in rows:
        lines.append(
            f"{r['seed']:>4} {r['run']:>8} {r['S']:>3} {r['given']:>7.4f} {r['none']:>7.4f} "
            f"{r['given'] - r['none']:>+8.4f}"
        )
    for name in ("baseline", f"q={args.q:g}"):
        sel = [r for r in rows if r["run"] == name]
        lines.append(
            f"{name}: mean given {np.mean([r['given'] for r in sel]):.4f}, none "
            f"{np.mean([r['none'] for r in sel]):.4f}, loss "
            f"{np.mean([r['given'] - r['none'] for r in sel]):+.4f} (every S and seed)"
        )
    log.info("validation Recall@10, served lists, demographics given / none:\n%s", "\n".join(lines))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"q": args.q, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
