"""CLIP score (t2i_ray/eval/clip.py): checkpoint layout, tokenizer, formula, end to end, refusals.

No CLIP weights exist offline: the tests write random weights of a tiny CLIP (widths 64, 2 layers,
patch 8, 32x32 images) and a tiny merges file, and check the real ViT-B/32 layout on the meta device.
"""
from __future__ import annotations

import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i_ray.config import ConfigError, apply_overrides, build_config
from t2i_ray.eval import clip as clip_mod
from t2i_ray.eval.clip import (CLIP_MEAN, CLIP_STD, ClipArchitecture, ClipModel, ClipTokenizer, ClipWeightsError,
                               clip_preprocess, clip_score, load_clip, vit_b32_architecture)

REPO = Path(__file__).resolve().parents[1]
# A tiny vocabulary: 512 byte symbols + these 5 merges + <|startoftext|> (517), <|endoftext|> (518).
MERGES = ["h e", "l l", "he ll", "hell o</w>", "a t</w>"]
TINY = ClipArchitecture(embed_dim=32, image_resolution=32, vision_width=64, vision_layers=2, vision_patch_size=8,
                        context_length=16, vocab_size=512 + len(MERGES) + 2, text_width=64, text_layers=2)


def write_merges(path, merges=MERGES):
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
    return str(path)


