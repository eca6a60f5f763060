"""Quality benchmark: meta-train with several seeds, evaluate each under both protocols
against the baselines, and write ``results/quality.json`` and ``docs/results.md``.

Each seed runs what ``melu train --seed S --preset P`` runs (the seed also draws the validation
users and each user's query items), then ``melu.evaluation.evaluate_checkpoint``: the catalogue
protocol (the list a new user gets from 3, 5, 10, 20 ratings, against popularity, EASE, EDLAE,
GF-CF, RP3beta, iALS, item kNN, Mult-DAE, ... tuned on validation users), and MeLU's protocol on
the four scenarios. The
Markdown puts the mean and spread over seeds beside the goals; "better" and "worse" need the
paired interval to exclude 0 in every seed, anything else is "tied".

Full run (about 15 minutes a preset on 2 idle CPU cores)::

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/data/movielens --threads 1

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu import checkpoint as ckpt
from melu.config import PRESETS, DataConfig, MetaConfig, TrainConfig, to_dict
from melu.data import prepare
from melu.evaluation import ALL_SUPPORT, MELU, METRICS, Report, evaluate_checkpoint
from melu.train import CHECKPOINT_NAME, resolve_device, train

log = logging.getLogger("quality")

REPO = Path(__file__).resolve().parent.parent
NOTES_MARKER = "<!-- notes -->"
# MeLU's protocol: query MAE of the rating model before the catalogue work (3-seed means of
# the default preset, docs/results.md of 2026-11-27); the goal is to stay within +0.005.
MAE_BEFORE: dict[str, float] = {
    "validation": 0.747,
    "new_user": 0.741,
    "new_item": 0.906,
    "new_user_new_item": 0.903,
}
MAE_SLACK = 0.005
# The catalogue goals (issue 10's "goals the next issue is measured against").
RECALL_GOAL = 0.36
GENRE_GOAL = 0.70
SHELF_GOAL = 1.3
COVERAGE_GOAL = 0.15
# MeLU's paper (KDD 2019, MovieLens), query MAE.
PAPER_MAE = {"new_user": 0.785, "new_item": 0.928, "new_user_new_item": 0.924}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "movielens")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--presets",
        nargs="+",
        choices=sorted(PRESETS),
        default=["default", "melu"],
        help="model presets to train and compare; the first one's baselines are reported",
    )
    p.add_argument("--max-users", type=int, help="evaluate a subset of users (quick runs)")
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", type=Path, default=Path(tempfile.gettempdir()) / "melu-quality")
    p.add_argument("--reuse", action="store_true", help="evaluate finished runs, do not retrain")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 is far faster on a CPU shared with "
        "other jobs, where OpenMP threads wait on each other",
    )
    p.add_argument("--json", type=Path, default=REPO / "results" / "quality.json")
    p.add_argument("--markdown", type=Path, default=REPO / "docs" / "results.md")
    return p.parse_args(argv)


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


def finished(path: Path, epochs: int) -> bool:
    """A run that reached its last epoch or stopped early under the same epoch budget."""
    if not path.is_file():
        return False
    ck = ckpt.load(path)
    return ck.train.epochs == epochs and int(ck.resume.get("epoch", 0)) >= epochs


def run_seed(seed: int, preset: str, args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    data_cfg = DataConfig(seed=seed)  # as `melu train --seed`: the data seed follows
    train_cfg = TrainConfig(seed=seed, epochs=args.epochs, device=str(device))
    data = prepare(args.data_dir, data_cfg)
    run_dir = args.runs_dir / f"{preset}-seed{seed}"
    path = run_dir / CHECKPOINT_NAME
    train_seconds: float | None = None
    if args.reuse and finished(path, args.epochs):
        log.info("%s seed %d: reusing %s", preset, seed, path)
    else:
        log.info("%s seed %d: meta-training into %s", preset, seed, run_dir)
        started = time.perf_counter()
        train(data, run_dir, PRESETS[preset], MetaConfig(), train_cfg, progress=False)
        train_seconds = round(time.perf_counter() - started, 1)
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
    history = ck.metrics.get("history", [])
    return {
        "seed": seed,
        "preset": preset,
        "run_dir": str(run_dir),
        "train_seconds": train_seconds,
        "evaluate_seconds": round(time.perf_counter() - started, 1),
        "epochs_run": len(history),
        "best_epoch": ck.metrics.get("best_epoch"),
        "best_val_mae": ck.metrics.get("best_val_mae"),
        "stopped_early": ck.metrics.get("stopped_early"),
        "report": report.to_dict(),
    }


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
    out["verdict"] = np.where(
        out["better"] == out["seeds"],
        "better",
        np.where(out["worse"] == out["seeds"], "worse", "tied"),
    )
    return out


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


def goals(
    model: str,
    agg: pd.DataFrame,
    ranking: pd.DataFrame,
    genre: pd.DataFrame,
    lists: pd.DataFrame,
    verdicts: pd.DataFrame,
) -> list[dict[str, Any]]:
    """Each goal for ``model``'s rows: what was measured, whether it is met."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool) -> None:
        out.append({"goal": goal, "measured": measured, "met": bool(met)})

    baselines = [
        m for m in dict.fromkeys(ranking["method"]) if not m.startswith(MELU) and m != "random"
    ]
    r5 = _r(ranking, "new_user", model, 5)
    best5 = max(((b, _r(ranking, "new_user", b, 5) or 0.0) for b in baselines), key=lambda t: t[1])
    if r5 is not None:
        beaten = verdicts[
            (verdicts["model"] == model)
            & (verdicts["scenario"] == "new_user")
            & (verdicts["support_size"] == 5)
            & (verdicts["metric"] == "recall@10")
        ]
        better_all = bool(len(beaten)) and bool((beaten["verdict"] == "better").all())
        add(
            f"new users, 5 ratings: Recall@10 >= {RECALL_GOAL}, better than every tuned baseline",
            f"{r5:.3f}; best baseline {best5[0]} {best5[1]:.3f}; better than all: {better_all}",
            r5 >= RECALL_GOAL and better_all,
        )
        r3, pop3 = _r(ranking, "new_user", model, 3), _r(ranking, "new_user", "popularity", 3)
        if r3 is not None and pop3 is not None:
            add("new users, 3 ratings: above popularity", f"{r3:.3f} vs {pop3:.3f}", r3 > pop3)
        r10, r20 = _r(ranking, "new_user", model, 10), _r(ranking, "new_user", model, 20)
        if r10 is not None and r20 is not None:
            add(
                "rising from 5 to 10 to 20 ratings",
                f"{r5:.3f} -> {r10:.3f} -> {r20:.3f}",
                r5 < r10 < r20,
            )
            ease20 = _r(ranking, "new_user", "ease", 20)
            if ease20 is not None:
                add("20 ratings: above the tuned EASE", f"{r20:.3f} vs {ease20:.3f}", r20 > ease20)
    share = genre[genre["method"] == model]["share"].mean() if len(genre) else float("nan")
    if not np.isnan(share):
        add(f"loved-genre share >= {GENRE_GOAL}", f"{share:.2f}", share >= GENRE_GOAL)
    for scenario in ("new_item", "new_user_new_item"):
        ours, knn = _r(ranking, scenario, model, 5), _r(ranking, scenario, "content_knn", 5)
        if ours is not None and knn:
            add(
                f"{scenario} shelf, 5 ratings: Recall@10 >= {SHELF_GOAL}x content kNN",
                f"{ours:.3f} vs {knn:.3f} ({ours / knn:.2f}x)",
                ours >= SHELF_GOAL * knn,
            )
    cov = lists[
        (lists["method"] == model)
        & (lists["scenario"] == "new_user")
        & (lists["support_size"] == 5)
    ]
    if len(cov):
        c, pct = float(cov["coverage"].mean()), float(cov["popularity_percentile"].mean())
        add(
            f"coverage of new users' top 10 (5 ratings) >= {COVERAGE_GOAL}",
            f"{c:.3f} (mean popularity percentile {pct:.1f})",
            c >= COVERAGE_GOAL,
        )
    for scenario, before in MAE_BEFORE.items():
        row = _get(agg, scenario, model, "mae")
        if row is not None:
            limit = before + MAE_SLACK
            add(
                f"{scenario} MAE <= {limit:.3f} (before: {before})",
                f"{row['mean']:.4f}",
                float(row["mean"]) <= limit,
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
            "Five most-rated movies of a genre rated 5, three of the least similar genre "
            "rated 1 (no movie of both); share of the top 10 in the loved genre, mean over "
            "the 10 genres and the seeds (baselines with their settings for S=10).",
            "",
        ]
        means = genre.groupby("method", sort=False)["share"].mean()
        out += _table(
            ["method", "loved-genre share"], [[str(m), f"{v:.2f}"] for m, v in means.items()]
        )
        out.append("")
    return out


