"""How the cost of melu grows with the number of ratings: generated ml-25m-shaped releases at
1M, 5M and 25M ratings (benchmarks/generate_release.py), each stage measured in a child
process of its own, so that its peak memory (the child's max RSS, from ``wait4``) is its own.

Stages (one function each, registered in ``STAGES``):

* ``prepare``: read the CSV files (ratings, movies, tags, links, genome) and build the
  scenarios, vocabularies and tasks: ``melu.data.prepare_frames`` as ``melu train`` runs it.
* ``train``: the taste model's co-occurrence fit and meta-training steps on batches streamed
  from the flat tasks: tasks/s, and the epoch time it projects to.
* ``evaluate``: the catalogue protocol's model part (adapt, score every recommendable item,
  rank with the floor, judge) for up to 1,000 new users at each of S = 3, 5, 10, 20.
* ``serve``: ``/recommend`` p50 and p99 at one client, through ``melu serve``.

A stage is a function ``stage_<name>(release: Path) -> dict`` that may call :func:`prepared`
for the data, and an entry in ``STAGES``; the table and the growth fit pick them up.

Prints a table and writes JSON (default results/scale_cpu.json) with, per size and stage: the
child's wall and CPU seconds (with its start: imports take ~5 s), the stage's own wall and
CPU seconds (``work_s``, ``work_cpu_s``; "read s" and "prep s" split the first), the child's
peak memory and the part above the interpreter with its imports;
and per stage the log-log slope of each against the number of ratings (1.0 is linear). On a
machine whose cores other jobs share, wall time exceeds CPU time: the load average is
recorded. Generated files go to --work (700 MB of ratings.csv at 25M) and are deleted
afterwards unless --keep. Usage::

    python benchmarks/scale.py                       # 1M, 5M, 25M ratings: about 5 minutes
    python benchmarks/scale.py --sizes 1000000 --keep
    python benchmarks/scale.py --shape ml-32m --sizes 32000204 --stages evaluate serve \
        --json results/scale_32m_cpu.json      # ml-32m's 87,585 movies
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from melu import checkpoint as ckpt  # noqa: E402
from melu.config import DataConfig  # noqa: E402
from melu.data import ColdStartData, prepare_frames  # noqa: E402
from melu.movielens_csv import read_release  # noqa: E402

log = logging.getLogger("scale")

SIZES = (1_000_000, 5_000_000, 25_000_095)
# The targets for 25M ratings on 2 cores.
TARGET_PREPARE_S, TARGET_PEAK_GB = 120.0, 3.0


def rss_gb() -> float:
    """This process's resident memory now."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kib * 1024 / 1e9


def label(n: int) -> str:
    return f"{n / 1e6:g}M" if n % 1_000_000 == 0 else f"{n / 1e6:.1f}M"


# --- stages (run in a child process) ----------------------------------------------------------


def prepared(release: Path) -> tuple[ColdStartData, dict[str, float]]:
    """A generated release read and prepared as ``melu train --dataset ml-25m`` (or ml-32m,
    the release whose shape it was generated in) would, and the seconds each step took."""
    start = time.perf_counter()
    info = json.loads((release / "generated.json").read_text())
    dataset = info.get("release", "ml-25m")
    frames = read_release(release, dataset, check=False)
    read_s = time.perf_counter() - start
    data = prepare_frames(frames, DataConfig.for_dataset(dataset))
    return data, {"read_s": read_s, "prepare_s": time.perf_counter() - start - read_s}


def stage_prepare(release: Path) -> dict[str, Any]:
    data, seconds = prepared(release)
    tasks = {name: len(t) for name, t in data.tasks.items()}
    padded = sum(
        sum(v.numel() * v.element_size() for v in vars(t.batch_all).values())
        for t in data.tasks.values()
    )
    return {
        **seconds,
        "tasks": tasks,
        "task_ratings": int(data.ratings["in_task"].sum()),
        "flat_tasks_mb": sum(f.nbytes for f in data.flat_tasks.values()) / 1e6,
        "padded_tasks_mb": padded / 1e6,
        "split_time": data.config.split_time,
        "catalogue_items": len(data.catalogue),
    }


