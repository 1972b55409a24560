import json

import pytest

from t2i_ray.config import (ConfigError, ExperimentConfig, apply_overrides, build_config,
                            parse_override, validate)


def test_presets_build_and_round_trip():
    for preset in ("smoke", "local", "paper"):
        cfg = build_config(preset)
        again = ExperimentConfig.from_dict(json.loads(cfg.to_json()))
        assert again == cfg


def test_overrides_are_typed_from_strings():
    cfg = build_config("smoke", dict([parse_override("loss.f2r=0.2"), parse_override("model.nf=16"),
                                      parse_override("train.use_gpu=false"),
                                      parse_override("damsm.inception_weights=none")]))
    assert cfg.loss.f2r == 0.2 and isinstance(cfg.loss.f2r, float)
    assert cfg.model.nf == 16 and cfg.train.use_gpu is False and cfg.damsm.inception_weights is None


@pytest.mark.parametrize("override,field", [
    ({"loss.f2r": -0.1}, "loss.f2r"),
    ({"loss.damsm": float("nan")}, "loss.damsm"),
    ({"model.arch": "biggan"}, "model.arch"),
    ({"model.text_embedding": "triple"}, "model.text_embedding"),
    ({"data.resolution": 48}, "data.resolution"),
    ({"data.resolution": 512}, "data.resolution"),
    ({"data.resolution": 16}, "data.resolution"),
    ({"train.steps": "ten"}, "train.steps"),
    ({"train.use_gpu": "maybe"}, "train.use_gpu"),
    ({"train.gather_negatives": "sometimes"}, "train.gather_negatives"),
    ({"loss.recap": -1.0}, "loss.recap"),
    ({"captioner.image_size": 48}, "captioner.image_size"),
    ({"captioner.dropout": 1.0}, "captioner.dropout"),
    ({"captioner.epochs": 0}, "captioner.epochs"),
    ({"eval.r_precision_candidates": 5000}, "eval.r_precision_candidates"),
    ({"data.max_objects": 0}, "data.max_objects"),
    ({"data.max_objects": 4}, "data.max_objects"),
    ({"data.object_size": "small"}, "data.object_size"),
])
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError) as err:
        build_config("smoke", override)
    assert str(err.value).startswith(field)


def test_unknown_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ConfigError, match="loss.f2x.*valid keys in loss: damsm, f2r"):
        build_config("smoke", {"loss.f2x": 0.2})
    with pytest.raises(ConfigError, match="lossy is not a section"):
        build_config("smoke", {"lossy.f2r": 0.2})
    with pytest.raises(ConfigError, match="unknown config key"):
        ExperimentConfig.from_dict({"loss": {"l2": 0.2}})
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("huge")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("loss.f2r")


def test_config_is_frozen_and_keys_are_content_hashes():
    cfg = build_config("smoke")
    with pytest.raises(Exception):
        cfg.loss.f2r = 1.0  # type: ignore[misc]
    other = apply_overrides(cfg, {"loss.f2r": 0.2})
    assert cfg.key("data") == other.key("data")
    assert cfg.key("loss") != other.key("loss")
    assert other.flat()["loss.f2r"] == 0.2


def test_recap_weight_is_accepted_now_that_a_captioner_exists():
    cfg = build_config("smoke", {"loss.recap": 1.0})
    assert cfg.loss.recap == 1.0 and cfg.captioner.epochs >= 1


@pytest.mark.parametrize("override,field,hint", [
    # the frozen DAMSM encoder has no trainable copy to initialise
    ({"model.text_init_from_damsm": True}, "model.text_init_from_damsm", "shared|dual"),
    # attngan_style's word attention has the width of G's sentence condition
    ({"model.arch": "attngan_style", "model.text_embedding": "dual", "model.ca_dim": 128}, "model.ca_dim",
     "model.ca_dim=256"),
    # CA is a GAN generator's input stage
    ({"model.method": "diffusion", "model.conditioning_augmentation": "on"}, "model.conditioning_augmentation",
     "auto or off"),
    ({"model.conditioning_augmentation": "yes"}, "model.conditioning_augmentation", "auto, on, off"),
    ({"model.ca_dim": 0}, "model.ca_dim", ">= 1"),
    ({"model.ca_kl_weight": -1.0}, "model.ca_kl_weight", ">= 0"),
    # the inception DAMSM image encoder needs its ImageNet weights (offline: a local file)
    ({"damsm.image_backbone": "inception"}, "damsm.inception_weights", "image_backbone=cnn"),
    # the object count is a difficulty of the generated dataset; real datasets are what they are
    ({"data.dataset": "cub", "data.data_root": "/nowhere", "data.max_objects": 1}, "data.max_objects",
     "generated shapes dataset only"),
    ({"data.dataset": "cub", "data.data_root": "/nowhere", "data.object_size": "large"}, "data.object_size",
     "generated shapes dataset only"),
])
def test_contradictory_combinations_are_refused_with_the_fix(override, field, hint):
    with pytest.raises(ConfigError) as err:
        build_config("smoke", override)
    assert str(err.value).startswith(field) and hint in str(err.value)


