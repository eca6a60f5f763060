"""The catalogue evaluation's time, step by step, for two versions of the code side by side:
each version's ``melu.evaluation.run.evaluate_catalogue`` on the same checkpoint, seed and
data, alternated ``--repeats`` times in fresh processes on one torch and BLAS thread, so that
the machine's drift (these machines are shared) falls on both alike. A version is a folder that
holds a ``melu`` package: this checkout, or ``git worktree add /tmp/old <commit>``.

    git worktree add /tmp/old 254dba2
    .venv/bin/python benchmarks/catalogue_time.py --checkpoint RUN/checkpoint.pt \\
        --data-dir ../shared/data/movielens --trees /tmp/old . --json results/catalogue_time.json

Prints each run's seconds by step, then each step's median, as seconds and as a ratio to the
first tree's. The JSON's ``machine.torch_threads`` is this parent process's; every timed child
computes on one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from quality import git_revision, machine

from melu.checkpoint import atomic_write_text

log = logging.getLogger("catalogue_time")

# Run in a fresh interpreter with the tree first on its path: the seconds of every step and in
# all, as one JSON line.
CHILD = """
import json, sys, time
from pathlib import Path
import torch
from threadpoolctl import threadpool_limits
torch.set_num_threads(1)
import melu
from melu import checkpoint as ckpt
from melu.data import prepare
from melu.evaluation.run import evaluate_catalogue
ck = ckpt.load(Path(sys.argv[1]))
data = prepare(Path(sys.argv[2]), ck.data, ck.encoder)
learner = ck.learner("cpu")
with threadpool_limits(1):
    started = time.perf_counter()
    done = evaluate_catalogue(data, learner, seed=int(sys.argv[3]))
    total = time.perf_counter() - started
print(json.dumps({"melu": melu.__file__, "total": total, **done.info["seconds_by_step"]}))
"""


def time_tree(tree: Path, checkpoint: Path, data_dir: Path, seed: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkpoint.resolve()), str(data_dir.resolve()),
         str(seed)],
        capture_output=True, text=True, env=env, cwd=tree, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{tree}: {last}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(found.pop("melu")).resolve().parent.parent != tree.resolve():
        raise RuntimeError(f"{tree}: the child imported melu from elsewhere")
    return {k: float(v) for k, v in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--trees", type=Path, nargs="+", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for tree in args.trees:
        if not (tree / "melu" / "__init__.py").is_file():
            print(f"catalogue_time: no melu package in {tree}", file=sys.stderr)
            return 2
    if not args.checkpoint.is_file():
        print(f"catalogue_time: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for tree in args.trees:
            try:
                seconds = time_tree(tree, args.checkpoint, args.data_dir, args.seed)
            except RuntimeError as error:
                print(f"catalogue_time: {error}", file=sys.stderr)
                return 1
            runs.append({"tree": str(tree), "repeat": repeat, "seconds": seconds})
            log.info("%s, repeat %d: %s", tree, repeat, json.dumps(seconds))
    steps = list(runs[0]["seconds"])
    medians = {
        str(tree): {
            step: statistics.median(r["seconds"][step] for r in runs if r["tree"] == str(tree))
            for step in steps
        }
        for tree in args.trees
    }
    first = medians[str(args.trees[0])]
    lines = [f"{'step':<42}" + "".join(f"{str(t)[-24:]:>26}" for t in args.trees)]
    for step in steps:
        cells = [
            f"{m[step]:8.1f} s ({m[step] / first[step]:5.2f}x)" if first[step] > 0 else "-"
            for m in medians.values()
        ]
        lines.append(f"{step:<42}" + "".join(f"{c:>26}" for c in cells))
    log.info("median over %d repeats, ratio to the first tree:\n%s", args.repeats, "\n".join(lines))
    if args.json is not None:
        report = {
            "machine": machine(),
            "revision": git_revision(),
            "checkpoint": str(args.checkpoint),
            "runs": runs,
            "medians": medians,
        }
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
