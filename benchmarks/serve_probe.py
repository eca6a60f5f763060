"""Robustness of `melu serve` under hostile load: starvation, overload, abandoned requests.

Starts `melu serve` (loopback, one torch thread) once per ``--modes`` entry (the model in a
worker process, the default, or in a thread of the server) and runs three bounded scenarios:

* starvation: /recommend throughput of 8 keep-alive clients alone, and beside clients
  flooding ``GET /items`` (1 and 4) or ``GET /health`` (32); each side's clients run in a
  process of their own, at ``--client-nice`` (19 stands for clients on other machines);
* overload: ``--storm`` connections each send one /recommend at the same moment: how many are
  answered, how many refused with 503, latency of each;
* abandonment: ``--quitters`` clients loop for ``--seconds``, each giving up on its request
  after 0.5 s and reconnecting; then how long the server keeps working once they are gone,
  and its resident memory before, right after and a few seconds after.

    python benchmarks/serve_probe.py --checkpoint runs/latest/checkpoint.pt \
        --json results/serve_probe.json

Every loop is bounded by a count or a deadline; everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import (
    REPO,
    Connection,
    _default_data_dir,
    _free_port,
    _get_json,
    build_requests,
    ensure_checkpoint,
    tree_cpu_seconds,
    tree_rss_mb,
)

log = logging.getLogger("serve_probe")
ITEMS = b"GET /items HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
MODES = {
    "process": {"MELU_MODEL_PROCESS": "true"},
    "thread": {"MELU_MODEL_PROCESS": "false"},
}


class Served:
    def __init__(self, checkpoint: Path, env: dict[str, str]) -> None:
        self.checkpoint = checkpoint
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "melu", "--threads", "1", "serve"]
        command += ["--checkpoint", str(checkpoint), "--port", str(self.port)]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=subprocess.DEVNULL,  # the access log
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(OSError):
                if _get_json(f"{self.url}/health")["status"] == "ok":
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = _get_json(f"{self.url}/health")
        return result

    def rss_mb(self) -> float:
        """Resident memory of the server and its model process."""
        return tree_rss_mb(self.process.pid)

    def cpu_s(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _loop(port: int, requests: list[bytes], until: float) -> tuple[int, list[float]]:
    conn = await Connection.open(port)
    ok, latencies, i = 0, [], 0
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            status = await conn.send(requests[i % len(requests)])
            latencies.append(time.perf_counter() - start)
            ok += status == 200
            i += 1
    finally:
        await conn.close()
    return ok, latencies


async def _clients(port: int, requests: list[bytes], n: int, seconds: float) -> dict:
    until = time.perf_counter() + seconds
    shares = [requests[i::n] or requests for i in range(n)]
    results = await asyncio.gather(*(_loop(port, share, until) for share in shares))
    latencies = [x for _, lat in results for x in lat]
    return {
        "rps": sum(ok for ok, _ in results) / seconds,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies else None,
    }


def _client_process(
    port: int, kind: str, n: int, seconds: float, nice: int, checkpoint: Path
) -> subprocess.Popen[str]:
    """``n`` looping clients in a process of their own, at niceness ``nice``."""
    command = ["nice", "-n", str(nice), sys.executable, __file__, "--client", kind]
    command += ["--port", str(port), "--n", str(n), "--seconds", str(seconds)]
    command += ["--checkpoint", str(checkpoint)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def starvation(port: int, checkpoint: Path, flood: str, n: int, seconds: float, nice: int) -> dict:
    """/recommend from 8 clients beside ``n`` clients looping on ``flood``. Each side runs in
    its own process (as other machines would); the flood starts first and ends last."""
    flooders = _client_process(port, flood, n, seconds + 2.0, nice, checkpoint) if n else None
    if flooders is not None:
        time.sleep(1.0)
    recommend = _client_process(port, "recommend", 8, seconds, nice, checkpoint)
    mine = json.loads(recommend.communicate()[0])
    theirs = json.loads(flooders.communicate()[0]) if flooders is not None else {"rps": 0.0}
    return {
        "recommend_rps": mine["rps"],
        "recommend_p50_ms": mine["p50_ms"],
        "flood_rps": theirs["rps"],
    }


async def _one(port: int, request: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        conn = await Connection.open(port)
        try:
            status = await asyncio.wait_for(conn.send(request), 120)
        finally:
            await conn.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        status = -1
    return status, time.perf_counter() - start


async def storm(port: int, requests: list[bytes], clients: int) -> dict:
    answers = await asyncio.gather(
        *(_one(port, requests[i % len(requests)]) for i in range(clients))
    )
    out: dict[str, Any] = {"clients": clients}
    for status in sorted({s for s, _ in answers}):
        times = [t for s, t in answers if s == status]
        out[str(status)] = {"count": len(times), "p50_s": float(np.percentile(times, 50))}
    return out


async def quitters(port: int, requests: list[bytes], clients: int, seconds: float) -> dict:
    until = time.perf_counter() + seconds
    counts = {"sent": 0, "answered": 0}

    async def client(index: int) -> None:
        i = index
        while time.perf_counter() < until:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(requests[i % len(requests)])
                counts["sent"] += 1
                with contextlib.suppress(asyncio.TimeoutError, OSError):
                    if await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5):
                        counts["answered"] += 1
                writer.close()
            i += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"clients": clients, "seconds": seconds, **counts}


def abandonment(server: Served, requests: list[bytes], args: argparse.Namespace) -> dict:

    health0, rss0 = server.health(), server.rss_mb()
    result = asyncio.run(quitters(server.port, requests, args.quitters, args.quit_seconds))
    left = time.perf_counter()
    rss_after = server.rss_mb()
    while server.health()["queued"] and time.perf_counter() - left < 120:
        time.sleep(0.05)
    busy_after = time.perf_counter() - left
    cpu0 = server.cpu_s()
    time.sleep(5.0)
    idle_cpu = server.cpu_s() - cpu0
    health1 = server.health()
    result.update(
        {
            "computed": health1["requests"] - health0["requests"],
            "dropped": health1["dropped"] - health0["dropped"],
            "refused": health1["refused"] - health0["refused"],
            "busy_after_clients_left_s": busy_after,
            "server_cpu_s_in_5_s_after": idle_cpu,
            "rss_mb_before": rss0,
            "rss_mb_right_after": rss_after,
            "rss_mb_5_s_after": server.rss_mb(),
        }
    )
    log.info("quitters: %s", result)
    return result


def _run_clients(args: argparse.Namespace) -> int:
    if args.client == "recommend":
        requests = build_requests(args.checkpoint, 64, 5, 10, seed=0)
    else:
        requests = [ITEMS if args.client == "items" else HEALTH]
    result = asyncio.run(_clients(args.port, requests, args.n, args.seconds))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: train a 1-epoch one")
    parser.add_argument("--data-dir", type=Path, default=_default_data_dir())
    parser.add_argument("--json", type=Path, dest="json_out")
    parser.add_argument("--seconds", type=float, default=5.0, help="per starvation level")
    parser.add_argument("--storm", type=int, default=1000, help="simultaneous requests")
    parser.add_argument("--quitters", type=int, default=400)
    parser.add_argument("--quit-seconds", type=float, default=10.0)
    parser.add_argument("--scenarios", default="starvation,storm,quitters")
    parser.add_argument(
        "--modes",
        default="process,thread",
        help="where the model computes, compared in one run (MELU_MODEL_PROCESS)",
    )
    parser.add_argument(
        "--client-nice",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[0, 19],
        help="niceness of the starvation clients, one run each: 19 stands for clients on "
        "other machines, which would not take the server's cores (default: 0,19)",
    )
    # Internal: one process of looping clients for the starvation scenario.
    parser.add_argument(
        "--client", choices=("recommend", "items", "health"), help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is not None:
        return _run_clients(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    checkpoint = ensure_checkpoint(args.checkpoint, args.data_dir)
    requests = build_requests(checkpoint, 64, 5, 10, seed=0)
    scenarios = args.scenarios.split(",")
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        if mode not in MODES:
            parser.error(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
        log.info("model in %s", mode)
        results[mode] = probe(Served(checkpoint, MODES[mode]), requests, scenarios, args)
    sys.stdout.write(table(results) + "\n")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        out = {"checkpoint": str(checkpoint), "load_average": os.getloadavg(), "modes": results}
        tmp = args.json_out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(args.json_out)
    return 0


def probe(
    server: Served, requests: list[bytes], scenarios: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    try:
        starvation(server.port, server.checkpoint, "items", 0, 2.0, 0)  # warm-up
        levels = {"alone": ("items", 0), "1 x /items": ("items", 1), "4 x /items": ("items", 4)}
        levels["32 x /health"] = ("health", 32)
        for nice in args.client_nice if "starvation" in scenarios else ():
            key = "starvation" if nice == 0 else f"starvation, clients at nice {nice}"
            results[key] = {}
            for name, (flood, n) in levels.items():
                level = starvation(server.port, server.checkpoint, flood, n, args.seconds, nice)
                results[key][name] = level
                log.info("%s, %s: %s", key, name, level)
        if "storm" in scenarios:
            results["storm"] = asyncio.run(storm(server.port, requests, args.storm))
            log.info("storm: %s", results["storm"])
        if "quitters" in scenarios:
            results["quitters"] = abandonment(server, requests, args)
    finally:
        server.stop()
    return results


def table(results: dict[str, Any]) -> str:
    """/recommend's share of its lone throughput beside each flood, and the storm, per mode."""
    modes = list(results)
    lines = ["| /recommend, 8 clients, beside | " + " | ".join(modes) + " |"]
    lines.append("|---|" + "---:|" * len(modes))
    for key in [k for k in results[modes[0]] if k.startswith("starvation")]:
        starved = [results[m][key] for m in modes]
        for level in starved[0]:
            cells = []
            for s in starved:
                rps, alone = s[level]["recommend_rps"], s["alone"]["recommend_rps"]
                cells.append(f"{rps:.1f} ({rps / alone:.0%})" if alone else "-")
            lines.append(f"| {key}: {level} (req/s) | " + " | ".join(cells) + " |")
    if all("storm" in results[m] for m in modes):
        for status in ("200", "503"):
            cells = []
            for m in modes:
                got = results[m]["storm"].get(status)
                cells.append(f"{got['count']}, p50 {got['p50_s']:.2f} s" if got else "0")
            lines.append(f"| storm: {status} | " + " | ".join(cells) + " |")
    if all("quitters" in results[m] for m in modes):
        for key in ("busy_after_clients_left_s", "rss_mb_before", "rss_mb_5_s_after"):
            cells = [f"{results[m]['quitters'][key]:.2f}" for m in modes]
            lines.append(f"| quitters: {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