def markdown(
    result: dict[str, Any],
    agg: pd.DataFrame,
    ranking: pd.DataFrame,
    lists: pd.DataFrame,
    genre: pd.DataFrame,
    verdicts: pd.DataFrame,
    notes: str,
) -> str:
    runs = result["runs"]
    seeds = sorted({r["seed"] for r in runs})
    scenarios = list(dict.fromkeys(agg["scenario"]))
    methods = list(dict.fromkeys(agg["method"]))
    m = result["machine"]
    out = [
        "# Quality: both protocols, the model against the recommenders people already use",
        "",
        "Generated by `benchmarks/quality.py`; do not edit above the notes marker.",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; wall time {result['seconds'] / 60:.1f} min; commit "
        f"{result['git']['commit']}"
        + (" with local changes under melu/" if result["git"]["melu_modified"] else ""),
        f"- machine: {m['cpu']}, {m['cores']} cores, torch threads: {m['torch_threads']}, "
        f"GPU: {m['cuda'] or 'none'}; {m['platform']}; Python {m['python']}, torch {m['torch']}",
        f"- runs: presets {result['presets']}, seeds {seeds}, `melu train --seed S --preset P` "
        f"(at most {result['epochs']} epochs, early stopping patience {TrainConfig().patience}); "
        "the seed also picks the validation users, each user's query items and the catalogue "
        "protocol's support draws",
        f"- evaluation: `melu.evaluation.evaluate_checkpoint`, {result['bootstrap']} bootstrap "
        "resamples; values are the mean ± sample standard deviation over seeds of each seed's "
        "mean over users. Baselines' settings are chosen per number of ratings on validation "
        "users (so their validation rows are in-sample); the model's rows are "
        "`melu` (first preset) and `melu[PRESET]`.",
        "",
        "## Goals",
        "",
    ]
    for model, rows in result["goals"].items():
        out += [f"### {model}", ""]
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
            "train s",
            "evaluate s",
        ],
        [
            [
                r["preset"],
                str(r["seed"]),
                str(r["epochs_run"]),
                str(r["best_epoch"]),
                f"{r['best_val_mae']:.4f}",
                "reused" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
                f"{r['evaluate_seconds']:.0f}",
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    revision = git_revision()  # now, while the imported code is the code on disk
    started = time.perf_counter()
    runs = [run_seed(seed, preset, args) for preset in args.presets for seed in args.seeds]
    agg = aggregate(runs)
    ranking = aggregate_ranking(runs)
    lists = _frames(runs, "lists")
    genre = _frames(runs, "genre")
    verdicts = ranking_verdicts(runs)
    first = args.presets[0]
    models = [_rename(MELU, p, first) for p in args.presets]
    result: dict[str, Any] = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/quality.py", *(argv or sys.argv[1:])]
        ),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": revision,
        "seeds": args.seeds,
        "presets": args.presets,
        "epochs": args.epochs,
        "bootstrap": args.bootstrap,
        "configs": {
            **{f"model[{p}]": to_dict(PRESETS[p]) for p in args.presets},
            "meta": to_dict(MetaConfig()),
            "train": to_dict(TrainConfig(epochs=args.epochs)),
        },
        "goals": {
            model: goals(model, agg, ranking, genre, lists, verdicts)
            + (onboarding_goal(onboarding_frame(runs)) if model == MELU else [])
            for model in models
        },
        "onboarding": onboarding_frame(runs).replace({np.nan: None}).to_dict(orient="records"),
        "paper_mae": PAPER_MAE,
        "significance": significance(runs).to_dict(orient="records"),
        "ranking_verdicts": verdicts.to_dict(orient="records"),
        "ranking": ranking.replace({np.nan: None}).to_dict(orient="records"),
        "aggregate": agg[agg["support"] == ALL_SUPPORT]
        .replace({np.nan: None})
        .to_dict(orient="records"),
        "runs": runs,
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
        args.markdown, markdown(result, agg, ranking, lists, genre, verdicts, notes)
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
