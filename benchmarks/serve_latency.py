"""Latency and throughput of the HTTP service, with micro-batching on and off.

Starts a real server (``melu serve``) on a loopback port for each mode, sends the same
requests (5 ratings each on the checkpoint's scale, the user fields the model reads, every
movie scored, k=10) and measures:

* p50 / p99 latency with one client sending requests back to back;
* requests per second with 1, 8 and 32 concurrent clients (keep-alive connections);
* with ``--workers 1,2``: the same with several server processes sharing the port;
* with ``--catalogue-sizes 62000,100000``: latency at one client against the size of the
  catalogue, on synthetic catalogues whose items draw each feature field (rate, year, genres,
  directors, actors, id) from a random real movie, so that they use the real vocabularies
  (and, for the taste model, the real co-occurrence: an item with a real movie's id is
  recommendable and co-occurs as that movie does).

The load generator is a minimal asyncio HTTP/1.1 client rather than httpx: it shares the CPU
with the server, so it should cost as little as possible. Every loop is bounded by a request
count or a deadline.

    python benchmarks/serve_latency.py --checkpoint runs/x/checkpoint.pt --json results/serve.json

Without ``--checkpoint`` (or if the file is missing) a 1-epoch checkpoint of the default
preset (the taste model) is trained first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
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
    "onboarding_p50_ms": 5.0,
}

log = logging.getLogger("serve_latency")


def _default_data_dir() -> Path:
    override = os.environ.get("MELU_SHARED_DATA")
    return Path(override) if override else REPO.parent / "shared" / "data" / "movielens"


def ensure_checkpoint(path: Path | None, data_dir: Path) -> Path:
    if path is not None and path.is_file():
        return path
    from melu.config import PRESETS, DataConfig, TrainConfig
    from melu.data import prepare
    from melu.train import train

    run_dir = path.parent if path is not None else Path(tempfile.mkdtemp(prefix="melu-bench-"))
    log.info("training a 1-epoch checkpoint of the default preset into %s", run_dir)
    data = prepare(data_dir, DataConfig(dataset="melu"))
    preset = PRESETS["default"]
    train(
        data,
        run_dir,
        preset.model,
        preset.meta,
        TrainConfig(epochs=1, device="cpu"),
        progress=False,
    )
    return run_dir / "checkpoint.pt"


def build_requests(checkpoint: Path, n: int, ratings: int, k: int, seed: int) -> list[bytes]:
    """``n`` distinct /recommend requests as raw HTTP/1.1 bytes: ratings drawn from the
    checkpoint's scale, values of the closed user fields the model reads (none for the CSV
    releases)."""
    from melu.checkpoint import load

    ck = load(checkpoint)
    ids = ck.catalogue.item_ids[1:]
    vocab = ck.encoder.user_vocab
    fields = [
        f
        for f in ("gender", "age", "occupation")
        if f in ck.encoder.user_fields and f in ck.model.user_fields
    ]
    levels = np.asarray(ck.data.scale.values())
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.choice(ids, size=ratings, replace=False)
        body: dict[str, Any] = {
            "ratings": [
                {"item_id": int(i), "rating": float(r)}
                for i, r in zip(items, rng.choice(levels, size=ratings), strict=True)
            ],
            "k": k,
        }
        if fields:
            body["user"] = {f: str(rng.choice(vocab[f].tokens)) for f in fields}
        payload = json.dumps(body).encode()
        head = (
            "POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        out.append(head + payload)
    return out


def synthetic_checkpoint(checkpoint: Path, size: int, out: Path, seed: int = 0) -> Path:
    """``checkpoint`` with a synthetic catalogue of ``size`` items (ids 1..size): each item
    takes every feature field from an independently drawn real movie."""
    import torch

    from melu.checkpoint import load, save
    from melu.data import Catalogue

    ck = load(checkpoint)
    real = ck.catalogue.table[1:]
    rng = np.random.default_rng(seed)
    columns = []
    for spec in ck.encoder.item_specs():
        donors = torch.from_numpy(rng.integers(0, real.shape[0], size))
        columns.append(real[donors, spec.start : spec.start + spec.width])
    table = torch.cat([torch.zeros(1, real.shape[1], dtype=real.dtype), torch.cat(columns, 1)])
    ids = np.arange(-1, size, dtype=np.int64) + 1
    ids[0] = -1
    titles = ["", *(f"Synthetic movie {i}" for i in range(1, size + 1))]
    ck.catalogue = Catalogue(item_ids=ids, titles=titles, table=table)
    save(out, ck)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it: uvicorn's worker processes and each one's model
    process (service/worker.py), whose CPU and memory are the server's too."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User plus system CPU seconds of ``root`` and every process below it."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of ``root`` and every process below it."""
    total = 0.0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


