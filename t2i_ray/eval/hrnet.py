"""HRNetV2 semantic segmentation (Wang et al., TPAMI 2020, arXiv:1908.07919) from a local Cityscapes
checkpoint, never downloaded: the segmenter of GCDP's Cityscapes layout metrics (arXiv:2308.08157
Sec. 4.3: semantic recall, image-layout mIoU, FSD), which name "HRNet-W48".

The network is written here with the module names and parameter shapes of the official code,
github.com/HRNet/HRNet-Semantic-Segmentation lib/models/seg_hrnet.py (`HighResolutionNet`), so
that its released Cityscapes state dicts load as they are, e.g. `hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth`
(README, Cityscapes table, "HRNetV2-W48 | Train | Val | 80.9"; the pytorch-v1.1 branch's retrained
file scores 81.1):
  - stem `conv1`/`bn1`/`conv2`/`bn2`: two 3x3 stride-2 convs, 64 channels (1/4 resolution);
  - `layer1`: 4 Bottlenecks (64 planes, expansion 4: 256 channels out, `layer1.0.downsample`);
  - `transition1..3`, `stage2..4`: branches of widths 48/96/192/384 (W48), each stage adding one
    branch at half the resolution; stages of 1/4/3 `HighResolutionModule`s, each with 4 BasicBlocks
    per branch (`stageS.M.branches.B.K`) and the exchange units `stageS.M.fuse_layers.I.J` (J > I:
    1x1 conv + BN, upsampled bilinearly; J < I: I - J stride-2 3x3 convs + BN, ReLU between);
  - `last_layer`: on the concatenation of the four branches upsampled to 1/4 resolution (720
    channels for W48), 1x1 conv -> BN -> ReLU -> 1x1 conv to the 19 Cityscapes train classes.
The sizes are read from the state dict's shapes (`HRNetArch.of`), as eval/clip.py reads CLIP's;
`HRNET_W48` is experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml
(STAGE1..4, FINAL_CONV_KERNEL 1). Upsampling is bilinear with align_corners=False (that yaml's
MODEL.ALIGN_CORNERS; the master branch's `F.upsample(mode='bilinear')` defaults to it since PyTorch 0.4).

Checkpoints saved by the repository's training wrap the network in `FullModel` (lib/utils/utils.py:
`self.model`, `self.loss`): every key is prefixed "model." and the loss's class weights come along as
"loss.criterion.weight"; its tools/test.py strips the prefix (`k[6:]`). `clean_state_dict` strips
"model." (and DataParallel's "module.") and drops "loss.*"; missing, unexpected or mis-shaped keys
refuse with their names.

Preprocessing (lib/datasets/base_dataset.py `input_transform`): RGB in [0, 1], ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (cv2's BGR is flipped to RGB first). Generated
images are rounded to uint8 levels (as real ones), resized bilinearly (cv2 INTER_LINEAR's half-pixel
grid = align_corners=False) to `input_size` (HRNet's own test size is 1024 x 2048, TEST.IMAGE_SIZE;
GCDP does not state its size), and the logits at 1/4 of that size are resized bilinearly to the
layout's size and arg-maxed there (base_dataset.py `inference` upsamples the logits likewise).
The 19 train ids are the project's Cityscapes layout classes 0..18 (data/cityscapes.py, same
cityscapesscripts order); class 19 "unlabeled" is never predicted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_ray.config import ConfigError, ExperimentConfig
from t2i_ray.weights import WeightsFileError, file_sha256, load_state_dict_file, resolve_local_file

WEIGHTS_ENV = "T2I_SEGMENTER_WEIGHTS"
CHECKPOINT_FILE = "hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # HRNet-Semantic-Segmentation lib/datasets/cityscapes.py defaults
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_TRAIN_CLASSES = 19
ALIGN_CORNERS = False  # experiments/cityscapes/seg_hrnet_w48_*.yaml MODEL.ALIGN_CORNERS
BOTTLENECK_EXPANSION = 4
# Prefixes of the repository's saved models: FullModel's "model." (tools/test.py strips it),
# nn.DataParallel's "module.".
WRAPPER_PREFIXES = ("module.", "model.")
DROPPED_PREFIXES = ("loss.",)  # FullModel's criterion (CrossEntropy class weights)


class HRNetWeightsError(ConfigError):
    """The HRNet weights file is missing or is not an HRNetV2 Cityscapes state dict; says how to fix it."""


def where_to_get() -> str:
    return (f"GCDP (arXiv:2308.08157 Sec. 4.3) scores Cityscapes with HRNet-W48; the Cityscapes HRNetV2-W48 of "
            f"github.com/HRNet/HRNet-Semantic-Segmentation ({CHECKPOINT_FILE}, README 'Cityscapes' table, 'HRNetV2-W48 "
            f"Train Val 80.9', OneDrive/BaiduYun links; the pytorch-v1.1 branch's README has a retrained one, 81.1) "
            f"loads as it is (its 'model.' key prefix is stripped); download it on a machine with internet access")


def missing_weights_message(path: str | None) -> str:
    where = f"no file at {path!r}" if path else f"neither eval.segmenter_weights nor ${WEIGHTS_ENV} is set"
    return (f"eval.segmenter_weights: the Cityscapes layout metrics (semantic recall, layout mIoU, segmenter FSD) need "
            f"an HRNetV2 segmentation network as a local weights file ({where}); nothing is downloaded at run time. "
            f"{where_to_get()}. Then point at it with --set eval.segmenter_weights=PATH or the environment variable "
            f"{WEIGHTS_ENV}; eval.segmenter=off skips these metrics (FSD of the generated layouts and image->layout "
            f"outpainting need no network).")


# ---------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class HRNetArch:
    """Sizes of an HRNetV2 segmentation network (the W48 defaults: the Cityscapes yaml above)."""

    stem_width: int = 64
    layer1_planes: int = 64  # Bottleneck planes; layer1 outputs 4x this
    layer1_blocks: int = 4
    widths: tuple[int, ...] = (48, 96, 192, 384)  # branch widths of stage 4 (stage s uses the first s)
    stage_modules: tuple[int, int, int] = (1, 4, 3)  # HighResolutionModules of stages 2, 3, 4
    stage_blocks: tuple[int, int, int] = (4, 4, 4)  # BasicBlocks per branch in stages 2, 3, 4
    num_classes: int = CITYSCAPES_TRAIN_CLASSES

    @property
    def name(self) -> str:
        """"HRNetV2-W48" for the official W48 sizes, else a name with every size that differs."""
        base = f"HRNetV2-W{self.widths[0]}"
        ref = HRNetArch()
        diffs = [f"{k}={'/'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in asdict(self).items()
                 if k not in ("widths", "num_classes") and v != getattr(ref, k)]
        if self.widths != tuple(self.widths[0] * 2**i for i in range(len(self.widths))):
            diffs.insert(0, "widths=" + "/".join(map(str, self.widths)))
        return base + (f"({','.join(diffs)})" if diffs else "")

    @classmethod
    def of(cls, state_dict: Mapping[str, Tensor]) -> "HRNetArch":
        """The sizes of a (cleaned) HRNetV2 state dict, read from its keys and shapes; raises
        HRNetWeightsError naming the first key an HRNetV2 segmentation network must have."""
        def shape(key: str) -> tuple[int, ...]:
            if key not in state_dict:
                raise HRNetWeightsError(f"is not an HRNetV2 segmentation state dict (seg_hrnet.py of "
                                        f"HRNet/HRNet-Semantic-Segmentation): it has no key {key!r}")
            return tuple(state_dict[key].shape)

        def count(pattern: str) -> int:
            n = 0
            while pattern.format(n) in state_dict:
                n += 1
            return n

        widths = tuple(shape(f"stage4.0.branches.{b}.0.conv1.weight")[0]
                       for b in range(max(1, count("stage4.0.branches.{}.0.conv1.weight"))))
        return cls(stem_width=shape("conv1.weight")[0], layer1_planes=shape("layer1.0.conv1.weight")[0],
                   layer1_blocks=count("layer1.{}.conv1.weight"), widths=widths,
                   stage_modules=tuple(max(1, count(f"stage{s}.{{}}.branches.0.0.conv1.weight")) for s in (2, 3, 4)),
                   stage_blocks=tuple(max(1, count(f"stage{s}.0.branches.0.{{}}.conv1.weight")) for s in (2, 3, 4)),
                   num_classes=shape("last_layer.3.weight")[0])


HRNET_W48 = HRNetArch()


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """conv (no bias) -> BN [-> ReLU]: children "0" and "1", as the official Sequentials number them."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity shortcut (He et al. arXiv:1512.03385); width kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) with a projected shortcut where the width changes."""

    def __init__(self, c_in: int, planes: int):
        super().__init__()
        c_out = planes * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = _conv_bn(c_in, c_out, 1, relu=False) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=ALIGN_CORNERS)


