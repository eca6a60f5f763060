"""Quality benchmark: meta-train with several seeds, evaluate each against the baselines, and
write ``results/quality.json`` and ``docs/results.md``.

Each seed runs what ``melu train --seed S`` runs (the default preset and configs; the seed also
draws the validation users and each user's query items), then ``melu.evaluate`` on the four
cold-start scenarios. The Markdown puts the mean and spread over seeds beside the targets.

Full run (about 15 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/data/movielens

Quick check that everything runs (a minute; writes to /tmp)::

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
from melu.evaluate import ALL_SUPPORT, LOWER_IS_BETTER, MELU, METRICS, Report, evaluate_checkpoint
from melu.train import CHECKPOINT_NAME, resolve_device, train

log = logging.getLogger("quality")

REPO = Path(__file__).resolve().parent.parent
NOTES_MARKER = "<!-- notes -->"
# Targets: the MeLU protocol on MeLU's release, mean over three seeds.
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("validation", "mae"): ("<=", 0.72),
    ("new_user", "mae"): ("<=", 0.72),
    ("new_item", "mae"): ("<=", 0.86),
    ("new_user_new_item", "mae"): ("<=", 0.86),
    ("validation", "ndcg@3"): (">=", 0.80),
    ("new_user", "ndcg@3"): (">=", 0.80),
    ("new_item", "ndcg@3"): (">=", 0.70),
    ("new_user_new_item", "ndcg@3"): (">=", 0.70),
}
# MeLU's paper (KDD 2019, MovieLens), query MAE.
PAPER_MAE = {"new_user": 0.785, "new_item": 0.928, "new_user_new_item": 0.924}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "movielens")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    data_cfg = DataConfig(seed=seed)  # as `melu train --seed`: the data seed follows
    train_cfg = TrainConfig(seed=seed, epochs=args.epochs, device=str(device))
    data = prepare(args.data_dir, data_cfg)
    run_dir = args.runs_dir / f"seed{seed}"
    path = run_dir / CHECKPOINT_NAME
    train_seconds: float | None = None
    if args.reuse and finished(path, args.epochs):
        log.info("seed %d: reusing %s", seed, path)
    else:
        log.info("seed %d: meta-training into %s", seed, run_dir)
        started = time.perf_counter()
        train(data, run_dir, PRESETS["default"], MetaConfig(), train_cfg, progress=False)
        train_seconds = round(time.perf_counter() - started, 1)
    ck = ckpt.load(path)
    report = evaluate_checkpoint(
        path, args.data_dir, data=data, bootstrap=args.bootstrap, seed=seed, device=device
    )
    for line in report.text_table().splitlines():
        log.info("seed %d %s", seed, line)
    history = ck.metrics.get("history", [])
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "train_seconds": train_seconds,
        "epochs_run": len(history),
        "best_epoch": ck.metrics.get("best_epoch"),
        "best_val_mae": ck.metrics.get("best_val_mae"),
        "stopped_early": ck.metrics.get("stopped_early"),
        "report": report.to_dict(),
    }


def aggregate(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean, sample std, min and max over seeds of every (scenario, method, support, metric)."""
    frames = []
    for run in runs:
        frame = Report.from_dict(run["report"]).to_frame()
        frames.append(frame.assign(seed=run["seed"]))
    rows = pd.concat(frames, ignore_index=True)
    keys = ["scenario", "method", "support", "metric"]
    grouped = rows.groupby(keys, sort=False)["value"]
    out = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    return out


def _get(agg: pd.DataFrame, scenario: str, method: str, metric: str) -> pd.Series | None:
    hit = agg[
        (agg["scenario"] == scenario)
        & (agg["method"] == method)
        & (agg["metric"] == metric)
        & (agg["support"] == ALL_SUPPORT)
    ]
    return None if hit.empty or pd.isna(hit["mean"].iloc[0]) else hit.iloc[0]