# Meta-batches timed per training stage (after one warm-up): an epoch at 25M ratings is 7,000
# of them, so the epoch time is projected from these.
TRAIN_BATCHES = 30
# Users scored per number of ratings in the evaluation stage.
EVAL_USERS = 1000


def _taste_learner(data: ColdStartData) -> tuple[Any, float]:
    """The default preset's taste model for ``data``, its co-occurrence fitted (seconds)."""
    from melu.config import PRESETS
    from melu.learners import build_learner, fit_to_training

    preset = PRESETS["default"]
    learner = build_learner(data.encoder, preset.model, preset.meta, data.scale)
    start = time.perf_counter()
    fit_to_training(learner, data.train_ratings, data.catalogue.rows, data.catalogue.table.numpy())
    return learner, time.perf_counter() - start


def stage_train(release: Path) -> dict[str, Any]:
    """Meta-training of the taste model on batches streamed from the flat tasks (no padded
    tensor of every task): tasks/s over :data:`TRAIN_BATCHES` meta-batches of 32, and the epoch
    time that projects to."""
    import torch

    from melu.config import PRESETS
    from melu.objectives import sample_episodes

    torch.set_num_threads(1)
    data, seconds = prepared(release)
    learner, fit_s = _taste_learner(data)
    learner.train()
    preset = PRESETS["default"]
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    table, recommendable = data.catalogue.table, data.catalogue.recommendable
    vocab = data.encoder.item_specs()[0].vocab_size
    flat = data.flat_tasks["warm"]
    batches = flat.batches(32, np.random.default_rng(0), bucket=8)

    def step() -> int:
        batch = next(batches)
        episode = sample_episodes(
            batch, data.user_table, table, preset.meta.episode_support,
            preset.model.liked_rating, vocab_size=vocab,
        )  # fmt: skip
        loss = learner(episode, table, recommendable).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(batch)

    step()  # warm-up
    start, tasks = time.perf_counter(), 0
    for _ in range(TRAIN_BATCHES):
        tasks += step()
    elapsed = time.perf_counter() - start
    rate = tasks / elapsed
    return {
        **seconds,
        "cooccurrence_fit_s": fit_s,
        "training_tasks": len(flat),
        "catalogue_items": len(data.catalogue),
        "recommendable_items": int(recommendable.sum()),
        "tasks_per_s": rate,
        "epoch_s_projected": len(flat) / rate,
    }


def stage_evaluate(release: Path) -> dict[str, Any]:
    """The catalogue protocol's model part at this catalogue's size: up to
    :data:`EVAL_USERS` new users at each S, adapted and ranked over every recommendable item
    exactly as ``melu evaluate`` and ``/recommend`` do (the scorer, the floor, rank_top)."""
    import torch

    from melu.evaluation import catalogue as C
    from melu.scoring import CatalogueScorer

    torch.set_num_threads(1)
    data, seconds = prepared(release)
    learner, fit_s = _taste_learner(data)
    learner.eval()
    counts = C.training_counts(data)
    timings: dict[str, float] = {}
    users = 0
    with torch.no_grad():
        start = time.perf_counter()
        scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
        timings["item_side_s"] = time.perf_counter() - start
        for size in (3, 5, 10, 20):
            cases = C.build_cases(data, "new_user", size, 0, "catalogue")
            if len(cases) > EVAL_USERS:
                pick = np.random.default_rng([0, size]).choice(len(cases), EVAL_USERS, False)
                cases = cases.subset(np.sort(pick))
            start = time.perf_counter()
            lists = C.model_scores(scorer, data.user_table, cases.user_rows, cases.supports)
            C.judge(cases, lists.scores, counts, lists.above_floor)
            timings[f"S{size}_s"] = time.perf_counter() - start
            users += len(cases)
    model_s = sum(v for k, v in timings.items() if k.startswith("S"))
    return {
        **seconds,
        **timings,
        "cooccurrence_fit_s": fit_s,
        "catalogue_items": len(data.catalogue),
        "users_scored": users,
        "users_per_s": users / model_s,
    }


# Sequential /recommend requests timed per serving stage (after a warm-up of 5).
SERVE_REQUESTS = 200


