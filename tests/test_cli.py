"""The command line's first hour: help that describes everything, one-line errors for what a
newcomer gets wrong (ports, settings, report paths, resuming a run with other options)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from melu import checkpoint as ckpt
from melu import cli
from melu.cli import build_parser
from melu.config import DataConfig

REPO = Path(__file__).resolve().parent.parent


def melu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melu", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _subparsers(
    parser: argparse.ArgumentParser, prefix: str = "melu"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, nested ones (``melu data download``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_help_describes_every_flag_with_its_default() -> None:
    """Every option of every command says what it does, and each optional one that takes a
    value gives its default (``melu serve --help`` had none for --host and --port, ``melu
    evaluate --help`` said nothing for --checkpoint and --device)."""
    commands = dict(_subparsers(build_parser()))
    assert {"melu train", "melu evaluate", "melu serve", "melu data download"} <= set(commands)
    for command, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
                continue
            assert action.help, (command, action.option_strings)
            if action.nargs != 0 and not action.required:
                assert "default:" in action.help, (command, action.option_strings)
    serve = commands["melu serve"].format_help()
    assert "(default: 127.0.0.1" in serve and "(default: 8000)" in serve


def test_train_help_says_which_model_each_option_is_for() -> None:
    """Each model is selected on its own measure (--patience); the options of MeLU's network
    say so, and --objective names the presets' models."""
    help_text = " ".join(dict(_subparsers(build_parser()))["melu train"].format_help().split())
    assert "validation Recall@10 from 5 ratings for the taste model" in help_text
    assert "validation MAE for MeLU's network" in help_text
    assert "the checkpoint keeps the best epoch's weights (default: 5)" in help_text
    assert "(default: the preset's, taste for default, rating for melu)" in help_text
    for flag in ("--learn-local-lr", "--adapt {head,all}", "--local-update {auto,vmap}"):
        assert f"{flag} MeLU's network: " in help_text, flag
    assert "--compile MeLU's network: " in help_text
    assert "(default: the preset's; default preset 1, melu 5)" in help_text


def test_serve_help_lists_the_settings() -> None:
    result = melu("serve", "--help")
    assert result.returncode == 0
    for name in ("MELU_MAX_QUEUE", "MELU_REQUEST_TIMEOUT", "MELU_SHUTDOWN_GRACE", "MELU_MAX_K"):
        assert name in result.stdout


def test_serve_errors_are_one_line(small_checkpoint: Path, tmp_path: Path) -> None:
    one_line_error(
        melu("serve", "--checkpoint", str(small_checkpoint), "--port", "99999"), "1..65535"
    )
    bad = melu(
        "serve",
        "--checkpoint",
        str(small_checkpoint),
        env={"MELU_MAX_K": "abc", "MELU_MAX_QUEUE": "0"},
    )
    one_line_error(bad, "MELU_MAX_K='abc'", "MELU_MAX_QUEUE='0'")

    # A port in use is reported before the model loads and before any "try: curl" banner.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = melu("serve", "--checkpoint", str(small_checkpoint), "--port", port)
    one_line_error(result, "already in use", port)
    assert "try:" not in result.stdout + result.stderr

    raw = torch.load(small_checkpoint, weights_only=True)
    name = sorted(raw["state"])[-1]
    raw["state"][name] = torch.zeros(3, 3)
    wrong = tmp_path / "wrong-shape.pt"
    torch.save(raw, wrong)
    one_line_error(melu("serve", "--checkpoint", str(wrong)), "do not fit", name)

    # A plain pickle: torch warned in several lines before refusing it.
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"format": "melu-checkpoint"}, protocol=4))
    one_line_error(melu("serve", "--checkpoint", str(foreign)), "not a readable checkpoint")


def test_evaluate_refuses_a_report_in_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "dir"
    result = melu("evaluate", "--checkpoint", "x.pt", "--markdown", str(missing / "report.md"))
    one_line_error(result, "does not exist")
    assert not missing.parent.exists()