def _ms(row: pd.Series | None, spread: bool = True) -> str:
    if row is None:
        return "-"
    if not spread or row["count"] < 2:
        return f"{row['mean']:.4f}"
    return f"{row['mean']:.4f} ± {row['std']:.4f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def target_rows(agg: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for (scenario, metric), (op, target) in TARGETS.items():
        row = _get(agg, scenario, MELU, metric)
        mean = None if row is None else float(row["mean"])
        met = mean is not None and (mean <= target if op == "<=" else mean >= target)
        # The best other method gives the target context: is it reachable on these tasks?
        others = agg[
            (agg["scenario"] == scenario)
            & (agg["metric"] == metric)
            & (agg["support"] == ALL_SUPPORT)
            & (agg["method"] != MELU)
        ].dropna(subset=["mean"])
        best = (others.nsmallest if op == "<=" else others.nlargest)(1, "mean")
        out.append(
            {
                "scenario": scenario,
                "metric": metric,
                "target": f"{op} {target}",
                "melu_mean": mean,
                "melu_std": None if row is None else float(row["std"]),
                "met": met,
                "best_baseline": None if best.empty else str(best["method"].iloc[0]),
                "best_baseline_mean": None if best.empty else float(best["mean"].iloc[0]),
            }
        )
    return out


def beaten_by(agg: pd.DataFrame, scenarios: list[str]) -> list[dict[str, Any]]:
    """Baselines whose mean over seeds is at least as good as MeLU's, per scenario and metric."""
    out = []
    methods = [m for m in agg["method"].unique().tolist() if m != MELU]
    for scenario in scenarios:
        for metric in METRICS:
            ours = _get(agg, scenario, MELU, metric)
            if ours is None:
                continue
            for method in methods:
                theirs = _get(agg, scenario, method, metric)
                if theirs is None:
                    continue
                diff = float(ours["mean"] - theirs["mean"])
                worse = diff >= 0 if metric in LOWER_IS_BETTER else diff <= 0
                if worse:
                    out.append(
                        {
                            "scenario": scenario,
                            "metric": metric,
                            "baseline": method,
                            "melu": float(ours["mean"]),
                            "baseline_value": float(theirs["mean"]),
                        }
                    )
    return out


