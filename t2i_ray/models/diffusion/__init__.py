"""Gaussian-categorical diffusion (GCDP, arXiv:2308.08157): the joint image + layout U-Net
(`unet.py`) and the process, its loss and its samplers (`gaussian_categorical.py`)."""
from t2i_ray.models.diffusion.gaussian_categorical import (
    GaussianCategoricalDiffusion,
    outpaint,
    sample,
    text_drop_mask,
)
from t2i_ray.models.diffusion.unet import JointUNet

__all__ = ["GaussianCategoricalDiffusion", "JointUNet", "outpaint", "sample", "text_drop_mask"]
