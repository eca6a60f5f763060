"""Command line: ``melu data``, ``melu train``, ``melu evaluate``, ``melu onboarding``,
``melu serve``.

Every user error ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from melu.config import (
    COOCCURRENCE_WEIGHTS,
    DATASETS,
    FAST_WEIGHTS,
    PRESETS,
    DataConfig,
    MetaConfig,
    RatingScale,
    TrainConfig,
)
from melu.errors import MeluError

if TYPE_CHECKING:
    from melu.checkpoint import Checkpoint

log = logging.getLogger("melu")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_TRAIN, _META = TrainConfig(), MetaConfig()
_DEFAULT, _MELU = PRESETS["default"], PRESETS["melu"]


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


def _decay(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return number


def _report_path(value: str) -> Path:
    """A file to write whose folder exists: a mistyped ``/missing/dir/r.md`` used to create
    ``/missing`` at the filesystem root."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder; name a file in it")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"the folder of {value!r} does not exist ({path.parent}); create it first"
        )
    return path


def _add_data_args(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        p.add_argument(
            "--dataset",
            choices=DATASETS,
            default="melu",
            help="MeLU's release of ML-1M, ML-1M, ML-100K, or a GroupLens CSV release (half "
            "stars, no demographics, split into scenarios by time) (default: melu)",
        )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=_default_data_dir(),
        help="folder with melu/, ml-1m/, ml-100k/, ml-latest-small/, ml-25m/, ml-32m/ "
        "(default: $MELU_DATA_DIR or data/)",
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
    summary.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the validation users and query items (default: 0)",
    )

    train = sub.add_parser(
        "train",
        help="meta-train a model",
        description="Meta-train a model into a run folder (checkpoint.pt, metrics.jsonl). "
        "Options left out take the defaults shown; with --resume, the run's saved ones.",
    )
    _add_data_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="model configuration; 'melu' is the paper's architecture (default: default)",
    )
    train.add_argument(
        "--epochs", type=_positive, help=f"meta-training epochs (default: {_TRAIN.epochs})"
    )
    train.add_argument(
        "--batch-size", type=_positive, help=f"tasks per meta-batch (default: {_TRAIN.batch_size})"
    )
    train.add_argument(
        "--lr", type=_positive_float, help=f"meta (outer) learning rate (default: {_TRAIN.lr})"
    )
    train.add_argument(
        "--local-lr",
        type=_positive_float,
        help="learning rate (MeLU) or starting step size (taste model) of the per-user local "
        f"steps (default: the preset's; default preset {_DEFAULT.meta.local_lr}, melu "
        f"{_MELU.meta.local_lr})",
    )
    train.add_argument(
        "--rating-local-lr",
        type=_positive_float,
        help="the taste model: starting step size of its rating fast weights (rating_bias, "
        f"rating_taste; default: the preset's, {_DEFAULT.meta.rating_local_lr} for the default)",
    )
    train.add_argument(
        "--genre-local-lr",
        type=_positive_float,
        help="the taste model with --genre-preference: starting step size of the genre "
        "preference (default: --local-lr's)",
    )
    train.add_argument(
        "--local-steps",
        type=_non_negative,
        help="local gradient steps per user (default: the preset's; default preset "
        f"{_DEFAULT.meta.local_steps}, melu {_MELU.meta.local_steps})",
    )
    train.add_argument(
        "--learn-local-lr",
        action="store_true",
        help="MeLU's network: learn per-parameter local rates (Meta-SGD; the taste model always "
        "learns its step sizes)",
    )
    train.add_argument(
        "--adapt",
        choices=("head", "all"),
        help="MeLU's network: the parameters adapted per user, the decision layers or all "
        f"(default: {_META.adapt})",
    )
    train.add_argument(
        "--fast-weights",
        nargs="+",
        choices=FAST_WEIGHTS,
        help="the taste model: which of its fast weights the local steps adapt (default: "
        f"{' '.join(_DEFAULT.meta.fast_weights)}; {' and '.join(COOCCURRENCE_WEIGHTS)} exist "
        "only in a model with the co-occurrence term, which the default preset has not); the "
        "others keep their meta-learned start",
    )
    train.add_argument(
        "--first-order", action="store_true", help="first-order MAML (no second derivatives)"
    )
    train.add_argument(
        "--objective",
        choices=("rating", "taste"),
        help="the model: MeLU's rating network, or the taste model whose fast weights rank the "
        f"catalogue and predict the ratings (default: the preset's, {_DEFAULT.model.objective} "
        f"for default, {_MELU.model.objective} for melu)",
    )
    train.add_argument(
        "--cooccurrence",
        action="store_true",
        help="the taste model: add the training users' item-item co-occurrence with the "
        "support to the ranking logit, with its two fast weights (the default model before "
        "stop 34, with --local-lr 0.5)",
    )
    train.add_argument(
        "--genre-preference",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the taste model: a per-user preference over the genres in the ranking logit, a "
        "fast weight that starts at 0 (the local step alone sets it) and is adapted with the "
        "others unless --fast-weights names them (default: the preset's; the default "
        f"preset's model has it: {_DEFAULT.model.genre_preference}); --no-genre-preference "
        "trains the default model before stop 36",
    )
    train.add_argument(
        "--local-update",
        choices=("auto", "vmap"),
        help="MeLU's network: auto, the closed-form head update where it applies; vmap, "
        f"torch.func per task (default: {_META.local_update})",
    )
    train.add_argument(
        "--patience",
        type=_positive,
        help="stop after this many epochs without a better selection measure: validation "
        "Recall@10 from 5 ratings for the taste model (the default preset's), validation MAE "
        "for MeLU's network; the checkpoint keeps the best epoch's weights "
        f"(default: {_TRAIN.patience})",
    )
    train.add_argument(
        "--average-decay",
        type=_decay,
        help="the taste model: judge and keep an exponential moving average of the epochs' "
        "weights with this decay, 0 for each epoch's own (MeLU's network keeps its best "
        f"epoch's own) (default: {_TRAIN.average_decay})",
    )
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    train.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help=f"training precision (default: {_TRAIN.dtype})",
    )
    train.add_argument(
        "--seed", type=int, help=f"seed of data splits and training (default: {_TRAIN.seed})"
    )
    train.add_argument(
        "--compile",
        action="store_true",
        help="MeLU's network: torch.compile the meta-loss (pays on a GPU)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with its saved configuration (options that differ "
        "from it are refused)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument(
        "--no-onboarding",
        action="store_true",
        help="skip computing the onboarding lists stored in the checkpoint (melu onboarding)",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="cold-start metrics and baselines",
        description="Both protocols: the catalogue ranking a new user gets from 3, 5, 10, 20 "
        "ratings (against popularity, EASE, ALS, item kNN, ...), and MeLU's 10-item protocol.",
    )
    evaluate.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint.pt of a run (melu train --out)"
    )
    _add_data_args(evaluate, dataset=False)
    evaluate.add_argument(
        "--json",
        type=_report_path,
        dest="json_out",
        help="write the report as JSON (its folder must exist; default: not written)",
    )
    evaluate.add_argument(
        "--markdown",
        type=_report_path,
        help="write the report as Markdown (its folder must exist; default: not written)",
    )
    evaluate.add_argument("--warm", action="store_true", help="also report training users")
    evaluate.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N] (default: auto)"
    )
    evaluate.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=1000,
        help="bootstrap resamples for confidence intervals (default: 1000)",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of support draws, bootstrap and baselines (default: 0)",
    )
    evaluate.add_argument(
        "--memory-gb",
        type=_positive_float,
        help="memory the anchors' dense item-item arrays (EASE, EDLAE, GF-CF, RP3beta, content "
        "kNN and prior) may take; one that does not fit is left out and named in the report "
        "(default: 70%% of the memory available when they are fitted)",
    )

    onboarding = sub.add_parser(
        "onboarding",
        help="which movies to ask a new user to rate first",
        description="Print an onboarding list. With --data-dir (or when the checkpoint has "
        "none stored) the lists are computed from the training ratings: MeLU's evidence "
        "score, popularity, popularity x rating entropy, and a diverse re-ordering.",
    )
    onboarding.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint file, or its run folder"
    )
    onboarding.add_argument(
        "--data-dir",
        type=Path,
        help="recompute the lists from this data folder (default: the lists stored in the "
        "checkpoint)",
    )
    onboarding.add_argument(
        "--top", type=_positive, default=20, help="items to print (default: 20)"
    )
    onboarding.add_argument(
        "--strategy",
        choices=("evidence", "popularity", "entropy", "diverse"),
        default="diverse",
        help="which list (default: diverse)",
    )
    onboarding.add_argument(
        "--save", action="store_true", help="store the computed lists in the checkpoint"
    )
    onboarding.add_argument("--json", action="store_true", help="print JSON")

    serve = sub.add_parser(
        "serve",
        help="run the recommendation service",
        description="Serve a checkpoint over HTTP (see service/README.md).",
        epilog=_serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint file, or its run folder"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1, this "
        "machine only)",
    )
    serve.add_argument("--port", type=_port, default=8000, help="1..65535 (default: 8000)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (default: cpu)")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes sharing the port, each with its own copy of the model (default: 1)",
    )
    return parser


