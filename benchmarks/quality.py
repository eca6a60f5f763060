"""Quality benchmark: meta-train with several seeds, evaluate each under both protocols
against the baselines, and write ``results/quality.json`` and ``docs/results.md``.

Each seed runs what ``melu train --seed S --preset P`` runs (the seed also draws the validation
users and each user's query items), then ``melu.evaluation.evaluate_checkpoint``: the catalogue
protocol (the list a new user gets from 3, 5, 10, 20 ratings, against popularity, EASE, EDLAE,
GF-CF, RP3beta, iALS, item kNN, Mult-DAE, ... tuned on validation users; the predicted ratings
from 1 to 50 ratings), and MeLU's protocol on the four scenarios. Three models by default:
``default`` (the taste model), ``default-no-steps`` (the same architecture meta-trained
without local steps: the ablation beside the same checkpoint with zero steps) and ``melu``
(MeLU's rating network). The Markdown puts issue 17's goals first, then the mean and spread
over seeds; "better" and "worse" need the paired interval to exclude 0 in every seed, anything
else is "tied".

Full run (about an hour on 2 shared CPU cores: each run trains in 1.5-5 minutes, evaluates in
4-6)::

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/data/movielens --threads 1

``--train-only`` trains every run first (so an evaluation that fails loses no training), and
``--reuse`` then evaluates the finished runs without training them again.

Quick check that everything runs (a few minutes; writes to /tmp)::

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/data/movielens --epochs 1 \
        --seeds 0 --bootstrap 100 --json /tmp/quality.json --markdown /tmp/results.md

Text below the line ``<!-- notes -->`` of an existing Markdown file is kept, so hand-written
observations survive a rerun.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu import checkpoint as ckpt
from melu.config import DATASETS, PRESETS, DataConfig, Preset, TrainConfig, to_dict
from melu.data import prepare
from melu.evaluation import ALL_SUPPORT, MELU, METRICS, Report, evaluate_checkpoint
from melu.evaluation import metrics as M
from melu.evaluation.report import NO_DEMOGRAPHICS, NO_FOLD_IN, ZERO_STEPS
from melu.taste import BUCKET_LABELS
from melu.train import CHECKPOINT_NAME, resolve_device, train

log = logging.getLogger("quality")

REPO = Path(__file__).resolve().parent.parent
NOTES_MARKER = "<!-- notes -->"
# Issue 17's goals for the default model (docs/results.md's goals table).
ANCHOR_MARGIN = 0.01  # new users' Recall@10 above the best tuned anchor, at every S
MARGIN_SIZES: tuple[int, ...] = (3, 5, 10, 20)
STEPS_GAIN = 0.02  # adapted minus zero local steps, at S = 10 and 20
STEPS_SIZES: tuple[int, ...] = (10, 20)
GENRE_GOAL = 0.70
PAIRS_GOAL = 0.95  # (5-star, 1-star) support pairs predicted in order
PAIRS_SIZES: tuple[int, ...] = (5, 10, 20)
MAE_GOAL = 0.73  # new users, MeLU's protocol
# The issue asks for calibrated ratings without a number; this table holds the calibration
# error (half-star bins) of new users' held-out ratings to a tenth of a star at every S.
CALIBRATION_GOAL = 0.10
DEMOGRAPHICS_LOSS = 0.005  # Recall@10 a request without demographics may lose, at every S
CATALOGUE_SECONDS = 120.0
# Earlier issues' goals, still reported.
SHELF_GOAL = 1.3
COVERAGE_GOAL = 0.15
# Catalogue baselines that count as anchors (random does not).
NOT_ANCHORS = frozenset({"random"})
# Issue 21's goals on a CSV release (ml-latest-small): Recall@10 above every tuned anchor at
# these S, and MeLU's protocol MAE below the bias baseline overall and in every support bucket.
CSV_ABOVE_SIZES: tuple[int, ...] = (10, 20)
BIAS_BASELINE = "user_item_bias"
# MeLU's paper (KDD 2019, MovieLens), query MAE.
PAPER_MAE = {"new_user": 0.785, "new_item": 0.928, "new_user_new_item": 0.924}


# The ablation of the lab note ("Removing the steps from a model trained with them always looks
# good for the steps. Also train the same architecture without steps"): the default preset's
# taste model meta-trained with no local steps, its fast weights the meta-learned start.
NO_STEPS = "default-no-steps"
# The direction docs/results.md's validation-only probe found most promising: the step adapts
# only the user vector (``melu train --fast-weights user``), the other fast weights keep their
# meta-learned start.
USER_STEP = "default-user-step"
RUN_PRESETS: dict[str, Preset] = {
    **PRESETS,
    NO_STEPS: Preset(PRESETS["default"].model, replace(PRESETS["default"].meta, local_steps=0)),
    USER_STEP: Preset(
        PRESETS["default"].model, replace(PRESETS["default"].meta, fast_weights=("user",))
    ),
}
PRESET_NAMES: dict[str, str] = {
    "default": "default (taste model)",
    NO_STEPS: "default, trained without local steps",
    USER_STEP: "default, the step adapting the user vector only",
    "melu": "melu (MeLU's rating network)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "movielens")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="melu",
        help="the release to train and evaluate on (melu: MeLU's MovieLens-1M, writing "
        "results/quality.json and docs/results.md; another: results/quality_DATASET.json and "
        "docs/results_DATASET.md)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--presets",
        nargs="+",
        choices=sorted(RUN_PRESETS),
        default=["default", NO_STEPS, "melu"],
        help="model presets to train and compare; the first one's baselines are reported",
    )
    p.add_argument("--max-users", type=int, help="evaluate a subset of users (quick runs)")
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", type=Path, help="default: TMPDIR/melu-quality/DATASET")
    p.add_argument("--reuse", action="store_true", help="evaluate finished runs, do not retrain")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train every run (finished ones are kept with --reuse), evaluate nothing",
    )
    p.add_argument(
        "--reuse-evaluations",
        action="store_true",
        help="with --reuse: take each run's evaluation from its run folder (written by an "
        "earlier run of this script, newer than the checkpoint) instead of evaluating again; "
        "for rewriting the tables after a change to this script only",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 is far faster on a CPU shared with "
        "other jobs, where OpenMP threads wait on each other",
    )
    p.add_argument("--json", type=Path, help="default: results/quality[_DATASET].json")
    p.add_argument("--markdown", type=Path, help="default: docs/results[_DATASET].md")
    args = p.parse_args(argv)
    suffix = "" if args.dataset == "melu" else f"_{args.dataset}"
    if args.runs_dir is None:
        args.runs_dir = Path(tempfile.gettempdir()) / "melu-quality" / args.dataset
    if args.json is None:
        args.json = REPO / "results" / f"quality{suffix}.json"
    if args.markdown is None:
        args.markdown = REPO / "docs" / f"results{suffix}.md"
    return args


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }


def git_revision() -> dict[str, Any]:
    """The commit the numbers came from, and whether the package differed from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--", "melu")
    return {
        "commit": git("rev-parse", "HEAD"),
        "melu_modified": bool(status) if status is not None else None,
    }


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A probe's rows as JSON, atomically, with the machine and the commit they came from."""
    result = {"rows": rows, "machine": machine(), "revision": git_revision()}
    ckpt.atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", path)