def stage_serve(release: Path) -> dict[str, Any]:
    """``/recommend`` at this catalogue's size: a checkpoint of the default preset (its
    co-occurrence fitted, weights as initialised: the cost does not depend on them) served by
    ``melu serve`` (one torch thread, the model in its worker process), one client sending
    :data:`SERVE_REQUESTS` requests of 5 ratings one after the other (serve_latency's
    client): p50 and p99, and the server's CPU time and memory."""
    import asyncio
    import importlib.util
    import tempfile

    from melu import checkpoint as ckpt
    from melu.config import PRESETS, TrainConfig

    spec = importlib.util.spec_from_file_location(
        "serve_latency", REPO / "benchmarks" / "serve_latency.py"
    )
    assert spec is not None and spec.loader is not None
    latency = importlib.util.module_from_spec(spec)
    sys.modules["serve_latency"] = latency
    spec.loader.exec_module(latency)
    data, seconds = prepared(release)
    learner, fit_s = _taste_learner(data)
    preset = PRESETS["default"]
    with tempfile.TemporaryDirectory(prefix="melu-scale-serve-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
        ckpt.save(
            path,
            ckpt.Checkpoint(
                data=data.config, model=preset.model, meta=preset.meta, train=TrainConfig(),
                encoder=data.encoder, catalogue=data.catalogue, state=state,
            ),
        )  # fmt: skip
        del data, learner, state
        requests = latency.build_requests(path, 64, 5, 10, seed=0)
        args = argparse.Namespace(
            batch_max_wait_ms=2.0, local_steps=None, torch_threads=1, retrieval_fraction=0.0,
            start_timeout=600.0,
        )  # fmt: skip
        started = time.perf_counter()
        server = latency.Server(path, True, args)
        start_s = time.perf_counter() - started
        try:
            asyncio.run(latency.sequential(server.port, requests, 5, 60.0))  # warm-up
            cpu = server.cpu_seconds()
            level = asyncio.run(latency.sequential(server.port, requests, SERVE_REQUESTS, 600.0))
            level["server_cpu_ms_per_request"] = (
                (server.cpu_seconds() - cpu) * 1e3 / level["requests"]
            )
            level["server_rss_gb"] = server.rss_mb() / 1e3
        finally:
            server.stop()
    return {**seconds, **level, "cooccurrence_fit_s": fit_s, "server_start_s": start_s}


STAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "prepare": stage_prepare,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "serve": stage_serve,
}


# --- the parent: generate, run each stage in a child, fit the growth ---------------------------


def generate(n: int, work: Path, shape: str = "ml-25m") -> Path:
    """The release of ``n`` ratings in ``shape`` under ``work``, generated unless already
    there."""
    folder = work / (label(n) if shape == "ml-25m" else f"{shape}-{label(n)}")
    info = folder / "generated.json"
    if info.is_file():
        known = json.loads(info.read_text())
        if known["ratings"] == n and known.get("release", "ml-25m") == shape:
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, str(REPO / "benchmarks" / "generate_release.py"),
               "--ratings", str(n), "--out", str(folder), "--genome", "--shape", shape]  # fmt: skip
    subprocess.run(command, check=True)
    return folder


def run_stage(stage: str, release: Path, result: Path) -> dict[str, Any]:
    """``stage`` on ``release`` in a child process: its own result, wall and CPU seconds, and
    peak memory."""
    command = [sys.executable, __file__, "--child", stage, "--release", str(release),
               "--result", str(result)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"stage {stage} failed on {release} (exit {child.returncode})")
    out: dict[str, Any] = json.loads(result.read_text())
    peak = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    out.update(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_gb=peak,
        peak_above_baseline_gb=peak - out["baseline_rss_gb"],
    )
    return out


def slope(x: list[float], y: list[float]) -> float | None:
    """Exponent a of y ~ x^a, least squares on logs (None with fewer than two sizes)."""
    if len(x) < 2:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def growth(rows: list[dict[str, Any]], stage: str) -> dict[str, float | None]:
    n = [float(r["ratings"]) for r in rows]
    return {
        f"{key}_slope": slope(n, [float(r["stages"][stage][key]) for r in rows])
        for key in ("work_s", "work_cpu_s", "peak_rss_gb", "peak_above_baseline_gb")
    }


