"""The cluster story on a Ray cluster simulated on this machine (tests/simcluster.py): one run of a
real two-trial grid sweep on a head (1 CPU + `t2i_driver`) and a 2-CPU worker node, during which a
second worker node joins, the first worker node is killed mid-trial (SIGKILL, no drain: a spot
reclaim), and the dataset's folder is gone for every Train worker. The tests below read that one
run from different sides. CPU only, in a subprocess with its own RAY_TMPDIR so that no other Ray
instance of the machine is touched: ~86 CPU-seconds, ~75 s on 2 idle cores (126-250 s on the
shared 2-core machine at load averages 12-40). 48 steps leave ~9 throttled reports (~4 s) between
the first registered checkpoint and the end of the trial, for the kill to land mid-training.

Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default)
and a worker holds at most one unread report, so a run reporting more often than that waits for
the controller; the run sets it to 0.5 s to keep the test short (benchmarks/node_loss.py keeps 2 s).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.simcluster import WORKER_CPUS, run_in_subprocess

STEPS, CHECKPOINT_EVERY, REPORT_EVERY = 48, 8, 4
pytestmark = pytest.mark.timeout(1000)  # whichever test runs first runs the sweep (up to 900 s)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return run_in_subprocess(tmp_path_factory.mktemp("simcluster"), timeout=900,
                             env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"},
                             steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, report_every=REPORT_EVERY)


def _after(sim, t):
    return [u for u in sim["usage"] if u["t"] > t]


def test_fit_and_placement_as_on_the_real_cluster(sim):
    assert sim["error"] is None, sim["error"]
    # The fit counted the nodes up when the sweep started: 3 CPUs on 2 nodes -> one 2-worker trial
    # at a time with 1 CPU per worker (the joined node does not raise the concurrency).
    fit_line = next(line for _, line in sim["log"] if line.startswith("[sweep] sim_cluster-"))
    assert "2 trials, 1 at a time, 2 worker(s)/trial with {'CPU': 1.0} each (cluster: 3 CPUs, 0 GPUs on 2 node(s))" \
        in fit_line, fit_line
    usage = sim["usage"]
    # trial drivers hold the head-only resource, one at a time while trials train. Tune starts the
    # next trial's driver as soon as the last one is TERMINATED and stops the old actor
    # asynchronously, so on a loaded machine a sample can see both drivers for a moment, but only
    # in the hand-over: after the first trial's last step and before the next trial's first one.
    drivers = [(u["t"], u["used"]["head"]["t2i_driver"]) for u in usage]
    assert max(d for _, d in drivers) >= 1 and max(d for _, d in drivers) <= 2
    first, other = sim["events"]["first_run"], next(r for r in sim["runs"] if r != sim["events"]["first_run"])
    handover = (max(t for t, _ in sim["steps"][first]), min(t for t, _ in sim["steps"][other]))
    assert all(handover[0] < t < handover[1] for t, d in drivers if d > 1), (handover, drivers)
    # no Train worker ever ran on the head: its CPU never held more than the drivers' slivers
    assert all(u["used"]["head"]["CPU"] <= 0.01 * u["used"]["head"]["t2i_driver"] + 1e-6 for u in usage)
    # the Train workers filled a worker node: first worker1, and after the kill the joined node
    assert any(u["used"].get("worker1", {}).get("CPU") == WORKER_CPUS for u in usage)
    assert any(u["used"].get("joined", {}).get("CPU") == WORKER_CPUS for u in _after(sim, sim["events"]["kill"]))
    # a trial whose workers no node can hold is refused at once with the numbers, not left waiting
    assert sim["refusal"] is not None and "hold only 1 such worker(s) (a worker cannot span nodes" in sim["refusal"]


def test_a_killed_node_costs_only_the_steps_since_the_last_checkpoint(sim):
    ev = sim["events"]
    first, other = ev["first_run"], next(r for r in sim["runs"] if r != ev["first_run"])
    # the kill hit the first trial mid-training, after its checkpoint was registered, before its end
    assert ev["kill_checkpointed_step"] >= CHECKPOINT_EVERY and not ev["kill_row_written_before"]
    assert ev["kill_last_step"] < STEPS and ev["join"] < ev["kill"]
    # its workers restarted from that checkpoint (both ranks say so), not from step 0 ...
    resumed_at = ev["kill_checkpointed_step"]
    assert sim["resumed"].get(first) == [resumed_at, resumed_at], sim["resumed"]
    steps = [step for _, step in sim["steps"][first]]
    after = [step for t, step in sim["steps"][first] if t > ev["kill"]]
    assert after and all(step > resumed_at for step in after), sim["steps"][first]  # nothing from before it again
    restart = len(steps) - 1 - steps[::-1].index(resumed_at + REPORT_EVERY)  # the resumed run's first report
    assert steps[restart:] == list(range(resumed_at + REPORT_EVERY, STEPS + 1, REPORT_EVERY)), steps
    # ... on the node that joined mid-sweep: worker1 is gone, the joined node is the only place left
    # for 2 workers of 1 CPU, and the next trial ran there too, untouched
    assert all("worker1" not in u["used"] for u in _after(sim, ev["kill"] + 30))
    assert [s for _, s in sim["steps"][other]] == list(range(REPORT_EVERY, STEPS + 1, REPORT_EVERY))
    assert min(t for t, _ in sim["steps"][other]) > ev["kill"] and other not in sim["resumed"]
    # the results table: exactly one finished row per trial, each at the last step
    rows = sim["rows"]
    assert sorted(r["run_name"] for r in rows) == sorted(sim["runs"])
    assert all(r["status"] == "ok" and r["step"] == STEPS and math.isfinite(r["fid"]) for r in rows), rows


def test_everything_a_node_needs_is_on_shared_storage(sim):
    storage, out = Path(sim["storage"]), Path(sim["output_dir"])
    assert storage.parent.name != out.name and not (out / "ray").exists()  # --storage-path was used
    for row in sim["rows"]:
        # Train checkpoints in the storage path (the bucket), which outlives every node ...
        ckpt = Path(row["checkpoint_path"])
        assert ckpt.parent == storage / "train" / row["run_name"] and (ckpt / "state.pt").is_file()
        # ... the results table, curves and the caches every Train worker loads in the shared folder
        assert (out / "results" / f"{row['run_name']}.parquet").is_file()
        assert Path(row["curves_path"]).parent == out / "curves"
    assert (storage / "tune").is_dir() and any((storage / "tune").glob("sim_cluster-*/tuner.pkl"))
    assert any((out / "cache" / "damsm").iterdir()) and len(list((out / "cache" / "data").iterdir())) == 2
    assert sim["node_local_checkpoints"] == []  # nothing the sweep needs stayed on a node's own disk
    # the data folder was gone before any trial started; every Train worker, including those of the
    # node that joined afterwards, read the cache the driver had built
    assert sim["events"]["data_hidden"] < min(s[0][0] for s in sim["steps"].values())
    assert not Path(sim["data_root"]).exists()
    assert set(sim["cache_reads"]) == {sim["data_root"]} and len(sim["cache_reads"]) >= 3 * 2  # 3 worker-group starts x 2


def test_the_cluster_runs_with_token_authentication(sim):
    # the whole sweep ran with RAY_AUTH_MODE=token and the token file of RAY_AUTH_TOKEN_PATH (the
    # variables cluster.yaml sets on every node); a client holding another token was refused
    assert sim["auth_mode"] == "token"
    intruder = sim["intruder"]
    assert intruder["returncode"] != 0 and "CONNECTED" not in intruder["output_tail"]
    assert "token" in intruder["output_tail"].lower(), intruder["output_tail"]
