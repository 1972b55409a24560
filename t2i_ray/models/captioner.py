"""Image captioner for the re-captioning loss l4 (seed paper 001 Sec. 3.4.3; SPEC 4).

After Show and Tell (Vinyals et al., CVPR 2015, Eqs. 10-12): a CNN encodes the image into one
vector v; the LSTM reads the caption's words x_t = W_e S_t (teacher forcing) and predicts the next
word p_{t+1} = softmax(W_o h_t). The project's vocabulary has no start token: step 0 reads a
learned start vector, and the last target is "<end>" (id 0, pad/end in SPEC 1), so a caption of
L words gives L + 1 predictions.

The CNN is sized for small images: per scale a stride-1 and a stride-2 3x3 conv (a stride-2
conv alone cannot see the 4-pixel shapes of 32x32 images) down to a 4x4 map, which is flattened
rather than pooled so that the image vector keeps where things are ("left of", "above").
During GAN training the captioner is frozen (eval mode, no parameter gradients); gradients flow
through it into the fake images.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn_lrelu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2, inplace=True)]


class CaptionerCNN(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> image vector (B, out_dim), resized to image_size first."""

    def __init__(self, image_size: int, out_dim: int):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size: must be a power of two >= 8, got {image_size}")
        self.image_size = image_size
        # 16, 32, 64, 128, 128, ...: half the DAMSM cnn's widths; l4 runs this CNN forward and
        # backward on every fake of every G step, and its pre-training must fit CPU budgets.
        widths = [min(16 * 2**i, 128) for i in range(int(math.log2(image_size // 4)))]
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += _conv_bn_lrelu(c_in, c_out, 1) + _conv_bn_lrelu(c_out, c_out, 2)
            c_in = c_out
        self.convs = nn.Sequential(*layers)  # (B, C, 4, 4)
        self.proj = nn.Linear(c_in * 16, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            # antialias: 256x256 fakes shrink to the CNN's size without aliasing.
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return self.proj(self.convs(images).flatten(1))  # (B, out_dim)


class Captioner(nn.Module):
    """CNN image encoder + LSTM decoder over the project's vocabulary (teacher forcing).

    Beyond Show and Tell, the image vector also initialises the LSTM state (as Show, Attend and
    Tell's init_h / init_c) and is concatenated to every step's input: with the image given at
    step 0 only, a from-scratch CPU-budget training learned a language model that ignored the
    image (held-out perplexity identical with matched and mismatched images).
    """

    def __init__(self, vocab_size: int, image_size: int = 32, word_dim: int = 128,
                 hidden_dim: int = 256, dropout: float = 0.3):
        super().__init__()
        # Kept so the cache can rebuild the module: Captioner(**meta["captioner"]).
        self.config = dict(vocab_size=vocab_size, image_size=image_size, word_dim=word_dim,
                           hidden_dim=hidden_dim, dropout=dropout)
        self.encoder = CaptionerCNN(image_size, word_dim)
        self.embedding = nn.Embedding(vocab_size, word_dim)
        self.start = nn.Parameter(torch.zeros(word_dim))  # input of step 0 (no start token)
        self.init_h = nn.Linear(word_dim, hidden_dim)
        self.init_c = nn.Linear(word_dim, hidden_dim)
        self.rnn = nn.LSTM(2 * word_dim, hidden_dim, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def _run_rnn(self, x: torch.Tensor, state):
        # cuDNN's LSTM backward exists only in training mode; the frozen captioner runs in eval
        # mode yet must pass gradients to the fake images, so that case uses the native kernel.
        native = x.is_cuda and not self.training and torch.is_grad_enabled()
        with torch.backends.cudnn.flags(enabled=False) if native else contextlib.nullcontext():
            return self.rnn(x, state)

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        v = self.encoder(images)  # (B, word_dim)
        state = (torch.tanh(self.init_h(v)).unsqueeze(0), torch.tanh(self.init_c(v)).unsqueeze(0))
        return v, state  # state: 2 x (1, B, hidden_dim)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1], ids (B, T) zero-padded word ids (teacher forcing).

        Returns logits (B, T + 1, V): position t predicts word t + 1 from the image and words
        1..t (position 0 from the image alone); position L predicts "<end>". Positions past a
        caption's end are computed but meaningless (the LSTM is causal, so they never affect
        earlier ones); the loss masks them by caption length (t2i_ray.losses.recaption).
        """
        B, T = ids.shape
        v, state = self._encode(images)
        words = torch.cat([self.start.expand(B, 1, -1), self.embedding(ids)], dim=1)  # (B, T + 1, word_dim)
        x = torch.cat([words, v.unsqueeze(1).expand(B, T + 1, -1)], dim=2)  # (B, T + 1, 2 word_dim)
        h, _ = self._run_rnn(self.drop(x), state)  # (B, T + 1, hidden_dim)
        return self.out(self.drop(h))  # (B, T + 1, V)

    @torch.no_grad()
    def greedy_decode(self, images: torch.Tensor, max_words: int) -> torch.Tensor:
        """Most likely next word at each step: (B, max_words) ids, zero after "<end>"."""
        B = images.shape[0]
        v, state = self._encode(images)
        word_emb = self.start.expand(B, -1)
        done = torch.zeros(B, dtype=torch.bool, device=images.device)
        out = []
        for _ in range(max_words):
            h, state = self._run_rnn(torch.cat([word_emb, v], dim=1).unsqueeze(1), state)
            word = self.out(h[:, -1]).argmax(dim=1).masked_fill(done, 0)  # (B,)
            done |= word == 0
            out.append(word)
            word_emb = self.embedding(word)
        return torch.stack(out, dim=1)