def finished(path: Path, epochs: int) -> bool:
    """A run that reached its last epoch or stopped early under the same epoch budget."""
    if not path.is_file():
        return False
    ck = ckpt.load(path)
    return ck.train.epochs == epochs and int(ck.resume.get("epoch", 0)) >= epochs


TRAIN_SECONDS = "train_seconds.json"


def train_run(seed: int, preset: str, args: argparse.Namespace) -> tuple[Any, Path, float | None]:
    """Meta-train one run as ``melu train --seed SEED --preset PRESET`` does (or keep a finished
    one with ``--reuse``): its prepared data, checkpoint path and training seconds (read back
    from the run folder for a reused run; None if it was never recorded)."""
    device = resolve_device(args.device)
    # As `melu train --dataset D --seed S`: the data seed follows.
    data_cfg = DataConfig.for_dataset(args.dataset, seed=seed)
    train_cfg = TrainConfig(seed=seed, epochs=args.epochs, device=str(device))
    data = prepare(args.data_dir, data_cfg)
    run_dir = args.runs_dir / f"{preset}-seed{seed}"
    path = run_dir / CHECKPOINT_NAME
    seconds_file = run_dir / TRAIN_SECONDS
    if args.reuse and finished(path, args.epochs):
        log.info("%s seed %d: reusing %s", preset, seed, path)
        if seconds_file.is_file():
            return data, path, float(json.loads(seconds_file.read_text())["seconds"])
        return data, path, None
    log.info("%s seed %d: meta-training into %s", preset, seed, run_dir)
    started = time.perf_counter()
    chosen = RUN_PRESETS[preset]
    train(data, run_dir, chosen.model, chosen.meta, train_cfg, progress=False)
    seconds = round(time.perf_counter() - started, 1)
    ckpt.atomic_write_text(seconds_file, json.dumps({"seconds": seconds}) + "\n")
    return data, path, seconds


RUN_RESULT = "quality_run.json"


