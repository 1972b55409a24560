"""Device selection and the GPU speed-ups the loop applies: bf16 autocast, channels_last, cuDNN
benchmark. Each is a config switch (`train.amp`, `train.channels_last`, `train.cudnn_benchmark`)
whose "auto" setting turns it on only on CUDA, so a CPU run gets none of them; `train.amp=native`
also autocasts to bf16 on a CPU with bf16 instructions (AVX512-BF16, AMX).

Why these three: DF-GAN is conv-bound. On Ampere and newer GPUs (A10G on g5, A100 on p4d) bf16
autocast runs convolutions and matmuls on tensor cores with float32's exponent range, so no loss
scaling (GradScaler) is needed and MA-GP's double backward cannot overflow as it can in fp16;
NHWC (channels_last) is the layout those tensor-core kernels use natively; cuDNN benchmark picks
the fastest algorithm per conv shape once (shapes are fixed here). Costs: bf16 keeps ~3 decimal
digits in the autocast ops (losses and MA-GP's norm are computed in float32 below), and benchmark
makes conv results depend on the chosen algorithm, so a resumed GPU run matches an uninterrupted
one only to float tolerance (the CPU run matches bit for bit).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from t2i_ray.config import ConfigError, TrainConfig


def select_device(use_gpu: bool) -> torch.device:
    """The device of an in-process run (inside Ray Train, `ray.train.torch.get_device()` decides)."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.use_gpu: true, but torch sees no CUDA device (torch.cuda.is_available() "
                          "is False); set train.use_gpu=false, or install a CUDA build of torch")
    return torch.device("cuda", torch.cuda.current_device())


@dataclass(frozen=True)
class Accel:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: no autocast
    channels_last: bool
    cudnn_benchmark: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes; backward runs outside it (PyTorch's recommendation)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """NHWC for the module's 4-D parameters and buffers (conv weights). `Module.to(memory_format=)`
        refuses any module holding a tensor of another rank that it cannot convert (the StyleGAN2
        modulated convs of attngan_style / style1attngan keep a 5-D (1, out, in, k, k) weight), so the
        4-D tensors are converted one by one and the others left as they are."""
        if not self.channels_last:
            return module
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                if t.dim() == 4:
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
        return module

    def prepare_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.channels_last:
            out = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point() else v
                   for k, v in out.items()}
        return out

    def apply_backend_flags(self) -> None:
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True

    def describe(self) -> dict[str, Any]:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off"
        return {"device": str(self.device), "amp": amp,
                "channels_last": self.channels_last, "cudnn_benchmark": self.cudnn_benchmark}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX tiles), where oneDNN's
    bf16 convolutions and matmuls run at about twice float32's rate; elsewhere autocast would emulate
    bf16 and run slower than float32. torch.cpu's probes (private, hence the guard)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(probe()) for probe in probes if probe is not None)
    except Exception:  # noqa: BLE001 - a probe missing or failing in another torch build: not native
        return False


def resolve_accel(t: TrainConfig, device: torch.device, bf16_supported: bool | None = None) -> Accel:
    """Turn the config switches into what this device gets. `bf16_supported` defaults to asking
    CUDA, or on a CPU `cpu_has_native_bf16` (tests pass it to check every branch on any machine)."""
    cuda = device.type == "cuda"
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
    if t.amp == "bf16":
        if cuda and not bf16_supported:
            raise ConfigError("train.amp: bf16 needs a GPU with bfloat16 support (Ampere or newer, e.g. A10G, "
                              "A100, L4, H100); set train.amp=auto (off on this GPU) or train.amp=off")
        # On a CPU this is allowed (torch autocasts to bf16 there too) but only useful for checks:
        # few CPUs have fast bf16 kernels.
        amp_dtype: torch.dtype | None = torch.bfloat16
    elif t.amp == "auto":
        amp_dtype = torch.bfloat16 if cuda and bf16_supported else None
    elif t.amp == "native":
        amp_dtype = torch.bfloat16 if bf16_supported else None
    else:
        amp_dtype = None
    channels_last = t.channels_last == "on" or (t.channels_last == "auto" and cuda)
    return Accel(device, amp_dtype, channels_last, bool(t.cudnn_benchmark and cuda))