def _fuse_path(widths: tuple[int, ...], i: int, j: int) -> nn.Sequential:
    """Branch j brought to the width (and, for j < i, the resolution) of output branch i: j > i:
    1x1 conv + BN (bilinear upsampling follows in forward); j < i: i - j stride-2 3x3 convs + BN, the
    last to width i without ReLU (keys `fuse_layers.I.J.0.weight` / `fuse_layers.I.J.K.0.weight`)."""
    if j > i:
        return _conv_bn(widths[j], widths[i], 1, relu=False)
    return nn.Sequential(*(_conv_bn(widths[j], widths[i] if k == i - j - 1 else widths[j], 3, 2, relu=k < i - j - 1)
                           for k in range(i - j)))


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every output branch sums all branches brought to its
    resolution and width (`branches.B.K`, `fuse_layers.I.J`; I == J is the identity, no keys)."""

    def __init__(self, widths: tuple[int, ...], blocks: int):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(w) for _ in range(blocks))) for w in widths)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(nn.Identity() if i == j else _fuse_path(widths, i, j) for j in range(n))
            for i in range(n)) if n > 1 else None

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = tuple(xs[i].shape[-2:])
            total = xs[i]
            for j, path in enumerate(row):
                if j != i:
                    total = total + _resize(path(xs[j]), size)  # j < i arrives at size already
            out.append(F.relu(total))
        return out


def _transition(prev: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """`transitionS.I`: kept branches change width with a 3x3 conv (identity when equal, no keys);
    each new branch is a stride-2 3x3 conv from the previous stage's lowest-resolution branch
    (`transitionS.I.0.0.weight`: a Sequential of Sequentials, as the official code nests them)."""
    mods: list[nn.Module] = []
    for i, w in enumerate(cur):
        if i < len(prev):
            mods.append(nn.Identity() if prev[i] == w else _conv_bn(prev[i], w, 3))
        else:
            steps = [_conv_bn(prev[-1], w if k == i - len(prev) else prev[-1], 3, 2) for k in range(i + 1 - len(prev))]
            mods.append(nn.Sequential(*steps))
    return nn.ModuleList(mods)


class HRNetV2(nn.Module):
    """images normalised as HRNet expects (B, 3, H, W) -> class logits (B, K, ceil(H/4), ceil(W/4))."""

    def __init__(self, arch: HRNetArch = HRNET_W48):
        super().__init__()
        if len(arch.widths) != 4:
            raise ValueError(f"HRNetV2: 4 branches expected (stages 2-4 use 2, 3, 4), got widths {arch.widths}")
        self.arch = arch
        self.conv1 = nn.Conv2d(3, arch.stem_width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(arch.stem_width)
        self.conv2 = nn.Conv2d(arch.stem_width, arch.stem_width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(arch.stem_width)
        c1 = arch.layer1_planes * BOTTLENECK_EXPANSION
        self.layer1 = nn.Sequential(*(Bottleneck(arch.stem_width if k == 0 else c1, arch.layer1_planes)
                                      for k in range(arch.layer1_blocks)))
        prev: tuple[int, ...] = (c1,)
        for s, (modules, blocks) in enumerate(zip(arch.stage_modules, arch.stage_blocks), start=2):
            cur = arch.widths[:s]
            setattr(self, f"transition{s - 1}", _transition(prev, cur))
            setattr(self, f"stage{s}", nn.Sequential(*(HighResolutionModule(cur, blocks) for _ in range(modules))))
            prev = cur
        total = sum(arch.widths)
        self.last_layer = nn.Sequential(nn.Conv2d(total, total, 1), nn.BatchNorm2d(total), nn.ReLU(inplace=True),
                                        nn.Conv2d(total, arch.num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            # kept branches from their own input, the new one from the lowest-resolution branch
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]
            for module in getattr(self, f"stage{s}"):
                xs = module(xs)
        size = tuple(xs[0].shape[-2:])
        return self.last_layer(torch.cat([xs[0]] + [_resize(x, size) for x in xs[1:]], dim=1))


# ---------------------------------------------------------------------------------------------
# Weights


def clean_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """(the network's keys, dropped keys): wrapper prefixes "module."/"model." stripped, "loss.*"
    (FullModel's criterion) dropped."""
    out, dropped = {}, []
    for key, value in state_dict.items():
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        if name.startswith(DROPPED_PREFIXES):
            dropped.append(key)
            continue
        if name in out:
            raise HRNetWeightsError(f"has the key {name!r} twice once its prefixes are stripped (e.g. {key!r})")
        out[name] = value
    return out, dropped


def _key_list(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Refuse missing, unexpected and mis-shaped keys, naming them (BN's `num_batches_tracked`,
    which files from before PyTorch 0.4.1 lack and evaluation never reads, may be missing)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})" for k in expected
             if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_key_list(missing)}")
    if unexpected:
        hint = " (an HRNet+OCR checkpoint? only the plain HRNetV2 head `last_layer` is implemented)" \
            if any(k.startswith(("ocr", "cls_head", "aux_head", "conv3x3_ocr")) for k in unexpected) else ""
        problems.append(f"{len(unexpected)} unexpected key(s){hint}: {_key_list(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped: {_key_list(wrong, 4)}")
    if problems:
        raise HRNetWeightsError("does not match HRNetV2 " + "; ".join(problems))


