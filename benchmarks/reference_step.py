"""DF-GAN's reference training step against this project's `gan_step`, timed alternately in one run.

    git clone https://github.com/tobran/DF-GAN /tmp/DF-GAN && git -C /tmp/DF-GAN checkout 78f14fd
    python benchmarks/reference_step.py --reference /tmp/DF-GAN/code \
        --out benchmarks/results/reference_step.json
    python benchmarks/reference_step.py --reference /tmp/DF-GAN/code --sizes 32 64   # skip 256 px
    python benchmarks/reference_step.py --reference /tmp/DF-GAN/code --sizes 32 \
        --channels-last --profile 2 --eval   # + ours with NHWC, top ops, evaluation backbones

The reference is tobran/DF-GAN at commit 78f14fd, imported at run time from the local checkout
given by --reference (its `code` folder): `models/GAN.py` (NetG, NetD, NetC) and, from
`lib/modules.py`, the functions MA_GP, predict_loss and hinge_loss. Those three are taken out of
the file's syntax tree and compiled alone (the module's own imports need its datasets and
Inception code), with one rewrite: `.cuda()` calls are dropped, so MA-GP runs on the CPU. The
repository keeps no copy of the reference.

Reference step (its `train()` body at nf = 32, random tensors, no text encoder): D on the real
images, the conditional head on (real, sentence), on the rolled real features (mismatched pairs)
and on G's detached fake; MA-GP on the real pair; one Adam step of D + head; then the head on
D(fake) and one Adam step of G. Ours: `t2i_ray.train.gan.gan_step` on DF-GAN (`model.arch=dfgan`)
at the same nf, z_dim 100, sentence width 256, batch, Adam(0, 0.9) at DF-GAN's learning rates,
adversarial losses and MA-GP only; the sentence embeddings are fixed random tensors too (a
stand-in for the frozen DAMSM encoder that costs nothing, as the reference has no encoder).

Per setting: one warm-up step each, then --rounds rounds of (reference --steps steps, ours
--steps steps), so a change in the machine's load hits both; img/s per round, medians reported,
and images per CPU second of the process (steadier than wall-clock time on a shared machine).
--channels-last adds ours with train.channels_last=on as a third side; --profile N lists the top
ops by self CPU time of each side at the first size (torch.profiler). The JSON records the
1-minute load average before and after every setting, the threads, the machine and the
process's peak RSS. With --eval: seconds per 1,000 images of the evaluation
backbones (the `domain` evaluator, t2i_ray/eval/features.py, and the FID Inception of
t2i_ray/eval/inception.py with random weights of the right shapes: its cost does not depend on
the values), measured on --eval-images images and scaled.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

REFERENCE_COMMIT = "78f14fd"
GET_REFERENCE = ("get it with: git clone https://github.com/tobran/DF-GAN /tmp/DF-GAN && "
                 f"git -C /tmp/DF-GAN checkout {REFERENCE_COMMIT}, then pass --reference /tmp/DF-GAN/code")
REFERENCE_FUNCTIONS = ("MA_GP", "predict_loss", "hinge_loss")
Z_DIM, COND_DIM, WORDS = 100, 256, 18
# DF-GAN's optimisers (code/cfg: lr_g 1e-4, lr_d 4e-4, Adam betas (0.0, 0.9))
LR_G, LR_D, BETAS = 1e-4, 4e-4, (0.0, 0.9)


class ReferenceMissing(SystemExit):
    pass


def load_reference(path: str) -> SimpleNamespace:
    """NetG, NetD, NetC from <path>/models/GAN.py and MA_GP, predict_loss, hinge_loss from
    <path>/lib/modules.py (module docstring). Refuses with how to get the code when missing."""
    root = Path(path)
    gan_file, modules_file = root / "models" / "GAN.py", root / "lib" / "modules.py"
    for f in (gan_file, modules_file):
        if not f.is_file():
            raise ReferenceMissing(
                f"reference_step.py: --reference {path!r} is not DF-GAN's `code` folder ({f} is missing); "
                f"{GET_REFERENCE}")
    spec = importlib.util.spec_from_file_location("dfgan_reference_GAN", gan_file)
    gan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gan)

    class DropCuda(ast.NodeTransformer):  # x.cuda() -> x
        def visit_Call(self, node):
            self.generic_visit(node)
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "cuda" and not node.args and not node.keywords:
                return f.value
            return node

    tree = ast.parse(modules_file.read_text(), str(modules_file))
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in REFERENCE_FUNCTIONS]
    missing = set(REFERENCE_FUNCTIONS) - {n.name for n in defs}
    if missing:
        raise ReferenceMissing(f"reference_step.py: {modules_file} defines no {', '.join(sorted(missing))}: "
                               f"not DF-GAN at {REFERENCE_COMMIT}; {GET_REFERENCE}")
    module = ast.fix_missing_locations(DropCuda().visit(ast.Module(body=defs, type_ignores=[])))
    ns = {"torch": torch, "nn": nn, "F": torch.nn.functional}
    exec(compile(module, str(modules_file), "exec"), ns)
    missing = [n for n in ("NetG", "NetD", "NetC") if not hasattr(gan, n)]
    if missing:
        raise ReferenceMissing(f"reference_step.py: {gan_file} defines no {', '.join(missing)}; {GET_REFERENCE}")
    return SimpleNamespace(NetG=gan.NetG, NetD=gan.NetD, NetC=gan.NetC,
                           **{name: ns[name] for name in REFERENCE_FUNCTIONS})


def count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class ReferenceStep:
    """The reference's D + G iteration (module docstring) on fixed random images and sentences."""

    def __init__(self, ref, nf: int, imsize: int, batch: int):
        torch.manual_seed(0)
        self.ref, self.batch = ref, batch
        self.G = ref.NetG(nf, Z_DIM, COND_DIM, imsize, 3)
        self.D, self.C = ref.NetD(nf, imsize, 3), ref.NetC(nf, COND_DIM)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=LR_G, betas=BETAS)
        self.opt_d = torch.optim.Adam(list(self.D.parameters()) + list(self.C.parameters()), lr=LR_D, betas=BETAS)
        self.images = torch.randn(batch, 3, imsize, imsize)
        self.sent = torch.randn(batch, COND_DIM)

    def __call__(self) -> None:
        r = self.ref
        imgs, sent = self.images.clone().requires_grad_(), self.sent.clone().requires_grad_()
        real_feat = self.D(imgs)
        pred_real, err_real = r.predict_loss(self.C, real_feat, sent, negtive=False)
        mis_feat = torch.cat((real_feat[1:], real_feat[0:1]), 0)
        _, err_mis = r.predict_loss(self.C, mis_feat, sent, negtive=True)
        fake = self.G(torch.randn(self.batch, Z_DIM), sent)
        _, err_fake = r.predict_loss(self.C, self.D(fake.detach()), sent, negtive=True)
        err_d = err_real + (err_fake + err_mis) / 2.0 + r.MA_GP(imgs, sent, pred_real)
        self.opt_d.zero_grad()
        err_d.backward()
        self.opt_d.step()
        err_g = -self.C(self.D(fake), sent).mean()
        self.opt_g.zero_grad()
        err_g.backward()
        self.opt_g.step()

    def counts(self) -> dict[str, int]:
        # NetD builds a 1x1 shortcut conv in blocks that keep their width and never uses it: those
        # parameters get no gradient (after a step their .grad is None); ours does not build them.
        unused = sum(p.numel() for m in (self.D, self.C) for p in m.parameters() if p.grad is None)
        return {"params_g": count(self.G), "params_d_and_head": count(self.D, self.C),
                "params_d_and_head_unused": unused}


