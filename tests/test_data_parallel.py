"""Data-parallel correctness of the GAN step: 2 DDP workers (gloo, torch.multiprocessing, no Ray)
with batch B each give the same parameter update as 1 process with batch 2B, every loss term on.

Which terms of `gan_step` are exactly batch-decomposable, i.e. a mean over samples of per-sample
quantities, so that DDP's gradient average over equal shards equals the full-batch gradient:
- D's hinge on real and fake pairs and G's hinge: means of per-sample logits (D has no
  BatchNorm, so sample i's logit depends on sample i only);
- MA-GP: k * mean_i ||[grad_x D(x_i, e_i); grad_e D(x_i, e_i)]||^p is a mean of per-sample
  norms (the p-th power is taken per sample, before the mean), so it decomposes too.
Batch-coupled (a sample's loss depends on the others):
- the mismatched pairs roll the batch by one (row i is paired with real i+1): on 2 shards the
  rows B-1 and 2B-1 get different partners than on one batch of 2B;
- NT-Xent (F2R, F2F), DAMSM's word and sentence matching and the DTE alignment InfoNCE (D and G
  steps) use the other samples of the batch as negatives: per shard B-1 of them, not 2B-1;
- the re-captioning loss is a mean over the batch's tokens, and shards hold different numbers.
With train.gather_negatives (default) these read the global batch (t2i_ray/train/gather.py) and
the update equals the 2B process's; with it off every worker optimises its shard's loss, and the
update differs (the control below).
Plain SGD, not Adam: Adam's first step is ~lr * sign(grad), which turns rounding noise in
near-zero gradients into full-size differences and would hide the comparison. The trainable text
encoders run without dropout: its masks depend on the batch size.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from t2i_ray.config import ExperimentConfig, apply_overrides
from t2i_ray.models.captioner import Captioner
from t2i_ray.models.text import ImageEncoder, TextEncoder
from t2i_ray.train import gan
from t2i_ray.train.accel import resolve_accel
from t2i_ray.train.checkpoint import unwrap
from t2i_ray.train.damsm import Damsm
from t2i_ray.train.gather import BatchGather
from t2i_ray.train.loop import RunEnv
from t2i_ray.train.method import Assets, build_method, data_parallel_columns
from tests.gloo import mark_done, spawn_ranks

B, WORDS, VOCAB, EMBED = 4, 8, 40, 32
TERMS = {"loss.damsm": 1.0, "loss.f2r": 1.0, "loss.f2f": 1.0, "loss.recap": 1.0}
# Every batch-coupled term: the mismatched pairs (always on) and, per text-embedding mode, the others.
CASES = {
    "pretrained": {"model.text_embedding": "pretrained", **TERMS},
    "dual": {"model.text_embedding": "dual", "model.align_weight": 1.0, **TERMS},
    "shared": {"model.text_embedding": "shared", "model.align_weight": 1.0},  # S_D is S_G
    # T2I_CL's F2F: the second fake's pair in D (mismatched rows with e2) and its G DAMSM term too.
    "t2i_cl": {"model.text_embedding": "pretrained", **TERMS, "loss.f2f_variant": "t2i_cl"},
}
COUPLED_LOSSES = ("loss_damsm", "loss_f2r", "loss_f2f", "loss_recap", "loss_align_d", "loss_align_g", "loss_damsm2")
# float32 round-off: in `dual` one element of G's update differs from the 2B process's by 1.7 x
# (1e-7 + 1e-4 |value|), from the DAMSM / F2F terms' gradients (with them off: 0.13 x); a term that
# is not batch-decomposable differs by > 100 x (the control test below).
RTOL, ATOL = 3e-4, 1e-7


def _assets() -> Assets:
    """The frozen DAMSM encoders and captioner, the same weights in every process."""
    torch.manual_seed(5)
    text = TextEncoder(VOCAB, word_dim=16, hidden_per_dir=EMBED // 2, dropout=0.0)
    image = ImageEncoder(embed_dim=EMBED, backbone="cnn")
    captioner = Captioner(VOCAB, image_size=16, word_dim=16, hidden_dim=32, dropout=0.0)
    return Assets(Damsm(text, image, None, {}, Path(".")), captioner)


def _method(cfg_dict: dict, init: dict):
    method = build_method(ExperimentConfig.from_dict(cfg_dict), _assets())
    for name, module in method.trainable().items():
        module.load_state_dict(init[name])
    # SGD over the same parameters as the method's Adam optimisers (linear in the gradient).
    method.optimizers = {k: torch.optim.SGD(o.param_groups[0]["params"], lr=0.05)
                         for k, o in method.optimizers.items()}
    return method


def _step(method, batch, z, eps):
    # The step draws its noise from `sample_noise` (and CA's from `sample_ca_noise`); hand them
    # this shard's rows of the shared z and eps.
    original = gan.sample_noise, gan.sample_ca_noise
    gan.sample_noise = lambda bsz, z_dim, generator, device: z
    gan.sample_ca_noise = lambda bsz, dim, generator, device: eps
    try:
        return method.step(batch, torch.Generator(), contextlib.nullcontext)
    finally:
        gan.sample_noise, gan.sample_ca_noise = original


class _GlooEnv(RunEnv):
    def __init__(self, rank: int, world: int):
        self.world_rank, self.world_size = rank, world

    def prepare_model(self, module):
        return torch.nn.parallel.DistributedDataParallel(module)


def _rank_main(rank: int, world: int, store_path: str, out_path: str, runs: dict, batch: dict,
               z: torch.Tensor, eps: torch.Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        env, results = _GlooEnv(rank, world), {}
        shard = slice(rank * B, (rank + 1) * B)
        for run, (cfg_dict, init) in runs.items():
            method = _method(cfg_dict, init)
            accel = resolve_accel(method.cfg.train, torch.device("cpu"))
            method.prepare(env.prepare_model, accel.prepare_module, env.device)  # the loop's call
            losses = _step(method, {k: v[shard] for k, v in batch.items()}, z[shard], eps[shard])
            results[run] = {"params": {n: unwrap(m).state_dict() for n, m in method.trainable().items()},
                            "losses": losses, "gather_world": method.gather.world_size}
        if rank == 0:
            torch.save(results, out_path)
        mark_done(Path(out_path).parent, rank)
        dist.barrier()  # both ranks leave together (tests/gloo.py: a rare abort in gloo's teardown)
    finally:
        dist.destroy_process_group()


def _inputs(cfg):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2 * B, 3, 32, 32, generator=g) * 2 - 1
    lens = torch.randint(3, WORDS + 1, (2 * B,), generator=g)
    lens[:B] = lens[:B].clamp(max=WORDS - 2)  # unequal token counts per shard (the recap mean)
    ids = torch.randint(1, VOCAB, (2 * B, WORDS), generator=g) * (torch.arange(WORDS) < lens[:, None])
    batch = {"image": images, "caption": ids, "caption_len": lens, "caption2": ids.flip(0),
             "caption2_len": lens.flip(0)}
    return batch, torch.randn(2 * B, cfg.model.z_dim, generator=g), torch.randn(2 * B, cfg.model.ca_dim, generator=g)


def _delta(params: dict, init: dict) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v - init[n][k] for n in params for k, v in params[n].items()}


@pytest.fixture(scope="module")
def ddp_runs(tiny_cfg, tmp_path_factory):
    """Every case with gathering on and off, all in one 2-worker spawn (a spawn costs seconds)."""
    base = apply_overrides(tiny_cfg, {"model.nf": 4, "model.embed_dim": EMBED})
    cfgs, runs = {}, {}
    for case, overrides in CASES.items():
        for gather in (True, False):
            cfg = apply_overrides(base, {**overrides, "train.gather_negatives": gather})
            torch.manual_seed(1)
            init = {n: {k: v.clone() for k, v in m.state_dict().items()}
                    for n, m in build_method(cfg, _assets()).trainable().items()}
            cfgs[case, gather], runs[f"{case}/{gather}"] = cfg, (cfg.to_dict(), init)
    batch, z, eps = _inputs(base)
    tmp = tmp_path_factory.mktemp("ddp")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spawn_ranks(_rank_main, (2, str(tmp / "store"), str(tmp / "ddp.pt"), runs, batch, z, eps), tmp)
        ddp = torch.load(tmp / "ddp.pt", weights_only=True)
        # The same step in one process on the whole batch of 2B (no process group: nothing to gather).
        single = {}
        for case in CASES:
            cfg_dict, init = runs[f"{case}/True"]
            method = _method(cfg_dict, init)
            losses = _step(method, batch, z, eps)
            single[case] = {"params": {n: m.state_dict() for n, m in method.trainable().items()}, "losses": losses}
    finally:
        torch.set_num_threads(old)
    return {"ddp": ddp, "single": single, "runs": runs}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_two_ddp_workers_of_batch_b_update_like_one_process_of_batch_2b(ddp_runs, case):
    init = ddp_runs["runs"][f"{case}/True"][1]
    single, ddp = ddp_runs["single"][case], ddp_runs["ddp"][f"{case}/True"]
    assert ddp["gather_world"] == 2  # the method found the process group (GanMethod.prepare)
    ref, got = _delta(single["params"], init), _delta(ddp["params"], init)
    assert set(ref) == set(got)
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")
    moved = {key.split(".")[0] for key, value in ref.items() if value.abs().sum() > 0}
    assert moved == set(init)  # every trainable module really moved
    # The batch-coupled losses rank 0 reports are the global batch's, equal to the 2B process's.
    coupled = [k for k in COUPLED_LOSSES if k in single["losses"]]
    assert len(coupled) == {"pretrained": 4, "dual": 6, "shared": 2, "t2i_cl": 5}[case]
    for k in coupled:
        assert ddp["losses"][k] == pytest.approx(single["losses"][k], rel=1e-5), k


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_without_gathering_two_workers_optimise_another_loss(ddp_runs, case):
    """The control: train.gather_negatives=false gives each worker its shard's negatives and
    mismatched pairs, which is measurably another update (so the test above can fail)."""
    init = ddp_runs["runs"][f"{case}/False"][1]
    single, ddp = ddp_runs["single"][case], ddp_runs["ddp"][f"{case}/False"]
    assert ddp["gather_world"] == 1
    ref, got = _delta(single["params"], init), _delta(ddp["params"], init)
    # The modules the coupled terms train: D (mismatched pairs) always, G (the l-terms, the
    # alignment on fakes), S_D's encoder and the projection (the alignment on reals).
    expect = {"pretrained": {"generator", "discriminator"},
              "dual": {"generator", "discriminator", "text_d", "align_proj"},
              "shared": {"generator", "discriminator", "text_g", "align_proj"},
              "t2i_cl": {"generator", "discriminator"}}[case]
    for module in expect:
        keys = [k for k in ref if k.split(".")[0] == module]
        gap = max(float((got[k] - ref[k]).abs().max()) for k in keys)
        scale = max(float(ref[k].abs().max()) for k in keys)
        assert gap > 100 * (ATOL + RTOL * scale), f"{module}: per-worker update within round-off of the global one"
    for k in COUPLED_LOSSES:
        if k in single["losses"]:
            assert ddp["losses"][k] != pytest.approx(single["losses"][k], rel=1e-3), k


def test_gather_is_the_identity_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert BatchGather.from_process_group(True).world_size == 1
    out = BatchGather()({"x": x})
    assert out["x"] is x
    with pytest.raises(ValueError, match="rank 2 is not in 0..world_size-1"):
        BatchGather(2, 2)


@pytest.mark.parametrize("overrides, expect", [
    ({}, {"workers": 1, "negatives_gathered": False, "negatives_batch": 8}),
    ({"train.num_workers": 4}, {"workers": 4, "negatives_gathered": True, "negatives_batch": 32}),
    ({"train.num_workers": 4, "train.gather_negatives": False},
     {"workers": 4, "negatives_gathered": False, "negatives_batch": 8}),
    ({"train.num_workers": 4, "model.method": "diffusion"},
     {"workers": 4, "negatives_gathered": False, "negatives_batch": None}),
])
def test_results_row_records_workers_and_gathering(tiny_cfg, overrides, expect):
    assert data_parallel_columns(apply_overrides(tiny_cfg, overrides)) == expect


def _abort(rank: int, folder: str, after_work: bool) -> None:
    import os
    import time

    if after_work:
        mark_done(folder, rank)
    if rank == 1:
        # as after the real ranks' barrier: every rank has marked its work done before the abort
        deadline = time.monotonic() + 60
        while after_work and not (Path(folder) / "rank0.done").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.abort()  # what gloo's teardown abort looks like to the parent: SIGABRT


def test_spawn_ranks_tolerates_only_an_abort_after_every_ranks_work(tmp_path):
    with pytest.warns(UserWarning, match="aborted in the process group's teardown"):
        spawn_ranks(_abort, (str(tmp_path / "a"), True), tmp_path / "a")
    with pytest.raises(Exception, match="terminated with signal SIGABRT"):
        spawn_ranks(_abort, (str(tmp_path / "b"), False), tmp_path / "b")
