"""Command line: ``melu data``, ``melu train``, ``melu evaluate``, ``melu serve``.

Every user error ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from melu.config import DATASETS, PRESETS, DataConfig, MetaConfig, TrainConfig
from melu.errors import MeluError

log = logging.getLogger("melu")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the user sees what is wrong at a glance.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _default_data_dir() -> Path:
    return Path(os.environ.get("MELU_DATA_DIR", "data"))


def _int_at_least(minimum: int, wanted: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}")
        return number

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _add_data_args(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        p.add_argument("--dataset", choices=DATASETS, default="melu")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=_default_data_dir(),
        help="folder with melu/, ml-1m/, ml-100k/ (default: $MELU_DATA_DIR or data/)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="melu", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--threads",
        type=_positive,
        help="torch CPU threads (default: one per core; 1 is faster when other jobs share the "
        "cores, since OpenMP threads then wait on each other)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="download or summarise MovieLens data")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    download = data_sub.add_parser("download", help="fetch files from their public sources")
    _add_data_args(download)
    summary = data_sub.add_parser("summary", help="tasks per cold-start scenario")
    _add_data_args(summary)
    summary.add_argument("--json", action="store_true", help="print JSON")
    summary.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="meta-train a model")
    _add_data_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="model configuration; 'melu' is the paper's architecture",
    )
    train.add_argument(
        "--objective",
        choices=("rating", "rating+watch"),
        help="override the preset's objective: rating alone (MeLU), or also which items a user "
        "watches (the catalogue ranking)",
    )
    train.add_argument("--epochs", type=_positive)
    train.add_argument("--batch-size", type=_positive)
    train.add_argument("--lr", type=_positive_float, help="meta (outer) learning rate")
    train.add_argument("--local-lr", type=_positive_float)
    train.add_argument("--local-steps", type=_non_negative)
    train.add_argument("--learn-local-lr", action="store_true", help="Meta-SGD style rates")
    train.add_argument("--adapt", choices=("head", "all"), help="parameters adapted per user")
    train.add_argument("--first-order", action="store_true")
    train.add_argument(
        "--local-update",
        choices=("auto", "vmap"),
        help="auto: the closed-form head update where it applies; vmap: torch.func per task",
    )
    train.add_argument("--patience", type=_positive)
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--compile", action="store_true", help="torch.compile the meta-loss")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true")

    evaluate = sub.add_parser("evaluate", help="cold-start metrics and baselines")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    _add_data_args(evaluate, dataset=False)
    evaluate.add_argument("--json", type=Path, dest="json_out", help="write the report as JSON")
    evaluate.add_argument("--markdown", type=Path, help="write the report as Markdown")
    evaluate.add_argument("--warm", action="store_true", help="also report training users")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=1000,
        help="bootstrap resamples for confidence intervals",
    )

    serve = sub.add_parser("serve", help="run the recommendation service")
    serve.add_argument("--checkpoint", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default="cpu")
    return parser


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        from melu.download import download

        paths = download(args.dataset, args.data_dir)
        log.info("%d files ready under %s", len(paths), args.data_dir)
        return 0
    from melu.data import prepare, summary

    result = summary(prepare(args.data_dir, DataConfig(dataset=args.dataset, seed=args.seed)))
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for name, row in result["scenarios"].items():
            sys.stdout.write(
                f"{name:>18}: {row['tasks']:>5} tasks, {row['users']:>5} users, "
                f"{row['ratings']:>7} ratings, {row['items']:>5} items, support "
                f"{row['support_min']}/{row['support_median']:g}/{row['support_max']}\n"
            )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from melu.data import prepare
    from melu.train import resolve_device, train

    resolve_device(args.device)  # fail on a bad device before minutes of data loading
    model_cfg = PRESETS[args.preset]
    if args.objective is not None:
        model_cfg = replace(model_cfg, objective=args.objective)
    meta_over = {
        "local_lr": args.local_lr,
        "local_steps": args.local_steps,
        "adapt": args.adapt,
        "first_order": args.first_order or None,
        "learn_local_lr": args.learn_local_lr or None,
        "local_update": args.local_update,
    }
    meta_cfg = replace(MetaConfig(), **{k: v for k, v in meta_over.items() if v is not None})
    train_over = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "patience": args.patience,
        "device": args.device,
        "seed": args.seed,
        "compile": args.compile,
        "dtype": args.dtype,
    }
    train_cfg = replace(TrainConfig(), **{k: v for k, v in train_over.items() if v is not None})
    data = prepare(args.data_dir, DataConfig(dataset=args.dataset, seed=args.seed))
    result = train(
        data,
        args.out,
        model_cfg,
        meta_cfg,
        train_cfg,
        resume=args.resume,
        progress=not args.no_progress,
    )
    log.info(
        "best validation MAE %.4f at epoch %d; checkpoint %s",
        result.metrics["best_val_mae"],
        result.metrics["best_epoch"],
        args.out / "checkpoint.pt",
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from melu.evaluate import evaluate_command

    return evaluate_command(
        checkpoint=args.checkpoint,
        data_dir=args.data_dir,
        json_out=args.json_out,
        markdown_out=args.markdown,
        include_warm=args.warm,
        device=args.device,
        bootstrap=args.bootstrap,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.main import serve

    serve(checkpoint=args.checkpoint, host=args.host, port=args.port, device=args.device)
    return 0


COMMANDS = {"data": _cmd_data, "train": _cmd_train, "evaluate": _cmd_evaluate, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except MeluError as exc:
        sys.stderr.write(f"melu: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("melu: interrupted (a training run continues with --resume)\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
