"""benchmarks/gpu_check.py's CPU mode (`--device cpu --tiny`): the code that gpu_check.sh runs on a
GPU, run here on tiny settings so that it is not dead code between GPU runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_tiny_mode_compares_bf16_channels_last_with_float32(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--only", "dfgan@32", "diffusion@32", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["checks"]) == {"dfgan@32", "diffusion@32"} and result["sweep"] is None
    for label, check in result["checks"].items():
        assert "error" not in check, (label, check)
        fp32, bf16 = check["float32"], check["bf16_channels_last"]
        # the two settings really differ in what the loop applies, and nothing else
        assert fp32["accel"] == {"device": "cpu", "amp": "off", "channels_last": False, "cudnn_benchmark": False}
        assert bf16["accel"] == {"device": "cpu", "amp": "bfloat16", "channels_last": True, "cudnn_benchmark": False}
        assert set(fp32["second_step_losses"]) == set(bf16["second_step_losses"]) and fp32["second_step_losses"]
        # bf16 rounds: not the same numbers after one update (the diffusion U-Net's zero-initialised
        # output makes its first step's loss the same under both)
        assert fp32["second_step_losses"] != bf16["second_step_losses"]
        assert all(math.isfinite(v) for v in bf16["second_step_losses"].values())
        assert fp32["images_per_s"] > 0 and bf16["images_per_s"] > 0 and fp32["peak_memory_mib"] is None
        assert 0 <= check["max_rel_loss_diff"] < 0.5 and check["agree"] == (check["max_rel_loss_diff"] <= 0.05)
    assert "diffusion" in "".join(result["checks"]) and result["tiny"] is True


def test_gpu_check_script_runs_the_module_with_the_sweep():
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0
    assert "benchmarks/gpu_check.py --device cuda --sweep" in script and "timeout 450" in script