def _serve_epilog() -> str:
    """The MELU_* settings, from the settings class itself so that the help never drifts."""
    from service.settings import Settings

    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        if name in ("checkpoint", "device"):
            continue  # options above
        default = "none" if field.default is None else field.default
        lines.append(f"  MELU_{name.upper():<20} {field.description} (default: {default})")
    return "\n".join(lines)


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {value!r}")
    return number


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        from melu.download import download

        paths = download(args.dataset, args.data_dir)
        log.info("%d files ready under %s", len(paths), args.data_dir)
        return 0
    from melu.data import prepare, summary

    cfg = DataConfig.for_dataset(args.dataset, seed=args.seed)
    result = summary(prepare(args.data_dir, cfg))
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for name, row in result["scenarios"].items():
            sys.stdout.write(
                f"{name:>18}: {row['tasks']:>7,} tasks, {row['users']:>7,} users, "
                f"{row['ratings']:>10,} ratings, {row['items']:>6,} items, support "
                f"{row['support_min']}/{row['support_median']:g}/{row['support_max']}\n"
            )
        scale = RatingScale(**result["rating_scale"])
        fields = ", ".join(result["user_fields"]) or "none"
        sys.stdout.write(f"ratings {scale.describe()}; user fields: {fields}\n")
        if "split_time" in result:
            sys.stdout.write(
                f"new users and items: first rating after {result['split_time']['utc']}\n"
            )
    return 0


