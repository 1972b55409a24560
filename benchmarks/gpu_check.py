"""What CI cannot check without a GPU: bf16 + channels_last against float32 per architecture
(loss agreement, images/s, peak memory), the diffusion step, and a 1-worker NCCL sweep.

    python benchmarks/gpu_check.py --device cuda --sweep --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check_cpu.json   # the same code on a CPU, seconds

`benchmarks/gpu_check.sh` runs the first line with a time limit. Per architecture (DF-GAN,
SSA-GAN, AttnGAN+StyleGAN2) and resolution (64 and 256 px; --tiny: 32 px, nf 4, batch 2), and for
the diffusion method: the training method the loop trains (t2i_ray/train/method.py) is built twice
from the same seed, once in float32 (train.amp=off, channels_last=off) and once with bf16 autocast
and channels_last (train.amp=bf16, channels_last=on, t2i_ray/train/accel.py), on the same batches
with the same noise; reported per setting:
  - the losses of the first two steps under both and their largest difference, relative for losses
    above 1 and absolute below (both runs start from the same weights, so this is bf16's round-off
    and one step of its drift, not training drift; `agree`: below --tolerance);
  - images/s over --steps timed steps after 2 warm-up steps (CUDA: synchronised);
  - peak GPU memory of the setting (torch.cuda.max_memory_allocated; None on a CPU).
With --sweep, `sweeps/ablate_losses.py --preset ci --rows baseline --seeds 0 1 --use-gpu` runs in a
subprocess: two 1-worker trials, each under a TorchTrainer with the NCCL backend (GPU trials keep
their worker group, t2i_ray/sweep/run.py `runs_in_trial`); its wall time, exit status and rows.
The DAMSM encoders and the captioner are freshly initialised (a step's cost and the precision
check do not depend on their weights); the data are `shapes` images drawn at each resolution.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("dfgan", "ssagan", "attngan_style")


def _build(cfg, vocab, device, accel, seed: int = 0):
    """The method of `cfg` on `device` with `accel`, from seed `seed` (weights and encoders alike)."""
    from t2i_ray.train.captioner import build_captioner
    from t2i_ray.train.damsm import _make_encoders
    from t2i_ray.train.method import Assets, build_method

    torch.manual_seed(seed)
    text, image = _make_encoders(cfg, len(vocab))
    captioner = build_captioner(cfg, len(vocab)) if cfg.loss.recap > 0 else None
    method = build_method(cfg, Assets(SimpleNamespace(text_encoder=text, image_encoder=image, vocab=vocab), captioner))
    method.prepare(lambda m: m.to(device), accel.prepare_module, device)
    method.train_mode()
    return method


def _batches(cfg, vocab, n: int):
    from t2i_ray.data import registry
    from t2i_ray.data.dataset import TextImageDataset
    from t2i_ray.train.method import method_class

    data = TextImageDataset(registry.source(cfg, "train"), vocab, cfg.data.words_num, train=True, seed=0,
                            layouts=method_class(cfg).needs_layouts(cfg))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=False, drop_last=True)
    out = [b for _, b in zip(range(n), loader)]
    if len(out) < n:
        raise ValueError(f"{len(data)} training images give only {len(out)} batches of {cfg.train.batch_size}")
    return out


def run_setting(cfg, vocab, device: torch.device, steps: int) -> dict:
    """First-step losses, images/s and peak memory of one precision setting of `cfg`."""
    from t2i_ray.train.accel import resolve_accel

    accel = resolve_accel(cfg.train, device)
    accel.apply_backend_flags()
    method = _build(cfg, vocab, device, accel)
    batches = [accel.prepare_batch(b) for b in _batches(cfg, vocab, steps + 2)]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    noise = torch.Generator().manual_seed(7)
    first = method.step(batches[0], noise, accel.autocast)
    second = method.step(batches[1], noise, accel.autocast)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[2:]:
        method.step(batch, noise, accel.autocast)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"accel": accel.describe(), "first_step_losses": {k: float(v) for k, v in first.items()},
            "second_step_losses": {k: float(v) for k, v in second.items()},
            "images_per_s": round(steps * cfg.train.batch_size / seconds, 2),
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None}


def compare(cfg, vocab, device: torch.device, steps: int, tolerance: float) -> dict:
    """float32 against bf16 + channels_last for one config: both settings and their agreement."""
    from t2i_ray.config import apply_overrides

    fp32 = run_setting(apply_overrides(cfg, {"train.amp": "off", "train.channels_last": "off"}), vocab, device, steps)
    bf16 = run_setting(apply_overrides(cfg, {"train.amp": "bf16", "train.channels_last": "on"}), vocab, device, steps)
    # relative to the loss, or absolute for losses below 1 (a hinge loss near 0 has no scale of its
    # own); over the first two steps (a zero-initialised output layer, as the diffusion U-Net's,
    # makes the first step's loss independent of the precision)
    rel: dict[str, float] = {}
    for which in ("first_step_losses", "second_step_losses"):
        a, b = fp32[which], bf16[which]
        for k in a.keys() & b.keys():
            rel[k] = max(rel.get(k, 0.0), abs(a[k] - b[k]) / max(abs(a[k]), 1.0))
    worst = max(rel.values()) if rel else math.nan
    return {"float32": fp32, "bf16_channels_last": bf16,
            "max_rel_loss_diff": round(worst, 5), "worst_loss": max(rel, key=rel.get) if rel else None,
            "agree": bool(worst <= tolerance) and all(math.isfinite(v) for v in bf16["second_step_losses"].values()),
            "speedup": round(bf16["images_per_s"] / fp32["images_per_s"], 3)}


def configs(tiny: bool, output_dir: str):
    """(label, config) per checked setting: every GAN architecture at each resolution, then diffusion."""
    from t2i_ray.config import build_config

    common = {"output_dir": output_dir, "train.torch_threads": 1, "train.cudnn_benchmark": True}
    if tiny:
        sizes = [(32, {"model.nf": 4, "train.batch_size": 2, "data.num_train": 64})]
    else:
        sizes = [(64, {"model.nf": 32, "train.batch_size": 32, "data.num_train": 32 * 12}),
                 (256, {"model.nf": 32, "train.batch_size": 8, "data.num_train": 96})]
    out = []
    for res, size in sizes:
        for arch in ARCHS:
            out.append((f"{arch}@{res}", build_config("ci", {**common, **size, "data.resolution": res,
                                                                 "model.arch": arch})))
    res, size = sizes[0]
    diffusion = {"model.method": "diffusion", "train.batch_size": 16}  # diffusion.* defaults: the U-Net of benchmarks/diffusion_step.py
    if tiny:
        diffusion = {"model.method": "diffusion", "diffusion.dim": 8, "diffusion.dim_mults": "1,2",
                     "diffusion.blocks": "1,1", "diffusion.attention_levels": "0,1"}
    out.append((f"diffusion@{res}", build_config("ci", {**common, **size, "data.resolution": res, **diffusion})))
    return out


def run_sweep_check(output_dir: str, timeout: int) -> dict:
    """The 1-worker GPU sweep of two `ci` trials in a subprocess, as a user runs it."""
    cmd = [sys.executable, str(REPO / "sweeps" / "ablate_losses.py"), "--preset", "ci", "--rows", "baseline",
           "--seeds", "0", "1", "--use-gpu", "--output-dir", output_dir]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=output_dir)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, text = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
    result = {"command": " ".join(cmd[1:]), "returncode": code, "wall_s": round(time.time() - start, 1),
              "accel_lines": [line for line in text.splitlines() if "'device': 'cuda" in line][:4],
              "nccl": "nccl" in text.lower(), "output_tail": text[-3000:]}
    try:
        from t2i_ray.sweep import store

        rows = store.load_results(Path(output_dir))
        result["rows"] = rows[[c for c in ("run_name", "status", "error", "fid", "wall_time_s", "step")
                               if c in rows.columns]].to_dict("records")
    except Exception as exc:  # no table: the output tail says why
        result["rows_error"] = f"{type(exc).__name__}: {exc}"
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="32 px, nf 4, batch 2: checks the code path in seconds")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 10; --tiny: 1)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="largest first-step loss difference bf16 vs float32 (relative, absolute below 1) "
                        "counted as agreeing")
    p.add_argument("--sweep", action="store_true", help="also the 1-worker --use-gpu sweep of two ci trials")
    p.add_argument("--sweep-timeout", type=int, default=240)
    p.add_argument("--only", nargs="+", default=None, help="labels to check (e.g. dfgan@64 diffusion@64)")
    p.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu --tiny to check the code path")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    steps = args.steps or (1 if args.tiny else 10)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    from t2i_ray.data import registry

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="t2i-gpu-check-") as tmp:
        checks = {}
        for label, cfg in configs(args.tiny, tmp):
            if args.only and label not in args.only:
                continue
            vocab = registry.vocabulary(cfg, log=lambda s: None)
            t0 = time.time()
            try:
                checks[label] = compare(cfg, vocab, device, steps, args.tolerance)
            except Exception as exc:  # one failing setting must not hide the others' figures
                checks[label] = {"error": f"{type(exc).__name__}: {exc}", "agree": False}
            checks[label]["seconds"] = round(time.time() - t0, 1)
            print(label, json.dumps({k: v for k, v in checks[label].items() if k not in ("float32", "bf16_channels_last")}),
                  flush=True)
        sweep = run_sweep_check(str(Path(tmp) / "sweep"), args.sweep_timeout) if args.sweep else None
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "tiny": args.tiny, "steps": steps, "tolerance": args.tolerance, "checks": checks, "sweep": sweep,
        "all_agree": all(c.get("agree") for c in checks.values()),
        "sweep_ok": None if sweep is None else sweep["returncode"] == 0 and
        all(r.get("status") == "ok" for r in sweep.get("rows", [])) and len(sweep.get("rows", [])) == 2,
        "wall_s": round(time.time() - start, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}: all_agree={result['all_agree']} sweep_ok={result['sweep_ok']} ({result['wall_s']} s)")
    return result


if __name__ == "__main__":
    main()
