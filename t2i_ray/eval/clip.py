"""CLIP score (Hessel et al., arXiv:2104.08718) from a local CLIP weights file, never downloaded.

The model is CLIP's ViT variant (Radford et al., arXiv:2103.00020 Sec. 2.4; public reference
code github.com/openai/CLIP, clip/model.py), written here with the parameter names of the public
checkpoints (OpenAI's `ViT-B-32.pt` state dict, open_clip's `open_clip_pytorch_model.bin` of the
`openai` ViT tags): `visual.conv1.weight`, `visual.transformer.resblocks.N.attn.in_proj_weight`,
`token_embedding.weight`, `positional_embedding`, `ln_final.*`, `text_projection`, `logit_scale`,
...; every size is read from the state dict's shapes as openai/CLIP's `build_model` does (heads =
width // 64, its rule for all OpenAI ViTs). The ResNet variants (RN50, ...) are not implemented.

The tokenizer is CLIP's byte-level BPE (openai/CLIP clip/simple_tokenizer.py behaviour) reading the
merges file `bpe_simple_vocab_16e6.txt.gz` from a local path, in plain Python: `ftfy` and `regex`
are not dependencies of this project, so
- `ftfy.fix_text` is replaced by the few of its default fixes that matter for clean captions
  (NFC normalisation, curly quotes -> straight, Latin ligatures and full-width forms -> ASCII);
  ftfy's repair of mis-decoded text (mojibake) is not done;
- the pre-tokenising pattern (`regex` with `\\p{L}`/`\\p{N}`) is a scanner over
  `unicodedata.category`: runs of letters, single numbers, runs of other non-space characters, and
  the contractions 's 't 're 've 'm 'll 'd, tried in the pattern's order. It differs from `regex`
  only where Python's Unicode tables or `str.isspace` differ from `regex`'s (`\\s`: Python counts
  the separators U+001C..U+001F as space, `regex` does not).

CLIP score: CLIP-S(c, v) = w * max(cos(E_I(v), E_T(c)), 0) with w = 2.5, averaged over the
(image, caption) pairs (arXiv:2104.08718 Sec. 3; reference code jmhessel/clipscore, clipscore.py,
`get_clip_score`, which also prefixes every caption with "A photo depicts " and truncates to 77
tokens). GCDP (arXiv:2308.08157 Sec. 4) reports Hessel's CLIP score with CLIP ViT-L/14@336px and
does not state the scale; the mean raw cosine is recorded beside it (`clip_score_cosine`) so the
other common scale, torchmetrics' 100 * max(mean cos, 0), can be computed from the row.

Images go through CLIP's preprocessing (openai/CLIP clip/clip.py `_transform`): shorter side
resized to the model's input size with PIL bicubic, center crop, CLIP's mean/std; generated images
are first rounded to uint8 as a saved PNG would be.

OpenAI's `.pt` files are TorchScript archives, which `torch.load(weights_only=True)` refuses; the
user converts one once with `python -m t2i_ray.eval.clip --convert ViT-B-32.pt --out
clip_vit_b32.pth` (that command runs `torch.jit.load` on the file they downloaded: only for files
from a source they trust). open_clip's `open_clip_pytorch_model.bin` loads as is; `.safetensors`
files load when the `safetensors` package is installed.
"""
from __future__ import annotations

import argparse
import gzip
import html
import math
import os
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_ray.config import ConfigError, ExperimentConfig
from t2i_ray.console import console
from t2i_ray.weights import WeightsFileError, file_sha256, load_state_dict_file, resolve_local_file

if TYPE_CHECKING:
    from PIL import Image

WEIGHTS_ENV = "T2I_CLIP_WEIGHTS"
VOCAB_ENV = "T2I_CLIP_VOCAB"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
# openai/CLIP clip/clip.py `_MODELS` (the hex in each URL is the file's sha256).
OPENAI_URLS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407"
                "c4526f58eba950af/ViT-B-32.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea0506"
                      "43e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
