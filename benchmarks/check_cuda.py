"""Correctness on a CUDA GPU, run before timing it: the GPU computes melu's meta-gradients.

On real MeLU warm tasks (32 per batch, dropout off so that every variant computes the same
function), compares by relative error ``|a - b| / |b|`` over all meta-gradients:

- the taste model (the default preset's; its co-occurrence fitted as training fits it), its
  meta-loss on the cold-start episodes of those tasks (drawn once, on the CPU): GPU vs CPU,
  float64, second order (training's) and first order;
- MeLU's rating network (5 local steps, second order), the closed-form path on the GPU vs the
  CPU, both float64;
- the closed-form path vs the generic ``vmap`` path on the GPU, float64;
- the compiled path (``torch.compile``, CUDA graphs) vs eager on the GPU, float32.

    python benchmarks/check_cuda.py --data-dir ../shared/data/movielens --json out.json

Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from melu.config import PRESETS, DataConfig, MetaConfig, ModelConfig
from melu.data import ColdStartData, prepare
from melu.learners import build_learner, fit_to_training
from melu.maml import MetaLearner, TaskFeatures, gather
from melu.objectives import Episode, sample_episodes
from melu.taste_learner import TasteLearner

log = logging.getLogger("benchmarks.check_cuda")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens"


def learner_on(
    data: ColdStartData, device: str, dtype: torch.dtype, local_update: str = "auto"
) -> MetaLearner:
    torch.manual_seed(0)
    meta = dataclasses.replace(MetaConfig(), local_update=local_update)  # type: ignore[arg-type]
    learner = build_learner(data.encoder, ModelConfig(), meta)
    assert isinstance(learner, MetaLearner)
    return learner.to(device=device, dtype=dtype).eval()  # eval: no dropout


def taste_on(data: ColdStartData, device: str, first_order: bool) -> TasteLearner:
    """The default preset's taste model in float64, as training starts it (seeded weights,
    co-occurrence fitted), in eval mode: no item-id or user-field dropout."""
    preset = PRESETS["default"]
    torch.manual_seed(0)
    meta = dataclasses.replace(preset.meta, first_order=first_order)
    learner = build_learner(data.encoder, preset.model, meta, data.scale)
    assert isinstance(learner, TasteLearner)
    table = data.catalogue.table.numpy()
    fit_to_training(learner, data.train_ratings, data.catalogue.rows, table)
    return learner.to(device=device, dtype=torch.float64).eval()


def taste_episodes(data: ColdStartData) -> Episode:
    """The episodes training would draw from the 32 tasks, drawn once (seeded, CPU, float64)."""
    preset = PRESETS["default"]
    tasks = data.tasks["warm"].to("cpu", torch.float64)
    return sample_episodes(
        tasks.batch(list(range(0, 32 * 7, 7))),
        data.user_table,
        data.catalogue.table,
        preset.meta.episode_support,
        preset.model.liked_rating,
        vocab_size=data.encoder.item_specs()[0].vocab_size,
        generator=torch.Generator().manual_seed(0),
    )


def taste_grads(learner: TasteLearner, data: ColdStartData, episode: Episode) -> torch.Tensor:
    device = next(learner.parameters()).device
    on = Episode(*(None if t is None else t.to(device) for t in episode))  # type: ignore[arg-type]
    table = data.catalogue.table.to(device)
    loss = learner.losses(on, table, data.catalogue.recommendable.to(device)).mean()
    return grads(learner, loss)


def tasks_on(
    data: ColdStartData, device: str, dtype: torch.dtype, pad_to: int | None
) -> TaskFeatures:
    tasks = data.tasks["warm"].to(torch.device(device), dtype)
    batch = tasks.batch(list(range(0, 32 * 7, 7)), trim=True)
    if pad_to is not None:
        batch = batch.pad_support(pad_to)
    return gather(batch, data.user_table.to(device), data.catalogue.table.to(device))


def grads(learner: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    learner.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.reshape(-1).double().cpu() for p in learner.parameters()])  # type: ignore[union-attr]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", type=Path, dest="json_out")
    p.add_argument("--device", default="cuda", help="cpu only to try this script out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log.error("no CUDA device")
        return 1
    dev = args.device
    data = prepare(args.data_dir, DataConfig(dataset="melu"))
    longest = int(data.tasks["warm"].support_sizes.max())
    f64 = torch.float64
    checks: list[tuple[str, float, float]] = []

    episode = taste_episodes(data)
    for order, first_order in (("second", False), ("first", True)):
        reference = taste_grads(taste_on(data, "cpu", first_order), data, episode)
        gpu_grads = taste_grads(taste_on(data, dev, first_order), data, episode)
        name = f"taste model, {order} order, float64: GPU vs CPU"
        checks.append((name, rel(gpu_grads, reference), 1e-9))

    cpu = learner_on(data, "cpu", f64)
    reference = grads(cpu, cpu.meta_loss(tasks_on(data, "cpu", f64, None)))
    gpu = learner_on(data, dev, f64)
    batch64 = tasks_on(data, dev, f64, None)
    closed = grads(gpu, gpu.meta_loss(batch64))
    checks.append(("closed form float64: GPU vs CPU", rel(closed, reference), 1e-9))
    generic = learner_on(data, dev, f64, local_update="vmap")
    checks.append(
        (
            "closed form vs vmap, GPU float64",
            rel(closed, grads(generic, generic.meta_loss(batch64))),
            1e-9,
        )
    )

    learner = learner_on(data, dev, torch.float32)
    batch32 = tasks_on(data, dev, torch.float32, pad_to=longest)
    eager = grads(learner, learner.meta_loss(batch32))
    compiled_fn = torch.compile(learner.meta_loss, dynamic=False, mode="reduce-overhead")
    for _ in range(3):  # warm-up, CUDA graph recording, then a replay
        torch.compiler.cudagraph_mark_step_begin()
        compiled = grads(learner, compiled_fn(batch32))
    checks.append(("compiled (CUDA graphs) vs eager, GPU float32", rel(compiled, eager), 1e-4))

    ok = all(err <= bound and err == err for _, err, bound in checks)
    rows = [{"check": n, "relative_error": e, "bound": b, "ok": e <= b} for n, e, b in checks]
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        name = torch.cuda.get_device_name() if dev.startswith("cuda") else dev
        report = {"device": name, "torch": torch.__version__, "rows": rows}
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{'check':<48}{'rel. error':>12}{'bound':>9}  ok"]
    lines += [f"{n:<48}{e:>12.2e}{b:>9.0e}  {'yes' if e <= b else 'NO'}" for n, e, b in checks]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