class FixedText(nn.Module):
    """The frozen text encoder's place: (words (B, E, T), sentence (B, E)) of fixed random values."""

    def __init__(self, batch: int):
        super().__init__()
        self.words, self.sent = torch.randn(batch, COND_DIM, WORDS), torch.randn(batch, COND_DIM)

    def forward(self, ids, lengths):
        return self.words, self.sent


class OurStep:
    """`gan_step` on the project's DF-GAN at the reference's settings (module docstring)."""

    def __init__(self, nf: int, imsize: int, batch: int, channels_last: bool = False):
        from t2i_ray.config import build_config
        from t2i_ray.models.factory import build_gan_models
        from t2i_ray.train.accel import resolve_accel
        from t2i_ray.train.gan import build_optimizers, prepare_gan_models

        self.cfg = build_config("local", {
            "model.arch": "dfgan", "model.nf": nf, "model.z_dim": Z_DIM, "model.embed_dim": COND_DIM,
            "model.text_embedding": "pretrained", "data.resolution": imsize, "train.batch_size": batch,
            "train.lr_g": LR_G, "train.lr_d": LR_D, "train.beta1": BETAS[0], "train.beta2": BETAS[1],
            "loss.damsm": 0.0, "loss.f2r": 0.0, "loss.f2f": 0.0, "loss.recap": 0.0, "loss.magp": True,
            "train.channels_last": "on" if channels_last else "off"})
        torch.manual_seed(0)
        self.models = build_gan_models(self.cfg, FixedText(batch), nn.Identity())
        # what the training loop does with the models and each batch (train.channels_last)
        accel = resolve_accel(self.cfg.train, torch.device("cpu"))
        prepare_gan_models(self.models, lambda m: m, accel.prepare_module, torch.device("cpu"))
        self.opts = build_optimizers(self.models, self.cfg)
        self.batch = accel.prepare_batch({"image": torch.randn(batch, 3, imsize, imsize),
                                          "caption": torch.ones(batch, WORDS, dtype=torch.long),
                                          "caption_len": torch.full((batch,), WORDS, dtype=torch.long)})
        self.noise = torch.Generator().manual_seed(0)

    def __call__(self) -> dict[str, float]:
        from t2i_ray.train.gan import gan_step

        return gan_step(self.models, self.opts, self.batch, self.cfg, self.noise)

    def counts(self) -> dict[str, int]:
        m = self.models
        return {"params_g": count(m.generator), "params_d_and_head": count(m.discriminator, m.head)}