# What each stage reports beside the common columns: (key, heading, format).
EXTRA: dict[str, list[tuple[str, str, str]]] = {
    "prepare": [],
    "train": [("tasks_per_s", "tasks/s", ".0f"), ("epoch_s_projected", "epoch s", ".0f"),
              ("cooccurrence_fit_s", "co-oc s", ".1f")],
    "evaluate": [("users_per_s", "users/s", ".0f"), ("catalogue_items", "items", ",")],
    "serve": [("p50_ms", "p50 ms", ".1f"), ("p99_ms", "p99 ms", ".1f"),
              ("server_cpu_ms_per_request", "cpu ms", ".1f"), ("server_rss_gb", "srv GB", ".2f")],
}  # fmt: skip


def table(rows: list[dict[str, Any]], stage: str) -> str:
    head = (f"{'ratings':>10} {'users':>8} {'movies':>7} {'child s':>7} {'work s':>7} "
            f"{'cpu s':>7} {'read s':>7} {'prep s':>7} {'peak GB':>8} {'tasks':>8}")  # fmt: skip
    head += "".join(f" {title:>9}" for _, title, _ in EXTRA.get(stage, []))
    lines = [f"stage {stage}", head]
    for r in rows:
        s = r["stages"][stage]
        lines.append(
            f"{r['ratings']:>10,} {r['users']:>8,} {r['movies']:>7,} {s['wall_s']:>7.1f} "
            f"{s['work_s']:>7.1f} {s['work_cpu_s']:>7.1f} {s.get('read_s', float('nan')):>7.1f} "
            f"{s.get('prepare_s', float('nan')):>7.1f} {s['peak_rss_gb']:>8.2f} "
            f"{sum(s.get('tasks', {}).values()):>8,}"
            + "".join(f" {s[key]:>9{fmt}}" for key, _, fmt in EXTRA.get(stage, []))
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--shape", choices=("ml-25m", "ml-32m"), default="ml-25m",  # SHAPES
                        help="the release whose shape the generated ones take")  # fmt: skip
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=sorted(STAGES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/melu-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the generated releases")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "scale_cpu.json")
    parser.add_argument("--child", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--release", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.child:  # inside the child process: run one stage, write its result
        baseline = rss_gb()  # the interpreter with melu, torch and pandas imported
        start, cpu = time.perf_counter(), time.process_time()
        result = STAGES[args.child](args.release)
        result.update(
            work_s=time.perf_counter() - start,
            work_cpu_s=time.process_time() - cpu,
            baseline_rss_gb=baseline,
        )
        args.result.write_text(json.dumps(result))
        return

    load = os.getloadavg()
    rows = []
    for n in sorted(args.sizes):
        release = generate(n, args.work, args.shape)
        info = json.loads((release / "generated.json").read_text())
        row: dict[str, Any] = {"ratings": n, "users": info["users"], "movies": info["movies"],
                               "generated": info, "stages": {}}  # fmt: skip
        for stage in args.stages:
            log.info("%s ratings: stage %s", f"{n:,}", stage)
            result = args.work / f"{release.name}-{stage}.json"
            row["stages"][stage] = run_stage(stage, release, result)
            log.info("%s", row["stages"][stage])
        rows.append(row)
        if not args.keep:
            shutil.rmtree(release)
    report: dict[str, Any] = {
        "sizes": rows,
        "growth": {stage: growth(rows, stage) for stage in args.stages},
        "targets": {"prepare_s_at_25m": TARGET_PREPARE_S, "peak_gb_at_25m": TARGET_PEAK_GB},
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load,
                    "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(sys.argv),
    }  # fmt: skip
    for stage in args.stages:
        print(table(rows, stage))
        fit = report["growth"][stage]
        if fit["work_s_slope"] is not None:
            print(f"growth with the number of ratings (log-log slope, 1 = linear): time "
                  f"{fit['work_s_slope']:.2f} (cpu time {fit['work_cpu_s_slope']:.2f}), "
                  f"peak memory {fit['peak_rss_gb_slope']:.2f} (above the interpreter's "
                  f"{fit['peak_above_baseline_gb_slope']:.2f})")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