def _train_configs(args: argparse.Namespace) -> tuple[Any, MetaConfig, TrainConfig, dict[str, Any]]:
    """The configs the options describe, and the options given explicitly (by config field)."""
    preset = PRESETS[args.preset or "default"]
    model_cfg = preset.model
    if args.objective is not None:
        model_cfg = replace(model_cfg, objective=args.objective)
    if args.cooccurrence:
        if model_cfg.objective != "taste":
            raise MeluError("--cooccurrence: only the taste model (--objective taste) has the term")
        model_cfg = replace(model_cfg, cooccurrence=True)
    if args.genre_preference and model_cfg.objective != "taste":
        raise MeluError(
            "--genre-preference: only the taste model (--objective taste) has fast weights"
        )
    if args.genre_preference is not None:
        model_cfg = replace(model_cfg, genre_preference=args.genre_preference)
    if model_cfg.objective != "taste":
        # MeLU's network through --objective rating: the preset's genre preference is the
        # taste model's, not carried over.
        model_cfg = replace(model_cfg, genre_preference=False)
    meta_over = {
        "local_lr": args.local_lr,
        "rating_local_lr": args.rating_local_lr,
        "genre_local_lr": args.genre_local_lr,
        "local_steps": args.local_steps,
        "adapt": args.adapt,
        "fast_weights": tuple(args.fast_weights) if args.fast_weights else None,
        "first_order": args.first_order or None,
        "learn_local_lr": args.learn_local_lr or None,
        "local_update": args.local_update,
    }
    train_over = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "patience": args.patience,
        "average_decay": args.average_decay,
        "seed": args.seed,
        "compile": args.compile or None,
        "dtype": args.dtype,
    }
    # Not given: with the co-occurrence term its own fast weights adapt too, as every one did
    # in the models that had it; MeLU's network has none (the neutral default, which
    # train.check_options takes for "not given").
    base = preset.meta
    if args.fast_weights is None and (args.cooccurrence or model_cfg.objective != "taste"):
        base = replace(base, fast_weights=FAST_WEIGHTS)
    elif args.fast_weights is None and tuple(base.fast_weights) != FAST_WEIGHTS:
        # The preset's fast weights, with the genre preference's as the model has it or not.
        kept = tuple(name for name in base.fast_weights if name != "genre")
        wanted = (*kept, "genre") if model_cfg.genre_preference else kept
        base = replace(base, fast_weights=wanted)
    if not model_cfg.genre_preference:
        base = replace(base, genre_local_lr=None)
    if model_cfg.objective != "taste":
        base = replace(base, rating_local_lr=None)
    meta_cfg = replace(base, **{k: v for k, v in meta_over.items() if v is not None})
    train_cfg = replace(
        TrainConfig(),
        device=args.device,
        **{k: v for k, v in train_over.items() if v is not None},
    )
    given = {f"meta.{k}": v for k, v in meta_over.items() if v is not None}
    given.update({f"train.{k}": v for k, v in train_over.items() if v is not None})
    if (
        args.preset is not None
        or args.objective is not None
        or args.cooccurrence
        or args.genre_preference is not None
    ):
        given["model"] = model_cfg
    return model_cfg, meta_cfg, train_cfg, given