def read_hrnet_state_dict(path: str) -> tuple[dict[str, Tensor], HRNetArch, list[str]]:
    """(cleaned state dict, its architecture, dropped keys) of a local file; HRNetWeightsError
    (message starting after the path) when it is not a 19-class HRNetV2 state dict."""
    try:
        raw = load_state_dict_file(path)
    except WeightsFileError as err:
        raise HRNetWeightsError(str(err)) from None
    state_dict, dropped = clean_state_dict(raw)
    arch = HRNetArch.of(state_dict)
    if arch.num_classes != CITYSCAPES_TRAIN_CLASSES:
        raise HRNetWeightsError(f"predicts {arch.num_classes} classes (last_layer.3.weight); the Cityscapes layout "
                                f"metrics need a Cityscapes checkpoint of its {CITYSCAPES_TRAIN_CLASSES} train classes")
    with torch.device("meta"):  # shapes only: nothing allocated
        check_state_dict(HRNetV2(arch), state_dict)
    return state_dict, arch, dropped


def resolve_segmenter_weights(cfg: ExperimentConfig) -> str:
    """Absolute path of eval.segmenter_weights, else $T2I_SEGMENTER_WEIGHTS; HRNetWeightsError naming the fix."""
    return resolve_local_file(cfg.eval.segmenter_weights, WEIGHTS_ENV,
                              lambda p: HRNetWeightsError(missing_weights_message(p)))


