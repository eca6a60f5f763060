"""The first run as a new user has it: ``make run`` from a fresh clone, timed.

Clones this repository's committed HEAD into a temporary folder, runs ``make run
DATASET=... DATA_DIR=... PORT=...`` there (a new ``.venv``: pip installs everything from
whatever index pip is configured with), and reports when the environment was installed,
when the first checkpoint was written, when ``/health`` first answered (serving), what a
first ``POST /recommend`` returned, and when the background evaluation wrote
``report.json``. Then it stops the server (SIGINT, as Ctrl-C does) and checks that nothing
of the run is left running. Issue 21's target: serving within 3 minutes on 2 cores for
ml-latest-small from a local folder.

    python benchmarks/first_run.py --dataset ml-latest-small \\
        --data-dir ../shared/data/movielens --json results/first_run_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_SERVING_S = 180.0

log = logging.getLogger("first_run")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _recommend(port: int, item_ids: list[int]) -> list[str]:
    ratings = [{"item_id": i, "rating": r} for i, r in zip(item_ids, (5, 4, 5), strict=False)]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/recommend",
        json.dumps({"ratings": ratings, "k": 5}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = json.loads(answer.read())
    return [f"{item['title']} ({item['year']})" for item in body["items"]]


def _still_running(folder: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(folder) in line:
                found.append(line.strip())
    return found


def first_run(dataset: str, data_dir: Path, timeout: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="melu-first-run-"))
    clone = work / "melu"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        port = _free_port()
        run_dir = clone / "runs" / (dataset if dataset != "melu" else "latest")
        command = [
            "make", "run", f"DATASET={dataset}", f"DATA_DIR={data_dir.resolve()}",
            f"PORT={port}",
        ]  # fmt: skip
        log.info("%s (in %s)", " ".join(command), clone)
        started = time.perf_counter()
        output = (work / "make.log").open("w")
        process = subprocess.Popen(
            command, cwd=clone, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        times: dict[str, float | None] = {"installed_s": None, "checkpoint_s": None}
        serving = None
        while time.perf_counter() - started < timeout and process.poll() is None:
            now = time.perf_counter() - started
            if times["installed_s"] is None and (clone / ".venv" / ".installed").is_file():
                times["installed_s"] = now
            if times["checkpoint_s"] is None and (run_dir / "checkpoint.pt").is_file():
                times["checkpoint_s"] = now
            if _get(f"http://127.0.0.1:{port}/health"):
                serving = now
                break
            time.sleep(0.5)
        if serving is None:
            raise SystemExit(f"make run did not serve within {timeout:.0f} s: see {work}/make.log")
        load = os.getloadavg()[0]
        picks = _recommend(port, [1, 260, 1196])  # the same ids in every MovieLens
        report = None
        while time.perf_counter() - started < timeout and process.poll() is None:
            if (run_dir / "report.json").is_file():
                report = time.perf_counter() - started
                break
            time.sleep(1)
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        time.sleep(2)
        left = _still_running(clone)
        return {
            **times,
            "serving_s": serving,
            "report_s": report,
            "load_average_at_serving": load,
            "first_recommendations": picks,
            "left_running_after_ctrl_c": left,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = first_run(args.dataset, args.data_dir, args.timeout)
    result.update(
        dataset=args.dataset,
        target_serving_s=TARGET_SERVING_S,
        met=result["serving_s"] < TARGET_SERVING_S,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine={"cores": os.cpu_count(), "platform": platform.platform()},
        commit=subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
    )
    rows = [
        ("environment installed", result["installed_s"]),
        ("first checkpoint written", result["checkpoint_s"]),
        ("serving (/health answers)", result["serving_s"]),
        ("report.json (background evaluation)", result["report_s"]),
    ]
    print(f"make run DATASET={args.dataset} from a fresh clone (seconds since make started)")
    for name, value in rows:
        print(f"  {name:<38} {'-' if value is None else f'{value:7.1f}'}")
    print(f"  target: serving < {TARGET_SERVING_S:.0f} s: {'met' if result['met'] else 'missed'}")
    print("  first list:", "; ".join(result["first_recommendations"]))
    print("  left running after Ctrl-C:", result["left_running_after_ctrl_c"] or "nothing")
    if args.json:
        # melu.checkpoint.atomic_write_text's steps by hand: this script imports nothing of
        # melu (nor torch), whichever Python runs it.
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
