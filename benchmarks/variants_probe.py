"""Variants of the taste model on validation users: what the co-occurrence term, the step's
size and the genre preference do to the served lists and to the step's share of them (stop
34's choice of the default, stop 35's probe of larger steps, stop 36's genre preference).

Each variant is ``melu --threads 1 train --seed S --no-onboarding`` with its options (two runs
at a time); the numbers are what training chose its schedule by, on validation users only:

- ``served``: the served lists' Recall@10 from 3 / 5 / 10 / 20 ratings after the ratings'
  recalibration (``metrics.rating_calibration``), the lists ``melu evaluate`` scores;
- ``step``: the learned step at x1 minus x0 (the same checkpoint's meta-learned start) on the
  served lists, as the last step schedule tried them (``metrics.step_schedule``);
- ``own step``: the same on the taste model's own lists, before the fold-in is blended in
  (``metrics.step_schedule.own_lists``);
- with ``--loved-genre``, ``loved_genre``: the served lists' loved-genre share (``melu
  evaluate``'s test: five most-rated films of a genre at the top rating, three of a far genre
  at the bottom one, no demographics).

Stop 34's probe (``results/variants_probe.json``; about 25 minutes on 2 cores) and stop
35's (``results/variants_probe_stop35.json``; trained before the default became step 4.0, the
runs are what these options give now)::

    .venv/bin/python benchmarks/variants_probe.py --data-dir ../shared/data/movielens \\
        --group stop34 --runs-dir /work/runs/variants --json results/variants_probe.json
    .venv/bin/python benchmarks/variants_probe.py --data-dir ../shared/data/movielens \\
        --group stop35 --runs-dir /work/runs/variants35 --json results/variants_probe_stop35.json
    .venv/bin/python benchmarks/variants_probe.py --data-dir ../shared/data/movielens \\
        --group stop36 --runs-dir /work/runs/variants36 --loved-genre \\
        --json results/variants_probe_stop36.json

Stop 36's probe (21 runs, about 25 minutes) reused stop 35's three default runs for its first
row (the same options; the code since adds nothing to that model), and its genre preference
at 4.0 was trained as ``--genre-preference`` before ``--genre-local-lr`` existed (4.0 was
``--local-lr``'s, the same start).

``--variants`` names variants one by one instead.

``--reuse`` keeps the finished runs of ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from probes import load_run
from quality import write_rows
from trust_probe import genre_share

from melu import checkpoint as ckpt
from melu.schedule import BUCKET_SIZES, MULTIPLES
from melu.scoring import CatalogueScorer

log = logging.getLogger("variants_probe")

# name -> `melu train` options beside the default preset's.
# Stop 34's variants, each with the rating fast weights' step equal to the others' (as they
# were trained then).
# (Stop 34's and 35's models had no genre preference: --no-genre-preference trains them now.)
STOP34: dict[str, list[str]] = {
    "co-occurrence, step 0.5 (default before stop 34)": [
        "--cooccurrence", "--local-lr", "0.5", "--rating-local-lr", "0.5",
    ],
    "no co-occurrence, step 0.5": ["--local-lr", "0.5", "--rating-local-lr", "0.5"],
    "no co-occurrence, step 2.0 (stop 34's default)": [
        "--local-lr", "2.0", "--rating-local-lr", "2.0",
    ],
    "no co-occurrence, user vector only, step 2.0": ["--fast-weights", "user", "--local-lr", "2.0"],
    "no co-occurrence, step 4.0": ["--local-lr", "4.0", "--rating-local-lr", "4.0"],
    "no co-occurrence, trained without steps": ["--local-steps", "0"],
}  # fmt: skip
# Stop 35's: the rating fast weights' step at 0.5, and two ways of letting the step carry more
# of the list with it: a larger step (4.0 became the default) or two steps.
STOP35: dict[str, list[str]] = {
    "no co-occurrence, step 2.0, rating step 0.5 (stop 35's first default)": ["--local-lr", "2.0"],
    "no co-occurrence, step 3.0, rating step 0.5": ["--local-lr", "3.0"],
    "no co-occurrence, step 4.0, rating step 0.5 (stop 35's default)": [],
    "no co-occurrence, step 6.0, rating step 0.5": ["--local-lr", "6.0"],
    "no co-occurrence, two steps of 2.0, rating step 0.5": [
        "--local-steps", "2", "--local-lr", "2.0",
    ],
}  # fmt: skip
# Stop 36's: a per-user genre preference in the ranking logit, set by the step alone
# (ModelConfig.genre_preference), beside the default.
STOP36: dict[str, list[str]] = {
    "stop 35's default (no genre preference)": ["--no-genre-preference"],
    "genre preference, its step 1.0": ["--genre-local-lr", "1.0"],
    "genre preference, its step 2.0 (default)": [],
    "genre preference, its step 4.0": ["--genre-local-lr", "4.0"],
    "stop 35's default, patience 10": ["--no-genre-preference", "--patience", "10"],
    "stop 35's default, weight average decay 0.8": [
        "--no-genre-preference", "--average-decay", "0.8",
    ],
    "stop 35's default, meta rate 5e-4, patience 10": [
        "--no-genre-preference", "--lr", "5e-4", "--patience", "10",
    ],
}  # fmt: skip
OLD_MODEL = ["--no-genre-preference"]
VARIANTS: dict[str, list[str]] = {
    **{name: [*OLD_MODEL, *options] for name, options in {**STOP34, **STOP35}.items()},
    **STOP36,
}
GROUPS: dict[str, list[str]] = {
    "stop34": list(STOP34),
    "stop35": list(STOP35),
    "stop36": list(STOP36),
}
X1, X0 = MULTIPLES.index(1.0), MULTIPLES.index(0.0)


def folder(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def train(name: str, seed: int, args: argparse.Namespace) -> Path:
    out = args.runs_dir / f"{folder(name)}-seed{seed}"
    path = out / "checkpoint.pt"
    if args.reuse and path.is_file():
        return path
    command = [
        sys.executable, "-m", "melu", "--threads", "1", "train", "--data-dir",
        str(args.data_dir), "--out", str(out), "--seed", str(seed), "--no-onboarding",
        "--no-progress", *VARIANTS[name],
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.log").open("w") as stream:
        subprocess.run(command, check=True, stdout=stream, stderr=subprocess.STDOUT)
    return path


def gains(tried: dict[str, list[float]]) -> dict[str, float]:
    return {size: round(values[X1] - values[X0], 5) for size, values in tried.items()}


def loved_genre(path: Path, data_dir: Path) -> float:
    """The served lists' loved-genre share (``melu evaluate``'s test, no demographics)."""
    run = load_run(path, data_dir)
    catalogue = run.data.catalogue
    scorer = CatalogueScorer(run.learner, catalogue.table, catalogue.recommendable)
    with torch.no_grad():
        return round(genre_share(scorer, run.data), 3)


def row(name: str, seed: int, path: Path, data_dir: Path | None) -> dict[str, Any]:
    metrics = ckpt.load(path).metrics
    schedule = metrics["step_schedule"]
    served = metrics["rating_calibration"]["recall@10"]["after"]
    out: dict[str, Any] = {"variant": name, "seed": seed, "epochs": len(metrics["history"])}
    for count, recall in zip(BUCKET_SIZES, served, strict=True):
        out[f"served_S{count}"] = recall
    own = schedule.get("own_lists", schedule)["recall@10"]
    for key, tried in (("step", schedule["recall@10"]), ("own_step", own)):
        for size, value in gains(tried).items():
            out[f"{key}_S{size}"] = value
    if data_dir is not None:
        out["loved_genre"] = loved_genre(path, data_dir)
    return out


def table(rows: list[dict[str, Any]]) -> None:
    names = [f"served_S{s}" for s in BUCKET_SIZES] + ["step_S10", "step_S20"]
    names += ["own_step_S10", "own_step_S20"]
    names += ["loved_genre"] if rows and "loved_genre" in rows[0] else []
    print(f"{'variant':<72} {'seed':>4} " + " ".join(f"{n:>12}" for n in names))
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        for r in mine:
            cells = " ".join(f"{r[n]:>12.4f}" for n in names)
            print(f"{variant:<72} {r['seed']:>4} {cells}")
        if mine:
            mean = " ".join(f"{sum(r[n] for r in mine) / len(mine):>12.4f}" for n in names)
            print(f"{variant:<72} {'mean':>4} {mean}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--group", choices=list(GROUPS), help="a stop's probe")
    chosen.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--loved-genre", action="store_true", help="also each run's loved-genre share"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = GROUPS[args.group] if args.group else args.variants
    jobs = [(name, seed) for name in names for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda job: train(job[0], job[1], args), jobs))
    data_dir = args.data_dir if args.loved_genre else None
    rows = [row(name, seed, path, data_dir) for (name, seed), path in zip(jobs, paths, strict=True)]
    table(rows)
    if args.json:
        write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
