"""What the validation-only probes share: a run's pieces, and their command line (checkpoints
in, a table printed, the rows written as JSON with the machine and the commit)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from quality import write_rows

from melu import checkpoint as ckpt
from melu.data import ColdStartData, prepare
from melu.learners import Learner
from melu.schedule import BUCKET_SIZES
from melu.tasks import TaskSet
from melu.taste_learner import TasteLearner

Rows = list[dict[str, Any]]


class Run(NamedTuple):
    """A trained run as a probe needs it: the checkpoint, its model in eval mode, its data
    (the split its seed picked) and the validation users' tasks on the CPU in float32."""

    checkpoint: ckpt.Checkpoint
    learner: Learner
    data: ColdStartData
    validation: TaskSet

    @property
    def seed(self) -> int:
        return self.checkpoint.train.seed


def load_run(path: Path, data_dir: Path, taste: bool = True) -> Run:
    """The run at ``path`` (``taste``: refuse any but a taste-model checkpoint)."""
    checkpoint = ckpt.load(path)
    learner = checkpoint.learner("cpu").eval()
    if taste and not isinstance(learner, TasteLearner):
        raise SystemExit(f"{path}: not a taste-model checkpoint")
    data = prepare(data_dir, checkpoint.data, checkpoint.encoder)
    return Run(checkpoint, learner, data, data.tasks["validation"].to("cpu", torch.float32))


def recall_table(names: Sequence[str], width: int) -> Callable[[Rows], None]:
    """A ``table`` for :func:`main`: each row's seed, S and ``recall@10_NAME`` per name."""

    def table(rows: Rows) -> None:
        print(f"{'seed':>4} {'S':>2} " + " ".join(f"{n:>{width}}" for n in names))
        for r in rows:
            cells = " ".join(f"{r['recall@10_' + n]:>{width}.4f}" for n in names)
            print(f"{r['seed']:>4} {r['S']:>2} {cells}")

    return table


def loved_genre_table(columns: Sequence[tuple[str, str, int, str]]) -> Callable[[Rows], None]:
    """A ``table`` for :func:`main`: each row's seed, its ``columns`` (key, heading, width,
    format spec), ``recall@10_S*`` at the schedule's support sizes and its loved-genre share."""
    sizes = [f"S{s}" for s in BUCKET_SIZES]

    def table(rows: Rows) -> None:
        named = " ".join(f"{heading:>{width}}" for _, heading, width, _ in columns)
        heads = " ".join(f"{s:>7}" for s in sizes)
        print(f"{'seed':>4} {named} {heads}  loved genre")
        for r in rows:
            own = " ".join(format(r[key], f">{width}{spec}") for key, _, width, spec in columns)
            cells = " ".join(f"{r['recall@10_' + s]:>7.4f}" for s in sizes)
            print(f"{r['seed']:>4} {own} {cells}  {r['loved_genre_share']:>11.3f}")

    return table


def main(
    doc: str,
    probe: Callable[[Path, argparse.Namespace], Rows],
    table: Callable[[Rows], None],
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse ``--data-dir``, ``--checkpoints``, ``--json`` and the probe's own ``options``;
    run ``probe`` on every checkpoint on one thread; print the ``table`` of all rows and write
    them to ``--json``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    parser.add_argument("--json", type=Path)
    if options is not None:
        options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Probes run beside each other and beside training: one thread each is the fastest.
    torch.set_num_threads(1)
    rows = [row for path in args.checkpoints for row in probe(path, args)]
    table(rows)
    if args.json:
        write_rows(args.json, rows)
    return 0
