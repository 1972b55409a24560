"""A Ray cluster of a head and worker nodes simulated on one machine, and the node-loss scenario.

`ray.cluster_utils.Cluster` (Ray's own multi-node test harness) starts a real GCS, a raylet per
node and their worker processes, each node with its own resources: the head has 1 CPU and the
custom resource `t2i_driver` (as cluster.yaml's on-demand head), a worker node 2 CPUs (standing in
for a spot GPU node: a Train worker of 1 CPU fits there, never on the head, whose CPU the trial
drivers' slivers already use). CPU only, with Ray's token authentication on as in cluster.yaml.

`node_loss(...)` runs a real grid sweep of two trials (`run_sweep` with `address=`, as
`--address` does; the fit gives one 2-worker trial at a time) on a CUB-format dataset whose folder
disappears as soon as the driver has built its decoded cache (every Train worker then reads the
cache, as on a node without the data), with `--storage-path` on a folder of its own (the bucket)
and one output folder for all nodes (the shared file system). The main thread watches from
outside the trials and does what a cluster does to them:
  1. once the first trial's workers hold the worker node, a second worker node joins (the
     autoscaler's new node);
  2. once that trial has a registered checkpoint (Ray Train's checkpoint-manager snapshot in the
     storage path), the first worker node is killed without a drain (SIGKILL: a spot reclaim). The
     trial's workers restart from the checkpoint on the joined node, the only place left for them,
     and the next trial runs there too.
It timestamps every training report (the curves file rank 0 appends per report) and samples every
node's used resources, and returns it all as JSON for tests/test_sim_cluster.py and
benchmarks/node_loss.py.

Run it through `run_in_subprocess`: a fresh process with a short RAY_TMPDIR of its own, so that
the simulated cluster never touches another Ray instance of the machine or its address file, and
every process it started is killed at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HEAD_CPUS, WORKER_CPUS = 1, 2
OBJECT_STORE = 80 * 1024**2


def _now(t0: float) -> float:
    return round(time.time() - t0, 3)


class Watcher:
    """Polls the curves files, the checkpoint-manager snapshots and the nodes' resources on the
    main thread (Ray starts and stops node processes only from there) while the sweep runs in
    another; adds a node once the first trial's workers are placed (`join`) and removes their node
    once that trial has a registered checkpoint (`kill`)."""

    def __init__(self, cluster, t0: float, curves: dict[str, Path], snapshots: dict[str, Path],
                 results: dict[str, Path], join: bool, kill: bool, min_checkpoint_step: int,
                 kill_at_step: int | None = None):
        self.cluster, self.t0 = cluster, t0
        self.curves, self.snapshots, self.results = curves, snapshots, results
        self.join_node, self.kill_node = join, kill
        self.min_checkpoint_step = min_checkpoint_step
        self.kill_at_step = kill_at_step  # kill once this step is reported (default: at the checkpoint)
        self.names = {cluster.head_node.node_id: "head"}
        self.names.update({n.node_id: f"worker{i + 1}" for i, n in enumerate(self._workers())})
        self.steps: dict[str, list[tuple[float, int]]] = {r: [] for r in curves}
        self.offsets: dict[str, int] = {r: 0 for r in curves}
        self.usage: list[dict[str, Any]] = []
        self.events: dict[str, Any] = {}
        self.last_sample = 0.0

    def _workers(self):
        return sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)

    def _read_curves(self) -> None:
        t = _now(self.t0)
        for run, path in self.curves.items():
            if not path.is_file():
                continue
            with open(path, "rb") as f:
                f.seek(self.offsets[run])
                text = f.read()
            complete = text[:text.rfind(b"\n") + 1]  # a line being written is read next time
            self.offsets[run] += len(complete)
            for line in complete.decode().splitlines():
                self.steps[run].append((t, int(json.loads(line)["step"])))

    def _checkpointed_step(self, run: str) -> int:
        try:
            snap = json.loads(self.snapshots[run].read_text())
        except (OSError, ValueError):  # not there yet, or being rewritten
            return 0
        return max((int(r["metrics"].get("step", 0)) for r in snap.get("checkpoint_results", [])), default=0)

    def _sample_usage(self) -> dict[str, dict[str, float]]:
        total = self.cluster.global_state.total_resources_per_node()
        free = self.cluster.global_state.available_resources_per_node()
        used = {}
        for node_id, res in total.items():
            avail = free.get(node_id, {})
            used[self.names.get(node_id, node_id[:8])] = {
                k: round(v - avail.get(k, 0.0), 4) for k, v in res.items() if k in ("CPU", "t2i_driver")}
        self.usage.append({"t": _now(self.t0), "used": used})
        self.last_sample = time.time()
        return used

    def poll(self) -> None:
        self._read_curves()
        if time.time() - self.last_sample >= 0.5:
            used = self._sample_usage()
            if self.join_node and "join" not in self.events and \
                    used.get("worker1", {}).get("CPU", 0) >= WORKER_CPUS - 1e-6:
                self.events["first_trial_placed"] = _now(self.t0)  # its Train workers hold worker1
                node = self.cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=OBJECT_STORE)
                self.names[node.node_id] = "joined"
                self.events["join"] = _now(self.t0)
        started = [r for r in self.curves if self.steps[r]]
        if not self.kill_node or "kill" in self.events or not started or \
                (self.join_node and "join" not in self.events):
            return
        first = min(started, key=lambda r: self.steps[r][0][0])  # the trial that reported first
        checkpointed = self._checkpointed_step(first)
        if checkpointed < self.min_checkpoint_step or self.steps[first][-1][1] < (self.kill_at_step or 0):
            return
        victim = next(n for n in self._workers() if self.names.get(n.node_id) == "worker1")
        self._read_curves()
        self.events.update(first_run=first, kill_last_step=self.steps[first][-1][1],
                           kill_checkpointed_step=checkpointed,
                           kill_row_written_before=self.results[first].exists())
        t_kill = time.time()
        self.cluster.remove_node(victim, allow_graceful=False)  # SIGKILL, no drain: a spot reclaim
        self.events["kill"] = round(t_kill - self.t0, 3)
        self.events["kill_took_s"] = round(time.time() - t_kill, 3)


def _write_dataset(work: Path, per_class: int) -> Path:
    """A CUB-format folder (tests/test_datasets.py's fixture writer), 2 classes: per_class=8 gives
    12 train and 4 test images."""
    sys.path.insert(0, str(REPO))
    from tests.test_datasets import write_cub

    root = work / "data" / "birds"
    write_cub(root, per_class=per_class)
    return root


def scenario_config(work: Path, steps: int, checkpoint_every: int, report_every: int,
                    overrides: dict[str, Any] | None = None, per_class: int = 8):
    """The `ci` preset on the CUB-format folder: 2 Train workers of 1 CPU per trial, a report per
    step, random Inception weights for the evaluation (it measures nothing; the path is real)."""
    import torch

    from t2i_ray.config import build_config
    from t2i_ray.eval.inception import random_inception_state_dict

    weights = work / "inception.pth"
    if not weights.exists():
        torch.save(random_inception_state_dict(seed=0), weights)
    data_root = work / "data" / "birds"
    if not data_root.exists():
        _write_dataset(work, per_class)
    return build_config("ci", {
        "output_dir": str(work / "shared"), "data.dataset": "cub", "data.data_root": str(data_root),
        "data.resolution": 32, "model.nf": 4, "train.batch_size": 2, "train.num_workers": 2,
        "train.cpus_per_worker": 1.0, "train.steps": steps, "train.checkpoint_every": checkpoint_every,
        "train.report_every": report_every, "damsm.epochs": 1, "damsm.batch_size": 4,
        "eval.inception_weights": str(weights), "eval.num_images": 8, "eval.batch_size": 8,
        "eval.r_precision_candidates": 2, "eval.r_precision_folds": 1, "eval.kid_subsets": 2,
        "eval.kid_subset_size": 2, "eval.is_splits": 2, **(overrides or {})})


def node_loss(work: str | Path, steps: int = 24, checkpoint_every: int = 8, report_every: int | None = None,
              join: bool = True,
              kill: bool = True, seeds: tuple[int, ...] = (0, 1), overrides: dict[str, Any] | None = None,
              system_config: dict[str, Any] | None = None, kill_at_step: int | None = None,
              per_class: int = 8) -> dict[str, Any]:
    """Run the scenario (module docstring) and return what happened, JSON-ready."""
    import ray
    from ray.cluster_utils import Cluster

    from t2i_ray.config import ConfigError, apply_overrides
    from t2i_ray.paths import RunPaths
    from t2i_ray.sweep import run as sweep_run
    from t2i_ray.sweep import store
    from t2i_ray.sweep.run import DRIVER_RESOURCE, SweepSpec, run_sweep, storage_root

    work = Path(work).resolve()
    t0 = time.time()
    cfg = scenario_config(work, steps, checkpoint_every, report_every or checkpoint_every, overrides, per_class)
    bucket = work / "bucket"  # --storage-path: stands in for s3://... (outlives every node)
    grid = [{"row": "baseline", "seed": s, "overrides": {}} for s in seeds]
    spec = SweepSpec(sweep="sim_cluster", base=cfg, search="grid", grid=grid)
    runs = [f"{spec.name}-baseline-s{s}" for s in seeds]
    paths = RunPaths(Path(cfg.output_dir))
    storage = storage_root(paths.output_dir, str(bucket))
    events: dict[str, Any] = {}

    prepare = sweep_run.prepare_assets

    def prepare_then_hide_data(*args, **kwargs):
        out = prepare(*args, **kwargs)  # the driver decodes the data into the shared cache here
        Path(cfg.data.data_root).rename(work / "data" / "elsewhere")  # then no node has the folder
        events["data_hidden"] = _now(t0)
        return out

    sweep_run.prepare_assets = prepare_then_hide_data
    # shutdown_at_exit=False: no signal handlers (nodes are added and removed from this thread
    # while the sweep runs in another); run_in_subprocess kills every process at the end.
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
        "num_cpus": HEAD_CPUS, "resources": {DRIVER_RESOURCE: 1000}, "object_store_memory": OBJECT_STORE,
        "include_dashboard": False, "_system_config": system_config or {}})
    cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    events["cluster_up"] = _now(t0)
    # With token authentication on (RAY_AUTH_MODE=token, as cluster.yaml), a client holding another
    # token is refused; tried alongside the sweep.
    intruder = subprocess.Popen(
        [sys.executable, "-c", f"import ray; ray.init(address={cluster.address!r}); print('CONNECTED')"],
        env={**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN_PATH"},
             "RAY_AUTH_TOKEN": "not-the-cluster-token-0123456789abcdef"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) \
        if os.environ.get("RAY_AUTH_MODE") == "token" else None
    watcher = Watcher(cluster, t0, curves={r: paths.curve(r) for r in runs},
                      snapshots={r: Path(storage) / "train" / r / "checkpoint_manager_snapshot.json" for r in runs},
                      results={r: store.results_dir(paths.output_dir) / f"{r}.parquet" for r in runs},
                      join=join, kill=kill, min_checkpoint_step=checkpoint_every, kill_at_step=kill_at_step)
    log: list[tuple[float, str]] = []
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        try:
            outcome["rows"] = run_sweep(spec, address=cluster.address, storage_path=str(bucket),
                                        log=lambda s: log.append((_now(t0), s)))
        except BaseException as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            return
        # The nodes left (the head's 1 CPU, the joined node's 2) add up to the 3 CPUs that two
        # workers of 1.5 CPUs need, but no node holds two of them: refused at once, not a hang.
        too_big = SweepSpec(sweep="sim_cluster_too_big", base=apply_overrides(cfg, {"train.cpus_per_worker": 1.5}),
                            search="grid", grid=grid)
        try:
            run_sweep(too_big, address=cluster.address, storage_path=str(bucket), log=lambda s: None)
            outcome["refusal"] = None
        except ConfigError as exc:
            outcome["refusal"] = str(exc)

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    while thread.is_alive():
        watcher.poll()
        time.sleep(0.05)
    events["sweep_done"] = _now(t0)
    watcher.poll()
    intruder_result = None
    if intruder is not None:
        text, _ = intruder.communicate(timeout=300)
        intruder_result = {"returncode": intruder.returncode, "output_tail": text[-1500:]}
    ray.shutdown()
    rows, error = outcome.get("rows"), outcome.get("error")
    events.update(watcher.events)
    session_files = [str(p) for p in Path(tempfile.gettempdir()).rglob("checkpoint_*")] \
        if os.environ.get("RAY_TMPDIR") else []
    return {
        "error": error, "events": events, "log": log, "refusal": outcome.get("refusal"),
        "auth_mode": os.environ.get("RAY_AUTH_MODE"), "intruder": intruder_result,
        "runs": runs, "steps": watcher.steps, "usage": watcher.usage,
        "rows": [] if rows is None else json.loads(rows.to_json(orient="records")),
        "config": {"steps": steps, "checkpoint_every": checkpoint_every, "report_every": cfg.train.report_every,
                   "seeds": list(seeds), "train_poll_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")},
        "storage": storage, "output_dir": str(paths.output_dir), "data_root": cfg.data.data_root,
        "node_local_checkpoints": session_files,
    }


def run_in_subprocess(work: Path, timeout: float, env: dict[str, str] | None = None, **kwargs) -> dict[str, Any]:
    """`node_loss(work, **kwargs)` in a fresh Python process with its own RAY_TMPDIR (a short path:
    Ray's socket names must stay under 107 characters) and `env` on top of this one's. Returns its
    result plus `resumed` (the steps each run's workers logged resuming from), `cpu_s` (CPU seconds
    used by the process and everything it started, sampled every 0.5 s) and `wall_s`; raises with
    the tail of its output when it fails. Every process it started is killed when it ends."""
    import re
    import secrets
    import shutil
    import signal

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="rsim", dir="/tmp")
    token = work / "auth" / "auth_token"  # Ray's token authentication, on as in cluster.yaml
    token.parent.mkdir(exist_ok=True)
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "TMPDIR": ray_tmp,
                "RAY_DEDUP_LOGS": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), **(env or {})}
    full_env.pop("RAY_AUTH_TOKEN", None)
    full_env.pop("RAY_ADDRESS", None)
    out_file, log_path = work / "result.json", work / "simcluster.log"
    cpu: dict[int, float] = {}
    load_before = os.getloadavg()[0]
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.simcluster", json.dumps({"work": str(work), **kwargs}),
                                 str(out_file)], cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while proc.poll() is None and time.time() - t0 < timeout:
                _sample_cpu(proc.pid, cpu)
                time.sleep(0.5)
        finally:
            _kill_session(proc.pid, signal.SIGKILL)  # raylets, workers: nothing outlives the run
            proc.wait()
    wall = time.time() - t0
    shutil.rmtree(ray_tmp, ignore_errors=True)
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0 or not out_file.is_file():
        raise RuntimeError(f"simulated-cluster run failed (exit {proc.returncode}, {wall:.0f} s); its log ends:\n"
                           + text[-6000:])
    result = json.loads(out_file.read_text())
    resumed: dict[str, list[int]] = {}
    for run, step in re.findall(r"\[(\S+)\] resumed from checkpoint at step (\d+)", text):
        resumed.setdefault(run, []).append(int(step))
    cache_reads = re.findall(r"\[data\] (\S+) is not on this machine; using the cache the driver built", text)
    result.update(resumed=resumed, cache_reads=cache_reads, cpu_s=round(sum(cpu.values()), 1), wall_s=round(wall, 1),
                  load_average=[round(load_before, 1), round(os.getloadavg()[0], 1)])  # the machine's, before/after
    out_file.write_text(json.dumps(result, indent=1))
    return result


def _session_pids(session_id: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _sample_cpu(session_id: int, cpu: dict[int, float]) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _session_pids(session_id):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = max(cpu.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / tick)  # utime + stime


def _kill_session(session_id: int, sig: int) -> None:
    for pid in _session_pids(session_id):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


if __name__ == "__main__":
    kwargs = json.loads(sys.argv[1])
    result = node_loss(kwargs.pop("work"), **{k: tuple(v) if k == "seeds" else v for k, v in kwargs.items()})
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1))