# Sizes of the OpenAI ViTs (openai/CLIP model card / build_model on their state dicts):
# (embed_dim, image_resolution, vision_width, vision_layers, patch, text_width, text_layers).
KNOWN_MODELS = {
    (512, 224, 768, 12, 32, 512, 12): "ViT-B/32",
    (512, 224, 768, 12, 16, 512, 12): "ViT-B/16",
    (768, 224, 1024, 24, 14, 768, 12): "ViT-L/14",
    (768, 336, 1024, 24, 14, 768, 12): "ViT-L/14@336px",
}
# Keys of OpenAI's TorchScript state dicts that are not parameters (build_model deletes them).
SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai/CLIP clip/clip.py `_transform`
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HESSEL_W = 2.5  # arXiv:2104.08718 Sec. 3
CONTEXT_LENGTH = 77
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# openai/CLIP simple_tokenizer.py: 49152 - 256 - 2 merges (after the header line) for the 49408-token vocab;
# here the count comes from the model's token_embedding rows: vocab_size - 2 * 256 - 2.
OPENAI_NUM_MERGES = 49152 - 256 - 2
CLIP_SCORE_DEFINITION = "2.5*mean(max(cos,0)) (Hessel et al. arXiv:2104.08718 Sec. 3)"


class ClipWeightsError(ConfigError):
    """The CLIP weights or vocabulary file is missing or unreadable; the message says how to fix it."""


def convert_command(src: str = "ViT-B-32.pt", out: str = "clip_vit_b32.pth") -> str:
    return f"python -m t2i_ray.eval.clip --convert {src} --out {out}"


def _where_to_get() -> str:
    return (f"GCDP (arXiv:2308.08157 Sec. 4) scores with CLIP ViT-L/14@336px ({OPENAI_URLS['ViT-L/14@336px']}); "
            f"Hessel et al.'s CLIP score uses ViT-B/32 ({OPENAI_URLS['ViT-B/32']}). On a machine with internet "
            f"access download one, convert it once with "
            f"`{convert_command('ViT-L-14-336px.pt', 'clip_vit_l14_336.pth')}` "
            f"(OpenAI's .pt files are TorchScript archives; open_clip's open_clip_pytorch_model.bin of the same model, "
            f"tag 'openai', needs no conversion), and get the tokenizer's merges file {VOCAB_FILE} from {VOCAB_URL} "
            f"(it is also inside the open_clip_torch wheel: pip download open_clip_torch --no-deps)")


def missing_weights_message(what: str, path: str | None) -> str:
    """`what`: "weights" or "vocab"; `path`: the configured path (None: nothing configured)."""
    field_name, env = ("eval.clip_weights", WEIGHTS_ENV) if what == "weights" else ("eval.clip_vocab", VOCAB_ENV)
    file_desc = "the CLIP weights" if what == "weights" else f"CLIP's BPE merges file {VOCAB_FILE}"
    where = f"no file at {path!r}" if path else f"neither {field_name} nor ${env} is set"
    return (f"{field_name}: the CLIP score needs {file_desc} as a local file ({where}); nothing is downloaded at "
            f"run time. "
            f"{_where_to_get()}. Then point at the files with the config fields eval.clip_weights=PATH and "
            f"eval.clip_vocab=PATH (--set eval.clip_weights=PATH), or the environment variables {WEIGHTS_ENV} "
            f"and {VOCAB_ENV}; eval.clip_score=off skips the metric.")


def clip_score_enabled(cfg: ExperimentConfig) -> bool:
    """eval.clip_score resolved: on / off as set; auto = on for a diffusion run on a real dataset
    when a CLIP weights file is configured (eval.clip_weights or $T2I_CLIP_WEIGHTS), off otherwise
    (off on `shapes`: CLIP has never seen its images)."""
    mode = cfg.eval.clip_score
    if mode != "auto":
        return mode == "on"
    configured = bool(cfg.eval.clip_weights or os.environ.get(WEIGHTS_ENV))
    return cfg.model.method == "diffusion" and cfg.data.dataset != "shapes" and configured


