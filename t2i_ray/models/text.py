"""DAMSM text and image encoders (AttnGAN, Xu et al. CVPR 2018, Sec. 3.3; SPEC 2).

The text encoder is AttnGAN's `RNN_ENCODER`: word embeddings -> dropout -> 1-layer bi-LSTM.
Its per-step outputs are the word features e (B, 256, T) and its final hidden states the
sentence feature e_bar (B, 256). The image encoder maps an image to region features v
(B, 256, h, w) and a global feature v_bar (B, 256) in the same space, so that
`t2i_ray.losses.damsm` can score image-text matching at both levels.

Two image backbones:
- "inception": AttnGAN's `CNN_ENCODER`, a frozen ImageNet Inception-v3 (Mixed_6e 17x17 for
  regions, Mixed_7c pooled for the global feature); only the two projections train.
- "cnn": a small conv net trained from scratch, for the synthetic `shapes` dataset (no
  pretrained weights exist offline, and Inception at 299x299 is far too slow for 32x32 CPU runs).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from t2i_ray.weights import WeightsFileError, load_state_dict_file

INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_WEIGHTS_URL = f"https://download.pytorch.org/models/{INCEPTION_WEIGHTS_FILE}"


def set_requires_grad(module: nn.Module, flag: bool) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(flag)
    return module


def frozen(module: nn.Module) -> nn.Module:
    """Eval mode (fixed BN statistics, no dropout) and no parameter gradients. Gradients still
    flow *through* the module to its inputs, which the GAN needs (DAMSM loss on fake images)."""
    return set_requires_grad(module.eval(), False)


def word_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at the real words of each caption (ids are zero-padded after)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class TextEncoder(nn.Module):
    """AttnGAN's RNN_ENCODER (gan_anchors 3.1): Embedding(300) -> Dropout(0.5) -> bi-LSTM(128/dir)."""

    def __init__(self, vocab_size: int, word_dim: int = 300, hidden_per_dir: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        # Kept so checkpoints can rebuild the module: TextEncoder(**ckpt["config"]).
        self.config = dict(vocab_size=vocab_size, word_dim=word_dim,
                           hidden_per_dir=hidden_per_dir, dropout=dropout)
        self.embed_dim = 2 * hidden_per_dir
        self.embedding = nn.Embedding(vocab_size, word_dim)
        self.drop = nn.Dropout(dropout)
        # One layer, so the LSTM's own inter-layer dropout would be a no-op: dropout acts on
        # the embeddings only, as in AttnGAN.
        self.rnn = nn.LSTM(word_dim, hidden_per_dir, num_layers=1, batch_first=True,
                           bidirectional=True)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)  # AttnGAN init_weights

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) int64 zero-padded, lengths (B,) int64 in 1..T, any order.
        Returns words (B, 2H, T) (zeros past each length) and sent (B, 2H)."""
        B, T = ids.shape
        emb = self.drop(self.embedding(ids))  # (B, T, word_dim)
        # Packing makes the LSTM stop at each caption's last real word, so padding never reaches
        # the sentence embedding. enforce_sorted=False: the data loader need not sort by length
        # (AttnGAN sorted every batch and had to un-sort the images to match).
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.rnn(packed)  # h: (2 directions, B, H), already in input order
        # total_length=T keeps the time axis equal to the input's even if no caption fills it.
        words, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, 2H)
        words = words.transpose(1, 2).contiguous()  # (B, 2H, T)
        # Final forward state (after word len-1) and final backward state (after word 0).
        sent = h.transpose(0, 1).reshape(B, self.embed_dim)  # (B, 2H) = [fwd, bwd]
        return words, sent


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    # antialias matters when shrinking 256x256 fakes to 64x64 (the cnn input); it is a no-op
    # when enlarging.
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def _conv_bn_lrelu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2, inplace=True)]


def missing_inception_weights_message(weights_path: str | None) -> str:
    return (f"the 'inception' DAMSM image encoder needs torchvision's ImageNet Inception-v3 "
            f"weights, file {INCEPTION_WEIGHTS_FILE} ({INCEPTION_WEIGHTS_URL}); download it "
            f"where there is internet access and set damsm.inception_weights=/path/to/"
            f"{INCEPTION_WEIGHTS_FILE} (got {weights_path!r}), or use damsm.image_backbone=cnn")


def not_inception_weights_message(weights_path: str, reason: str) -> str:
    """`weights_path` exists but is not a state dict of tensors (`reason`: what it is instead)."""
    return (f"damsm.inception_weights: {weights_path} {reason}; it must be torchvision's ImageNet "
            f"Inception-v3 weights {INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL}")


def _inception_trunks(weights_path: str | None) -> tuple[nn.Sequential, nn.Sequential]:
    """ImageNet Inception-v3 split into (input -> Mixed_6e, Mixed_6e -> Mixed_7c)."""
    if weights_path is None or not os.path.isfile(weights_path):
        raise FileNotFoundError(missing_inception_weights_message(weights_path))
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    try:
        state = load_state_dict_file(weights_path)
    except WeightsFileError as e:
        raise WeightsFileError(not_inception_weights_message(weights_path, str(e))) from e
    # The torchvision file also holds the auxiliary classifier, which DAMSM never uses.
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    net.load_state_dict(state)  # strict: a wrong file fails loudly here
    # No transform_input: DAMSM feeds [-1, 1] images, the range these Google weights expect.
    to_6e = nn.Sequential(
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2,
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d,
        net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e)
    to_7c = nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c)
    return to_6e, to_7c


class ImageEncoder(nn.Module):
    """DAMSM image encoder: images in [-1, 1] -> regions (B, E, h, w) and global (B, E).

    inception: 299x299 input, regions 17x17 from Mixed_6e (768 ch), global from Mixed_7c (2048 ch,
    8x8 avg-pooled); the backbone is frozen and always in eval mode, so only the projections
    train. AttnGAN instead ran the frozen BatchNorms in train mode during pre-training (a quirk,
    gan_anchors 3.2); fixed ImageNet statistics are what "frozen" means here.
    cnn: 64x64 input, 32-64-128 channels (three stride-2 convs) giving 8x8 regions of 128
    channels; the global feature pools the same map. All of it trains. (A fourth, 128->256
    stride-1 conv made its forward + backward 1.55x slower and did not raise the real images'
    R-precision on `shapes` (0.46 with it, 0.48 without): the encoder runs on every fake of every
    step when l1, l2 or l3 > 0, so its cost is the sweep's cost.)
    """

    def __init__(self, embed_dim: int = 256, backbone: str = "cnn",
                 inception_weights: str | None = None):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, backbone=backbone,
                           inception_weights=inception_weights)
        if backbone == "inception":
            self.input_size = 299
            self.local_trunk, self.global_trunk = _inception_trunks(inception_weights)
            frozen(self.local_trunk)
            frozen(self.global_trunk)
            local_ch, global_ch = 768, 2048
        elif backbone == "cnn":
            self.input_size = 64
            self.local_trunk = nn.Sequential(
                *_conv_bn_lrelu(3, 32, 2),     # (B, 32, 32, 32)
                *_conv_bn_lrelu(32, 64, 2),    # (B, 64, 16, 16)
                *_conv_bn_lrelu(64, 128, 2))   # (B, 128, 8, 8)
            self.global_trunk = nn.Identity()
            local_ch = global_ch = 128
        else:
            raise ValueError(f"unknown image encoder backbone {backbone!r}; use 'cnn' or 'inception'")
        # Projections into the shared word/sentence space (AttnGAN: emb_features, emb_cnn_code).
        self.regions_proj = nn.Conv2d(local_ch, embed_dim, 1, bias=False)
        self.global_proj = nn.Linear(global_ch, embed_dim)
        nn.init.uniform_(self.regions_proj.weight, -0.1, 0.1)  # AttnGAN init_trainable_weights
        nn.init.uniform_(self.global_proj.weight, -0.1, 0.1)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if self.config["backbone"] == "inception":  # the frozen backbone never leaves eval mode
            self.local_trunk.eval()
            self.global_trunk.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(images, self.input_size)          # (B, 3, S, S)
        local = self.local_trunk(x)                   # (B, 768|128, 17|8, 17|8)
        deep = self.global_trunk(local)               # (B, 2048|128, 8, 8)
        regions = self.regions_proj(local)            # (B, E, h, w)
        glob = self.global_proj(deep.mean(dim=(2, 3)))  # (B, E)
        return regions, glob