def _check_resume(args: argparse.Namespace, given: dict[str, Any]) -> bool:
    """With ``--resume`` over an existing run: refuse options that differ from the run's saved
    configuration (it would silently keep its own), and say so when the run has finished.
    Returns whether there is training left to do."""
    from melu.checkpoint import load
    from melu.train import item_item_view, kept_weights, unchosen

    path = args.out / "checkpoint.pt"
    if not (args.resume and path.exists()):
        return True
    previous = load(path)
    saved = {"meta": previous.meta, "train": previous.train}
    differ = []
    if args.dataset != previous.data.dataset:
        differ.append(f"--dataset {args.dataset} (the run has {previous.data.dataset})")
    for key, value in given.items():
        if key == "model":
            # As train() settles it for the run's catalogue (the item-item view).
            rated = int(previous.catalogue.recommendable.sum())
            if item_item_view(value, rated) != previous.model:
                differ.append(
                    "--preset/--objective/--cooccurrence/--genre-preference (another model "
                    "configuration)"
                )
            continue
        part, name = key.split(".")
        old = getattr(saved[part], name)
        if old != value:
            flag = "--" + name.replace("_", "-")
            differ.append(f"{flag} {value} (the run has {old})")
    if differ:
        raise MeluError(
            f"{args.out} holds a run with another configuration: {', '.join(differ)}; "
            "--resume continues a run as it was started, so drop those options, or train into "
            "a new folder (--out, or RUN_DIR=... with make)"
        )
    done = int(previous.resume.get("epoch", 0)) if previous.resume else None
    if done is None or done >= previous.train.epochs:
        missing = unchosen(previous)
        if missing and done is not None:
            log.info(
                "%s already %s; choosing on validation users what it lacks: %s",
                args.out,
                _how_it_ended(previous.metrics, previous.train),
                ", ".join(name.replace("_", " ") for name in missing),
            )
            return True
        log.info(
            "%s already %s; it keeps %s. Nothing to resume: train into a new folder to start over",
            args.out,
            _how_it_ended(previous.metrics, previous.train),
            kept_weights(previous.metrics),
        )
        return False
    return True


def _how_it_ended(metrics: dict[str, Any], train_cfg: TrainConfig) -> str:
    from melu.train import stop_measures

    if not metrics.get("stopped_early"):
        return f"finished all {train_cfg.epochs} epochs"
    return (
        f"stopped early after epoch {len(metrics.get('history', []))} (no better "
        f"{stop_measures('best_recall_epoch' in metrics)} for {train_cfg.patience} epochs)"
    )


