"""Cross-check our Inception FID path against torchmetrics' FrechetInceptionDistance.

Same weights file, same uint8 images: torchmetrics (antialias=False, i.e. torch-fidelity's TF1
bilinear resize; float64 states) vs `extract_inception` + `feature_stats` + `frechet_distance`.
Writes JSON with the max feature difference and both FIDs. Uses $T2I_INCEPTION_WEIGHTS when set,
else random weights of the right shapes (the code path is what is checked, not the network).

    python benchmarks/inception_crosscheck.py --num-images 12 --out benchmarks/inception_crosscheck.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

import numpy as np
import torch


def main() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from t2i_ray.eval.fid import feature_stats, frechet_distance
    from t2i_ray.eval.inception import (WEIGHTS_ENV, extract_inception, load_inception, metric_library_versions,
                                        random_inception_state_dict)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=12, help="per set (real and fake)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--out", default="benchmarks/inception_crosscheck.json")
    args = p.parse_args()
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        path = os.path.join(tempfile.mkdtemp(), "random-inception.pth")
        torch.save(random_inception_state_dict(0), path)
    rng = np.random.default_rng(0)
    n, r = args.num_images, args.resolution
    real = torch.from_numpy(np.clip(rng.integers(0, 100, (n, 3, 1, 1)) + rng.integers(-40, 40, (n, 3, r, r)), 0, 255)
                            .astype(np.uint8))
    fake = torch.from_numpy(np.clip(rng.integers(120, 256, (n, 3, 1, 1)) + rng.integers(-40, 40, (n, 3, r, r)), 0,
                                    255).astype(np.uint8))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_inception(path)
        f_real, _ = extract_inception(ours, [real])
        f_fake, _ = extract_inception(ours, [fake])
        fid_ours = frechet_distance(*feature_stats(f_fake), *feature_stats(f_real))
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path, antialias=False)
    tm.set_dtype(torch.float64)
    with torch.no_grad():
        tm_real = tm.inception(real).double().numpy()
    tm.update(real, real=True)
    tm.update(fake, real=False)
    fid_tm = float(tm.compute())
    t_tm = time.perf_counter() - start
    out = {"num_images_per_set": n, "resolution": r, "weights": path, "feature_max_abs_diff":
           float(np.abs(tm_real - f_real).max()), "feature_scale": float(np.abs(f_real).mean()),
           "fid_ours": fid_ours, "fid_torchmetrics": fid_tm, "fid_rel_diff": abs(fid_ours - fid_tm) / abs(fid_ours),
           "note": "torchmetrics after set_dtype(float64) runs the network in float64, ours in float32 (TF and "
                   "torch-fidelity's default; statistics float64 in both); at N < 2048 both covariances are "
                   "rank-deficient and torchmetrics takes Re(sqrt(eigvals(S1 S2))) of a non-symmetric matrix, "
                   "ours eigvalsh of S1^1/2 S2 S1^1/2 with a round-off floor",
           "seconds_ours": t_ours, "seconds_torchmetrics": t_tm, "libraries": metric_library_versions()}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
