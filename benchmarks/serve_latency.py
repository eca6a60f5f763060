"""Latency and throughput of the HTTP service, with micro-batching on and off.

Starts a real server (``python -m uvicorn --factory service.main:create_app``) on a loopback
port for each mode, sends the same requests (5 ratings each, every movie scored, k=10) and
measures:

* p50 / p99 latency with one client sending requests back to back;
* requests per second with 1, 8 and 32 concurrent clients (keep-alive connections).

The load generator is a minimal asyncio HTTP/1.1 client rather than httpx: it shares the CPU
with the server, so it should cost as little as possible. Every loop is bounded by a request
count or a deadline.

    python benchmarks/serve_latency.py --checkpoint runs/x/checkpoint.pt --json results/serve.json

Without ``--checkpoint`` (or if the file is missing) a 1-epoch checkpoint is trained first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "p50_ms_1_client": 10.0,
    "p99_ms_1_client": 30.0,
    "rps_32_clients": 300.0,
    "batching_speedup_32_clients": 3.0,
}

log = logging.getLogger("serve_latency")


def _default_data_dir() -> Path:
    override = os.environ.get("MELU_SHARED_DATA")
    return Path(override) if override else REPO.parent / "shared" / "data" / "movielens"


def ensure_checkpoint(path: Path | None, data_dir: Path) -> Path:
    if path is not None and path.is_file():
        return path
    from melu.config import DataConfig, MetaConfig, ModelConfig, TrainConfig
    from melu.data import prepare
    from melu.train import train

    run_dir = path.parent if path is not None else Path(tempfile.mkdtemp(prefix="melu-bench-"))
    log.info("training a 1-epoch checkpoint into %s", run_dir)
    data = prepare(data_dir, DataConfig(dataset="melu"))
    train(
        data,
        run_dir,
        ModelConfig(),
        MetaConfig(),
        TrainConfig(epochs=1, device="cpu"),
        progress=False,
    )
    return run_dir / "checkpoint.pt"


def build_requests(checkpoint: Path, n: int, ratings: int, k: int, seed: int) -> list[bytes]:
    """``n`` distinct /recommend requests as raw HTTP/1.1 bytes."""
    from melu.checkpoint import load

    ck = load(checkpoint)
    ids = ck.catalogue.item_ids[1:]
    vocab = ck.encoder.user_vocab
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.choice(ids, size=ratings, replace=False)
        body = {
            "ratings": [
                {"item_id": int(i), "rating": int(r)}
                for i, r in zip(items, rng.integers(1, 6, size=ratings), strict=True)
            ],
            "user": {f: str(rng.choice(vocab[f].tokens)) for f in ("gender", "age", "occupation")},
            "k": k,
        }
        payload = json.dumps(body).encode()
        head = (
            "POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        out.append(head + payload)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Server:
    """One service process; stopped (and waited for) on exit."""

    def __init__(self, checkpoint: Path, batching: bool, args: argparse.Namespace) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "MELU_CHECKPOINT": str(checkpoint),
            "MELU_MICRO_BATCHING": "true" if batching else "false",
            "MELU_LOCAL_STEPS": str(args.local_steps),
            "MELU_BATCH_MAX_WAIT_MS": str(args.batch_max_wait_ms),
        }
        if args.torch_threads:
            env["MELU_TORCH_THREADS"] = str(args.torch_threads)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(command, cwd=REPO, env=env)
        deadline = time.monotonic() + args.start_timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with status {self.process.returncode}")
            try:
                if _get_json(f"{self.url}/health")["status"] == "ok":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not start in time")
            time.sleep(0.2)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = _get_json(f"{self.url}/health")
        return result

    def cpu_seconds(self) -> float:
        """CPU time the server has used (all threads): unlike wall time, other jobs on the
        machine barely change it, so it is the steadier measure of our own cost."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Connection:
    """A keep-alive HTTP/1.1 connection that sends prepared requests and reads responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


async def sequential(port: int, requests: list[bytes], count: int, limit_s: float) -> dict:
    conn = await Connection.open(port)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + limit_s
    try:
        for i in range(count):
            start = time.perf_counter()
            status = await conn.send(requests[i % len(requests)])
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            if start > deadline:
                break
    finally:
        await conn.close()
    return {"requests": len(latencies), "errors": errors, **_percentiles(latencies)}


async def closed_loop(port: int, requests: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` connections, each sending its next request as soon as the last returns."""
    conns = [await Connection.open(port) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def client(index: int, conn: Connection) -> None:
        nonlocal errors
        i = index
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status = await conn.send(requests[i % len(requests)])
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
            i += clients

    try:
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    finally:
        elapsed = time.perf_counter() - start
        for conn in conns:
            await conn.close()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        **_percentiles(latencies),
    }