def significance(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Per scenario, baseline and metric: in how many seeds MeLU is significantly better or
    worse (paired bootstrap interval of the difference excludes 0)."""
    frames = [Report.from_dict(r["report"]).comparisons_frame() for r in runs]
    comp = pd.concat(frames, ignore_index=True)
    comp["sig_better"] = comp["significant"].fillna(False).astype(bool) & comp["melu_better"]
    comp["sig_worse"] = comp["significant"].fillna(False).astype(bool) & ~comp["melu_better"]
    return (
        comp.groupby(["scenario", "baseline", "metric"], sort=False)[["sig_better", "sig_worse"]]
        .sum()
        .reset_index()
    )


def markdown(result: dict[str, Any], agg: pd.DataFrame, notes: str) -> str:
    runs = result["runs"]
    seeds = [r["seed"] for r in runs]
    scenarios = list(dict.fromkeys(agg["scenario"]))
    methods = list(dict.fromkeys(agg["method"]))
    m = result["machine"]
    out = [
        "# Quality: MeLU against the cold-start targets and baselines",
        "",
        "Generated by `benchmarks/quality.py`; do not edit above the notes marker.",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; wall time {result['seconds'] / 60:.1f} min; commit "
        f"{result['git']['commit']}"
        + (" with local changes under melu/" if result["git"]["melu_modified"] else ""),
        f"- machine: {m['cpu']}, {m['cores']} cores, torch threads: {m['torch_threads']}, "
        f"GPU: {m['cuda'] or 'none'}; {m['platform']}; Python {m['python']}, torch {m['torch']}",
        f"- runs: seeds {seeds}, `melu train --seed S` defaults (preset `default`, at most "
        f"{result['epochs']} epochs, early stopping patience {TrainConfig().patience}); the "
        "seed also picks the validation users and each user's query items",
        f"- evaluation: `melu.evaluate`, {result['bootstrap']} bootstrap resamples; values are "
        "the mean ± sample standard deviation over seeds of each seed's mean over users",
        "",
        "## Training runs",
        "",
    ]
    out += _table(
        ["seed", "epochs run", "best epoch", "best validation MAE", "stopped early", "train s"],
        [
            [
                str(r["seed"]),
                str(r["epochs_run"]),
                str(r["best_epoch"]),
                f"{r['best_val_mae']:.4f}",
                str(r["stopped_early"]),
                "reused" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
            ]
            for r in runs
        ],
    )
    out += ["", "## Targets (MeLU, mean over seeds)", ""]
    body = []
    for t in result["targets"]:
        paper = PAPER_MAE.get(t["scenario"]) if t["metric"] == "mae" else None
        mean = "-" if t["melu_mean"] is None else f"{t['melu_mean']:.4f}"
        spread = f" ± {t['melu_std']:.4f}" if t["melu_std"] is not None and len(runs) > 1 else ""
        body.append(
            [
                t["scenario"],
                t["metric"],
                t["target"],
                mean + spread,
                "met" if t["met"] else "**missed**",
                "-"
                if t["best_baseline"] is None
                else f"{t['best_baseline_mean']:.4f} ({t['best_baseline']})",
                "-" if paper is None else f"{paper:.3f}",
            ]
        )
    out += _table(
        ["scenario", "metric", "target", "MeLU", "status", "best baseline", "MeLU paper"], body
    )

    out += ["", "## Every method (mean ± std over seeds)", ""]
    for scenario in scenarios:
        tasks = runs[0]["report"]["info"]["scenarios"][scenario]["tasks"]
        out += [f"### {scenario} ({tasks} tasks)", ""]
        body = [
            [f"**{method}**" if method == MELU else method]
            + [_ms(_get(agg, scenario, method, metric)) for metric in METRICS]
            for method in methods
        ]
        out += _table(["method", *METRICS], body)
        out.append("")

    beaten = result["beaten_by"]
    out += [
        "## Baselines that match or beat MeLU (means over seeds)",
        "",
        "Each cell lists the baselines whose mean is at least as good as MeLU's.",
        "",
    ]
    body = []
    for scenario in scenarios:
        cells = []
        for metric in METRICS:
            names = [
                b["baseline"] for b in beaten if (b["scenario"], b["metric"]) == (scenario, metric)
            ]
            cells.append(", ".join(names) if names else "none")
        body.append([scenario, *cells])
    out += _table(["scenario", *METRICS], body)
    out += [
        "",
        "## Paired significance (seeds where the 95% interval of MeLU minus baseline excludes 0)",
        "",
    ]
    sig = pd.DataFrame(result["significance"])
    shown = ["mae", "ndcg@3", "ndcg@10"]
    body = []
    for scenario in scenarios:
        for method in methods:
            if method == MELU:
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
                    cells.append(f"{int(row['sig_better'])} better / {int(row['sig_worse'])} worse")
            body.append([scenario, method, *cells])
    out += _table(["scenario", "baseline", *shown], body)

    out += ["", "## By support size (MAE / nDCG@3, mean over seeds)", ""]
    labels = [s for s in dict.fromkeys(agg["support"]) if s != ALL_SUPPORT]
    body = []
    for scenario in scenarios:
        for method in (
            MELU,
            "melu_no_adapt",
            "regression_finetuned",
            "user_item_bias",
            "user_mean",
        ):
            cells = []
            for label in labels:
                sel = agg[
                    (agg["scenario"] == scenario)
                    & (agg["method"] == method)
                    & (agg["support"] == label)
                ]
                mae = sel[sel["metric"] == "mae"]["mean"]
                ndcg = sel[sel["metric"] == "ndcg@3"]["mean"]
                cells.append(
                    f"{float(mae.iloc[0]):.3f} / {float(ndcg.iloc[0]):.3f}" if len(mae) else "-"
                )
            body.append([scenario, method, *cells])
    out += _table(["scenario", "method", *labels], body)
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
    runs = [run_seed(seed, args) for seed in args.seeds]
    agg = aggregate(runs)
    scenarios = list(dict.fromkeys(agg["scenario"]))
    result: dict[str, Any] = {
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/quality.py", *(argv or sys.argv[1:])]
        ),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": revision,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "bootstrap": args.bootstrap,
        "configs": {
            "model": to_dict(PRESETS["default"]),
            "meta": to_dict(MetaConfig()),
            "train": to_dict(TrainConfig(epochs=args.epochs)),
        },
        "targets": target_rows(agg),
        "paper_mae": PAPER_MAE,
        "beaten_by": beaten_by(agg, scenarios),
        "significance": significance(runs).to_dict(orient="records"),
        "aggregate": agg[agg["support"] == ALL_SUPPORT]
        .replace({np.nan: None})
        .to_dict(orient="records"),
        "aggregate_by_support": agg[agg["support"] != ALL_SUPPORT]
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
    ckpt.atomic_write_text(args.markdown, markdown(result, agg, notes))
    log.info("wrote %s", args.markdown)
    for t in result["targets"]:
        log.info(
            "%s %s %s: %s (%s)",
            t["scenario"],
            t["metric"],
            t["target"],
            t["melu_mean"],
            "met" if t["met"] else "missed",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
