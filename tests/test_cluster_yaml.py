"""cluster.yaml (AWS) and cluster-gcp.yaml, validated offline the way `ray up` starts: Ray's own
`prepare_config` (merges the provider's defaults.yaml, fills min/max workers; no network for aws
or gcp) then `validate_config` (ray-schema.json: unknown keys, integer resources, head type).
What `ray up` does after that (AWS instance-type lookup, IAM/VPC bootstrap) needs credentials.
These use Ray's private autoscaler API, so they are pinned to the Ray version installed here."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FILES = {"cluster.yaml": "aws", "cluster-gcp.yaml": "gcp"}


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", list(FILES))
def test_cluster_file_passes_rays_validation(name):
    config = _load(name)
    assert config["provider"]["type"] == FILES[name]
    prepared = _validate(config)
    # pinned to the Ray of this environment, in the image and in the install command
    assert prepared["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    setup = " ".join(prepared["setup_commands"])
    assert f"=={ray.__version__}" in setup and "pip install" in setup
    # this repository is synced to every node and installed there (editable)
    (mount_target, source), = config["file_mounts"].items()
    assert source == "." and f'-e "{mount_target}"' in setup
    assert (REPO / "pyproject.toml").is_file()
    # every node (head and workers) gets the install: prepare_config merged setup_commands in
    assert setup in " ".join(prepared["head_setup_commands"])
    assert setup in " ".join(prepared["worker_setup_commands"])
    # CPU head that alone holds the trial-driver resource; GPU worker types with min/max workers
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0 and head["resources"]["t2i_driver"] >= 1
    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    assert len(workers) >= 2 and all("min_workers" in v and v["max_workers"] >= 1 for v in workers.values())
    assert all("t2i_driver" not in v["resources"] for v in workers.values())
    for node in types.values():
        assert all(isinstance(v, int) for v in node["resources"].values())
    # the shared file system for --output-dir is mounted on the host and passed into the container
    assert any("/mnt/shared" in c for c in prepared["initialization_commands"])
    assert "-v /mnt/shared:/mnt/shared" in prepared["docker"]["run_options"]


def test_aws_node_types_are_the_documented_instances():
    types = _load("cluster.yaml")["available_node_types"]
    instance = {k: v["node_config"]["InstanceType"] for k, v in types.items()}
    assert {"g5.xlarge", "p4d.24xlarge"} <= set(instance.values())
    for k, v in types.items():
        if instance[k] != "m5.2xlarge":
            assert v["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


@pytest.mark.parametrize("mutate,error", [
    (lambda c: c.update(max_worker=3), jsonschema.ValidationError),  # top-level typo
    (lambda c: c["available_node_types"]["head_cpu"].update(resources={"t2i_driver": 0.5}),
     jsonschema.ValidationError),  # fractional resource (SPEC 7: integers only)
    (lambda c: c.update(head_node_type="head"), ValueError),  # head type not defined
    (lambda c: c.update(max_workers=0), ValueError),  # sum of min_workers above the global cap
])
def test_validation_catches_the_usual_mistakes(mutate, error):
    config = _load("cluster.yaml")
    mutate(config)
    with pytest.raises(error):
        _validate(config)


def test_trial_drivers_go_to_the_head_only_when_the_cluster_has_the_resource():
    from t2i_ray.sweep.run import DRIVER_CPUS, DRIVER_RESOURCE, driver_resources

    for name in FILES:
        config = _load(name)
        assert DRIVER_RESOURCE in config["available_node_types"][config["head_node_type"]]["resources"]
    head_and_gpus = {"CPU": 104.0, "GPU": 9.0, DRIVER_RESOURCE: 1000.0}
    assert driver_resources(head_and_gpus) == {"cpu": DRIVER_CPUS, DRIVER_RESOURCE: 1}
    assert driver_resources({"CPU": 2.0}) == {"cpu": DRIVER_CPUS}  # a laptop: no such resource, no hang
