"""Step time of 2 data-parallel CPU workers with and without `train.gather_negatives`.

    python benchmarks/gather_cost.py --out benchmarks/results/gather_cost.json

Two gloo workers (torch.multiprocessing, one thread each, as the loop runs them; no Ray) train the
`local` preset's DF-GAN (32x32, nf=16, batch 32 per worker) with GanMethod, the same code as a
trial; per setting, blocks of `--steps` timed steps with gathering on and off alternate
(`--repeats` times each, after 2 warm-up steps per block), so that a change in the machine's load
hits both alike. A step is one D + one G update with DDP's gradient all-reduce; data loading is
excluded (the batches are loaded first). The DAMSM encoders and the captioner are freshly
initialised: a step's cost does not depend on their weights.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

from t2i_ray.config import apply_overrides, build_config
from t2i_ray.data import registry
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.sweep.space import embedding_row_overrides, loss_row_overrides
from t2i_ray.train.captioner import build_captioner
from t2i_ray.train.damsm import _make_encoders
from t2i_ray.train.method import Assets, build_method

WORLD = 2
# (name, overrides): which batch-coupled terms run. `baseline`: the mismatched pairs only;
# `all`: + DAMSM, F2R, F2F and the re-captioning loss; `dual`: the mismatched pairs and the DTE
# alignment InfoNCE in both steps.
SETTINGS = {
    "baseline": loss_row_overrides("baseline"),
    "all": loss_row_overrides("all"),
    "dual": {**loss_row_overrides("baseline"), **embedding_row_overrides("dual")},
}


def _assets(cfg, vocab) -> Assets:
    torch.manual_seed(0)
    text, image = _make_encoders(cfg, len(vocab))
    captioner = build_captioner(cfg, len(vocab))
    return Assets(SimpleNamespace(text_encoder=text, image_encoder=image, vocab=vocab), captioner)


def _time_block(method, batches, steps: int) -> tuple[float, float]:
    """(wall seconds, this worker's CPU seconds) per step over `steps` steps after 2 warm-up
    steps, both workers in step. CPU time counts what the worker computed whatever else runs on
    the machine (waiting in a collective is not counted)."""
    noise = torch.Generator().manual_seed(0)
    for batch in batches[:2]:
        method.step(batch, noise, contextlib.nullcontext)
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches[2:2 + steps]:
        method.step(batch, noise, contextlib.nullcontext)
    cpu = time.process_time() - cpu
    dist.barrier()
    return (time.perf_counter() - start) / steps, cpu / steps


def _worker(rank: int, store_path: str, out_path: str, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    try:
        base = build_config("local", {"train.num_workers": WORLD, "output_dir": args.output_dir})
        vocab = registry.vocabulary(base, log=lambda s: None)
        data = TextImageDataset(registry.source(base, "train"), vocab, base.data.words_num, train=True, seed=0)
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=0, drop_last=True)
        loader = DataLoader(data, batch_size=base.train.batch_size, sampler=sampler, drop_last=True)
        batches = [b for _, b in zip(range(args.steps + 2), loader)]
        times: dict[str, dict[str, list[float]]] = {}
        for name in args.settings:
            for _ in range(args.repeats):
                for gather in (True, False):
                    cfg = apply_overrides(base, {**SETTINGS[name], "train.gather_negatives": gather})
                    torch.manual_seed(1)
                    method = build_method(cfg, _assets(cfg, vocab))
                    method.prepare(torch.nn.parallel.DistributedDataParallel, lambda m: m, torch.device("cpu"))
                    assert method.gather.active == gather
                    method.train_mode()
                    wall, cpu = _time_block(method, batches, args.steps)
                    mode = "gathered" if gather else "per_worker"
                    times.setdefault(name, {}).setdefault(mode, []).append(wall)
                    times[name].setdefault(mode + "_cpu", []).append(cpu)
                    if rank == 0:
                        print(f"{name} gather={gather}: {wall * 1000:.1f} ms/step, rank 0 CPU {cpu * 1000:.1f} ms/step",
                              flush=True)
        if rank == 0:
            torch.save(times, out_path)
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--repeats", type=int, default=3, help="blocks per setting and gathering mode")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--output-dir", default=None,
                   help="where the shapes vocabulary may be cached (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/gather_cost.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.output_dir = args.output_dir or tmp
        load_before = os.getloadavg()[0]
        mp.spawn(_worker, args=(str(Path(tmp) / "store"), str(Path(tmp) / "times.pt"), args), nprocs=WORLD,
                 join=True)
        times = torch.load(Path(tmp) / "times.pt", weights_only=True)
    cfg = build_config("local")
    rows = []
    for name, modes in times.items():
        on, off = statistics.median(modes["gathered"]), statistics.median(modes["per_worker"])
        on_cpu, off_cpu = statistics.median(modes["gathered_cpu"]), statistics.median(modes["per_worker_cpu"])
        rows.append({"setting": name, "overrides": SETTINGS[name],
                     "ms_per_step_gathered": round(on * 1000, 1), "ms_per_step_per_worker": round(off * 1000, 1),
                     "gathered_over_per_worker": round(on / off, 3),
                     "cpu_ms_per_step_gathered": round(on_cpu * 1000, 1),
                     "cpu_ms_per_step_per_worker": round(off_cpu * 1000, 1),
                     "cpu_gathered_over_per_worker": round(on_cpu / off_cpu, 3),
                     "blocks_ms": {m: [round(t * 1000, 1) for t in v] for m, v in modes.items()}})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the 1-minute load average before and after: on a shared machine the figures are noisy, the
    # ratio (blocks alternate) less so
    out.write_text(json.dumps({
        "workers": WORLD, "threads_per_worker": 1, "backend": "gloo", "resolution": cfg.data.resolution,
        "nf": cfg.model.nf, "batch_per_worker": cfg.train.batch_size, "steps_per_block": args.steps,
        "blocks": args.repeats,
        "statistic": "median over blocks of the mean per step; cpu_*: rank 0's process CPU time",
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
