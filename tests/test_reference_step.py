"""benchmarks/reference_step.py: refuses without DF-GAN's code, and times a reference that exposes
DF-GAN's names (a stand-in written here, built on this project's DF-GAN modules) against gan_step."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reference_step.py"

# Same constructor and call signatures as tobran/DF-GAN code/models/GAN.py (NetG(ngf, nz, cond_dim,
# imsize, ch_size), NetD(ndf, imsize, ch_size), NetC(ndf, cond_dim)), here on the project's modules.
FAKE_GAN = """
from t2i_ray.models import dfgan

class NetG(dfgan.Generator):
    def __init__(self, ngf, nz, cond_dim, imsize, ch_size):
        super().__init__(ngf, nz, cond_dim, imsize)

    def forward(self, noise, c):
        return super().forward(noise, c)

class NetD(dfgan.Discriminator):
    def __init__(self, ndf, imsize=128, ch_size=3):
        super().__init__(ndf, imsize)

class NetC(dfgan.ConditionalHead):
    pass
"""
# lib/modules.py stand-in: an import the script must not execute, a `.cuda()` it must drop.
FAKE_MODULES = """
import module_that_does_not_exist_here

def MA_GP(img, sent, out):
    ones = torch.ones(out.size()).cuda()
    gx, ge = torch.autograd.grad(out, (img, sent), grad_outputs=ones, retain_graph=True, create_graph=True)
    sq = gx.flatten(1).pow(2).sum(1) + ge.flatten(1).pow(2).sum(1)
    return 2.0 * sq.pow(3).mean()

def predict_loss(predictor, img_feature, text_feature, negtive):
    output = predictor(img_feature, text_feature)
    return output, hinge_loss(output, negtive)

def hinge_loss(output, negtive):
    return F.relu(1.0 + output).mean() if negtive else F.relu(1.0 - output).mean()
"""


def run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_refuses_without_the_reference_checkout(tmp_path):
    out = tmp_path / "r.json"
    proc = run(["--reference", str(tmp_path / "DF-GAN" / "code"), "--tiny", "--out", str(out)], tmp_path)
    assert proc.returncode != 0 and not out.exists()
    assert "models/GAN.py is missing" in proc.stderr and "git clone https://github.com/tobran/DF-GAN" in proc.stderr
    assert "78f14fd" in proc.stderr


def test_tiny_run_against_a_stand_in_reference_writes_the_comparison(tmp_path):
    code = tmp_path / "code"
    (code / "models").mkdir(parents=True)
    (code / "lib").mkdir()
    (code / "models" / "GAN.py").write_text(textwrap.dedent(FAKE_GAN))
    (code / "lib" / "modules.py").write_text(FAKE_MODULES.replace("def hinge_loss", "def hinge_loss_x"))
    spec = importlib.util.spec_from_file_location("reference_step_under_test", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit, match="defines no hinge_loss: not DF-GAN at 78f14fd"):
        script.load_reference(str(code))

    (code / "lib" / "modules.py").write_text(FAKE_MODULES)
    ref = script.load_reference(str(code))  # `.cuda()` dropped: the penalty runs on the CPU
    img, sent = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    out = (img.flatten(1).sum(1, keepdim=True) + sent.sum(1, keepdim=True)).view(2, 1, 1, 1)
    assert ref.MA_GP(img, sent, out).item() == pytest.approx(2.0 * (48 + 5) ** 3)  # 2 * (|1|^2 over 53 inputs)^3
    out = tmp_path / "r.json"
    # 1 thread: 2 OpenMP threads crawl when other jobs share the cores (benchmarks/README.md)
    proc = run(["--reference", str(code), "--tiny", "--eval", "--threads", "1", "--channels-last", "--profile", "1",
                "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert (row["resolution"], row["batch_size"], row["nf"], row["rounds"]) == (32, 4, 4, 2)
    for side in ("reference", "ours", "ours_channels_last"):
        assert len(row[f"{side}_img_per_s_rounds"]) == 2 and row[f"{side}_img_per_s"] > 0, side
        assert row[f"{side}_img_per_cpu_s"] > 0, side
    assert abs(row["ratio"] - row["ours_img_per_s"] / row["reference_img_per_s"]) < 0.01
    assert abs(row["ratio_channels_last"] - row["ours_channels_last_img_per_s"] / row["reference_img_per_s"]) < 0.01
    for side in ("reference", "ours", "ours_channels_last"):  # profiled: convolutions are among the top ops
        prof = result["profile"][side]
        assert 0 < prof["convolution_share"] <= 1 and len(prof["top"]) == 15, side
        assert any("convolution" in r["op"] for r in prof["top"]) and abs(sum(r["share"] for r in prof["top"])) <= 1.01
    # the stand-in is the project's DF-GAN: the same parameter counts on both sides
    assert row["reference_params"]["params_g"] == row["ours_params"]["params_g"] > 0
    assert row["reference_params"]["params_d_and_head"] == row["ours_params"]["params_d_and_head"] > 0
    assert row["load_avg_1min_before"] >= 0 and result["threads"] == 1 and result["peak_rss_mib"] > 50
    assert result["eval"]["domain"]["s_per_1000"] > 0 and "inception" not in result["eval"]
    assert "32x32 batch 4 |" in proc.stdout and "peak RSS" in proc.stdout