class Server:
    """One service process; stopped (and waited for) on exit."""

    def __init__(
        self, checkpoint: Path, batching: bool, args: argparse.Namespace, workers: int = 1
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MELU_MICRO_BATCHING": "true" if batching else "false",
            "MELU_BATCH_MAX_WAIT_MS": str(args.batch_max_wait_ms),
            # Closed-loop clients never exceed their own count; the bound is for open load.
            "MELU_MAX_QUEUE": "1024",
        }
        if args.local_steps is not None:
            env["MELU_LOCAL_STEPS"] = str(args.local_steps)
        if args.torch_threads:
            env["MELU_TORCH_THREADS"] = str(args.torch_threads)
        if getattr(args, "retrieval_fraction", 0.0):
            env["MELU_RETRIEVAL_FRACTION"] = str(args.retrieval_fraction)
        command = [sys.executable, "-m", "melu", "serve", "--checkpoint", str(checkpoint)]
        command += ["--port", str(self.port), "--workers", str(workers)]
        # `melu serve` as deployed; its access log (stdout) would cost the load generator.
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
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
        """CPU time the server has used (all threads and workers): unlike wall time, other
        jobs on the machine barely change it, so it is the steadier measure of our own cost."""
        return tree_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.process.pid)

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
    checkpoint: Path,
    batching: bool,
    requests: list[bytes],
    args: argparse.Namespace,
    workers: int = 1,
) -> dict[str, Any]:
    mode = "batched" if batching else "unbatched"
    log.info("starting the %s server (%d workers)", mode, workers)
    server = Server(checkpoint, batching, args, workers)
    try:
        # Warm-up: first requests pay allocator and code-path setup.
        asyncio.run(closed_loop(server.port, requests, max(args.clients), args.warmup))
        health = [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
        result: dict[str, Any] = {
            # The HTTP stack alone, for comparison: a request that does no model work.
            "health_1_client": asyncio.run(sequential(server.port, health, 200, args.duration)),
        }
        onboarding = [b"GET /onboarding?n=20 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
        first = asyncio.run(sequential(server.port, onboarding, 1, args.duration))
        if first["errors"] == 0:  # a checkpoint without onboarding lists answers 404
            result["onboarding_1_client"] = asyncio.run(
                sequential(server.port, onboarding, 200, args.duration)
            )
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
            # /health answers from one worker: with several, its counters are not the server's.
            level["mean_batch"] = (
                (after["requests"] - before["requests"]) / batches if workers == 1 else math.nan
            )
            result["throughput"][str(clients)] = level
            log.info("%s, %d clients: %.1f req/s", mode, clients, level["rps"])
        return result
    finally:
        server.stop()


def retrieval_recall(path: Path, args: argparse.Namespace, n: int = 20) -> float:
    """Mean share of the exhaustive top k that the retrieval stage also returns (in-process,
    the same requests as the latency run)."""
    import torch

    from melu.checkpoint import load
    from service.recommender import Job, Recommender, TopK

    torch.set_num_threads(args.torch_threads or 1)
    ck = load(path)
    exact = Recommender(ck, torch.device("cpu"), args.local_steps)
    approx = Recommender(
        ck, torch.device("cpu"), args.local_steps, retrieval_fraction=args.retrieval_fraction
    )
    rng = np.random.default_rng(1)
    users = ck.encoder.encode_user({})
    levels = ck.data.scale.values()
    shares = []
    for _ in range(n):
        rows = tuple(
            int(r) for r in rng.choice(np.arange(1, len(exact) + 1), args.ratings, replace=False)
        )
        ratings = tuple(float(rng.choice(levels)) for _ in rows)
        job = Job(tuple(users), rows, ratings, TopK(args.k, None))
        want = {it.row for it in exact.run([job])[0].items}
        got = {it.row for it in approx.run([job])[0].items}
        shares.append(len(want & got) / len(want))
    return float(np.mean(shares))


def catalogue_curve(checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Latency at one client (sequential, bounded by count and time) per catalogue size."""
    curve: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="melu-catalogue-") as tmp:
        for size in args.catalogue_sizes:
            path = synthetic_checkpoint(checkpoint, size, Path(tmp) / f"{size}.pt")
            requests = build_requests(path, 32, args.ratings, args.k, seed=0)
            server = Server(path, True, args)
            try:
                asyncio.run(sequential(server.port, requests, 5, args.duration))  # warm-up
                cpu = server.cpu_seconds()
                level = asyncio.run(
                    sequential(server.port, requests, args.latency_requests, args.duration)
                )
                level["server_cpu_ms_per_request"] = (
                    (server.cpu_seconds() - cpu) * 1e3 / level["requests"]
                )
                level["server_rss_mb"] = server.rss_mb()
            finally:
                server.stop()
            if args.retrieval_fraction:
                level["recall_at_k"] = retrieval_recall(path, args)
            curve[str(size)] = level
            log.info(
                "%d items: p50 %.1f ms, p99 %.1f ms, %.1f ms CPU per request, RSS %.0f MB, "
                "recall %s",
                size,
                level["p50_ms"],
                level["p99_ms"],
                level["server_cpu_ms_per_request"],
                level["server_rss_mb"],
                level.get("recall_at_k", "-"),
            )
            path.unlink()
    rows = [f"{'items':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} {'RSS MB':>8}"]
    for size, level in curve.items():
        rows.append(
            f"{int(size):>9} {level['p50_ms']:>8.1f} {level['p99_ms']:>8.1f} "
            f"{level['server_cpu_ms_per_request']:>10.1f} {level['server_rss_mb']:>8.0f}"
        )
    sys.stdout.write("\n".join(rows) + "\n")
    return curve


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
        if "onboarding_1_client" in on:
            summary["onboarding_p50_ms"] = on["onboarding_1_client"]["p50_ms"]
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
    parser.add_argument(
        "--local-steps", type=int, help="MELU_LOCAL_STEPS (default: the checkpoint's)"
    )
    parser.add_argument("--batch-max-wait-ms", type=float, default=2.0)
    parser.add_argument("--torch-threads", type=int, help="MELU_TORCH_THREADS for the server")
    parser.add_argument("--modes", default="batched,unbatched")
    parser.add_argument(
        "--workers", default="1", help="server processes, e.g. 1,2 (batched mode for >1)"
    )
    parser.add_argument(
        "--retrieval-fraction",
        type=float,
        default=0.0,
        help="MELU_RETRIEVAL_FRACTION for the servers (and recall@k in the catalogue curve)",
    )
    parser.add_argument(
        "--catalogue-sizes",
        default="",
        help="also measure 1-client latency on synthetic catalogues of these sizes",
    )
    parser.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.catalogue_sizes = [int(c) for c in args.catalogue_sizes.split(",") if c]
    workers = [int(w) for w in args.workers.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    checkpoint = ensure_checkpoint(args.checkpoint, args.data_dir)
    requests = build_requests(checkpoint, 64, args.ratings, args.k, seed=0)
    results = {}
    for mode in args.modes.split(","):
        if mode:
            results[mode] = run_mode(checkpoint, mode == "batched", requests, args)
    for n in workers:
        if n > 1:
            results[f"batched-{n}w"] = run_mode(checkpoint, True, requests, args, workers=n)
    summary = report(results, args.clients) if results else {}
    curve = catalogue_curve(checkpoint, args) if args.catalogue_sizes else None
    if args.json_out is not None:
        out = {
            "checkpoint": str(checkpoint),
            "settings": {
                "ratings": args.ratings,
                "k": args.k,
                "local_steps": args.local_steps,
                "batch_max_wait_ms": args.batch_max_wait_ms,
                "torch_threads": args.torch_threads,
                "retrieval_fraction": args.retrieval_fraction,
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
            "catalogue_curve": curve,
            "targets": TARGETS,
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")
        log.info("wrote %s", args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