def run_mode(
    checkpoint: Path, batching: bool, requests: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    mode = "batched" if batching else "unbatched"
    log.info("starting the %s server", mode)
    server = Server(checkpoint, batching, args)
    try:
        # Warm-up: first requests pay allocator and code-path setup.
        asyncio.run(closed_loop(server.port, requests, max(args.clients), args.warmup))
        health = [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
        result: dict[str, Any] = {
            # The HTTP stack alone, for comparison: a request that does no model work.
            "health_1_client": asyncio.run(sequential(server.port, health, 200, args.duration)),
        }
        cpu = server.cpu_seconds()
        latency = asyncio.run(
            sequential(server.port, requests, args.latency_requests, args.duration * 4)
        )
        latency["server_cpu_ms_per_request"] = (
            (server.cpu_seconds() - cpu) * 1e3 / latency["requests"]
        )
        result["latency_1_client"] = latency
        result["throughput"] = {}
        for clients in args.clients:
            before, cpu = server.health(), server.cpu_seconds()
            level = asyncio.run(closed_loop(server.port, requests, clients, args.duration))
            after = server.health()
            level["server_cpu_ms_per_request"] = (
                (server.cpu_seconds() - cpu) * 1e3 / max(1, level["requests"])
            )
            batches = max(1, after["batches"] - before["batches"])
            level["mean_batch"] = (after["requests"] - before["requests"]) / batches
            result["throughput"][str(clients)] = level
            log.info("%s, %d clients: %.1f req/s", mode, clients, level["rps"])
        return result
    finally:
        server.stop()


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(results: dict[str, Any], clients: list[int]) -> dict[str, Any]:
    rows = [
        f"{'mode':<10} {'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
        f"{'cpu ms/req':>10}"
    ]
    for mode, res in results.items():
        h = res["health_1_client"]
        rows.append(
            f"{mode:<10} {'/health':>8} {1e3 / h['mean_ms']:>8.1f} {h['p50_ms']:>8.2f} "
            f"{h['p99_ms']:>8.2f}"
        )
        lat = res["latency_1_client"]
        rows.append(
            f"{mode:<10} {'1 seq':>8} {1e3 / lat['mean_ms']:>8.1f} {lat['p50_ms']:>8.2f} "
            f"{lat['p99_ms']:>8.2f} {'':>6} {lat['server_cpu_ms_per_request']:>10.2f}"
        )
        for c in clients:
            t = res["throughput"][str(c)]
            rows.append(
                f"{mode:<10} {c:>8} {t['rps']:>8.1f} {t['p50_ms']:>8.2f} {t['p99_ms']:>8.2f} "
                f"{t['mean_batch']:>6.1f} {t['server_cpu_ms_per_request']:>10.2f}"
            )
    top = str(max(clients))
    on, off = results.get("batched"), results.get("unbatched")
    summary: dict[str, Any] = {}
    if on is not None:
        lat = on["latency_1_client"]
        summary["p50_ms_1_client"] = lat["p50_ms"]
        summary["p99_ms_1_client"] = lat["p99_ms"]
        summary[f"rps_{top}_clients"] = on["throughput"][top]["rps"]
    if on is not None and off is not None:
        summary[f"batching_speedup_{top}_clients"] = (
            on["throughput"][top]["rps"] / off["throughput"][top]["rps"]
        )
        for c in clients:
            summary[f"speedup_{c}_clients"] = (
                on["throughput"][str(c)]["rps"] / off["throughput"][str(c)]["rps"]
            )
    rows.append("")
    rows.append(f"{'target':<34} {'goal':>8} {'measured':>9}")
    for key, goal in TARGETS.items():
        if key not in summary:
            continue
        value = summary[key]
        higher = key.startswith(("rps", "batching"))
        ok = value >= goal if higher else value <= goal
        sign = ">=" if higher else "<="
        rows.append(f"{key:<34} {sign}{goal:>6g} {value:>9.2f}  {_mark(ok)}")
    for c in clients:
        key = f"speedup_{c}_clients"
        if key in summary:
            rows.append(f"{key:<34} {'':>8} {summary[key]:>9.2f}")
    sys.stdout.write("\n".join(rows) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: train a 1-epoch one")
    parser.add_argument("--data-dir", type=Path, default=_default_data_dir())
    parser.add_argument("--json", type=Path, dest="json_out", help="write the results here")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up")
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--ratings", type=int, default=5, help="ratings per request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-max-wait-ms", type=float, default=2.0)
    parser.add_argument("--torch-threads", type=int, help="MELU_TORCH_THREADS for the server")
    parser.add_argument("--modes", default="batched,unbatched")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    checkpoint = ensure_checkpoint(args.checkpoint, args.data_dir)
    requests = build_requests(checkpoint, 64, args.ratings, args.k, seed=0)
    results = {}
    for mode in args.modes.split(","):
        results[mode] = run_mode(checkpoint, mode == "batched", requests, args)
    summary = report(results, args.clients)
    if args.json_out is not None:
        out = {
            "checkpoint": str(checkpoint),
            "settings": {
                "ratings": args.ratings,
                "k": args.k,
                "local_steps": args.local_steps,
                "batch_max_wait_ms": args.batch_max_wait_ms,
                "torch_threads": args.torch_threads,
                "duration_s": args.duration,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "results": results,
            "summary": summary,
            "targets": TARGETS,
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")
        log.info("wrote %s", args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