def images_per_s(step, batch: int, steps: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process). On a shared machine
    the CPU-time figure moves less with the load (at 1 thread it is the step's own compute)."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start), steps * batch / (time.process_time() - cpu)


def measure_setting(ref, nf: int, imsize: int, batch: int, steps: int, rounds: int,
                    channels_last: bool = False) -> dict:
    load_before = os.getloadavg()[0]
    sides = {"reference": ReferenceStep(ref, nf, imsize, batch), "ours": OurStep(nf, imsize, batch)}
    if channels_last:
        sides["ours_channels_last"] = OurStep(nf, imsize, batch, channels_last=True)
    for step in sides.values():
        step()  # warm-up; also leaves the reference's .grad set, which counts() reads
    reference, ours = sides["reference"], sides["ours"]
    rc, oc = reference.counts(), ours.counts()
    if rc["params_g"] != oc["params_g"]:
        raise AssertionError(f"{imsize} px: G parameter counts differ (reference {rc['params_g']}, "
                             f"ours {oc['params_g']}): not the same network")
    if rc["params_d_and_head"] - rc["params_d_and_head_unused"] != oc["params_d_and_head"]:
        raise AssertionError(f"{imsize} px: D + head parameter counts differ (reference {rc['params_d_and_head']} "
                             f"of which {rc['params_d_and_head_unused']} unused, ours {oc['params_d_and_head']})")
    wall = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    for _ in range(rounds):  # alternate: load drift hits every side alike
        for name, step in sides.items():
            w, c = images_per_s(step, batch, steps)
            wall[name].append(w)
            cpu[name].append(c)
    row = {"setting": f"{imsize}x{imsize} batch {batch}", "resolution": imsize, "batch_size": batch, "nf": nf,
           "steps_per_round": steps, "rounds": rounds}
    r, r_cpu = statistics.median(wall["reference"]), statistics.median(cpu["reference"])
    for name in sides:
        o, o_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        row.update({f"{name}_img_per_s": round(o, 2), f"{name}_img_per_s_rounds": [round(x, 2) for x in wall[name]],
                    f"{name}_img_per_cpu_s": round(o_cpu, 2)})
        if name != "reference":
            suffix = name[len("ours"):]
            row.update({f"ratio{suffix}": round(o / r, 3), f"ratio_cpu_time{suffix}": round(o_cpu / r_cpu, 3)})
    return {**row, "reference_params": rc, "ours_params": oc,
            "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def seconds_per_1000(fn, images: torch.Tensor, batch: int) -> float:
    fn(images[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        fn(images[i:i + batch])
    return (time.perf_counter() - start) * 1000 / len(images)


def measure_eval(resolution: int, num_images: int, inception_images: int, batch: int) -> dict:
    """Seconds per 1,000 images of each evaluation backbone (features only; module docstring)."""
    from t2i_ray.data import shapes
    from t2i_ray.eval.features import DomainEvaluator, extract
    from t2i_ray.eval.inception import extract_inception, load_inception, random_inception_state_dict

    torch.manual_seed(0)
    images = torch.rand(max(num_images, inception_images), 3, resolution, resolution) * 2 - 1
    domain = DomainEvaluator(resolution, shapes.NUM_ATTRIBUTES)
    out = {"resolution": resolution, "batch_size": batch,
           "domain": {"images_timed": num_images, "s_per_1000": round(
               seconds_per_1000(lambda x: extract(domain, [x]), images[:num_images], batch), 3)}}
    if inception_images > 0:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-standard weights": random values of the right shapes
            path = os.path.join(tmp, "random_inception.pth")
            torch.save(random_inception_state_dict(0), path)
            backbone = load_inception(path)
        out["inception"] = {"images_timed": inception_images, "resize": backbone.info["resize"], "s_per_1000": round(
            seconds_per_1000(lambda x: extract_inception(backbone, [x]), images[:inception_images], batch), 2)}
    return out


def profile_steps(step, steps: int, top: int) -> dict:
    """torch.profiler over `steps` steps: the top ops by self CPU time (ms per step, share of the
    total) and the share of all convolution ops (forward and backward kernels)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"self_cpu_ms_per_step": round(total / 1e3 / steps, 1), "convolution_share": round(conv / total, 3),
            "top": [{"op": e.key, "calls_per_step": e.count // steps,
                     "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 2),
                     "share": round(e.self_cpu_time_total / total, 3)} for e in rows]}


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True,
                   help=f"DF-GAN's `code` folder at {REFERENCE_COMMIT} (module docstring: how to get it)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256], choices=[32, 64, 128, 256])
    p.add_argument("--batch", type=int, default=32, help="batch below 256 px")
    p.add_argument("--batch-256", type=int, default=8, help="batch at 256 px")
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="steps per round below 256 px")
    p.add_argument("--steps-256", type=int, default=1, help="steps per round at 256 px")
    p.add_argument("--rounds", type=int, default=3, help="alternating (reference, ours) rounds per setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true",
                   help="also time ours with train.channels_last=on (NHWC G, D and images), alternating too")
    p.add_argument("--eval", action="store_true", help="also time the evaluation backbones per 1,000 images")
    p.add_argument("--eval-images", type=int, default=512, help="images timed through the domain evaluator")
    p.add_argument("--inception-images", type=int, default=64, help="images timed through Inception (0: skip)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS steps of each side at the first size: top ops by self CPU time")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long check of the code path: 32 px, nf 4, batch 4, 1 step, 2 rounds; "
                        "--eval on 8 images, no Inception")
    p.add_argument("--out", default="benchmarks/results/reference_step.json")
    args = p.parse_args(argv)
    ref = load_reference(args.reference)  # refuses before any work
    if args.tiny:
        args.sizes, args.batch, args.nf, args.steps, args.rounds = [32], 4, 4, 1, 2
        args.eval_images, args.inception_images = 8, 0
    torch.set_num_threads(args.threads)
    rows = []
    print(f"threads {args.threads}, 1-minute load average {os.getloadavg()[0]:.2f}", flush=True)
    print("setting | reference img/s | ours img/s | ratio | ratio of CPU time"
          + (" | ours channels_last img/s | ratio | ratio of CPU time" if args.channels_last else ""), flush=True)
    for size in args.sizes:
        big = size == 256
        row = measure_setting(ref, args.nf, size, args.batch_256 if big else args.batch,
                              args.steps_256 if big else args.steps, args.rounds, args.channels_last)
        rows.append(row)
        cols = [row["setting"], row["reference_img_per_s"], row["ours_img_per_s"], f"{row['ratio']:.2f}",
                f"{row['ratio_cpu_time']:.2f}"]
        if args.channels_last:
            cols += [row["ours_channels_last_img_per_s"], f"{row['ratio_channels_last']:.2f}",
                     f"{row['ratio_cpu_time_channels_last']:.2f}"]
        print(" | ".join(map(str, cols)) + f" (load {row['load_avg_1min_before']} -> {row['load_avg_1min_after']}; "
              f"params G {row['ours_params']['params_g']}, D+head {row['ours_params']['params_d_and_head']})",
              flush=True)
    result = {"reference": f"tobran/DF-GAN@{REFERENCE_COMMIT}",
              "reference_path": str(Path(args.reference).resolve()),
              "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "tiny": args.tiny, "rows": rows}
    if args.profile:
        size = args.sizes[0]
        batch = args.batch_256 if size == 256 else args.batch
        result["profile"] = {"resolution": size, "batch_size": batch, "steps": args.profile}
        sides = {"reference": ReferenceStep(ref, args.nf, size, batch), "ours": OurStep(args.nf, size, batch)}
        if args.channels_last:
            sides["ours_channels_last"] = OurStep(args.nf, size, batch, channels_last=True)
        for name, step in sides.items():
            prof = result["profile"][name] = profile_steps(step, args.profile, 15)
            print(f"profile of {name} at {size} px: {prof['self_cpu_ms_per_step']} ms self CPU per step, "
                  f"{prof['convolution_share']:.1%} in convolutions; top ops (calls, ms per step, share):", flush=True)
            for r in prof["top"]:
                print(f"  {r['op']:<45} {r['calls_per_step']:>4} {r['self_ms_per_step']:>9.2f} {r['share']:>6.1%}",
                      flush=True)
    if args.eval:
        result["eval"] = measure_eval(args.sizes[0], args.eval_images, args.inception_images, 4 if args.tiny else 64)
        print(f"evaluation, s per 1,000 images at {args.sizes[0]} px: " + ", ".join(
            f"{k} {v['s_per_1000']}" for k, v in result["eval"].items() if isinstance(v, dict)), flush=True)
    result.update(load_avg_1min_end=round(os.getloadavg()[0], 2), peak_rss_mib=peak_rss_mib())
    print(f"peak RSS {result['peak_rss_mib']} MiB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