def _resolve(config_path: str | None, env: str, what: str) -> str:
    return resolve_local_file(config_path, env, lambda p: ClipWeightsError(missing_weights_message(what, p)))


def resolve_clip_files(cfg: ExperimentConfig) -> tuple[str, str]:
    """Absolute (weights, vocab) paths from eval.clip_weights / eval.clip_vocab, else
    $T2I_CLIP_WEIGHTS / $T2I_CLIP_VOCAB; raises ClipWeightsError (a ConfigError) naming the fix."""
    return (_resolve(cfg.eval.clip_weights, WEIGHTS_ENV, "weights"),
            _resolve(cfg.eval.clip_vocab, VOCAB_ENV, "vocab"))


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _byte_table() -> list[tuple[int, str]]:
    """(byte, the printable character standing for it) in CLIP's (and GPT-2's) byte-level BPE, in
    vocabulary order: the bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬',
    '®'..'ÿ') stand for themselves and come first; the other 68 bytes, in increasing order, get
    chr(256), chr(257), ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = [(b, chr(b)) for b in printable]
    others = [b for b in range(256) if b not in set(printable)]
    table += [(b, chr(256 + k)) for k, b in enumerate(others)]
    return table


_LIGATURES = {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
              "Ĳ": "IJ", "ĳ": "ij"}
_QUOTES = {"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"'}


def _fix_text(text: str) -> str:
    """The ftfy defaults that matter for clean captions (see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(_QUOTES.get(c, _LIGATURES.get(c, c)) for c in text)
    # Full-width ASCII forms (U+FF01..U+FF5E) and the ideographic space -> their ASCII forms.
    return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else (" " if c == "\u3000" else c)
                   for c in text)