def tiny_state(seed=0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = ClipModel(TINY)
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.startswith(("ln", "visual.ln")) or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def clip_files(tmp_path):
    weights = tmp_path / "tiny_clip.pth"
    torch.save(tiny_state(), weights)
    return str(weights), write_merges(tmp_path / "bpe.txt.gz")


# ------------------------------------------------------------------------------ checkpoint layout

# Names and shapes of entries of OpenAI's ViT-B-32.pt state dict (openai/CLIP clip/model.py: the
# modules' parameter names; sizes from the model card / build_model: vision width 768, 12 layers,
# patch 32 at 224 px, text width 512, 12 layers, 49408 tokens, 77 positions, embedding 512).
VIT_B32_KEYS = {
    "visual.class_embedding": (768,), "visual.positional_embedding": (50, 768), "visual.proj": (768, 512),
    "visual.conv1.weight": (768, 3, 32, 32), "visual.ln_pre.weight": (768,), "visual.ln_post.bias": (768,),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (2304, 768),
    "visual.transformer.resblocks.11.attn.in_proj_bias": (2304,),
    "visual.transformer.resblocks.11.attn.out_proj.weight": (768, 768),
    "visual.transformer.resblocks.5.mlp.c_fc.weight": (3072, 768),
    "visual.transformer.resblocks.5.mlp.c_proj.weight": (768, 3072), "visual.transformer.resblocks.0.ln_2.bias": (768,),
    "transformer.resblocks.0.attn.in_proj_weight": (1536, 512), "transformer.resblocks.11.mlp.c_fc.bias": (2048,),
    "transformer.resblocks.11.ln_1.weight": (512,), "token_embedding.weight": (49408, 512),
    "positional_embedding": (77, 512), "ln_final.weight": (512,), "ln_final.bias": (512,),
    "text_projection": (512, 512), "logit_scale": (),
}
# 8 visual tensors outside the blocks + 12 tensors in each of 12 visual and 12 text blocks + 6 text
# tensors = 302: OpenAI's TorchScript state dict minus the 3 scalars build_model deletes
# (input_resolution, context_length, vocab_size), and open_clip's ViT-B-32 'openai' state dict.
VIT_B32_NUM_KEYS = 8 + 12 * 12 * 2 + 6


def test_vit_b32_layout_matches_the_public_checkpoint():
    with torch.device("meta"):
        state = ClipModel(vit_b32_architecture()).state_dict()
    assert len(state) == VIT_B32_NUM_KEYS == 302
    for name, shape in VIT_B32_KEYS.items():
        assert tuple(state[name].shape) == shape, name
    arch = ClipArchitecture.of(state)  # sizes inferred back from the shapes
    assert arch == vit_b32_architecture() and arch.name == "ViT-B/32"
    with torch.device("meta"):  # GCDP's model: ViT-L/14 at 336 px (577 = 24*24 + 1 positions)
        l14 = ClipModel(ClipArchitecture(768, 336, 1024, 24, 14, 77, 49408, 768, 12)).state_dict()
    assert tuple(l14["visual.positional_embedding"].shape) == (577, 1024)
    assert ClipArchitecture.of(l14).name == "ViT-L/14@336px"


# ------------------------------------------------------------------------------------ tokenizer

def test_tokenizer_against_hand_derived_ids(tmp_path):
    tok = ClipTokenizer.from_file(write_merges(tmp_path / "m.gz"))
    assert tok.vocab_size == TINY.vocab_size and (tok.sot, tok.eot) == (517, 518)
    # Byte symbol ids: '!'..'~' are 0..93 (byte - 33), '¡'..'¬' 94..105, '®'..'ÿ' 106..187; +256 with '</w>'.
    # "hello": h e l l o</w> -> he l l o</w> -> he ll o</w> -> hell o</w> -> hello</w> (merge 3 = 515).
    # "," -> ",</w>" 256+11; "cat" -> c at</w> (99-33=66, merge 4 = 516); "'s" -> ' s</w> (6, 256+82);
    # "world" has no merge: w o r l d</w>; numbers are single pieces: 4</w>, 2</w>; "!" -> !</w>.
    ids = tok.encode("  Hello,\tCAT’s world 42! ")  # curly quote straightened, case folded, spaces collapsed
    assert ids == [515, 267, 66, 516, 6, 338, 86, 78, 81, 75, 256 + 67, 256 + 19, 256 + 17, 256]
    # 'é' is the UTF-8 bytes C3 A9: 0xC3 = 195 -> 106 + 21 = 127, 0xA9 = 169 -> 94 + 8 = 102 (+256 at word end).
    assert tok.encode("é") == [127, 256 + 102]
    assert tok.encode("&amp;") == [256 + ord("&") - 33]  # HTML unescaped
    rows = tok.tokenize(["hello", "hello cat hello cat hello"], context_length=5)
    assert rows.tolist() == [[517, 515, 518, 0, 0], [517, 515, 66, 516, 518]]  # truncated, last = <|endoftext|>


def test_pre_tokenizer_follows_clips_pattern():
    # On ASCII, CLIP's `regex` pattern is expressible with `re` ([a-z] letters, [0-9] numbers):
    # the scanner must find the same pieces on random strings of letters, digits, quotes, punctuation.
    import re

    pattern = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
    rng = np.random.default_rng(0)
    alphabet = list("abdelmrstv019'.,!_- \t")
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(1, 30))))
        assert clip_mod.pre_tokenize(text) == pattern.findall(text), text
    assert clip_mod.pre_tokenize("don't we'll x2y ...!? a_b") == ["don", "'t", "we", "'ll", "x", "2", "y", "...!?",
                                                                  "a", "_", "b"]
    assert clip_mod.pre_tokenize("<|startoftext|>hi") == ["<|startoftext|>", "hi"]


# ---------------------------------------------------------------------------------- the formula

