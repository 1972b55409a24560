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
    with pytest.raises(ConfigError, match=r"^model.ca_dim: .*model.ca_dim=256"):  # CA's width vs word attention
        embeddings.build_spec(embeddings.parse_args(args + ["--set", "model.arch=attngan_style", "--set", "model.ca_dim=128"]))
    # the pretrained row resets text_init_from_damsm, so the flag can be given for shared/dual
    spec = embeddings.build_spec(embeddings.parse_args(args + ["--set", "model.text_init_from_damsm=true"]))
    assert len(spec.grid) == 3
    with pytest.raises(SystemExit):
        embeddings.parse_args(args + ["--rows", "triple"])


def test_losses_default_grid_and_recap_rows(losses, tmp_path):
    args = ["--preset", "smoke", "--output-dir", str(tmp_path)]
    # the default: Table 1's SSA-GAN rows (README "The papers' tables")
    spec = losses.build_spec(losses.parse_args(args))
    assert [t["row"] for t in spec.grid] == ["SSAGAN", "SSAGAN + CL (F2F)", "SSAGAN + CL (R2F+F2F)",
                                             "SSAGAN + CL (R2F+F2F+R)"]
    assert {t["overrides"]["model.arch"] for t in spec.grid} == {"ssagan"} and needs_captioner(spec)
    spec = losses.build_spec(losses.parse_args(args + ["--table", "one-factor"]))
    assert [t["row"] for t in spec.grid] == ["baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all"]
    assert spec.grid[-1]["overrides"]["loss.recap"] == 1.0 and needs_captioner(spec)
    assert [t["row"] for t in losses.build_spec(losses.parse_args(args + ["--table", "one-factor", "--all-rows"])
                                                ).grid] == ["baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all",
                                                            "+recap"]
    # one-factor rows named without --table select the one-factor table; so does an Optuna search
    spec = losses.build_spec(losses.parse_args(args + ["--rows", "baseline", "+F2R"]))
    assert not needs_captioner(spec)
    spec = losses.build_spec(losses.parse_args(args + ["--rows", "+recap", "--l4", "0.5"]))
    assert spec.grid[0]["overrides"] == {"loss.damsm": 0.0, "loss.f2r": 0.0, "loss.f2f": 0.0, "loss.recap": 0.5}
    with pytest.raises(ConfigError, match="--l4"):
        losses.build_spec(losses.parse_args(args + ["--l4", "-1"]))


