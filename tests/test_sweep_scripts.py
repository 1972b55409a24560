"""The sweep scripts' grids, built and validated without Ray (sweeps/ is not a package)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from t2i_ray.config import ConfigError
from t2i_ray.sweep.run import needs_captioner

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"sweep_script_{name}", SWEEPS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def embeddings():
    return _script("ablate_embeddings")


@pytest.fixture(scope="module")
def losses():
    return _script("ablate_losses")


def test_embeddings_grid_is_modes_x_seeds_at_one_budget(embeddings, tmp_path):
    spec = embeddings.build_spec(embeddings.parse_args(
        ["--preset", "smoke", "--seeds", "0", "1", "--output-dir", str(tmp_path), "--steps", "30"]))
    assert spec.sweep == "ablate_embeddings" and spec.search == "grid"
    assert [(t["row"], t["seed"]) for t in spec.grid] == [
        ("pretrained", 0), ("pretrained", 1), ("shared", 0), ("shared", 1), ("dual", 0), ("dual", 1)]
    assert spec.grid[0]["overrides"] == {"model.text_embedding": "pretrained", "model.text_init_from_damsm": False}
    assert {t["overrides"]["model.text_embedding"] for t in spec.grid} == {"pretrained", "shared", "dual"}
    # the same budget and losses for every mode: only the embedding differs between rows
    assert spec.base.train.steps == 30 and spec.base.output_dir == str(tmp_path)
    assert (spec.base.loss.damsm, spec.base.loss.f2r, spec.base.loss.f2f, spec.base.loss.recap) == (0, 0, 0, 0)
    assert not needs_captioner(spec)
    assert spec.name.startswith("ablate_embeddings-grid-")


def test_embeddings_grid_with_a_loss_row_and_refusals(embeddings, tmp_path):
    args = ["--preset", "smoke", "--output-dir", str(tmp_path)]
    spec = embeddings.build_spec(embeddings.parse_args(args + ["--loss-row", "all", "--rows", "shared", "dual"]))
    assert (spec.base.loss.f2r, spec.base.loss.recap) == (0.2, 1.0) and needs_captioner(spec)
    assert [t["row"] for t in spec.grid] == ["shared", "dual"]
    # a combination that makes no sense fails before Ray starts, naming the field and the row
    with pytest.raises(ConfigError, match=r"^model.align_weight: .*\(in row 'dual'\)"):
        embeddings.build_spec(embeddings.parse_args(args + ["--set", "model.align_weight=0"]))
    # the pretrained row resets text_init_from_damsm, so the flag can be given for shared/dual
    spec = embeddings.build_spec(embeddings.parse_args(args + ["--set", "model.text_init_from_damsm=true"]))
    assert len(spec.grid) == 3
    with pytest.raises(SystemExit):
        embeddings.parse_args(args + ["--rows", "triple"])


def test_losses_default_grid_and_recap_rows(losses, tmp_path):
    args = ["--preset", "smoke", "--output-dir", str(tmp_path)]
    spec = losses.build_spec(losses.parse_args(args))
    assert [t["row"] for t in spec.grid] == ["baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all"]
    assert spec.grid[-1]["overrides"]["loss.recap"] == 1.0 and needs_captioner(spec)
    spec = losses.build_spec(losses.parse_args(args + ["--rows", "baseline", "+F2R"]))
    assert not needs_captioner(spec)
    spec = losses.build_spec(losses.parse_args(args + ["--rows", "+recap", "--l4", "0.5"]))
    assert spec.grid[0]["overrides"] == {"loss.damsm": 0.0, "loss.f2r": 0.0, "loss.f2f": 0.0, "loss.recap": 0.5}
    with pytest.raises(ConfigError, match="--l4"):
        losses.build_spec(losses.parse_args(args + ["--l4", "-1"]))


def test_architecture_grid_is_archs_x_seeds_under_one_loss_setting(tmp_path):
    archs = _script("compare_architectures")
    args = ["--preset", "smoke", "--output-dir", str(tmp_path), "--seeds", "0", "1"]
    spec = archs.build_spec(archs.parse_args(args + ["--loss-row", "+F2R"]))
    assert spec.sweep == "compare_architectures"
    assert [(t["row"], t["seed"]) for t in spec.grid] == [
        ("dfgan", 0), ("dfgan", 1), ("ssagan", 0), ("ssagan", 1), ("attngan_style", 0), ("attngan_style", 1)]
    assert all(t["overrides"] == {"model.arch": t["row"]} for t in spec.grid)
    assert (spec.base.loss.f2r, spec.base.loss.f2f, spec.base.loss.recap) == (0.2, 0.0, 0.0)
    spec = archs.build_spec(archs.parse_args(args + ["--archs", "ssagan", "--set", "model.text_embedding=dual"]))
    assert [t["row"] for t in spec.grid] == ["ssagan", "ssagan"] and spec.base.model.text_embedding == "dual"
    with pytest.raises(SystemExit):
        archs.parse_args(args + ["--archs", "biggan"])


@pytest.mark.parametrize("name", ["pretrain_damsm", "pretrain_captioner"])
def test_pretraining_scripts_need_no_inception_weights_on_a_real_dataset(name, tmp_path, monkeypatch, capsys):
    """They never compute FID, so a real dataset must not make them ask for the Inception file."""
    from tests.test_datasets import write_cub

    monkeypatch.delenv("T2I_INCEPTION_WEIGHTS", raising=False)
    write_cub(tmp_path / "birds")
    small = [f"--set={k}.batch_size=4" for k in ("train", "damsm", "captioner")]  # 6 train images
    _script(name).main(["--preset", "smoke", "--dataset", "cub", "--data-root", str(tmp_path / "birds"),
                        "--output-dir", str(tmp_path / "out"), "--dry-run", *small])
    assert "[dry-run]" in capsys.readouterr().out
