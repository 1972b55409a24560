"""Images/s of one joint Gaussian-categorical training step (forward + backward + Adam) on this
machine, at the settings the reference GCDP code was timed at.

    PYTHONPATH=. python benchmarks/diffusion_step.py --out benchmarks/results/diffusion_step.json
    # side by side with the reference, alternating runs (a shared machine's load changes by the
    # minute): the reference timing script bench_gcdp_ref.py (pmh9960/GCDP's JointImagen step,
    # IMSIZE BATCH STEPS DIM K -> one JSON line) run by a Python that can import that code
    PYTHONPATH=. python benchmarks/diffusion_step.py --repeats 3 \
        --reference-python /path/to/python --reference-script /path/to/bench_gcdp_ref.py

JointUNet with dim_mults (1, 2, 4), blocks (1, 2, 2), self- and cross-attention at the two lower
levels, 4 heads, K = 6, 256-d text of 18 tokens, random images / layouts / text (no text
encoder), text dropped with p = 0.1, T = 1000. Reference: pmh9960/GCDP@f5f8049 JointImagen +
JointUnet at the same settings (memory_efficient off, 4 heads) on a quiet 2-core machine,
2 threads: 27.4 / 11.4 / 1.83 images/s for the three settings below (4.1 M / 14.5 M parameters).

On a 2-core machine shared with other jobs (load average 2-5), 2 OpenMP threads that spin-wait
ran up to 40x slower than 1 thread, ours and the reference alike; OMP_WAIT_POLICY=PASSIVE avoids
that, and 1 thread gives the steadiest ratios. Results: results/diffusion_step_*.json
(1thread_quieter: load 2.1-3.0; 1thread: load 2.9-5.1; 2threads: PASSIVE, load 2.5-2.7).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from t2i_ray.models.diffusion import GaussianCategoricalDiffusion, JointUNet, text_drop_mask

K = 6
TEXT_DIM = 256
NUM_WORDS = 18
# (resolution, batch, dim, reference GCDP images/s on 2 threads)
SETTINGS = [(32, 16, 32, 27.4), (32, 16, 64, 11.4), (64, 8, 64, 1.83)]


def measure(resolution: int, batch: int, dim: int, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    net = JointUNet(num_classes=K, dim=dim, dim_mults=(1, 2, 4), blocks=(1, 2, 2),
                    attention_levels=(False, True, True), heads=4, text_dim=TEXT_DIM)
    process = GaussianCategoricalDiffusion(K, num_steps=1000)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    layouts = torch.randint(0, K, (batch, resolution, resolution), generator=g)
    words = torch.randn(batch, NUM_WORDS, TEXT_DIM, generator=g)
    word_mask = torch.ones(batch, NUM_WORDS, dtype=torch.bool)
    sentence = torch.randn(batch, TEXT_DIM, generator=g)

    def step() -> None:
        drop = text_drop_mask(batch, 0.1, g)
        losses = process.training_losses(net, images, layouts, words, word_mask, sentence, drop, g)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start), sum(p.numel() for p in net.parameters())


def measure_reference(python: str, script: str, resolution: int, batch: int, dim: int,
                      steps: int, threads: int) -> tuple[float, int]:
    """The reference GCDP step timed by its own script in a subprocess (one JSON line out)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    argv = [python, script, str(resolution), str(batch), str(steps), str(dim), str(K)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return row["img_per_s"], row["params"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1,
                   help="measurements per setting (alternating with the reference if given); "
                        "the median is reported")
    p.add_argument("--settings", type=int, nargs="+", default=None,
                   help=f"indices into SETTINGS (0..{len(SETTINGS) - 1}); default all")
    p.add_argument("--reference-python", default=None,
                   help="a Python with torch, kornia, einops-exts, transformers and the GCDP "
                        "checkout the reference script expects")
    p.add_argument("--reference-script", default=None,
                   help="bench_gcdp_ref.py (IMSIZE BATCH STEPS DIM K -> one JSON line)")
    p.add_argument("--out", default="benchmarks/results/diffusion_step.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [SETTINGS[i] for i in args.settings] if args.settings is not None else SETTINGS
    with_reference = args.reference_python is not None and args.reference_script is not None
    load_before = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for resolution, batch, dim, quoted in chosen:
        ours, ref, loads = [], [], [os.getloadavg()[0]]
        for _ in range(args.repeats):
            ips, params = measure(resolution, batch, dim, args.steps)
            ours.append(round(ips, 2))
            if with_reference:
                ref_ips, ref_params = measure_reference(
                    args.reference_python, args.reference_script, resolution, batch, dim,
                    args.steps, args.threads)
                ref.append(ref_ips)
            loads.append(os.getloadavg()[0])
        row = {"resolution": resolution, "batch_size": batch, "dim": dim, "params": params,
               "images_per_s": round(statistics.median(ours), 2), "images_per_s_runs": ours,
               "reference_quoted_images_per_s": quoted,
               "speedup_vs_quoted": round(statistics.median(ours) / quoted, 2),
               "load_avg_1min": [round(v, 2) for v in loads]}
        if with_reference:
            ref_median = statistics.median(ref)
            row.update(reference_params=ref_params, reference_images_per_s=round(ref_median, 2),
                       reference_runs=ref,
                       speedup_vs_reference=round(statistics.median(ours) / ref_median, 2))
        rows.append(row)
        print(row, flush=True)
        # written after every setting, so a run cut short keeps what it measured. The 1-minute
        # load average: on a shared 2-core machine figures taken under load are lower bounds, and
        # noisy (the quoted reference figures were taken on a quiet machine)
        out.write_text(json.dumps({"load_avg_1min": round(load_before, 2), "cpus": os.cpu_count(),
                                   "threads": args.threads, "steps": args.steps,
                                   "repeats": args.repeats,
                                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                   "machine": platform.processor() or platform.machine(),
                                   "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