class HRNetSegmenter(nn.Module):
    """The project's segmenter interface (eval/layout.py `segment`): model input (B, 3, H, W) in
    [-1, 1] (uint8 levels) -> logits (B, 20, H, W) of the Cityscapes layout classes, class 19
    ("unlabeled") at -inf so that it is never the argmax. The network runs at `input_size`
    ((H, W); None: at the images' own size)."""

    def __init__(self, net: HRNetV2, input_size: tuple[int, int] | None, info: dict[str, Any]):
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.info = info
        self.config = {"num_classes": CITYSCAPES_TRAIN_CLASSES + 1}
        # Images per batch (eval/layout.py `segment_batch_size`): ~8M input pixels, 4 at 1024x2048.
        self.batch_size = 64 if input_size is None else max(1, min(256, 2**23 // (input_size[0] * input_size[1])))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        size = tuple(images.shape[-2:])
        x = ((images.float() + 1.0) / 2.0 - self.mean) / self.std  # RGB [0, 1], ImageNet statistics
        if self.input_size is not None and tuple(self.input_size) != size:
            down = self.input_size[0] < size[0] or self.input_size[1] < size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=down)
        logits = _resize(self.net(x), size)  # (B, 19, H, W)
        unlabeled = torch.full_like(logits[:, :1], float("-inf"))
        return torch.cat([logits, unlabeled], dim=1)


def load_hrnet(path: str, input_size: tuple[int, int] | None = (1024, 2048),
               device: str | torch.device = "cpu") -> HRNetSegmenter:
    """The frozen segmenter from a local HRNetV2 Cityscapes state dict (torch.load weights_only).
    info: "backbone" (e.g. "HRNetV2-W48-cityscapes19"), "weights_sha256", "weights_path",
    "input_size" ("1024x2048" | "native"), "dropped_keys" (the wrapper's loss keys)."""
    try:
        state_dict, arch, dropped = read_hrnet_state_dict(path)
    except HRNetWeightsError as err:
        raise HRNetWeightsError(f"eval.segmenter_weights: {path} {err}. {where_to_get()}") from None
    net = HRNetV2(arch)
    net.load_state_dict(state_dict, strict=False)  # check_state_dict refused every mismatch but num_batches_tracked
    info = {"backbone": f"{arch.name}-cityscapes{arch.num_classes}", "weights_sha256": file_sha256(path),
            "weights_path": path, "input_size": "native" if input_size is None else f"{input_size[0]}x{input_size[1]}",
            "dropped_keys": len(dropped)}
    model = HRNetSegmenter(net, input_size, info)
    return model.eval().requires_grad_(False).to(device)


def random_hrnet_state_dict(arch: HRNetArch = HRNET_W48, seed: int = 0, prefix: str = "model.",
                            with_loss: bool = True) -> dict[str, Tensor]:
    """A state dict of the official layout with random weights (tests): keys prefixed as FullModel
    saves them, with its loss weights; BN statistics randomised so that they matter."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = HRNetV2(arch)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    out = {prefix + k: v for k, v in net.state_dict().items()}
    if with_loss:
        out["loss.criterion.weight"] = torch.ones(arch.num_classes)
    return out