def run_seed(seed: int, preset: str, args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    data, path, train_seconds = train_run(seed, preset, args)
    run_dir = path.parent
    saved = run_dir / RUN_RESULT
    if (
        args.reuse
        and args.reuse_evaluations
        and saved.is_file()
        and saved.stat().st_mtime >= path.stat().st_mtime
    ):
        log.info("%s seed %d: reusing the evaluation in %s", preset, seed, saved)
        result: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
        if "fold_in" not in result:
            # Written before the report showed the fold-in: read off the checkpoint.
            result["fold_in"] = fold_in_text(ckpt.load(path))
        # The folder it is read from now: a copied run's file names the one it was made in.
        return {**result, "run_dir": str(run_dir)}
    ck = ckpt.load(path)
    started = time.perf_counter()
    report = evaluate_checkpoint(
        path,
        args.data_dir,
        data=data,
        bootstrap=args.bootstrap,
        seed=seed,
        device=device,
        max_users=args.max_users,
    )
    for line in report.text_table().splitlines():
        log.info("%s seed %d %s", preset, seed, line)
    # Beside the checkpoint, as `make evaluate` leaves it: the notebook reads it from there.
    ckpt.atomic_write_text(run_dir / "report.json", report.to_json())
    history = ck.metrics.get("history", [])
    result = {
        "seed": seed,
        "preset": preset,
        "run_dir": str(run_dir),
        "train_seconds": train_seconds,
        "evaluate_seconds": round(time.perf_counter() - started, 1),
        "epochs_run": len(history),
        "best_epoch": ck.metrics.get("best_epoch"),
        "best_val_mae": ck.metrics.get("best_val_mae"),
        "stopped_early": ck.metrics.get("stopped_early"),
        "step_schedule": schedule_text(ck),
        "fold_in": fold_in_text(ck),
        "report": report.to_dict(),
    }
    ckpt.atomic_write_text(saved, json.dumps(result, allow_nan=False) + "\n")
    return result


def schedule_text(ck: ckpt.Checkpoint) -> str:
    """How far the taste model's local step goes per support size (chosen on validation users
    after training), e.g. ``1-3 x0, 4-7 x0, 8-15 x0.5, 16-31 x1, 32+ x1``; MeLU's network takes
    its fixed steps."""
    chosen = ck.metrics.get("step_schedule", {}).get("chosen")
    if ck.model.objective != "taste" or not chosen:
        return f"{ck.meta.local_steps} steps at every size"
    if ck.meta.local_steps == 0:
        return "none (no local steps)"
    buckets = BUCKET_LABELS
    return ", ".join(f"{b} x{m:g}" for b, m in zip(buckets, chosen, strict=False))


def fold_in_text(ck: ckpt.Checkpoint) -> str:
    """The EDLAE fold-in a taste run chose on validation users after training: its setting
    and its weight in the list per support size, e.g. ``p=0.95, lambda=300: 1-3 0.094, 4-7
    0.125, ...``; "none" where the run has none."""
    chosen = ck.metrics.get("fold_in", {})
    if "weights" not in chosen:
        return "none"
    weights = ", ".join(
        f"{b} {w:.3g}" for b, w in zip(BUCKET_LABELS, chosen["weights"], strict=False)
    )
    return f"p={chosen['dropout']:g}, lambda={chosen['l2']:g}: {weights}"


def _rename(method: str, preset: str, first: str) -> str:
    """The model's rows of a second preset get the preset's name; baselines keep theirs."""
    if preset == first or not method.startswith(MELU):
        return method
    return f"{method}[{preset}]"


def _frames(runs: list[dict[str, Any]], kind: str) -> pd.DataFrame:
    """Every run's rows of one kind, with a seed column; baselines from the first preset only
    (the same data and seed give them the same numbers under every preset)."""
    first = runs[0]["preset"]
    frames = []
    for run in runs:
        report = Report.from_dict(run["report"])
        frame = {
            "rows": report.to_frame,
            "ranking": report.ranking_frame,
            "lists": report.lists_frame,
            "genre": report.genre_frame,
            "comparisons": report.comparisons_frame,
            "predictions": report.predictions_frame,
        }[kind]()
        if kind == "comparisons":
            frame = frame.assign(method=MELU)
        frame = frame.assign(
            seed=run["seed"],
            method=[_rename(m, run["preset"], first) for m in frame["method"]],
        )
        if run["preset"] != first:
            frame = frame[frame["method"].str.contains(r"\[")]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def onboarding_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The onboarding simulation of the first preset's model, every seed."""
    first = runs[0]["preset"]
    frames = [
        Report.from_dict(r["report"]).onboarding_frame().assign(seed=r["seed"])
        for r in runs
        if r["preset"] == first
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def onboarding_goal(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Issue 13's goal per scenario: the best strategy (by mean Recall@10) beats popularity on
    Recall@10 with non-overlapping intervals in every seed, showing no more items."""
    out: list[dict[str, Any]] = []
    if frame.empty:
        return out
    strategies = [s for s in dict.fromkeys(frame["strategy"]) if s not in ("random_ratings",)]
    for scenario in dict.fromkeys(frame["scenario"]):
        sel = frame[frame["scenario"] == scenario]
        recall = sel[sel["metric"] == "recall@10"]
        means = recall.groupby("strategy")["value"].mean()
        best = max((s for s in strategies if s != "popularity"), key=lambda s: means[s])
        outside, cheaper = True, True
        for _, seed_rows in sel.groupby("seed"):
            r = seed_rows.set_index(["strategy", "metric"])
            ci_low = r.loc[(best, "recall@10"), "ci_low"]
            ci_high_pop = r.loc[("popularity", "recall@10"), "ci_high"]
            outside &= bool(pd.notna(ci_low) and ci_low > ci_high_pop)
            cheaper &= bool(
                r.loc[(best, "items_shown"), "value"]
                <= r.loc[("popularity", "items_shown"), "value"]
            )
        shown = sel[sel["metric"] == "items_shown"].groupby("strategy")["value"].mean()
        out.append(
            {
                "goal": f"{scenario}: the best onboarding strategy beats popularity on "
                "Recall@10 (intervals apart in every seed) showing no more items",
                "measured": f"best {best} {means[best]:.3f} ({shown[best]:.1f} items shown) "
                f"vs popularity {means['popularity']:.3f} ({shown['popularity']:.1f}); "
                f"evidence {means.get('evidence', float('nan')):.3f}; random ratings "
                f"{means.get('random_ratings', float('nan')):.3f}",
                "met": outside and cheaper,
            }
        )
    return out


def aggregate(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """MeLU's protocol: mean, sample std, min and max over seeds of every
    (scenario, method, support, metric)."""
    rows = _frames(runs, "rows")
    keys = ["scenario", "method", "support", "metric"]
    return (
        rows.groupby(keys, sort=False)["value"]
        .agg(["mean", "std", "min", "max", "count"])
        .reset_index()
    )


def aggregate_ranking(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The catalogue protocol: mean and std over seeds per (scenario, S, relevance, method,
    metric)."""
    rows = _frames(runs, "ranking")
    keys = ["scenario", "protocol", "support_size", "relevance", "method", "metric"]
    return rows.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()


def with_verdict(frame: pd.DataFrame) -> pd.DataFrame:
    """``verdict`` from the seed counts ``better``, ``worse`` and ``seeds``: better or worse
    only if every seed's paired interval says so, else tied."""
    return frame.assign(
        verdict=np.where(
            frame["better"] == frame["seeds"],
            "better",
            np.where(frame["worse"] == frame["seeds"], "worse", "tied"),
        )
    )


def ranking_verdicts(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Per preset's model, scenario, S and baseline (liked): in how many seeds the paired
    interval says better / worse; ``verdict`` is better or worse only if every seed agrees."""
    frames = []
    first = runs[0]["preset"]
    for run in runs:
        comp = pd.DataFrame(run["report"]["ranking_comparisons"])
        if comp.empty:
            continue
        model = _rename(MELU, run["preset"], first)
        frames.append(comp.assign(seed=run["seed"], model=model))
    if not frames:
        return pd.DataFrame()
    comp = pd.concat(frames, ignore_index=True)
    comp = comp[(comp["relevance"] == "liked") & ~comp["baseline"].str.startswith(MELU)]
    keys = ["model", "scenario", "support_size", "baseline", "metric"]
    out = (
        comp.assign(better=comp["verdict"] == "better", worse=comp["verdict"] == "worse")
        .groupby(keys, sort=False)
        .agg(
            better=("better", "sum"),
            worse=("worse", "sum"),
            seeds=("seed", "count"),
            diff=("diff", "mean"),
        )
        .reset_index()
    )
    return with_verdict(out)


def _r(
    agg: pd.DataFrame, scenario: str, method: str, size: int, metric: str = "recall@10"
) -> float | None:
    hit = agg[
        (agg["scenario"] == scenario)
        & (agg["method"] == method)
        & (agg["support_size"] == size)
        & (agg["metric"] == metric)
        & (agg["relevance"] == "liked")
    ]
    return None if hit.empty else float(hit["mean"].iloc[0])


def _get(agg: pd.DataFrame, scenario: str, method: str, metric: str) -> pd.Series | None:
    hit = agg[
        (agg["scenario"] == scenario)
        & (agg["method"] == method)
        & (agg["metric"] == metric)
        & (agg["support"] == ALL_SUPPORT)
    ]
    return None if hit.empty or pd.isna(hit["mean"].iloc[0]) else hit.iloc[0]


def _ms(row: pd.Series | None, spread: bool = True, digits: int = 4) -> str:
    if row is None:
        return "-"
    if not spread or row["count"] < 2:
        return f"{row['mean']:.{digits}f}"
    return f"{row['mean']:.{digits}f} ± {row['std']:.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def _anchors(ranking: pd.DataFrame) -> list[str]:
    return [
        m
        for m in dict.fromkeys(ranking["method"])
        if not m.startswith(MELU) and m not in NOT_ANCHORS
    ]


def _best_anchor(ranking: pd.DataFrame, scenario: str, size: int) -> tuple[str, float]:
    values = [(b, _r(ranking, scenario, b, size)) for b in _anchors(ranking)]
    return max(((b, v) for b, v in values if v is not None), key=lambda t: t[1])


def aggregate_predictions(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The predicted ratings by scenario, S and model row: MAE, calibration error and the top
    10's share at or above the user's mean averaged over seeds; the support's (5, 1) pairs
    pooled over seeds."""
    frame = _frames(runs, "predictions")
    if frame.empty:
        return frame
    frame = frame.assign(ordered=frame["pairs_ordered"].fillna(0.0) * frame["pairs"])
    out = (
        frame.groupby(["scenario", "support_size", "method"], sort=False)
        .agg(
            mae=("mae", "mean"),
            calibration_error=("calibration_error", "mean"),
            mean_predicted=("mean_predicted", "mean"),
            mean_actual=("mean_actual", "mean"),
            top_above_mean=("top_above_mean", "mean"),
            top_above_mean_min=("top_above_mean", "min"),
            pairs=("pairs", "sum"),
            ordered=("ordered", "sum"),
            users=("n_users", "mean"),
            seeds=("seed", "count"),
        )
        .reset_index()
    )
    out["pairs_ordered"] = np.where(out["pairs"] > 0, out["ordered"] / out["pairs"].clip(1), np.nan)
    return out.drop(columns="ordered")


def _paired(a: np.ndarray, b: np.ndarray, bootstrap: int, key: list[int]) -> dict[str, Any]:
    """Mean of ``a - b`` over the same users and its 95% percentile bootstrap interval."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(key)
    idx = M.bootstrap_indices(len(diff), bootstrap, rng)
    low, high = M.interval(diff[idx].mean(-1))
    return {"diff": float(diff.mean()), "ci_low": low, "ci_high": high}


def ablations(runs: list[dict[str, Any]], bootstrap: int) -> pd.DataFrame:
    """The local steps, measured two ways per seed, scenario and S (liked Recall@10): the
    default model adapted against the same checkpoint with zero local steps (the report's
    paired comparison), and against the same architecture trained without local steps
    (``default-no-steps``: paired over the same users, who get the same supports). Where
    ``default-user-step`` ran, the same two for it (its rows named with a ``default-user-step:``
    prefix) and its adapted lists against the default's."""
    by = {(r["preset"], r["seed"]): r["report"] for r in runs}
    rows = []
    for (preset, seed), report in by.items():
        if preset not in ("default", USER_STEP):
            continue
        label = "" if preset == "default" else f"{preset}: "
        same = {
            ZERO_STEPS: "adapted - zero local steps (same checkpoint)",
            NO_FOLD_IN: "adapted - its list without the fold-in (same checkpoint)",
        }
        for c in report["ranking_comparisons"]:
            if (c["relevance"], c["metric"]) == ("liked", "recall@10") and c["baseline"] in same:
                rows.append(
                    {
                        "comparison": f"{label}{same[c['baseline']]}",
                        "seed": seed,
                        "scenario": c["scenario"],
                        "support_size": c["support_size"],
                        "diff": c["diff"],
                        "ci_low": c["ci_low"],
                        "ci_high": c["ci_high"],
                    }
                )
        others = [(NO_STEPS, f"{label}adapted - trained without local steps", 7000)]
        if preset == USER_STEP:
            others.append(("default", f"{label}adapted - default adapted", 7100))
        for other_preset, comparison, stream in others:
            other = by.get((other_preset, seed))
            if other is None:
                continue
            ours_users = report["info"]["catalogue"].get("per_user", {})
            theirs_users = other["info"]["catalogue"].get("per_user", {})
            for scenario, sizes in ours_users.items():
                for size, ours in sizes.items():
                    theirs = theirs_users.get(scenario, {}).get(size)
                    if theirs is None or theirs["users"] != ours["users"]:
                        raise RuntimeError(f"{scenario} S={size} seed {seed}: not the same users")
                    key = [seed, SCENARIO_KEYS.index(scenario), int(size), stream]
                    rows.append(
                        {
                            "comparison": comparison,
                            "seed": seed,
                            "scenario": scenario,
                            "support_size": int(size),
                            **_paired(ours[MELU], theirs[MELU], bootstrap, key),
                        }
                    )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["better"] = frame["ci_low"] > 0
    frame["worse"] = frame["ci_high"] < 0
    out = (
        frame.groupby(["comparison", "scenario", "support_size"], sort=False)
        .agg(
            diff=("diff", "mean"),
            better=("better", "sum"),
            worse=("worse", "sum"),
            seeds=("seed", "count"),
            ci_low_min=("ci_low", "min"),
            ci_high_max=("ci_high", "max"),
        )
        .reset_index()
    )
    return with_verdict(out)


SCENARIO_KEYS: tuple[str, ...] = ("validation", "new_user")


def _default_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first preset's runs (the default model's, whose goals the table judges)."""
    return [r for r in runs if r["preset"] == runs[0]["preset"]]


def _seeds_better(runs: list[dict[str, Any]], scenario: str, size: int, baseline: str) -> int:
    """Seeds in which the model's liked Recall@10 is better than ``baseline``'s (the report's
    paired interval above 0)."""
    return sum(
        any(
            (c["scenario"], c["support_size"], c["baseline"], c["relevance"], c["metric"])
            == (scenario, size, baseline, "liked", "recall@10")
            and c["verdict"] == "better"
            for c in run["report"]["ranking_comparisons"]
        )
        for run in _default_runs(runs)
    )


def goals(
    runs: list[dict[str, Any]],
    agg: pd.DataFrame,
    ranking: pd.DataFrame,
    genre: pd.DataFrame,
    lists: pd.DataFrame,
    predictions: pd.DataFrame,
    steps: pd.DataFrame,
) -> list[dict[str, Any]]:
    """Issue 17's goals for the default model (the first preset's rows), each with what was
    measured (means over seeds) and whether it is met; then earlier issues' goals."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool) -> None:
        out.append({"goal": goal, "measured": measured, "met": bool(met)})

    ours = {size: _r(ranking, "new_user", MELU, size) for size in MARGIN_SIZES}
    if all(v is not None for v in ours.values()):
        parts, met = [], True
        for size, value in ours.items():
            assert value is not None
            anchor, best = _best_anchor(ranking, "new_user", size)
            better = _seeds_better(runs, "new_user", size, anchor)
            parts.append(
                f"S={size} {value:.3f} vs {anchor} {best:.3f} ({value - best:+.3f}; better in "
                f"{better}/{len(_default_runs(runs))} seeds)"
            )
            met &= value - best >= ANCHOR_MARGIN and better == len(_default_runs(runs))
        add(
            f"new users: Recall@10 above the best tuned anchor by >= {ANCHOR_MARGIN} at every "
            "S in {3, 5, 10, 20}",
            "; ".join(parts),
            met,
        )
        r10, r20 = ours[10], ours[20]
        assert r10 is not None and r20 is not None
        add(
            "new users: Recall@10 rising from 10 to 20 ratings",
            f"{r10:.3f} -> {r20:.3f}",
            r20 > r10,
        )
    gains = []
    for size in STEPS_SIZES:
        a, z = _r(ranking, "new_user", MELU, size), _r(ranking, "new_user", ZERO_STEPS, size)
        if a is not None and z is not None:
            gains.append((size, a - z))
    if gains:
        verdicts = (
            steps[
                (steps["comparison"].str.startswith("adapted - zero"))
                & (steps["scenario"] == "new_user")
            ].set_index("support_size")["verdict"]
            if len(steps)
            else pd.Series(dtype=str)
        )
        add(
            f"new users: adapted minus zero local steps >= +{STEPS_GAIN} at S = 10 and 20",
            "; ".join(
                f"S={size} {g:+.4f} ({verdicts.get(size, '-')} over seeds)" for size, g in gains
            ),
            all(g >= STEPS_GAIN for _, g in gains),
        )
    share = genre[genre["method"] == MELU]["share"].mean() if len(genre) else float("nan")
    if not np.isnan(share):
        add(f"loved-genre share >= {GENRE_GOAL}", f"{share:.2f}", share >= GENRE_GOAL)
    if len(predictions):
        sel = predictions[
            (predictions["method"] == MELU) & predictions["support_size"].isin(PAIRS_SIZES)
        ]
        parts, met = [], True
        for scenario in SCENARIO_KEYS:
            for _, r in sel[sel["scenario"] == scenario].iterrows():
                pairs, ordered = int(r["pairs"]), float(r["pairs_ordered"])
                if pairs:
                    parts.append(f"{scenario} S={int(r['support_size'])} {ordered:.3f} ({pairs})")
                    met = met and ordered >= PAIRS_GOAL
        add(
            f"adapted predicted ratings put 5-star support items above 1-star ones in >= "
            f"{PAIRS_GOAL:.0%} of pairs (S = 5, 10, 20; pairs pooled over seeds)",
            "; ".join(parts),
            met and bool(parts),
        )
    mae = _get(agg, "new_user", MELU, "mae")
    reg = _get(agg, "new_user", "regression_finetuned", "mae")
    if mae is not None and reg is not None:
        sig = significance(runs)
        hit = sig[
            (sig["scenario"] == "new_user")
            & (sig["baseline"] == "regression_finetuned")
            & (sig["metric"] == "mae")
        ]
        n = len({r["seed"] for r in runs if r["preset"] == runs[0]["preset"]})
        better = int(hit["sig_better"].iloc[0]) if len(hit) else 0
        add(
            f"new users, MeLU's protocol: MAE <= {MAE_GOAL} and better than the tuned "
            "regression_finetuned (paired interval below 0 in every seed)",
            f"{mae['mean']:.4f} vs {reg['mean']:.4f} (better in {better}/{n} seeds)",
            float(mae["mean"]) <= MAE_GOAL and better == n,
        )
    if len(predictions):
        sel = predictions[(predictions["method"] == MELU) & (predictions["scenario"] == "new_user")]
        add(
            f"new users: predicted ratings calibrated at every S (calibration error over "
            f"half-star bins <= {CALIBRATION_GOAL}; the issue gives no number)",
            "; ".join(
                f"S={r.support_size} {r.calibration_error:.3f} (MAE {r.mae:.3f})"
                for r in sel.itertuples()
            ),
            bool(len(sel)) and bool((sel["calibration_error"] <= CALIBRATION_GOAL).all()),
        )
        sel = predictions[predictions["method"] == MELU]
        add(
            "the top 10 is predicted at or above the user's own mean (every S, every seed)",
            f"lowest share {sel['top_above_mean_min'].min():.3f}",
            bool(len(sel)) and float(sel["top_above_mean_min"].min()) >= 1.0,
        )
    losses = []
    for size in MARGIN_SIZES:
        a, d = _r(ranking, "new_user", MELU, size), _r(ranking, "new_user", NO_DEMOGRAPHICS, size)
        if a is not None and d is not None:
            losses.append((size, a - d))
    if losses:
        add(
            f"new users: a request without demographics loses <= {DEMOGRAPHICS_LOSS} Recall@10 "
            "at every S",
            "; ".join(f"S={size} {loss:+.4f}" for size, loss in losses),
            all(loss <= DEMOGRAPHICS_LOSS for _, loss in losses),
        )
    seconds = {
        preset: [
            float(r["report"]["info"]["catalogue"]["seconds"])
            for r in runs
            if r["preset"] == preset and r["report"]["info"].get("catalogue")
        ]
        for preset in dict.fromkeys(r["preset"] for r in runs)
    }
    every = [s for values in seconds.values() for s in values]
    if every:
        add(
            f"catalogue evaluation < {CATALOGUE_SECONDS / 60:.0f} minutes "
            "(`info.catalogue.seconds`, every run of every model)",
            "; ".join(
                f"{preset} {min(v):.0f}-{max(v):.0f} s" for preset, v in seconds.items() if v
            ),
            max(every) < CATALOGUE_SECONDS,
        )
    # Earlier issues' goals.
    for scenario in ("new_item", "new_user_new_item"):
        value, knn = _r(ranking, scenario, MELU, 5), _r(ranking, scenario, "content_knn", 5)
        if value is not None and knn:
            add(
                f"{scenario} shelf, 5 ratings: Recall@10 >= {SHELF_GOAL}x content kNN (issue 10)",
                f"{value:.3f} vs {knn:.3f} ({value / knn:.2f}x)",
                value >= SHELF_GOAL * knn,
            )
    cov = lists[
        (lists["method"] == MELU) & (lists["scenario"] == "new_user") & (lists["support_size"] == 5)
    ]
    if len(cov):
        c, pct = float(cov["coverage"].mean()), float(cov["popularity_percentile"].mean())
        add(
            f"coverage of new users' top 10 (5 ratings) >= {COVERAGE_GOAL} (issue 10)",
            f"{c:.3f} (mean popularity percentile {pct:.1f})",
            c >= COVERAGE_GOAL,
        )
    return out


def csv_goals(
    agg: pd.DataFrame, ranking: pd.DataFrame, verdicts: pd.DataFrame
) -> list[dict[str, Any]]:
    """Issue 21's goals on a CSV release: new users' Recall@10 above every tuned anchor at
    S = 10 and 20 (means over seeds; the paired verdict over seeds beside each), and MeLU's
    protocol MAE below the bias baseline overall and in every support-size bucket."""
    out: list[dict[str, Any]] = []
    parts, met = [], True
    for size in CSV_ABOVE_SIZES:
        value = _r(ranking, "new_user", MELU, size)
        if value is None:
            continue
        anchor, best = _best_anchor(ranking, "new_user", size)
        hit = verdicts[
            (verdicts["model"] == MELU)
            & (verdicts["scenario"] == "new_user")
            & (verdicts["support_size"] == size)
            & (verdicts["baseline"] == anchor)
            & (verdicts["metric"] == "recall@10")
        ]
        verdict = hit["verdict"].iloc[0] if len(hit) else "-"
        parts.append(
            f"S={size} {value:.3f} vs {anchor} {best:.3f} ({value - best:+.3f}, {verdict})"
        )
        met &= value > best
    if parts:
        out.append(
            {
                "goal": "issue 21, new users: Recall@10 above every tuned anchor at S = 10 and 20",
                "measured": "; ".join(parts),
                "met": bool(met),
            }
        )
    sel = agg[(agg["scenario"] == "new_user") & (agg["metric"] == "mae")]
    ours = sel[sel["method"] == MELU].set_index("support")["mean"]
    bias = sel[sel["method"] == BIAS_BASELINE].set_index("support")["mean"]
    both = [k for k in ours.index if k in bias.index and pd.notna(ours[k]) and pd.notna(bias[k])]
    if both:
        out.append(
            {
                "goal": f"issue 21, new users, MeLU's protocol: MAE below the bias baseline "
                f"({BIAS_BASELINE}) overall and in every support-size bucket",
                "measured": "; ".join(f"{k} {ours[k]:.4f} vs {bias[k]:.4f}" for k in both),
                "met": bool(all(ours[k] < bias[k] for k in both)),
            }
        )
    return out


def significance(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """MeLU's protocol, per scenario, baseline and metric: in how many seeds MeLU is
    significantly better or worse (paired bootstrap interval of the difference excludes 0)."""
    frames = [
        Report.from_dict(r["report"]).comparisons_frame().assign(preset=r["preset"]) for r in runs
    ]
    comp = pd.concat(frames, ignore_index=True)
    comp = comp[comp["preset"] == runs[0]["preset"]]
    comp["sig_better"] = comp["significant"].fillna(False).astype(bool) & comp["melu_better"]
    comp["sig_worse"] = comp["significant"].fillna(False).astype(bool) & ~comp["melu_better"]
    return (
        comp.groupby(["scenario", "baseline", "metric"], sort=False)[["sig_better", "sig_worse"]]
        .sum()
        .reset_index()
    )


def _catalogue_markdown(
    result: dict[str, Any],
    ranking: pd.DataFrame,
    lists: pd.DataFrame,
    genre: pd.DataFrame,
    verdicts: pd.DataFrame,
) -> list[str]:
    out: list[str] = []
    scenarios = list(dict.fromkeys(zip(ranking["scenario"], ranking["protocol"], strict=True)))
    models = [m for m in dict.fromkeys(ranking["method"]) if m.startswith(MELU)]
    for scenario, protocol in scenarios:
        sel = ranking[ranking["scenario"] == scenario]
        sizes = sorted(set(sel["support_size"]))
        methods = list(dict.fromkeys(sel["method"]))
        out += [f"### {scenario} ({protocol}): liked Recall@10 by ratings given", ""]
        body = []
        for method in methods:
            cells = []
            for size in sizes:
                hit = sel[
                    (sel["method"] == method)
                    & (sel["support_size"] == size)
                    & (sel["metric"] == "recall@10")
                    & (sel["relevance"] == "liked")
                ]
                cells.append("-" if hit.empty else _ms(hit.iloc[0], digits=3))
            name = f"**{method}**" if method.startswith(MELU) else method
            body.append([name, *cells])
        out += _table(["method", *(f"S={s}" for s in sizes)], body)
        out += [
            "",
            f"{scenario}, 5 ratings, every metric (liked; mean over seeds) and the "
            "lists (coverage of the catalogue, mean popularity percentile):",
            "",
        ]
        body = []
        metrics = ["recall@10", "recall@20", "ndcg@10", "hitrate@10", "mrr"]
        for method in methods:
            cells = [
                f"{v:.3f}" if (v := _r(ranking, scenario, method, 5, m)) is not None else "-"
                for m in metrics
            ]
            lst = lists[
                (lists["scenario"] == scenario)
                & (lists["method"] == method)
                & (lists["support_size"] == 5)
            ]
            extra = ["-", "-", ""]
            if len(lst):
                extra = [
                    f"{lst['coverage'].mean():.3f}",
                    f"{lst['popularity_percentile'].mean():.1f}",
                    ", ".join(sorted(set(lst["setting"]) - {""})),
                ]
            body.append([method, *cells, *extra])
        out += _table(["method", *metrics, "coverage", "pop. pct", "setting (per seed)"], body)
        out.append("")
        for model in models:
            v = verdicts[
                (verdicts["model"] == model)
                & (verdicts["scenario"] == scenario)
                & (verdicts["metric"] == "recall@10")
            ]
            if v.empty:
                continue
            out += [
                f"{model} against each baseline (liked Recall@10; better/worse in every seed, "
                "else tied):",
                "",
            ]
            body = []
            for baseline in dict.fromkeys(v["baseline"]):
                cells = []
                for size in sizes:
                    hit = v[(v["baseline"] == baseline) & (v["support_size"] == size)]
                    cells.append(
                        "-"
                        if hit.empty
                        else f"{hit['verdict'].iloc[0]} ({hit['diff'].iloc[0]:+.3f})"
                    )
                body.append([baseline, *cells])
            out += _table(["baseline", *(f"S={s}" for s in sizes)], body)
            out.append("")
    if len(genre):
        out += [
            "### Loved-genre test",
            "",
            "Five most-rated movies of a genre rated the scale's top value, three of the least "
            "similar genre its bottom value (no movie of both), no demographics; share of the "
            "top 10 (the model's floor kept) in the loved genre, mean over "
            "the 10 genres and the seeds (baselines with their settings for S=10).",
            "",
        ]
        means = genre.groupby("method", sort=False)["share"].mean()
        out += _table(
            ["method", "loved-genre share"], [[str(m), f"{v:.2f}"] for m, v in means.items()]
        )
        out.append("")
    return out


def _steps_markdown(steps: pd.DataFrame) -> list[str]:
    if steps.empty:
        return []
    out = [
        "## What the local steps and the fold-in add (ablations, liked Recall@10)",
        "",
        "The default model adapted, minus (a) the same checkpoint with zero local steps (its "
        "fast weights at the meta-learned start) and (b) the same architecture meta-trained "
        "without local steps (`default-no-steps`), on the same users and supports; mean over "
        "seeds, and *better*/*worse* only where the paired 95% interval excludes 0 in every "
        "seed (else *tied*). Removing the steps from a model trained with them favours the "
        "steps; (b) is the fair test. Where the checkpoint blends EDLAE's fold-in into its "
        "lists, (c) is its list without the blend (the same adapted users)."
        + (
            " Rows prefixed `default-user-step:` are the same for the model whose step adapts "
            "the user vector only, with its lists against the default's."
            if steps["comparison"].str.startswith(USER_STEP).any()
            else ""
        ),
        "",
    ]
    sizes = sorted(set(steps["support_size"]))
    body = []
    for (comparison, scenario), part in steps.groupby(["comparison", "scenario"], sort=False):
        by = part.set_index("support_size")
        cells = [
            "-"
            if size not in by.index
            else f"{by.loc[size, 'diff']:+.4f} {by.loc[size, 'verdict']} "
            f"({int(by.loc[size, 'better'])}/{int(by.loc[size, 'seeds'])} better)"
            for size in sizes
        ]
        body.append([str(comparison), str(scenario), *cells])
    out += _table(["comparison", "scenario", *(f"S={s}" for s in sizes)], body)
    out.append("")
    return out


def _predictions_markdown(predictions: pd.DataFrame) -> list[str]:
    if predictions.empty:
        return []
    out = [
        "## Predicted ratings by number of ratings given",
        "",
        "The catalogue protocol's users given S ratings, and the model's predicted rating of "
        "each of their held-out films (items with training ratings). Each cell: MAE (per user) "
        "/ calibration error (predictions binned to half stars, |mean predicted - mean actual| "
        "per bin weighted by its share) / share of the support's (5-star, 1-star) pairs "
        "predicted in that order after adapting (pairs pooled over seeds). Means over seeds; "
        "the mean predicted and actual ratings and the top 10's share at or above the user's "
        "own mean are in `results/quality.json` (`predictions`). The trained-without-steps "
        "model's zero-step column is its adapted one.",
        "",
    ]
    shown = predictions[
        ~(
            predictions["method"].str.startswith(ZERO_STEPS)
            & predictions["method"].str.contains(NO_STEPS)
        )
    ]
    methods = list(dict.fromkeys(shown["method"]))
    for scenario in dict.fromkeys(shown["scenario"]):
        sel = shown[shown["scenario"] == scenario].set_index(["support_size", "method"])
        sizes = sorted({size for size, _ in sel.index})
        body = []
        for size in sizes:
            cells = []
            for method in methods:
                if (size, method) not in sel.index:
                    cells.append("-")
                    continue
                r = sel.loc[(size, method)]
                pairs = "-" if pd.isna(r["pairs_ordered"]) else f"{r['pairs_ordered']:.3f}"
                cells.append(f"{r['mae']:.3f} / {r['calibration_error']:.3f} / {pairs}")
            users = round(float(sel.loc[(size, methods[0]), "users"]))
            body.append([f"{size} ({users})", *cells])
        out += [f"### {scenario}: MAE / calibration error / 5 over 1", ""]
        out += _table(["S (users)", *methods], body)
        out.append("")
    return out


def markdown(
    result: dict[str, Any],
    agg: pd.DataFrame,
    ranking: pd.DataFrame,
    lists: pd.DataFrame,
    genre: pd.DataFrame,
    verdicts: pd.DataFrame,
    predictions: pd.DataFrame,
    steps: pd.DataFrame,
    notes: str,
) -> str:
    runs = result["runs"]
    seeds = sorted({r["seed"] for r in runs})
    scenarios = list(dict.fromkeys(agg["scenario"]))
    methods = list(dict.fromkeys(agg["method"]))
    m = result["machine"]
    out = [
        "# Quality"
        + ("" if result.get("dataset", "melu") == "melu" else f" on {result['dataset']}")
        + ": both protocols, the model against the recommenders people already use",
        "",
        "Generated by `benchmarks/quality.py`; do not edit above the notes marker.",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; wall time of this invocation {result['seconds'] / 60:.1f} "
        "min (runs it reused keep their own seconds, in the table of runs); commit "
        f"{result['git']['commit']}"
        + (" with local changes under melu/" if result["git"]["melu_modified"] else ""),
        f"- machine: {m['cpu']}, {m['cores']} cores, torch threads: {m['torch_threads']}, "
        f"GPU: {m['cuda'] or 'none'}; {m['platform']}; Python {m['python']}, torch {m['torch']}",
        f"- runs: presets {result['presets']}, seeds {seeds}, `melu train --seed S --preset P` "
        f"(at most {result['epochs']} epochs, early stopping patience {TrainConfig().patience}); "
        "the seed also picks the validation users, each user's query items and the catalogue "
        "protocol's support draws",
        *(
            [
                "- **anchors left out for want of memory** in some run (their rows are missing; "
                "a goal against every anchor counts only those fitted): "
                + ", ".join(f"`{n}`" for n in result["skipped_baselines"])
            ]
            if result.get("skipped_baselines")
            else []
        ),
        f"- evaluation: `melu.evaluation.evaluate_checkpoint`, {result['bootstrap']} bootstrap "
        "resamples; values are the mean ± sample standard deviation over seeds of each seed's "
        "mean over users. Baselines' settings are chosen per number of ratings on validation "
        "users (so their validation rows are in-sample).",
        "- the model's rows: `melu` is the default preset (the taste model) adapted on the S "
        f"ratings; `{ZERO_STEPS}` the same checkpoint with zero local steps (the meta-learned "
        f"start); `{NO_DEMOGRAPHICS}` the same adapted on the same ratings with no "
        "demographics given. `[default-no-steps]`: "
        + PRESET_NAMES[NO_STEPS]
        + " (its adapted and zero-step rows coincide); `[melu]`: MeLU's rating network (the "
        "paper's model)"
        + (
            f"; `[{USER_STEP}]`: " + PRESET_NAMES[USER_STEP] + " (`melu train --fast-weights user`)"
            if USER_STEP in result["presets"]
            else ""
        )
        + ".",
        "",
        "## Goals ("
        + (
            "issue 17; the default model)"
            if result.get("dataset", "melu") == "melu"
            else f"issue 21 on {result['dataset']}, then issue 17's; the default model)"
        ),
        "",
    ]
    for rows in result["goals"].values():
        out += _table(
            ["goal", "measured (mean over seeds)", "status"],
            [[g["goal"], g["measured"], "met" if g["met"] else "**missed**"] for g in rows],
        )
        out.append("")
    out += ["## Training runs", ""]
    out += _table(
        [
            "preset",
            "seed",
            "epochs run",
            "best epoch",
            "best validation MAE",
            "steps per support size",
            "fold-in weight per support size (EDLAE setting)",
            "train s",
            "evaluate s",
            "catalogue s",
        ],
        [
            [
                r["preset"],
                str(r["seed"]),
                str(r["epochs_run"]),
                str(r["best_epoch"]),
                f"{r['best_val_mae']:.4f}",
                r["step_schedule"],
                r.get("fold_in", "-"),
                "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
                f"{r['evaluate_seconds']:.0f}",
                f"{r['report']['info']['catalogue'].get('seconds', float('nan')):.0f}",
            ]
            for r in runs
        ],
    )
    out += [
        "",
        "## The catalogue protocol (what `/recommend` serves)",
        "",
        "S ratings drawn per user; every candidate not in the support ranked; held-out "
        "items rated >= 4 are the hits (liked). Catalogue: items with training ratings. "
        "Shelf: the new items only.",
        "",
    ]
    out += _catalogue_markdown(result, ranking, lists, genre, verdicts)
    out += _steps_markdown(steps)
    out += _predictions_markdown(predictions)
    onboard = pd.DataFrame(result["onboarding"])
    if len(onboard):
        out += [
            "## Onboarding (simulated with real histories)",
            "",
            "Each validation and new user walks down a strategy's list (`melu onboarding`), "
            "rating what is in their history and skipping the rest, until 5 ratings (or the "
            "200-item list ends); the default model adapts on those and ranks the catalogue. "
            "`random_ratings`: 5 random ratings of the same users. Mean ± std over seeds.",
            "",
        ]
        body = []
        metrics = ["items_shown", "reached_5", "recall@10", "ndcg@10"]
        agg_on = onboard.groupby(["scenario", "strategy", "metric"], sort=False)["value"].agg(
            ["mean", "std", "count"]
        )
        stats = {key: row for key, row in agg_on.iterrows()}
        for scenario, strategy in dict.fromkeys(
            zip(onboard["scenario"], onboard["strategy"], strict=True)
        ):
            cells = []
            for metric in metrics:
                row = stats.get((scenario, strategy, metric))
                cells.append("-" if row is None else _ms(row, digits=3))
            body.append([scenario, strategy, *cells])
        out += _table(["scenario", "strategy", *metrics], body)
        info = runs[0]["report"]["info"].get("onboarding", {})
        if info.get("first"):
            out += ["", "First ten of each list (seed of the first run):", ""]
            out += [f"- `{s}`: {', '.join(t)}" for s, t in info["first"].items()]
        out.append("")
    out += [
        "## MeLU's protocol (10 query items per user)",
        "",
        "MAE/RMSE of the 10 held-out ratings, nDCG of ordering those 10 already-rated "
        "items (gain 2^r - 1). It says how well ratings are predicted, not what a list "
        "shows: a random order of the 10 already scores nDCG@3 about 0.6.",
        "",
    ]
    for scenario in scenarios:
        tasks = runs[0]["report"]["info"]["scenarios"][scenario]["tasks"]
        out += [f"### {scenario} ({tasks} tasks)", ""]
        body = [
            [f"**{method}**" if method.startswith(MELU) else method]
            + [_ms(_get(agg, scenario, method, metric)) for metric in METRICS]
            for method in methods
        ]
        out += _table(["method", *METRICS], body)
        out.append("")
    out += [
        "### Paired significance, MeLU's protocol (seeds where the 95% interval of melu "
        "minus baseline excludes 0; otherwise tied)",
        "",
    ]
    sig = pd.DataFrame(result["significance"])
    shown = ["mae", "ndcg@3", "ndcg@10"]
    body = []
    for scenario in scenarios:
        for method in methods:
            if method.startswith(MELU):
                continue
            cells = []
            for metric in shown:
                hit = sig[
                    (sig["scenario"] == scenario)
                    & (sig["baseline"] == method)
                    & (sig["metric"] == metric)
                ]
                if hit.empty:
                    cells.append("-")
                else:
                    row = hit.iloc[0]
                    n = len(seeds)
                    better, worse = int(row["sig_better"]), int(row["sig_worse"])
                    word = "better" if better == n else "worse" if worse == n else "tied"
                    cells.append(f"{word} ({better}/{n} better, {worse}/{n} worse)")
            body.append([scenario, method, *cells])
    out += _table(["scenario", "baseline", *shown], body)
    out += ["", "## Methods", ""]
    out += [f"- `{k}`: {v}" for k, v in runs[0]["report"]["info"]["methods"].items()]
    out += ["", NOTES_MARKER, notes.strip("\n"), ""]
    return "\n".join(out)


# Each run's whole report stays beside its checkpoint (report.json in the run folder); the
# JSON keeps what the tables above were built from, without the per-user and per-row detail
# that made it 17 MB.
_RUN_DETAIL = ("rows", "comparisons", "ranking", "ranking_comparisons")


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    report = {k: v for k, v in run["report"].items() if k not in _RUN_DETAIL}
    info = dict(report["info"])
    info["catalogue"] = {k: v for k, v in info["catalogue"].items() if k != "per_user"}
    report["info"] = info
    return {**run, "report": report}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    revision = git_revision()  # now, while the imported code is the code on disk
    started = time.perf_counter()
    if args.train_only:
        for preset in args.presets:
            for seed in args.seeds:
                train_run(seed, preset, args)
        return 0
    runs = [run_seed(seed, preset, args) for preset in args.presets for seed in args.seeds]
    agg = aggregate(runs)
    ranking = aggregate_ranking(runs)
    lists = _frames(runs, "lists")
    genre = _frames(runs, "genre")
    verdicts = ranking_verdicts(runs)
    predictions = aggregate_predictions(runs)
    steps = ablations(runs, args.bootstrap)
    result: dict[str, Any] = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/quality.py", *(argv or sys.argv[1:])]
        ),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": revision,
        "seeds": args.seeds,
        "presets": args.presets,
        # Anchors some run left out for want of memory (melu.evaluation.anchors.MemoryBudget):
        # a goal against "every anchor" then counts only the fitted ones.
        "skipped_baselines": sorted(
            {
                name
                for r in runs
                for name in r["report"]["info"].get("catalogue", {}).get("skipped_baselines", {})
            }
        ),
        "epochs": args.epochs,
        "bootstrap": args.bootstrap,
        "configs": {
            **{
                f"{kind}[{p}]": to_dict(getattr(RUN_PRESETS[p], kind))
                for p in args.presets
                for kind in ("model", "meta")
            },
            "train": to_dict(TrainConfig(epochs=args.epochs)),
        },
        "dataset": args.dataset,
        "goals": {
            MELU: (csv_goals(agg, ranking, verdicts) if args.dataset != "melu" else [])
            + goals(runs, agg, ranking, genre, lists, predictions, steps)
            + onboarding_goal(onboarding_frame(runs))
        },
        "ablations": steps.to_dict(orient="records"),
        "predictions": predictions.replace({np.nan: None}).to_dict(orient="records"),
        "onboarding": onboarding_frame(runs).replace({np.nan: None}).to_dict(orient="records"),
        "paper_mae": PAPER_MAE,
        "significance": significance(runs).to_dict(orient="records"),
        "ranking_verdicts": verdicts.to_dict(orient="records"),
        "ranking": ranking.replace({np.nan: None}).to_dict(orient="records"),
        "aggregate": agg[agg["support"] == ALL_SUPPORT]
        .replace({np.nan: None})
        .to_dict(orient="records"),
        "runs": [_summary(run) for run in runs],
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    ckpt.atomic_write_text(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")
    log.info("wrote %s", args.json)
    notes = ""
    if args.markdown.is_file():
        text = args.markdown.read_text(encoding="utf-8")
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    ckpt.atomic_write_text(
        args.markdown,
        markdown(result, agg, ranking, lists, genre, verdicts, predictions, steps, notes),
    )
    log.info("wrote %s", args.markdown)
    for model, rows in result["goals"].items():
        for g in rows:
            log.info(
                "%s: %s: %s (%s)", model, g["goal"], g["measured"], "met" if g["met"] else "missed"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