def test_sensible_combinations_of_modes_and_losses_build():
    for mode in ("pretrained", "shared", "dual"):
        for loss in ({}, {"loss.damsm": 0.05, "loss.f2r": 0.2, "loss.f2f": 0.2, "loss.recap": 1.0}):
            build_config("smoke", {"model.text_embedding": mode, **loss})
    build_config("smoke", {"model.text_embedding": "shared", "model.align_weight": 0.0})  # adversarial only
    build_config("smoke", {"model.text_embedding": "dual", "model.text_init_from_damsm": True})
    # dual without alignment: S_D still conditions D's matching head (its adversarial losses train it)
    build_config("smoke", {"model.text_embedding": "dual", "model.align_weight": 0.0})
    # CA on the frozen DAMSM embedding (StackGAN's setting), MA-GP off, CA off for a DTE mode
    build_config("smoke", {"model.conditioning_augmentation": "on", "model.ca_dim": 128, "loss.magp": False})
    build_config("smoke", {"model.text_embedding": "dual", "model.conditioning_augmentation": "off"})


# Values a user gave via `--set ... --dry-run` that were accepted before (each as the CLI passes it:
# a string typed by apply_overrides), then generic nan/inf in float fields without a range check.
@pytest.mark.parametrize("sets,field,says", [
    (["damsm.lr_decay=nan"], "damsm.lr_decay", "finite number"),
    (["damsm.lr_decay=-1e9"], "damsm.lr_decay", "in (0, 1]"),
    (["damsm.grad_clip=nan"], "damsm.grad_clip", "finite number"),
    (["damsm.grad_clip=-1e9"], "damsm.grad_clip", "> 0"),
    (["data.data_seed=-7"], "data.data_seed", ">= 0"),
    (["damsm.inception_weights="], "damsm.inception_weights", "file path or none"),
    (["data.num_train=64", "train.num_workers=8"], "train.batch_size", "16 x 8 = 128 is more than the "
                                                                      "data.num_train=64 train images"),
    (["data.num_train=64", "damsm.batch_size=65"], "damsm.batch_size", "at most 64 or raise data.num_train"),
    (["data.num_train=64", "captioner.batch_size=65"], "captioner.batch_size", "at most 64"),
    (["train.lr_g=inf"], "train.lr_g", "finite number, got inf"),
    (["model.align_temperature=-inf"], "model.align_temperature", "finite number, got -inf"),
    (["train.cpus_per_worker=nan"], "train.cpus_per_worker", "finite number, got nan"),
    (["loss.gamma3=inf"], "loss.gamma3", "finite number, got inf"),
    (["captioner.dropout=nan"], "captioner.dropout", "finite number, got nan"),
    (["train.g_ema=1"], "train.g_ema", "must be in [0, 1) (0 = off)"),
    (["model.method=diffusion", "train.g_ema=0.999"], "train.g_ema", "diffusion.ema_decay"),
])
def test_values_accepted_before_are_refused_naming_the_field(sets, field, says):
    with pytest.raises(ConfigError) as err:
        build_config("smoke", dict(parse_override(s) for s in sets))
    assert str(err.value).startswith(f"{field}: ") and says in str(err.value)


def test_no_float_field_takes_nan_or_inf():
    """The generic check covers every float field of the tree, including ones added later."""
    import dataclasses

    cfg = build_config("smoke")
    floats = [k for k, v in cfg.flat().items() if isinstance(v, float)]
    assert len(floats) >= 20 and "damsm.lr_decay" in floats and "train.cpus_per_worker" in floats
    for key in floats:
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(ConfigError) as err:
                apply_overrides(cfg, {key: bad})
            assert str(err.value).startswith(f"{key}: "), (key, bad, str(err.value))
    # validate() itself, on a tree built without the override parser
    broken = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr_d=float("nan")))
    with pytest.raises(ConfigError, match=r"^train.lr_d: must be a finite number, got nan"):
        validate(broken)


def test_batches_that_fit_exactly_are_accepted():
    build_config("smoke", {"data.num_train": 64, "train.batch_size": 16, "train.num_workers": 4,
                           "damsm.batch_size": 64, "captioner.batch_size": 64})