def test_clip_score_formula_against_hand_computation():
    img = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    txt = np.array([[4.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    # cosines 24/25, -1 (clipped to 0), 1/sqrt(2); Hessel: 2.5 * mean(max(cos, 0))
    score, cosine = clip_score(img, txt)
    assert score == pytest.approx(2.5 * (0.96 + 0.0 + 1 / math.sqrt(2)) / 3, abs=1e-12)
    assert cosine == pytest.approx((0.96 - 1.0 + 1 / math.sqrt(2)) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="must both be"):
        clip_score(img, txt[:2])


# ----------------------------------------------------------------------------------- end to end

def reference_embeddings(state, arch, pixels, ids):
    """OpenAI's formulation, independently: sequence-first activations through
    torch.nn.MultiheadAttention with an additive -inf causal mask for the text."""
    def block(x, prefix, width, mask):
        mha = torch.nn.MultiheadAttention(width, width // 64)
        mha.load_state_dict({k[len(prefix) + 5:]: v for k, v in state.items() if k.startswith(prefix + "attn.")})
        ln = lambda h, n: F.layer_norm(h, (width,), state[f"{prefix}{n}.weight"], state[f"{prefix}{n}.bias"])  # noqa
        x = x + mha(*(ln(x, "ln_1"),) * 3, need_weights=False, attn_mask=mask)[0]
        h = F.linear(ln(x, "ln_2"), state[f"{prefix}mlp.c_fc.weight"], state[f"{prefix}mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        return x + F.linear(h, state[f"{prefix}mlp.c_proj.weight"], state[f"{prefix}mlp.c_proj.bias"])

    w = arch.vision_width
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=arch.vision_patch_size).reshape(len(pixels), w, -1)
    x = torch.cat([state["visual.class_embedding"] + torch.zeros(len(pixels), 1, w), x.permute(0, 2, 1)], 1)
    x = F.layer_norm(x + state["visual.positional_embedding"], (w,), state["visual.ln_pre.weight"],
                     state["visual.ln_pre.bias"]).permute(1, 0, 2)
    for i in range(arch.vision_layers):
        x = block(x, f"visual.transformer.resblocks.{i}.", w, None)
    img = F.layer_norm(x[0], (w,), state["visual.ln_post.weight"], state["visual.ln_post.bias"]) @ state["visual.proj"]
    t = arch.text_width
    mask = torch.full((arch.context_length,) * 2, float("-inf")).triu(1)
    x = (state["token_embedding.weight"][ids] + state["positional_embedding"]).permute(1, 0, 2)
    for i in range(arch.text_layers):
        x = block(x, f"transformer.resblocks.{i}.", t, mask)
    x = F.layer_norm(x.permute(1, 0, 2), (t,), state["ln_final.weight"], state["ln_final.bias"])
    return img, x[torch.arange(len(ids)), ids.argmax(-1)] @ state["text_projection"]


def test_end_to_end_from_written_files_matches_independent_reference(clip_files):
    weights, vocab = clip_files
    scorer = load_clip(weights, vocab)
    assert scorer.model.arch == TINY and scorer.info["resolution"] == 32
    assert scorer.info["backbone"] == f"clip-{TINY.name}-{scorer.info['weights_sha256'][:8]}"
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 32, generator=gen) * 2 - 1  # non-square: resize shorter side, center crop
    captions = ["hello cat", "a world", "hello"]
    img_emb = scorer.image_embeddings(images)
    txt_emb = scorer.text_embeddings(captions)
    state = tiny_state()
    pixels = clip_preprocess(images, 32)
    ids = scorer.tokenizer.tokenize([scorer.prefix + c for c in captions], TINY.context_length)
    with torch.no_grad():
        ref_img, ref_txt = reference_embeddings(state, TINY, pixels, ids)
    np.testing.assert_allclose(img_emb, ref_img.double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(txt_emb, ref_txt.double().numpy(), rtol=1e-4, atol=1e-5)
    score, cosine = clip_score(img_emb, txt_emb)
    cos = F.cosine_similarity(ref_img.double(), ref_txt.double()).numpy()
    assert score == pytest.approx(2.5 * np.maximum(cos, 0).mean(), rel=1e-4)
    # CLIP's preprocessing: a uniform image stays uniform through resize + crop, then (v/255 - mean) / std.
    flat = torch.full((1, 3, 20, 40), 200, dtype=torch.uint8)
    out = clip_preprocess(flat, 32)
    assert out.shape == (1, 3, 32, 32)
    for c in range(3):
        assert torch.allclose(out[0, c], torch.tensor((200 / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), atol=1e-6)


def test_openai_torchscript_refused_with_conversion_command_and_converted(tmp_path, capsys):
    class Scripted(ClipModel):  # OpenAI's archives also carry these scalars in their state dict
        def __init__(self, arch):
            super().__init__(arch)
            for name, value in (("input_resolution", 32), ("context_length", 16), ("vocab_size", 519)):
                self.register_buffer(name, torch.tensor(value))

    model = Scripted(TINY)
    model.load_state_dict({**tiny_state(), "input_resolution": torch.tensor(32), "context_length": torch.tensor(16),
                           "vocab_size": torch.tensor(519)})
    src = tmp_path / "ViT-tiny.pt"
    with pytest.warns(Warning):  # torch.jit.trace is deprecated
        torch.jit.trace(model.eval(), (torch.zeros(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long)),
                        check_trace=False).save(str(src))
    vocab = write_merges(tmp_path / "bpe.gz")
    with pytest.raises(ClipWeightsError, match=r"TorchScript archive.*python -m t2i_ray\.eval\.clip --convert"):
        load_clip(str(src), vocab)
    out = tmp_path / "converted.pth"
    proc = subprocess.run([sys.executable, "-m", "t2i_ray.eval.clip", "--convert", str(src), "--out", str(out)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0 and f"wrote {out}: CLIP {TINY.name}, {len(tiny_state())} tensors" in proc.stdout
    converted = torch.load(out, weights_only=True)
    assert set(converted) == set(tiny_state())  # the scalars dropped, every parameter kept
    for k, v in tiny_state().items():
        assert torch.equal(converted[k], v), k
    other = tmp_path / "linear.pt"  # a TorchScript archive that is not CLIP: refused, nothing written
    with pytest.warns(Warning):
        torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2), check_trace=False).save(str(other))
    with pytest.raises(SystemExit) as exit_info:
        clip_mod.main(["--convert", str(other), "--out", str(tmp_path / "no.pth")])
    assert exit_info.value.code == 2 and "not a CLIP state dict" in capsys.readouterr().err
    assert not (tmp_path / "no.pth").exists()


# ------------------------------------------------------------------------------------- refusals

def test_refusals_without_weights_and_on_wrong_files(tmp_path, monkeypatch, clip_files):
    from t2i_ray.eval.evaluate import check_eval_assets, eval_asset_overrides

    monkeypatch.delenv(clip_mod.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(clip_mod.VOCAB_ENV, raising=False)
    on = build_config("smoke", {"output_dir": str(tmp_path), "eval.clip_score": "on"})
    with pytest.raises(ConfigError) as err:
        check_eval_assets(on)
    msg = str(err.value)
    for needle in ("ViT-L/14@336px", "ViT-B/32", "ViT-L-14-336px.pt", "eval.clip_weights", clip_mod.WEIGHTS_ENV,
                   "eval.clip_vocab", clip_mod.VOCAB_ENV, clip_mod.VOCAB_FILE, "nothing is downloaded",
                   "--convert", "eval.clip_score=off"):
        assert needle in msg, needle
    from t2i_ray.sweep import run as run_mod

    def no_training(*a, **k):
        raise AssertionError("work started before the CLIP files were checked")

    monkeypatch.setattr("t2i_ray.data.registry.prepare_data", no_training)
    monkeypatch.setattr("t2i_ray.train.damsm.ensure_damsm", no_training)
    with pytest.raises(ClipWeightsError, match="eval.clip_weights: the CLIP score needs"):
        run_mod.prepare_assets(on, log=lambda s: None)  # the sweep's first step, before any training
    weights, vocab = clip_files
    with pytest.raises(ClipWeightsError, match=f"{clip_mod.VOCAB_FILE}.*neither eval.clip_vocab"):
        check_eval_assets(apply_overrides(on, {"eval.clip_weights": weights}))
    monkeypatch.setenv(clip_mod.WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(ClipWeightsError, match="no file at .*nope.pth"):
        check_eval_assets(on)
    monkeypatch.setenv(clip_mod.WEIGHTS_ENV, weights)
    monkeypatch.setenv(clip_mod.VOCAB_ENV, vocab)
    assert eval_asset_overrides(on) == {"eval.clip_weights": weights, "eval.clip_vocab": vocab}  # pinned
    from t2i_ray.sweep.cli import base_parser, config_from_args
    from t2i_ray.sweep.run import SweepSpec

    args = base_parser("test").parse_args(["--preset", "smoke", "--output-dir", str(tmp_path),
                                           "--set", "eval.clip_score=on"])
    pinned = config_from_args(args)  # the scripts pin the environment variables into the config
    assert (pinned.eval.clip_weights, pinned.eval.clip_vocab) == (weights, vocab)
    from t2i_ray.sweep.cli import networks_needed  # the --dry-run's list

    assert f"CLIP score: CLIP from the local files {weights} (weights) and {vocab} (BPE merges)" in \
        networks_needed([pinned])
    assert not any("CLIP" in line for line in networks_needed([build_config("smoke", {})]))
    # where the files live is not what the sweep is: a moved file resumes the same sweep
    assert SweepSpec("s", pinned, "grid").name == SweepSpec("s", apply_overrides(
        pinned, {"eval.clip_weights": "/elsewhere/w.pth", "eval.clip_vocab": "/elsewhere/v.gz"}), "grid").name
    # auto: off on shapes (and for GANs) even with weights configured; on for diffusion on real data
    auto = build_config("smoke", {"model.method": "diffusion"})
    assert not clip_mod.clip_score_enabled(auto) and eval_asset_overrides(auto) == {}
    real = apply_overrides(auto, {"data.dataset": "mmceleba", "data.data_root": str(tmp_path)})
    assert clip_mod.clip_score_enabled(real)
    assert not clip_mod.clip_score_enabled(apply_overrides(on, {"eval.clip_score": "off"}))
    with pytest.raises(ConfigError, match="eval.clip_score: must be one of auto, on, off"):
        apply_overrides(on, {"eval.clip_score": "yes"})
    # files that exist but are not CLIP weights / merges
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(2)}, bad)
    with pytest.raises(ClipWeightsError, match="not a CLIP state dict"):
        load_clip(str(bad), vocab)
    with pytest.raises(ClipWeightsError, match="holds 2 merges.*needs 5"):
        load_clip(weights, write_merges(tmp_path / "short.gz", MERGES[:2]))
    from t2i_ray.config_checks import check_paths

    with pytest.raises(ConfigError, match="eval.clip_weights: .*bad.pth.*not a CLIP state dict"):
        check_paths(apply_overrides(on, {"eval.clip_weights": str(bad)}))


# ----------------------------------------------------------------------------- evaluation wiring

def test_evaluate_generator_records_clip_score_of_each_fake_with_its_caption(tiny_cfg, tiny_damsm, clip_files):
    import hashlib

    from t2i_ray.eval.evaluate import build_eval_context, evaluate_generator
    from t2i_ray.train.damsm import load_damsm

    weights, vocab = clip_files
    cfg = apply_overrides(tiny_cfg, {"data.num_test": 8, "eval.num_images": 10, "eval.batch_size": 4,
                                     "eval.r_precision_candidates": 4, "eval.kid_subsets": 2,
                                     "eval.kid_subset_size": 4, "eval.evaluator_steps": 1, "eval.evaluator_images": 64,
                                     "eval.clip_score": "on", "eval.clip_weights": weights,
                                     "eval.clip_vocab": vocab})
    ctx = build_eval_context(cfg, load_damsm(tiny_damsm))  # a 1-step domain evaluator: FID is not tested here
    fakes = []

    def sample(ids, lens, generator):
        images = torch.rand(len(ids), 3, 32, 32, generator=generator) * 2 - 1
        fakes.append(images)
        return images

    out = evaluate_generator(sample, ctx, cfg, seed=0, warn=False)
    # fake k was drawn for test item k mod 8 (10 fakes cycle over the split): scored with caption 0 of it
    captions = [ctx.test_set.captions[k % 8][0] for k in range(10)]
    expected, cosine = clip_score(ctx.clip.image_embeddings(torch.cat(fakes)), ctx.clip.text_embeddings(captions))
    assert out["clip_score"] == pytest.approx(expected, rel=1e-9) and out["clip_score_cosine"] == pytest.approx(cosine)
    assert out["clip_score_n"] == 10 and out["clip_score_prefix"] == "A photo depicts "
    sha = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert out["clip_score_weights_sha256"] == sha and out["clip_score_backbone"] == f"clip-{TINY.name}-{sha[:8]}"
    assert out["clip_score_definition"].startswith("2.5*mean(max(cos,0))")


@pytest.mark.skipif(__import__("importlib").util.find_spec("safetensors") is not None,
                    reason="the safetensors package is installed: such files load")
def test_safetensors_without_the_package_refuses_naming_it(tmp_path, clip_files):
    path = tmp_path / "open_clip_model.safetensors"
    path.write_bytes(b"{}")
    with pytest.raises(ClipWeightsError, match="safetensors package is not installed: pip install safetensors"):
        load_clip(str(path), clip_files[1])