def test_losses_paper_tables_by_their_row_names(losses, tmp_path):
    args = ["--preset", "smoke", "--output-dir", str(tmp_path)]
    spec = losses.build_spec(losses.parse_args(args + ["--all-rows"]))
    rows = list(dict.fromkeys(t["row"] for t in spec.grid))
    # all of Table 1's rows, in the paper's order
    assert rows == ["AttnGAN", "AttnGAN + CL", "Style1AttnGAN", "Style1AttnGAN + CL (F2F)",
                    "Style2AttnGAN + CL (R2F)", "SSAGAN", "SSAGAN + CL (F2F)", "SSAGAN + CL (R2F+F2F)",
                    "SSAGAN + CL (R2F+F2F+R)"]
    by_row = {t["row"]: t["overrides"] for t in spec.grid}
    # every SSAGAN row keeps SSA-GAN's own 0.05 * DAMSM; the AttnGAN-based models train with DAMSM at 5
    ssa = rows[5:]
    for row in ssa:
        assert by_row[row]["model.arch"] == "ssagan" and by_row[row]["loss.damsm"] == 0.05
    assert [(by_row[r]["loss.f2r"], by_row[r]["loss.f2f"], by_row[r]["loss.recap"]) for r in ssa] == [
        (0.0, 0.0, 0.0), (0.0, 0.2, 0.0), (0.2, 0.2, 0.0), (0.2, 0.2, 1.0)]
    # the AttnGAN-based rows: AttnGAN's DAMSM lambda, its Adam (2e-4, betas 0.5 / 0.999) and its G EMA
    recipe = {"train.lr_g": 2e-4, "train.lr_d": 2e-4, "train.beta1": 0.5, "train.beta2": 0.999,
              "train.g_ema": 0.999}
    assert by_row["Style2AttnGAN + CL (R2F)"] == {"model.arch": "attngan_style", **recipe, "loss.damsm": 5.0,
                                                  "loss.f2r": 0.2, "loss.f2f": 0.0, "loss.recap": 0.0}
    assert by_row["Style1AttnGAN + CL (F2F)"] == {"model.arch": "style1attngan", **recipe, "loss.damsm": 5.0,
                                                  "loss.f2r": 0.0, "loss.f2f": 0.2, "loss.recap": 0.0}
    assert by_row["AttnGAN"] == {"model.arch": "attngan", **recipe, "loss.damsm": 5.0, "loss.f2r": 0.0,
                                 "loss.f2f": 0.0, "loss.recap": 0.0}
    assert by_row["AttnGAN + CL"]["loss.f2r"] == 0.2 and by_row["AttnGAN + CL"]["train.beta1"] == 0.5
    assert by_row["Style1AttnGAN"]["train.g_ema"] == 0.999
    # the SSAGAN rows keep the config's optimiser (DF-GAN's Adam) and sample from G itself
    assert all(not set(recipe) & set(by_row[r]) for r in ssa)
    # a key the user fixes wins over the recipe (and stays the base config's)
    spec = losses.build_spec(losses.parse_args(args + ["--table", "cub", "--rows", "AttnGAN",
                                                       "--set", "train.lr_g=1e-4"]))
    assert "train.lr_g" not in spec.grid[0]["overrides"] and spec.grid[0]["overrides"]["train.lr_d"] == 2e-4
    assert spec.base.train.lr_g == 1e-4
    spec = losses.build_spec(losses.parse_args(args + ["--table", "cub", "--rows", "Style1AttnGAN",
                                                       "--set", "train.g_ema=0"]))
    assert "train.g_ema" not in spec.grid[0]["overrides"] and spec.base.train.g_ema == 0
    assert spec.grid[0]["overrides"]["train.beta1"] == 0.5
    spec = losses.build_spec(losses.parse_args(args + ["--table", "coco", "--l2", "0.3"]))
    assert [(t["row"], t["overrides"]["loss.f2r"]) for t in spec.grid] == [
        ("AttnGAN", 0.0), ("AttnGAN + CL", 0.3), ("SSAGAN", 0.0), ("SSAGAN + CL (R2F)", 0.3),
        ("SSAGAN + CL (R2F+F2F)", 0.3)]
    # a row not in the table is refused by name before Ray starts
    with pytest.raises(ConfigError, match=r"table 'cub' has no row 'SSAGAN \+ CL \(R2F\)'"):
        losses.build_spec(losses.parse_args(args + ["--table", "cub", "--rows", "SSAGAN + CL (R2F)"]))
    with pytest.raises(ConfigError, match="--rows: unknown ablation row"):
        losses.build_spec(losses.parse_args(args + ["--table", "one-factor", "--rows", "SSAGAN"]))
    with pytest.raises(ConfigError, match="table 'cub' has no row 'baseline'"):
        losses.build_spec(losses.parse_args(args + ["--rows", "SSAGAN", "baseline"]))
    with pytest.raises(ConfigError, match=r"model.arch \(--set\): every row of --table cub trains its own"):
        losses.build_spec(losses.parse_args(args + ["--set", "model.arch=dfgan"]))
    with pytest.raises(ConfigError, match="either --rows or --all-rows"):
        losses.build_spec(losses.parse_args(args + ["--rows", "SSAGAN", "--all-rows"]))
    # without --table: one-factor for Optuna, for one-factor rows and in the laptop design (local on
    # shapes, without --rows); Table 1 otherwise
    for extra, laptop, table in ((["--search", "optuna"], False, "one-factor"), ([], False, "cub"),
                                 ([], True, "one-factor"), (["--rows", "+F2R"], False, "one-factor"),
                                 (["--rows", "SSAGAN"], True, "cub"), (["--table", "cub"], True, "cub")):
        assert losses.resolve_table(losses.parse_args(args + extra), laptop) == table, (extra, laptop)
    with pytest.raises(ConfigError, match="does not combine with --table cub"):
        losses.build_spec(losses.parse_args(args + ["--table", "cub", "--search", "optuna"]))


def test_architecture_grid_is_archs_x_seeds_under_one_loss_setting(tmp_path):
    archs = _script("compare_architectures")
    args = ["--preset", "smoke", "--output-dir", str(tmp_path), "--seeds", "0", "1"]
    spec = archs.build_spec(archs.parse_args(args + ["--loss-row", "+F2R"]))
    assert spec.sweep == "compare_architectures"
    assert [(t["row"], t["seed"]) for t in spec.grid] == [
        ("dfgan", 0), ("dfgan", 1), ("ssagan", 0), ("ssagan", 1), ("attngan_style", 0), ("attngan_style", 1)]
    assert all(t["overrides"]["model.arch"] == t["row"] for t in spec.grid)
    assert all((t["overrides"]["loss.f2r"], t["overrides"]["loss.f2f"], t["overrides"]["loss.recap"])
               == (0.2, 0.0, 0.0) for t in spec.grid)
    # the DAMSM weight where a row turns it on is each architecture's own (0.05 SSA-GAN/DF-GAN, 5 style)
    spec = archs.build_spec(archs.parse_args(args + ["--loss-row", "+DAMSM"]))
    assert {t["row"]: t["overrides"]["loss.damsm"] for t in spec.grid} == {
        "dfgan": 0.05, "ssagan": 0.05, "attngan_style": 5.0}
    spec = archs.build_spec(archs.parse_args(args + ["--loss-row", "+DAMSM", "--l1", "0.5"]))
    assert {t["overrides"]["loss.damsm"] for t in spec.grid} == {0.5}
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