def _data_config(args: argparse.Namespace, train_cfg: TrainConfig) -> DataConfig:
    """The data a run trains on: with ``--resume`` over a saved run, the run's own (its seed
    picks the validation users and the split: a run trained with ``--seed 1`` and resumed
    without it must not be rebuilt on seed 0's), else the dataset's with the given seed."""
    from melu.checkpoint import load

    path = args.out / "checkpoint.pt"
    if args.resume and path.exists():
        return load(path).data
    return DataConfig.for_dataset(args.dataset, seed=train_cfg.seed)


def _cmd_train(args: argparse.Namespace) -> int:
    from melu.data import prepare
    from melu.train import check_options, kept_weights, resolve_device, train

    resolve_device(args.device)  # fail on a bad device before minutes of data loading
    model_cfg, meta_cfg, train_cfg, given = _train_configs(args)
    if not _check_resume(args, given):
        return 0
    check_options(model_cfg, meta_cfg, train_cfg)  # before minutes of data loading too
    data = prepare(args.data_dir, _data_config(args, train_cfg))
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
        "training %s; %s keeps %s",
        _how_it_ended(result.metrics, result.train),
        args.out / "checkpoint.pt",
        kept_weights(result.metrics),
    )
    if not args.no_onboarding and int(os.environ.get("RANK", "0")) == 0:
        from melu import checkpoint as ckpt

        path = args.out / "checkpoint.pt"
        ck = ckpt.load(path)
        ck.onboarding = _onboarding_lists(ck, None, data)
        ckpt.save(path, ck)
    return 0


def _onboarding_lists(ck: Checkpoint, data_dir: Path | None, data: object = None) -> dict[str, Any]:
    """Compute a checkpoint's onboarding lists from the training ratings (a few seconds)."""
    import torch

    from melu.data import ColdStartData, prepare
    from melu.evaluation.onboarding import choose_lists
    from melu.onboarding import to_checkpoint

    if not isinstance(data, ColdStartData):
        if data_dir is None:
            raise MeluError("give --data-dir: the onboarding lists come from the training ratings")
        data = prepare(data_dir, ck.data, ck.encoder)
    with torch.no_grad():
        lists, _ = choose_lists(ck.learner("cpu"), data)
    log.info("onboarding lists computed (evidence scores in %.1fs)", lists.info["evidence_seconds"])
    return to_checkpoint(lists, ck.catalogue.item_ids)


def _cmd_onboarding(args: argparse.Namespace) -> int:
    from melu import checkpoint as ckpt

    path = args.checkpoint / "checkpoint.pt" if args.checkpoint.is_dir() else args.checkpoint
    ck = ckpt.load(path)
    lists = ck.onboarding
    if args.data_dir is not None or not lists:
        if args.data_dir is None:
            raise MeluError(
                f"{path}: no onboarding lists stored; give --data-dir to compute them "
                "(--save stores them)"
            )
        lists = _onboarding_lists(ck, args.data_dir)
        if args.save:
            ck.onboarding = lists
            ckpt.save(path, ck)
            log.info("stored the onboarding lists in %s", path)
    ids = lists["lists"][args.strategy][: args.top]
    rows = ck.catalogue.rows
    items = [{"item_id": i, "title": ck.catalogue.titles[rows[i]]} for i in ids]
    if args.json:
        sys.stdout.write(json.dumps({"strategy": args.strategy, "items": items}, indent=2) + "\n")
    else:
        for rank, item in enumerate(items, 1):
            sys.stdout.write(f"{rank:>3}. {item['title']} ({item['item_id']})\n")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from melu.evaluation import evaluate_command

    return evaluate_command(
        checkpoint=args.checkpoint,
        data_dir=args.data_dir,
        json_out=args.json_out,
        markdown_out=args.markdown,
        include_warm=args.warm,
        device=args.device,
        bootstrap=args.bootstrap,
        seed=args.seed,
        memory_gb=args.memory_gb,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.main import serve

    serve(
        checkpoint=args.checkpoint,
        host=args.host,
        port=args.port,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
    )
    return 0


COMMANDS = {
    "data": _cmd_data,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "onboarding": _cmd_onboarding,
    "serve": _cmd_serve,
}


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
