"""The diffusion paper's studies (GCDP, arXiv:2308.08157): the guidance-scale curve (Fig. 7) from the
results table, unconditional image-layout generation (Table 1) as a row of sweeps/ablate_diffusion.py
with the paper's numbers beside ours, MM CelebA-HQ caption-subset rows, and the image | layout |
outpainting grids read back from the results store."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from analysis import compare_with_paper, guidance_curve, paper_reference_rows, plots  # noqa: E402
from t2i_ray.config import ConfigError, apply_overrides, build_config  # noqa: E402
from t2i_ray.train.method import build_method  # noqa: E402

from tests.test_datasets import write_celeba, write_cityscapes  # noqa: E402
from tests.test_diffusion_method import VOCAB, WORDS, _assets, _step  # noqa: E402
from tests.test_hrnet import write_hrnet_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))
import ablate_diffusion  # noqa: E402  (sweeps/ is not a package)

sys.path.remove(str(REPO / "sweeps"))

PROVENANCE = {"fid_backbone": "inception", "fid_num_fake": 256, "fid_num_real": 500, "fid_real_set": "mmceleba/test",
              "fid_resize": "bilinear", "config.data.dataset": "mmceleba", "config.model.method": "diffusion"}


def _trial(row, seed, scale, extra=None, **metrics):
    rec = {"run_name": f"ad-{row}-s{seed}", "sweep": "ablate_diffusion", "row": row, "seed": seed, "status": "ok",
           "config.diffusion.guidance_scale": scale, "config.diffusion.unconditional": False, **PROVENANCE,
           **metrics}
    rec.update(extra or {})
    return rec


def _guidance_table() -> pd.DataFrame:
    """joint: 2 seeds at main scale 3, extra 1 and 5; `joint 25%`: one seed with main scale 1 and an
    extra 3 (a sweep run with --guidance 1 3); an unconditional row and a failed trial, both left out."""
    return pd.DataFrame([
        _trial("joint", 0, 3.0, {"fid@g1": 30.0, "fid@g5": 14.0, "clip_score@g1": 0.60, "clip_score@g5": 0.80},
               fid=20.0, clip_score=0.70),
        _trial("joint", 1, 3.0, {"fid@g1": 34.0, "fid@g5": 18.0, "clip_score@g1": 0.64, "clip_score@g5": 0.84},
               fid=22.0, clip_score=0.74),
        _trial("joint 25%", 0, 1.0, {"fid@g3": 40.0, "clip_score@g3": 0.50}, fid=50.0, clip_score=0.40),
        _trial("unconditional", 0, 1.0, {"config.diffusion.unconditional": True}, fid=99.0, clip_score=0.1),
        _trial("joint", 2, 3.0, {"status": "error"}, fid=np.nan, clip_score=np.nan),
    ])


# ---------------------------------------------------------------------------------- guidance curve


def test_guidance_curve_mean_std_per_row_and_scale():
    curve = guidance_curve(_guidance_table())
    assert list(curve.columns) == ["row", "scale", "metric", "n", "mean", "std", "ci95"]
    assert "unconditional" not in set(curve["row"])  # no guidance to vary
    got = {(r.row, r.scale, r.metric): (r.n, r.mean, r.std) for r in curve.itertuples()}
    assert set(got) == {(row, s, m) for row, scales in (("joint", (1, 3, 5)), ("joint 25%", (1, 3)))
                        for s in scales for m in ("fid", "clip_score")}
    # joint at w=1: fid (30, 34) -> mean 32, std sqrt(8) = 2.828; at w=3 the main columns (20, 22)
    assert got[("joint", 1.0, "fid")][:2] == (2, 32.0) and got[("joint", 1.0, "fid")][2] == pytest.approx(math.sqrt(8))
    assert got[("joint", 3.0, "fid")][:2] == (2, 21.0) and got[("joint", 5.0, "clip_score")][1] == pytest.approx(0.82)
    # a trial whose main scale is 1: its main columns are w=1, its @g3 column w=3; one seed, no std
    n, mean, std = got[("joint 25%", 1.0, "fid")]
    assert (n, mean, math.isnan(std)) == (1, 50.0, True) and got[("joint 25%", 3.0, "clip_score")][1] == 0.5
    # rows in order of appearance, scales ascending
    assert list(curve[curve["metric"] == "fid"][["row", "scale"]].itertuples(index=False, name=None)) == [
        ("joint", 1.0), ("joint", 3.0), ("joint", 5.0), ("joint 25%", 1.0), ("joint 25%", 3.0)]


def test_guidance_curve_refusals():
    df = _guidance_table()
    df.loc[1, "fid_num_fake"] = 128  # FIDs from different N are not pooled, at any scale
    with pytest.raises(ValueError, match="'fid' values are not comparable.*fid_num_fake"):
        guidance_curve(df)
    df = _guidance_table().assign(clip_score_backbone="clip-ViT-L/14@336px-abc")
    df.loc[0, "clip_score_backbone"] = "clip-ViT-B/32-def"  # CLIP scores of two CLIP models
    with pytest.raises(ValueError, match="'clip_score' values are not comparable.*clip_score_backbone"):
        guidance_curve(df)
    with pytest.raises(KeyError, match=r"\['semantic_recall'\] not in the results table"):
        guidance_curve(_guidance_table(), metrics=["semantic_recall"])
    with pytest.raises(KeyError, match="not diffusion results"):
        guidance_curve(_guidance_table().drop(columns=["config.diffusion.guidance_scale"]))


def test_plot_guidance_curve_draws_fid_against_clip_score_or_what_exists():
    fig = plots.plot_guidance_curve(_guidance_table())
    ax = fig.axes[0]
    assert ax.get_xlabel() == "clip_score ↑" and ax.get_ylabel() == "fid ↓"
    joint = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3][0]  # the joint line: scales 1, 3, 5
    assert np.allclose(joint.get_xdata(), [0.62, 0.72, 0.82]) and np.allclose(joint.get_ydata(), [32, 21, 16])
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "scale"]
    assert sorted(labels) == ["w=1", "w=1", "w=3", "w=3", "w=5"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["joint (n=2)", "joint 25% (n=1)"]
    # on shapes there is no CLIP score: FID against R-precision, and the title says why
    shapes = _guidance_table().drop(columns=[c for c in _guidance_table().columns if c.startswith("clip_score")])
    shapes["r_precision"], shapes["r_precision@g1"], shapes["r_precision@g5"], shapes["r_precision@g3"] = \
        0.2, 0.1, 0.3, 0.25
    ax = plots.plot_guidance_curve(shapes).axes[0]
    assert ax.get_xlabel() == "r_precision ↑" and "no clip_score in these results" in ax.get_title()
    with pytest.raises(ValueError, match="x='clip_score': no trial has it"):
        plots.plot_guidance_curve(shapes, x="clip_score")


# ----------------------------------------------------------------------- the paper's Table 1 rows


def test_paper_reference_rows_beside_ours():
    ref = paper_reference_rows("gcdp_cityscapes_uncond")
    assert "arXiv:2308.08157" in ref.attrs["citation"] and "Table 1" in ref.attrs["citation"]
    gcdp = ref.set_index("method").loc["GCDP"]
    assert (gcdp["fid"], gcdp["layout_miou"], gcdp["fsd"]) == (20.36, 0.6580, 42.22)  # mIoU 65.80 % as a fraction
    with pytest.raises(KeyError, match="known: \\['gcdp_cityscapes_uncond'\\]"):
        paper_reference_rows("gcdp_table9")
    ours = pd.DataFrame([_trial("unconditional", s, 1.0, {"config.data.dataset": "cityscapes"}, fid=f, fsd=d)
                         for s, (f, d) in enumerate(((40.0, 50.0), (44.0, 54.0)))]
                        + [_trial("joint", 0, 3.0, {"config.data.dataset": "cityscapes"}, fid=1.0, fsd=1.0)])
    table = compare_with_paper(ours, "gcdp_cityscapes_uncond", rows=["unconditional"])
    assert list(table["method"]) == ["unconditional", "GANformer + HRNet", "DatasetDDPM", "Semantic Palette", "GCDP"]
    first = table.iloc[0]
    # mean ± std (ddof 1): fid (40, 44) -> 42 ± 2.828; no layout_miou without a segmentation network
    assert (first["source"], first["n"], first["fid"], first["fsd"], first["layout_miou"]) == (
        "ours", 2, "42.000 ± 2.828", "52.000 ± 2.828", "–")
    assert table.iloc[-1]["fid"] == "20.360" and table.iloc[1]["layout_miou"] == "–" and pd.isna(table.iloc[-1]["n"])
    assert table.attrs["citation"] == ref.attrs["citation"]


# ------------------------------------------------------------- image | layout | outpainting grids


def _write_grid(path: Path, colours: list[int], h: int, w: int, cols: int) -> None:
    """A grid PNG whose row r is filled with grey level colours[r], its columns told apart by +c."""
    img = np.zeros((len(colours) * h, cols * w, 3), np.uint8)
    for r, v in enumerate(colours):
        for c in range(cols):
            img[r * h:(r + 1) * h, c * w:(c + 1) * w] = v + c
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def test_plot_layout_samples_reads_the_grids_the_rows_name(tmp_path):
    out = tmp_path / "out"
    rows = []
    for row, base in (("joint", 10), ("unconditional", 100)):
        run = f"ad-{row}-s0"
        _write_grid(out / "samples" / f"{run}_layouts.png", [base, base + 10, base + 20, base + 30], 4, 8, 3)
        _write_grid(out / "samples" / f"{run}_outpaint.png", [base + 10, base + 40, base, base + 50], 4, 8, 3)
        rows.append({"run_name": run, "row": row, "seed": 0, "status": "ok", "config.data.aspect": 2.0,
                     "config.data.dataset": "cityscapes",
                     # paths recorded on another machine: found again under roots by run name
                     "layout_samples_path": f"/elsewhere/{run}_layouts.png",
                     "outpaint_samples_path": f"/elsewhere/{run}_outpaint.png"})
    rows.append({"run_name": "ad-image-only-s0", "row": "image-only", "seed": 0, "status": "ok",
                 "config.data.aspect": 2.0, "config.data.dataset": "cityscapes"})  # no layout grid
    df = pd.DataFrame(rows)
    fig = plots.plot_layout_samples(df, num=2, roots=[out])
    names = [ax.get_ylabel() for ax in fig.axes]
    assert names == ["real image", "real layout",
                     "joint (s0)\ngenerated image", "joint (s0)\ngenerated layout",
                     "joint (s0)\nlayout → image", "joint (s0)\nimage → layout",
                     "unconditional (s0)\ngenerated image", "unconditional (s0)\ngenerated layout",
                     "unconditional (s0)\nlayout → image", "unconditional (s0)\nimage → layout"]
    shown = [np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes]
    assert all(s.shape == (4, 16, 3) for s in shown)  # 2 of 3 columns, 4 x 8 cells (aspect 2)
    # each strip is the right row of the right file: first column's grey level, then +1 in the second
    levels = [int(s[0, 0, 0]) for s in shown]
    assert levels == [10, 20, 30, 40, 50, 60, 120, 130, 140, 150]
    assert all(int(s[0, 8, 0]) == lvl + 1 for s, lvl in zip(shown, levels))
    assert len(plots.plot_layout_samples(df, outpaint=False, roots=[out]).axes) == 6
    with pytest.raises(ValueError, match="no layout grid found for any trial"):
        plots.plot_layout_samples(df[df["row"] == "image-only"], roots=[out])
    mixed = df.assign(**{"config.data.aspect": [2.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match="different data configs \\(data.aspect\\)"):
        plots.plot_layout_samples(mixed, roots=[out])


# ---------------------------------------------------------------- the sweep's rows (no Ray)


def _spec(*argv):
    return ablate_diffusion.build_spec(ablate_diffusion.parse_args(["--preset", "ci", *argv]))


def test_unconditional_row_and_caption_subset_rows(tmp_path, monkeypatch):
    spec = _spec("--rows", "joint", "unconditional", "--guidance", "3", "1", "5", "--seeds", "0", "1",
                 "--output-dir", str(tmp_path))
    assert [(t["row"], t["seed"]) for t in spec.grid] == [("joint", 0), ("joint", 1), ("unconditional", 0),
                                                          ("unconditional", 1)]
    uncond = apply_overrides(spec.base, spec.grid[2]["overrides"])
    assert uncond.diffusion.unconditional and uncond.diffusion.joint and uncond.diffusion.guidance_scale == 1.0
    assert uncond.diffusion.extra_guidance_scales == ""  # the joint rows keep their scales
    assert apply_overrides(spec.base, spec.grid[0]["overrides"]).diffusion.extra_guidance_scales == "1,5"
    # refusals, before anything runs
    with pytest.raises(ConfigError, match="--caption-subsets: caption subsets exist only on MM CelebA-HQ.*"
                                          "not on 'shapes'; drop the option"):
        _spec("--caption-subsets", "25", "50", "--output-dir", str(tmp_path))
    with pytest.raises(ConfigError, match="diffusion.unconditional: set per row by this sweep.*--rows unconditional"):
        _spec("--set", "diffusion.unconditional=true", "--output-dir", str(tmp_path))
    with pytest.raises(ConfigError, match="^diffusion.extra_guidance_scales: an unconditional model"):
        build_config("ci", {"model.method": "diffusion", "diffusion.unconditional": True,
                            "diffusion.extra_guidance_scales": "1,5"})
    root = tmp_path / "celeba"
    write_celeba(root, n=9)  # 8 train images: 25% keeps 2
    torch.save({"w": torch.zeros(1)}, tmp_path / "inception.pth")  # real data is scored with Inception: named only
    monkeypatch.setenv("T2I_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    celeba = ["--dataset", "mmceleba", "--data-root", str(root), "--output-dir", str(tmp_path / "o"),
              "--set", "train.batch_size=2", "--set", "damsm.batch_size=2"]
    spec = _spec("--rows", "joint", "image-only", "--caption-subsets", "25", "100", *celeba)
    assert [t["row"] for t in spec.grid] == ["joint 25%", "joint 100%", "image-only 25%", "image-only 100%"]
    assert [apply_overrides(spec.base, t["overrides"]).data.caption_subset for t in spec.grid] == [25, 100, 25, 100]
    for bad, says in ((["30"], r"\[30\] not among the subsets \[25, 50, 100\]"), (["25", "25"], "given twice")):
        with pytest.raises(ConfigError, match=says):
            _spec("--caption-subsets", *bad, *celeba)
    with pytest.raises(ConfigError, match="data.caption_subset is also fixed by --set; drop one"):
        _spec("--caption-subsets", "25", "--set", "data.caption_subset=50", *celeba)
    from t2i_ray.sweep.cli import apply_search_options

    args = ablate_diffusion.parse_args(["--preset", "ci", "--caption-subsets", "25", "50", *celeba,
                                        "--sweep", "data.caption_subset=25,50"])
    with pytest.raises(ConfigError, match="--sweep data.caption_subset: set per row by this script"):
        apply_search_options(ablate_diffusion.build_spec(args), args)


# ------------------------------------------------------------------- the unconditional model


def test_unconditional_model_never_sees_the_text(one_thread):
    cfg = build_config("ci", {**ablate_diffusion.PRESET_DEFAULTS["ci"], "model.method": "diffusion",
                              "model.embed_dim": 16, **ablate_diffusion.UNCONDITIONAL})
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(2, WORDS + 1, (4,), generator=g)
    batch = {"image": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "layout": torch.randint(0, 5, (4, 32, 32),
                                                                                           generator=g),
             "caption": torch.randint(1, VOCAB, (4, WORDS), generator=g) * (torch.arange(WORDS) < lens[:, None]),
             "caption_len": lens}
    other = {**batch, "caption": torch.flip(batch["caption"], [0]), "caption_len": torch.flip(lens, [0])}
    drop = torch.zeros(4, dtype=torch.bool)  # even "keep the text" draws use the null text

    def losses(unconditional: bool, captions: dict) -> float:
        c = apply_overrides(cfg, {"diffusion.unconditional": unconditional})
        method = build_method(c, _assets(c))
        init = torch.Generator().manual_seed(4)  # not the zero-initialised layers, which hide the text at init
        for p in method.unet.parameters():
            torch.nn.init.normal_(p, std=0.05, generator=init)
        draws = method.process.training_draws(batch["image"], batch["layout"], torch.Generator().manual_seed(5))
        return _step(method, captions, draws, drop)["loss"], method

    a, method = losses(True, batch)
    b, _ = losses(True, other)
    assert a == b  # the loss does not depend on the captions
    _, conditional = losses(False, batch)

    for m in (method, conditional):
        m.prepare(lambda net: net, lambda net: net, torch.device("cpu"))

    def samples(m, captions):
        return m.layout_sampler()(captions["caption"], captions["caption_len"], torch.Generator().manual_seed(0))

    # control: the conditional model's samples depend on the captions
    assert not torch.equal(samples(conditional, batch)[0], samples(conditional, other)[0])
    method.text = None  # the unconditional model never calls the text encoder
    x, y = samples(method, batch), samples(method, other)
    assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[1].shape == (4, 32, 32)
    assert list(method.eval_variants()) == [""]


# ------------------------------------------------------------------------- paper-preset dry runs


def test_paper_dry_runs_of_the_studies(tmp_path, capsys):
    """Table 1 on Cityscapes as a user runs it (subprocess); Fig. 7 on MM CelebA-HQ in-process."""
    weights = tmp_path / "inception.pth"  # only named by a dry run, never opened
    torch.save({"w": torch.zeros(1)}, weights)
    write_cityscapes(tmp_path / "cityscapes")
    write_celeba(tmp_path / "celeba", n=9)
    # checked for HRNetV2 keys and shapes by the dry run (Cityscapes layout metrics)
    hrnet = write_hrnet_file(tmp_path / "hrnet.pth")
    env = {**os.environ, "PYTHONPATH": str(REPO), "T2I_INCEPTION_WEIGHTS": str(weights),
           "T2I_SEGMENTER_WEIGHTS": str(hrnet)}
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "ablate_diffusion.py"), "--dataset", "cityscapes",
                          "--data-root", str(tmp_path / "cityscapes"), "--preset", "paper", "--dry-run",
                          "--rows", "unconditional", "joint", "--guidance", "3", "1", "5",
                          "--output-dir", str(tmp_path / "out"), "--set", "train.batch_size=3",
                          "--set", "damsm.batch_size=3"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    trials = [line.split(None, 3) for line in out.stdout.splitlines() if " seed " in line and "{" in line]
    assert [(t[0], t[2]) for t in trials] == [(r, s) for r in ("unconditional", "joint") for s in "012"]
    assert all("'diffusion.unconditional': True" in t[3] and "'diffusion.extra_guidance_scales': ''" in t[3]
               for t in trials[:3])
    # the paper preset's cascade: 128 x 256 base, 256 x 512 samples and metrics
    assert "256x512 (height x width)" in out.stdout and "diffusion.extra_guidance_scales=1,5" in out.stdout
    assert "base U-Net at 128x256" in out.stdout
    assert "shared by all 6 trial(s)" in out.stdout and f"HRNetV2 (GCDP's HRNet-W48) from the local file {hrnet}" in out.stdout
    assert f"Inception (pt_inception-2015-12-05) from the local file {weights}" in out.stdout
    os.environ["T2I_INCEPTION_WEIGHTS"] = str(weights)
    try:
        ablate_diffusion.main(["--dataset", "mmceleba", "--data-root", str(tmp_path / "celeba"), "--preset", "paper",
                               "--dry-run", "--rows", "joint", "--caption-subsets", "25", "50", "100",
                               "--guidance", "3", "1", "2", "5", "--output-dir", str(tmp_path / "out"),
                               "--set", "train.batch_size=2", "--set", "damsm.batch_size=2"])
    finally:
        del os.environ["T2I_INCEPTION_WEIGHTS"]
    text = capsys.readouterr().out
    trials = [line.split(None, 4) for line in text.splitlines() if " seed " in line and "{" in line]
    assert [(f"{t[0]} {t[1]}", t[3]) for t in trials] == [(f"joint {p}%", s) for p in (25, 50, 100) for s in "012"]
    assert "'data.caption_subset': 25" in trials[0][4]
    assert "128x128, " in text and "diffusion.extra_guidance_scales=1,2,5" in text
    assert "pre-trained by the project once on mmceleba (the base config's data, damsm.seed 0) and shared by all 9" in text
    assert "face parser" in text  # layout mIoU on MM CelebA-HQ


def test_unconditional_run_reports_table_1_metrics_and_its_grids(tiny_cfg, tiny_damsm, tmp_path, one_thread):
    """The unconditional row's trial in-process on `shapes`: trained, sampled without text, scored
    with FID, layout mIoU and FSD, its image | layout | outpainting grids read back by analysis."""
    from t2i_ray.train.loop import LocalEnv, run_training

    cfg = apply_overrides(tiny_cfg, {**ablate_diffusion.PRESET_DEFAULTS["ci"], "model.method": "diffusion",
                                     **ablate_diffusion.UNCONDITIONAL})  # the session's evaluator caches
    final = run_training(cfg, LocalEnv(tmp_path / "run"), tiny_damsm, "ad-unconditional-s0")
    for key in ("fid", "layout_miou", "fsd", "outpaint_image_to_layout_miou"):
        assert math.isfinite(final[key]), key
    assert 0 <= final["layout_miou"] <= 1 and final["layout_num_images"] == cfg.eval.num_images
    row = pd.DataFrame([{"run_name": "ad-unconditional-s0", "row": "unconditional", "seed": 0, "status": "ok",
                         **{f"config.{k}": v for k, v in cfg.flat().items()}, **final}])
    table = compare_with_paper(row, "gcdp_cityscapes_uncond")
    assert table.iloc[0]["fid"] == f"{final['fid']:.3f}" and table.iloc[0]["n"] == 1
    fig = plots.plot_layout_samples(row, num=4)
    assert [ax.get_ylabel().split("\n")[-1] for ax in fig.axes] == [
        "real image", "real layout", "generated image", "generated layout", "layout → image", "image → layout"]
    assert all(np.asarray(ax.get_images()[0].get_array()).shape == (32, 4 * 32, 3) for ax in fig.axes)


def test_sample_script_refuses_guidance_for_an_unconditional_run(tmp_path, capsys):
    from t2i_ray.sweep import store
    from tests.test_sweep_scripts import _script

    out = tmp_path / "runs"
    cfg = build_config("ci", {"model.method": "diffusion", **ablate_diffusion.UNCONDITIONAL})
    store.write_row(out, store.make_row(run_name="u", sweep="s", row="unconditional", seed=0, status="ok", error=None,
                                        wall_time_s=1.0, config=cfg.to_dict(), metrics={"fid": 1.0}, version="test"))
    (tmp_path / "caps.txt").write_text("a red circle\n")
    with pytest.raises(SystemExit) as exit_info:
        _script("sample").main(["--run", "u", "--captions", str(tmp_path / "caps.txt"), "--guidance-scale", "3",
                                "--output-dir", str(out)])
    assert exit_info.value.code == 2
    assert "error: --guidance-scale: run u is unconditional (diffusion.unconditional=true)" in capsys.readouterr().err