def clean_caption(text: str) -> str:
    """CLIP's text cleaning: fix, unescape HTML twice, collapse whitespace, strip, lowercase."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _kind(c: str) -> str:
    if c.isspace():
        return " "
    cat = unicodedata.category(c)[0]
    return cat if cat in "LN" else "P"


def pre_tokenize(text: str) -> list[str]:
    """The pieces CLIP's pattern `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|
    [\\p{N}]|[^\\s\\p{L}\\p{N}]+` finds in `text` (re.findall semantics: alternatives in order at
    each position, whitespace skipped)."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        rest = text[i:i + 15]
        special = next((s for s in (SOT, EOT) if text.startswith(s, i)), None)
        if special:
            pieces.append(special)
            i += len(special)
            continue
        low = rest.lower()
        contraction = next((c for c in _CONTRACTIONS if low.startswith(c)), None)
        if contraction:
            pieces.append(text[i:i + len(contraction)])
            i += len(contraction)
            continue
        kind = _kind(text[i])
        if kind == " ":
            i += 1
            continue
        j = i + 1
        if kind != "N":  # letters and other symbols come in runs; numbers one at a time
            while j < n and _kind(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def read_merges(path: str, num_merges: int | None = None) -> list[tuple[str, str]]:
    """The BPE merges of a CLIP merges file (gzip or plain text, first line a header): the first
    `num_merges` (None: all) lines after the header, each two symbols."""
    with open(path, "rb") as fh:
        blob = fh.read()
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    try:
        lines = blob.decode("utf-8").split("\n")[1:]
    except UnicodeDecodeError as e:
        raise ClipWeightsError(f"eval.clip_vocab: {path} is not CLIP's merges file {VOCAB_FILE} (not UTF-8 text: {e})")
    while lines and not lines[-1].strip():
        lines.pop()
    if num_merges is not None:
        if len(lines) < num_merges:
            raise ClipWeightsError(
                f"eval.clip_vocab: {path} holds {len(lines)} merges, the CLIP weights' vocabulary needs "
                f"{num_merges} (token_embedding rows - 514); use {VOCAB_FILE} from {VOCAB_URL}")
        lines = lines[:num_merges]
    merges = []
    for k, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2:
            raise ClipWeightsError(f"eval.clip_vocab: {path} line {k + 2} ({line[:40]!r}) is not a merge 'A B'; "
                                   f"use {VOCAB_FILE} from {VOCAB_URL}")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """CLIP's byte-level BPE: text -> token ids, framed by <|startoftext|> ... <|endoftext|>.

    Vocabulary order (as openai/CLIP's): the 256 byte symbols, the same with '</w>' (end of word),
    one entry per merge in rank order, then <|startoftext|>, <|endoftext|>.
    """

    def __init__(self, merges: Sequence[tuple[str, str]]):
        table = _byte_table()
        self.byte_to_symbol = dict(table)
        symbols = [s for _, s in table]
        vocab = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges] + [SOT, EOT]
        self.encoder = {tok: k for k, tok in enumerate(vocab)}
        self.ranks = {pair: k for k, pair in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @classmethod
    def from_file(cls, path: str, num_merges: int | None = None) -> "ClipTokenizer":
        return cls(read_merges(path, num_merges))

    def _bpe(self, piece: str) -> list[str]:
        """Merge the symbols of one pre-token, always the lowest-ranked adjacent pair first (all
        its non-overlapping occurrences, left to right), until no pair is a merge."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of the cleaned text, without the start/end tokens."""
        ids = []
        for piece in pre_tokenize(clean_caption(text)):
            symbols = piece if piece in (SOT, EOT) else "".join(self.byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(symbols))
        return ids

    def tokenize(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> Tensor:
        """(N, context_length) int64, zero-padded; a text longer than the context is truncated and
        its last token set to <|endoftext|> (clip.tokenize(truncate=True), as Hessel's code)."""
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for k, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot
            out[k, :len(ids)] = torch.tensor(ids)
        return out


# ---------------------------------------------------------------------------------------------
# Model


def _normal(shape: tuple[int, ...], std: float) -> nn.Parameter:
    """A parameter drawn from N(0, std^2); left uninitialised on the meta device, where normal_
    would import torch._dynamo (seconds) for values that do not exist. Initial values matter only
    for random test weights: real ones are loaded."""
    t = torch.empty(shape)
    return nn.Parameter(t if t.is_meta else nn.init.normal_(t, std=std))


class _Attention(nn.Module):
    """Multi-head self-attention with torch.nn.MultiheadAttention's parameter names (in_proj_weight
    (3W, W), in_proj_bias (3W,), out_proj), as CLIP's checkpoints store them; batch-first."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = _normal((3 * width, width), width ** -0.5)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        b, n, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, w // self.heads
                                                                             ).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, N, W/heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class _QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1 x), then x + mlp(ln_2 x) (MLP 4W, QuickGELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.resblocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, self.causal)
        return x


class _VisionTower(nn.Module):
    """Patches (conv, no bias) + class token + learned positions -> ln_pre -> transformer ->
    ln_post of the class token -> @ proj (arXiv:2103.00020 Sec. 2.4)."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        self.resolution = resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = _normal((width,), width ** -0.5)
        self.positional_embedding = _normal(((resolution // patch) ** 2 + 1, width), width ** -0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, causal=False)
        self.ln_post = nn.LayerNorm(width)
        self.proj = _normal((width, embed_dim), width ** -0.5)

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, grid^2, W)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        return self.ln_post(self.transformer(x)[:, 0]) @ self.proj


@dataclass(frozen=True)
class ClipArchitecture:
    embed_dim: int
    image_resolution: int
    vision_width: int
    vision_layers: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int

    @property
    def name(self) -> str:
        key = (self.embed_dim, self.image_resolution, self.vision_width, self.vision_layers, self.vision_patch_size,
               self.text_width, self.text_layers)
        known = KNOWN_MODELS.get(key)
        if known and self.context_length == CONTEXT_LENGTH and self.vocab_size == OPENAI_NUM_MERGES + 514:
            return known
        return (f"ViT-custom-p{self.vision_patch_size}-r{self.image_resolution}-w{self.vision_width}x"
                f"{self.vision_layers}-t{self.text_width}x{self.text_layers}-e{self.embed_dim}")

    @classmethod
    def of(cls, state: dict[str, Tensor]) -> "ClipArchitecture":
        """Sizes from the shapes and key names of a CLIP ViT state dict (openai/CLIP build_model)."""
        if "visual.proj" not in state:
            what = ("a ResNet CLIP (RN50, RN101, ...), which is not implemented here" if
                    any(k.startswith("visual.layer1.") for k in state) else "not a CLIP state dict")
            raise WeightsFileError(f"is {what}: no 'visual.proj' among its {len(state)} keys; use a ViT CLIP "
                                   f"(ViT-L/14@336px as GCDP, or ViT-B/32)")

        def count(prefix: str) -> int:
            return len({k.split(".")[len(prefix.split("."))] for k in state if k.startswith(prefix + ".")})

        try:
            patch = state["visual.conv1.weight"].shape[-1]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            return cls(embed_dim=state["text_projection"].shape[1], image_resolution=patch * grid,
                       vision_width=state["visual.conv1.weight"].shape[0],
                       vision_layers=count("visual.transformer.resblocks"), vision_patch_size=patch,
                       context_length=state["positional_embedding"].shape[0],
                       vocab_size=state["token_embedding.weight"].shape[0],
                       text_width=state["ln_final.weight"].shape[0], text_layers=count("transformer.resblocks"))
        except (KeyError, IndexError) as e:
            raise WeightsFileError(f"is not a complete CLIP ViT state dict (no usable {e}); use a ViT CLIP "
                                   f"(ViT-L/14@336px as GCDP, or ViT-B/32)") from None


class ClipModel(nn.Module):
    """CLIP ViT: `encode_image` (B, 3, R, R) normalised pixels -> (B, E); `encode_text` token ids
    (B, context) -> (B, E), the causal text transformer's features at the <|endoftext|> token (the
    highest id of each row) @ text_projection."""

    def __init__(self, arch: ClipArchitecture):
        super().__init__()
        if arch.vision_width % 64 or arch.text_width % 64:
            raise WeightsFileError(f"has widths {arch.vision_width} (image) / {arch.text_width} (text); OpenAI's "
                                   f"CLIP has 64-dimensional heads (heads = width // 64), so both must be multiples "
                                   f"of 64")
        self.arch = arch
        self.visual = _VisionTower(arch.image_resolution, arch.vision_patch_size, arch.vision_width,
                                   arch.vision_layers, arch.vision_width // 64, arch.embed_dim)
        self.transformer = _Transformer(arch.text_width, arch.text_layers, arch.text_width // 64, causal=True)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width,
                                            _weight=_normal((arch.vocab_size, arch.text_width), 0.02))
        self.positional_embedding = _normal((arch.context_length, arch.text_width), 0.01)
        self.ln_final = nn.LayerNorm(arch.text_width)
        self.text_projection = _normal((arch.text_width, arch.embed_dim), arch.text_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        return self.visual(images)

    def encode_text(self, ids: Tensor) -> Tensor:
        x = self.transformer(self.token_embedding(ids) + self.positional_embedding)
        x = self.ln_final(x)
        return x[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)] @ self.text_projection

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(ids)


def vit_b32_architecture() -> ClipArchitecture:
    """OpenAI's ViT-B/32 (the shapes of ViT-B-32.pt)."""
    return ClipArchitecture(embed_dim=512, image_resolution=224, vision_width=768, vision_layers=12,
                            vision_patch_size=32, context_length=CONTEXT_LENGTH, vocab_size=OPENAI_NUM_MERGES + 514,
                            text_width=512, text_layers=12)


# ---------------------------------------------------------------------------------------------
# Loading, preprocessing, the score


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def read_clip_state_dict(path: str) -> dict[str, Tensor]:
    """{name: tensor} of a CLIP weights file: a torch state dict (loaded with weights_only=True)
    or a .safetensors file; OpenAI's TorchScript .pt is refused with the conversion command.
    The scalar entries of OpenAI's state dicts (input_resolution, ...) are dropped."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ClipWeightsError(f"eval.clip_weights: {path} is a .safetensors file and the safetensors package is "
                                   f"not installed: pip install safetensors, or use a torch state dict (.pth/.bin)"
                                   ) from None
        state = dict(load_file(path))
    elif _is_torchscript(path):
        raise ClipWeightsError(
            f"eval.clip_weights: {path} is a TorchScript archive (OpenAI's CLIP .pt files are), which "
            f"torch.load(weights_only=True) refuses; convert it once with: "
            f"{convert_command(path, os.path.splitext(path)[0] + '.pth')}")
    else:
        try:
            state = load_state_dict_file(path)
        except WeightsFileError as e:
            raise ClipWeightsError(f"eval.clip_weights: {path} {e}; it must be a CLIP ViT state dict "
                                   f"({_where_to_get()})") from e
    return {k: v for k, v in state.items() if k not in SCALAR_KEYS}



@dataclass
class ClipScorer:
    """A frozen CLIP with its tokenizer; text embeddings are cached by caption."""

    model: ClipModel
    tokenizer: ClipTokenizer
    info: dict[str, Any]
    prefix: str = "A photo depicts "
    _text_cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @torch.no_grad()
    def image_embeddings(self, images: Tensor | np.ndarray) -> np.ndarray:
        """(B, E) float64 of images as evaluation holds them (float (B, 3, H, W) in [-1, 1] or uint8)."""
        x = clip_preprocess(images, self.model.arch.image_resolution).to(self.device)
        return self.model.encode_image(x).double().cpu().numpy()

    @torch.no_grad()
    def text_embeddings(self, captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, E) float64 of `prefix + caption` for each caption (computed once per distinct caption)."""
        todo = sorted({c for c in captions if c not in self._text_cache})
        for b in range(0, len(todo), batch_size):
            chunk = todo[b:b + batch_size]
            ids = self.tokenizer.tokenize([self.prefix + c for c in chunk], self.model.arch.context_length)
            emb = self.model.encode_text(ids.to(self.device)).double().cpu().numpy()
            self._text_cache.update(zip(chunk, emb))
        return np.stack([self._text_cache[c] for c in captions])


def load_clip(weights_path: str, vocab_path: str, device: str | torch.device = "cpu",
              prefix: str = "A photo depicts ") -> ClipScorer:
    """CLIP from a local state dict (sizes from its shapes) and the tokenizer from the merges file;
    float32, eval mode, frozen. info: backbone name (model + weights sha256 prefix), both files'
    paths and sha256, input resolution."""
    if not os.path.isfile(weights_path):
        raise ClipWeightsError(missing_weights_message("weights", weights_path))
    if not os.path.isfile(vocab_path):
        raise ClipWeightsError(missing_weights_message("vocab", vocab_path))
    state = read_clip_state_dict(weights_path)
    try:
        arch = ClipArchitecture.of(state)
        model = ClipModel(arch)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (WeightsFileError, KeyError, RuntimeError) as e:
        raise ClipWeightsError(f"eval.clip_weights: {weights_path} {e if isinstance(e, WeightsFileError) else e!r}"
                               f"; it must be a CLIP ViT state dict ({_where_to_get()})") from e
    tokenizer = ClipTokenizer.from_file(vocab_path, arch.vocab_size - 514)
    sha = file_sha256(weights_path)
    info = {"backbone": f"clip-{arch.name}-{sha[:8]}", "model": arch.name, "weights_path": weights_path,
            "weights_sha256": sha, "vocab_path": vocab_path, "vocab_sha256": file_sha256(vocab_path),
            "resolution": arch.image_resolution,
            "resize": f"pil_bicubic shorter side->{arch.image_resolution}, center crop"}
    return ClipScorer(model.eval().requires_grad_(False).to(device), tokenizer, info, prefix)


def resize_center_crop(image: "Image.Image", size: int) -> "Image.Image":
    """torchvision's Resize(size, BICUBIC) + CenterCrop(size) on a PIL image, as CLIP's `_transform`
    applies them, in PIL alone: the shorter side to `size` (the longer to int(size * long / short)),
    then the centre (offsets rounded as torchvision's center_crop rounds them)."""
    from PIL import Image

    w, h = image.size
    short, long = min(w, h), max(w, h)
    new = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def clip_preprocess(images: Tensor | np.ndarray, resolution: int) -> Tensor:
    """float (B, 3, resolution, resolution): CLIP's `_transform` (openai/CLIP clip/clip.py) on
    images as uint8 levels: PIL bicubic resize of the shorter side to `resolution`, center crop,
    /255, CLIP's mean/std."""
    from PIL import Image

    from t2i_ray.eval.inception import to_uint8_nchw

    x = to_uint8_nchw(images).cpu()
    out = [torch.from_numpy(np.asarray(resize_center_crop(Image.fromarray(img.permute(1, 2, 0).numpy()),
                                                          resolution)).copy()).permute(2, 0, 1) for img in x]
    pixels = torch.stack(out).float() / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray, w: float = HESSEL_W) -> tuple[float, float]:
    """(w * mean_i max(cos_i, 0), mean_i cos_i) of paired embeddings (N, E) each (Hessel et al.,
    arXiv:2104.08718 Sec. 3: clipping per pair, then the mean)."""
    a, b = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"clip_score: image {a.shape} and text {b.shape} embeddings must both be (N, E), N >= 1")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(w * np.maximum(cos, 0.0).mean()), float(cos.mean())


# ---------------------------------------------------------------------------------------------
# Converting OpenAI's TorchScript files (run by the user, once, on a file they downloaded)


def convert_torchscript(src: str, out: str) -> dict[str, Tensor]:
    """Write the plain state dict of an OpenAI CLIP TorchScript archive to `out` (torch.save of
    tensors only, loadable with weights_only=True). Uses torch.jit.load, which runs the archive's
    code: only for files from a source you trust (OpenAI's URLs in openai/CLIP clip/clip.py)."""
    model = torch.jit.load(src, map_location="cpu")
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in SCALAR_KEYS}
    arch = ClipArchitecture.of(state)  # refuses what is not a CLIP ViT
    ClipModel(arch).load_state_dict({k: v.float() for k, v in state.items()})  # every key and shape fits
    torch.save(state, out)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m t2i_ray.eval.clip",
        description="Convert an OpenAI CLIP .pt (a TorchScript archive, e.g. ViT-B-32.pt or ViT-L-14-336px.pt from "
                    "the URLs in openai/CLIP clip/clip.py) into a plain state dict for eval.clip_weights / "
                    f"${WEIGHTS_ENV}. This runs torch.jit.load on the file, which executes code stored in it: "
                    "convert only files you downloaded from a source you trust. open_clip's "
                    "open_clip_pytorch_model.bin needs no conversion.")
    parser.add_argument("--convert", required=True, metavar="SRC", help="the OpenAI TorchScript .pt file")
    parser.add_argument("--out", required=True, metavar="OUT", help="where to write the state dict (.pth)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.convert):
        parser.error(f"--convert: no file at {args.convert!r}")
    if not _is_torchscript(args.convert):
        parser.error(f"--convert: {args.convert} is not a TorchScript archive; a state dict file needs no "
                     f"conversion (point eval.clip_weights at it)")
    try:
        state = convert_torchscript(args.convert, args.out)
    except (WeightsFileError, RuntimeError) as e:  # not a CLIP ViT / a key or shape that does not fit
        parser.error(f"--convert: {args.convert} {e}")
    arch = ClipArchitecture.of(state)
    console(f"wrote {args.out}: CLIP {arch.name}, {len(state)} tensors; use it with --set eval.clip_weights={args.out} "
          f"(or ${WEIGHTS_ENV}) and eval.clip_vocab=/path/to/{VOCAB_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