def _run_copy(small_checkpoint: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(small_checkpoint, run / "checkpoint.pt")
    return run


def test_resume_refuses_other_options(
    small_checkpoint: Path, shared_data: Path, tmp_path: Path
) -> None:
    run = _run_copy(small_checkpoint, tmp_path)
    common = ["train", "--data-dir", str(shared_data), "--out", str(run), "--resume"]
    line = one_line_error(
        melu(*common, "--epochs", "5", "--local-steps", "2", "--dataset", "ml-latest-small"),
        "--resume",
    )
    # The default preset's taste model takes one local step.
    assert "--epochs 5 (the run has 1)" in line and "--local-steps 2 (the run has 1)" in line
    assert "--dataset ml-latest-small (the run has melu)" in line
    assert "--out" in line and "RUN_DIR" in line
    # Another model is another run.
    others = (["--objective", "rating"], ["--preset", "melu"], ["--cooccurrence"])
    for option in (*others, ["--no-genre-preference"]):
        line = one_line_error(melu(*common, *option), "--resume")
        assert "--preset/--objective/--cooccurrence/--genre-preference (another model" in line
    # Options equal to the saved ones are fine; the run is finished, and says so, and leaves
    # the checkpoint alone (the Makefile evaluates again only when it changes).
    written = (run / "checkpoint.pt").stat().st_mtime_ns
    done = melu(*common, "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "already finished all 1 epochs" in done.stderr
    assert "resuming" not in done.stderr
    assert (run / "checkpoint.pt").stat().st_mtime_ns == written


def test_resume_rebuilds_the_runs_own_data(small_checkpoint: Path, tmp_path: Path) -> None:
    """`melu train --resume` over a run trained with another seed, the seed left out: the data
    is the run's (its seed picks the validation users and the split), not seed 0's, whose
    vocabularies do not fit the saved weights (before: a traceback over a state-dict size
    mismatch); without a saved run the options decide."""
    run = _run_copy(small_checkpoint, tmp_path)
    saved = ckpt.load(run / "checkpoint.pt")
    assert saved.data.seed == 0
    other = dataclasses.replace(saved.data, seed=1)
    ckpt.save(run / "checkpoint.pt", dataclasses.replace(saved, data=other))
    parser = build_parser()
    args = parser.parse_args(["train", "--out", str(run), "--resume"])
    _, _, train_cfg, _ = cli._train_configs(args)
    assert train_cfg.seed == 0
    assert cli._data_config(args, train_cfg) == other
    fresh = parser.parse_args(["train", "--out", str(tmp_path / "new"), "--resume"])
    assert cli._data_config(fresh, train_cfg) == DataConfig.for_dataset("melu", seed=0)
    plain = parser.parse_args(["train", "--out", str(run), "--seed", "2"])
    _, _, plain_cfg, _ = cli._train_configs(plain)
    assert cli._data_config(plain, plain_cfg) == DataConfig.for_dataset("melu", seed=2)


@pytest.mark.parametrize(
    ("fixture", "measure", "kept"),
    [
        (
            "small_checkpoint",
            "validation Recall@10 from 5 ratings",
            "the weights' moving average (decay 0.5) at epoch 1 (best validation Recall@10 from "
            "5 ratings {best_val_recall:.4f}; validation MAE {best_val_mae:.4f})",
        ),
        (
            "small_rating_checkpoint",
            "validation MAE",
            "the weights of epoch 1 (best validation MAE {best_val_mae:.4f})",
        ),
    ],
)
def test_resume_says_when_a_run_stopped_early(
    request: pytest.FixtureRequest,
    shared_data: Path,
    tmp_path: Path,
    fixture: str,
    measure: str,
    kept: str,
) -> None:
    """Which measure stopped the run (the taste model's Recall@10, MeLU network's MAE), and
    which epoch's weights the checkpoint holds, by that measure (the taste model's: their
    moving average)."""
    run = _run_copy(request.getfixturevalue(fixture), tmp_path)
    saved = ckpt.load(run / "checkpoint.pt")
    saved.metrics = {**saved.metrics, "stopped_early": True}
    ckpt.save(run / "checkpoint.pt", saved)
    result = melu("train", "--data-dir", str(shared_data), "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr
    assert (
        f"stopped early after epoch 1 (no better {measure} for 5 epochs); it keeps "
        f"{kept.format(**saved.metrics)}. Nothing to resume"
    ) in result.stderr


def test_the_taste_model_refuses_options_of_melus_network(tmp_path: Path) -> None:
    """Options the taste model would silently ignore, or cannot train with (torch.compile of
    its second-order steps), are refused in one line before any data is read; MeLU's network
    takes them (and then fails on the missing data folder)."""
    common = ["train", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]
    line = one_line_error(
        melu(*common, "--adapt", "all", "--learn-local-lr", "--compile"),
        "--adapt all, --learn-local-lr, --compile: only for MeLU's rating network",
    )
    assert "--preset melu or --objective rating" in line
    one_line_error(melu(*common, "--local-update", "vmap"), "--local-update vmap: only for")
    one_line_error(
        melu(*common, "--preset", "melu", "--objective", "taste", "--compile"), "--compile: only"
    )
    for model in (["--preset", "melu"], ["--objective", "rating"]):
        line = one_line_error(melu(*common, *model, "--adapt", "all", "--compile"))
        assert "file not found" in line and "only for" not in line
        # The other way round: which fast weights adapt is the taste model's option.
        one_line_error(
            melu(*common, *model, "--fast-weights", "user"),
            "--fast-weights: only for the taste model",
        )
    line = one_line_error(melu(*common, "--fast-weights", "user", "rating_bias"))
    assert "file not found" in line and "only for" not in line
    assert not (tmp_path / "run").exists()


def test_fast_weights_choose_what_the_step_adapts() -> None:
    """`--fast-weights user` configures a taste model whose local step moves the user vector
    alone (docs/results.md's probe; test_taste checks what the step then moves);
    the default adapts the five a model without the co-occurrence term has (the genre
    preference among them), `--cooccurrence` adds the term and its two fast weights (the model
    before stop 34), `--no-genre-preference` drops the genre preference (the model before stop
    36), and an explicit choice counts against --resume."""
    from melu.cli import _train_configs
    from melu.config import COOCCURRENCE_WEIGHTS, FAST_WEIGHTS, PRESETS, adapted_fast_weights

    parser = build_parser()
    _, meta, _, given = _train_configs(
        parser.parse_args(["train", "--out", "x", "--fast-weights", "user"])
    )
    assert meta.fast_weights == ("user",) and given["meta.fast_weights"] == ("user",)
    model, default, _, given = _train_configs(parser.parse_args(["train", "--out", "x"]))
    assert not model.cooccurrence and "meta.fast_weights" not in given
    assert default.fast_weights == PRESETS["default"].meta.fast_weights
    assert set(default.fast_weights) == set(FAST_WEIGHTS) - set(COOCCURRENCE_WEIGHTS)
    assert model.genre_preference and default.genre_local_lr == 2.0
    model, meta, _, given = _train_configs(
        parser.parse_args(["train", "--out", "x", "--cooccurrence"])
    )
    assert model.cooccurrence and meta.fast_weights == FAST_WEIGHTS
    assert "meta.fast_weights" not in given and given["model"] == model
    assert adapted_fast_weights(model, meta) == FAST_WEIGHTS
    # --no-genre-preference: the model before stop 36, its step on the preset's others; with
    # --fast-weights only what is named.
    model, meta, _, given = _train_configs(
        parser.parse_args(["train", "--out", "x", "--no-genre-preference"])
    )
    assert not model.genre_preference and given["model"] == model
    assert meta.fast_weights == ("user", "popularity", "rating_bias", "rating_taste")
    assert meta.genre_local_lr is None
    _, meta, _, _ = _train_configs(
        parser.parse_args(
            ["train", "--out", "x", "--genre-local-lr", "1.0", "--fast-weights", "user"]
        )
    )
    assert meta.fast_weights == ("user",) and meta.genre_local_lr == 1.0
    # MeLU's network through --objective rating: no genre preference, no genre step.
    model, meta, _, _ = _train_configs(
        parser.parse_args(["train", "--out", "x", "--objective", "rating"])
    )
    assert not model.genre_preference and meta.genre_local_lr is None
    _, meta, _, given = _train_configs(
        parser.parse_args(["train", "--out", "x", "--rating-local-lr", "1.5"])
    )
    assert meta.rating_local_lr == 1.5 and given["meta.rating_local_lr"] == 1.5
    assert meta.local_lr == PRESETS["default"].meta.local_lr
    assert PRESETS["default"].meta.rating_local_lr == 0.5
    # MeLU's rating network has one local rate: the default preset's rating step is not
    # carried over to it (check_options would refuse it).
    _, meta, _, _ = _train_configs(
        parser.parse_args(["train", "--out", "x", "--objective", "rating"])
    )
    assert meta.rating_local_lr is None


def test_cooccurrence_weights_need_the_term(tmp_path: Path) -> None:
    """Fast weights of the co-occurrence term, for a model without it, and --cooccurrence for
    MeLU's network, are refused in one line before any data is read."""
    common = ["train", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]
    one_line_error(
        melu(*common, "--fast-weights", "user", "support_weights"),
        "--fast-weights: support_weights: not in this model (--cooccurrence adds",
    )
    one_line_error(
        melu(*common, "--preset", "melu", "--cooccurrence"), "--cooccurrence: only the taste"
    )
    one_line_error(
        melu(*common, "--preset", "melu", "--genre-preference"),
        "--genre-preference: only the taste model",
    )
    line = one_line_error(melu(*common, "--fast-weights", "genre"))
    assert "file not found" in line
    one_line_error(
        melu(*common, "--no-genre-preference", "--fast-weights", "user", "genre"),
        "--fast-weights: genre: not in this model",
    )
    one_line_error(
        melu(*common, "--no-genre-preference", "--genre-local-lr", "1.0"),
        "--genre-local-lr: only with --genre-preference",
    )
    line = one_line_error(melu(*common, "--cooccurrence", "--fast-weights", "support_weights"))
    assert "file not found" in line
    # MeLU's network through --objective: no fast weights to refuse.
    assert "file not found" in one_line_error(melu(*common, "--objective", "rating"))
    # Nor a step size for the rating fast weights, which it has not.
    one_line_error(
        melu(*common, "--preset", "melu", "--rating-local-lr", "0.5"),
        "--rating-local-lr: only for the taste model",
    )
    line = one_line_error(melu(*common, "--rating-local-lr", "0.5"))
    assert "file not found" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("target", ["check-port"])
def test_make_checks_the_port_first(target: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = Path(sys.executable).parent.parent
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            ["make", "-s", target, f"PORT={port}", f"VENV={venv}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"port {port} is in use" in result.stderr


def test_make_evaluates_only_a_newer_checkpoint(tmp_path: Path) -> None:
    """A second `make run` redid the minutes of evaluation before serving: the report is a
    file target, rebuilt only when the checkpoint is newer. ``melu`` is replaced by a script
    that records its commands (and writes the report, as the real one does)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = Path(sys.executable).parent.parent
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "melu"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> "{calls}"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --json ] && : > "$2"; shift; done\n'
    )
    fake.chmod(0o755)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(b"")  # a finished run: `melu train --resume` leaves it alone

    def make_evaluate() -> list[str]:
        calls.write_text("")
        result = subprocess.run(
            ["make", "-s", "evaluate", f"RUN_DIR={run}", f"DATA_DIR={tmp_path}",
             f"VENV={venv}", f"MELU={fake}"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return calls.read_text().split()

    assert make_evaluate() == ["data", "train", "evaluate"]
    assert (run / "report.json").is_file()
    assert make_evaluate() == ["data", "train"]
    # A checkpoint written after the report (training went on) is evaluated again.
    later = (run / "report.json").stat().st_mtime + 10
    os.utime(checkpoint, (later, later))
    assert make_evaluate() == ["data", "train", "evaluate"]


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_make_run_serves_while_it_evaluates(shared_data: Path, tmp_path: Path) -> None:
    """`make run DATASET=ml-latest-small` (one epoch here) answers on its port while the
    evaluation runs in the background (issue 21: serving within 3 minutes of a fresh clone on
    2 cores, where the evaluation alone takes 1.5-4 minutes); stopping the server stops the
    evaluation, and no half-written report is left."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    import urllib.request

    venv = Path(sys.executable).parent.parent
    run = tmp_path / "run"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["make", "-s", "run", "DATASET=ml-latest-small", f"DATA_DIR={shared_data}",
         f"RUN_DIR={run}", "EPOCHS=1", f"PORT={port}", f"VENV={venv}", "THREADS=1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                time.sleep(1)
        assert answer is not None, process.communicate(timeout=30)[0][-3000:]
        ratings = [{"item_id": 1, "rating": 4.5}, {"item_id": 260, "rating": 5}]
        body = json.dumps({"ratings": ratings, "k": 5}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/recommend", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            assert len(json.loads(r.read())["items"]) == 5
        log = run / "evaluate.log"
        assert log.is_file()
        # The background make checks the data and the finished run, then evaluates (minutes):
        # its process names the run's report.
        report = run / "report.json"
        deadline = time.monotonic() + 120
        while not _processes_naming(f"--json {report}") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_naming(f"--json {report}"), log.read_text()[-3000:]
        assert not report.exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _processes_naming(f"--json {report}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_naming(f"--json {report}")
    assert not report.exists()


def test_make_refuses_a_misspelt_variable(tmp_path: Path) -> None:
    """`make run DATASETT=x` (or DATADIR=) went on with the defaults, tried to download into
    data/ and left an empty data/melu/ there: an unknown variable is now an error, before
    anything runs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    data = tmp_path / "data"
    result = subprocess.run(
        ["make", "-s", "data", "DATASETT=x", f"DATA_DIR={data}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "unknown variable DATASETT; this Makefile reads" in result.stderr
    assert "DATA_DIR" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not data.exists()


def test_data_summary_of_ml_latest_small(shared_data: Path) -> None:
    """`melu data summary --json` prints the time split's scenario counts (README, Data)."""
    result = melu("data", "summary", "--dataset", "ml-latest-small", "--data-dir",
                  str(shared_data), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: v["tasks"] for k, v in summary["scenarios"].items()} == {
        "warm": 439, "validation": 49, "new_user": 122, "new_item": 9, "new_user_new_item": 45,
    }  # fmt: skip
    assert summary["split_time"]["utc"] == "2015-07-15T07:02:24+00:00"
    assert summary["rating_scale"] == {"low": 0.5, "high": 5.0, "step": 0.5}
    assert summary["user_fields"] == []
    assert summary["count_rule"]["long_users"] == "truncate"
    assert summary["totals"] == {"ratings": 100_836, "users": 610, "items": 9_724,
                                 "catalogue_items": 9_742}  # fmt: skip


def test_make_runs_each_dataset_in_its_own_folder() -> None:
    """DATASET is one of the variables the Makefile reads (not refused as unknown), and each
    dataset trains, evaluates and serves in its own run folder, so the report target compares
    a dataset's report with that dataset's checkpoint. ``make -n`` prints the commands."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = Path(sys.executable).parent.parent

    def commands(*variables: str, target: str = "run") -> str:
        result = subprocess.run(
            ["make", "-n", target, f"VENV={venv}", *variables],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    small = commands("DATASET=ml-latest-small")
    assert "data download --dataset ml-latest-small" in small
    assert "train --dataset ml-latest-small" in small and "--out runs/ml-latest-small " in small
    assert "serve --checkpoint runs/ml-latest-small/checkpoint.pt" in small
    # run serves while a background `make evaluate` writes the dataset's report.
    assert "-s evaluate" in small and "> runs/ml-latest-small/evaluate.log" in small
    assert "[ -f runs/ml-latest-small/report.json ]" in small
    assert "runs/latest" not in small
    evaluate = commands("DATASET=ml-latest-small", target="evaluate")
    assert "--checkpoint runs/ml-latest-small/checkpoint.pt" in evaluate
    assert "--json runs/ml-latest-small/report.json" in evaluate
    default = commands()
    assert "train --dataset melu" in default and "runs/latest/report.json" in default
