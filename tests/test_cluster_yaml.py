"""cluster.yaml (AWS) and cluster-gcp.yaml, validated offline the way `ray up` starts: Ray's own
`prepare_config` (merges the provider's defaults.yaml, fills min/max workers; no network for aws
or gcp) then `validate_config` (ray-schema.json: unknown keys, integer resources, head type).
What `ray up` does after that (AWS instance-type lookup, IAM/VPC bootstrap) needs credentials.
These use Ray's private autoscaler API, so they are pinned to the Ray version installed here."""
from __future__ import annotations

import copy
import ipaddress
import json
import re
import subprocess
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
    mount_target = next(target for target, source in config["file_mounts"].items() if source == ".")
    assert f'-e "{mount_target}"' in setup
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


# ----------------------------------------------------------------------------------- security


def _strings(node):
    """Every string value of a parsed YAML tree (commands, options), comments excluded."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def public_dashboard_hosts(config: dict) -> list[str]:
    """The --dashboard-host values of a cluster file that are not a loopback address."""
    hosts = [m for text in _strings(config) for m in re.findall(r"--dashboard-host[= ]+['\"]?([^\s'\";]+)", text)]
    return [h for h in hosts if h != "localhost" and not ipaddress.ip_address(h).is_loopback]


@pytest.mark.parametrize("name", list(FILES))
def test_dashboard_listens_on_the_heads_localhost_only(name):
    config = _load(name)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # explicit, not left to Ray's default
    assert public_dashboard_hosts(config) == []
    # the check catches what this file used to do (the dashboard, and job submission, on every interface)
    exposed = yaml.safe_load((REPO / name).read_text().replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"))
    assert public_dashboard_hosts(exposed) == ["0.0.0.0"]
    assert public_dashboard_hosts({"cmd": ["ray start --head --dashboard-host 10.0.0.5"]}) == ["10.0.0.5"]
    # and the documented way in is `ray dashboard <file>` (an SSH tunnel to the head's localhost)
    assert f"ray dashboard {name}" in (REPO / name).read_text() and f"ray dashboard {name}" in \
        (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", list(FILES))
def test_token_authentication_is_on_on_every_node(name):
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR
    from ray._raylet import AuthenticationMode

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE" and AuthenticationMode.TOKEN  # what this Ray reads
    config = _load(name)
    options = config["docker"]["run_options"]
    assert "-e RAY_AUTH_MODE=token" in options
    token_path = next(o.split("=", 1)[1] for o in options if o.startswith("-e RAY_AUTH_TOKEN_PATH="))
    # the token's folder is synced to every node from outside the repository (never committed)
    remote_dir, local_dir = next((r, l) for r, l in config["file_mounts"].items() if token_path.startswith(r + "/"))
    assert local_dir.startswith("~/") and not (REPO / Path(local_dir).name).exists()
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command, command
    assert not any("RAY_AUTH_MODE=disabled" in text for text in _strings(config))


def test_aws_inbound_rules_open_only_ssh_and_iam_reaches_one_bucket():
    config = _load("cluster.yaml")
    # Ray's security group gets its two defaults (SSH, node to node) and nothing else
    assert config["provider"]["security_group"] == {"GroupName": "t2i-ray-sg", "IpPermissions": []}
    assert not any("SecurityGroupIds" in t["node_config"] for t in config["available_node_types"].values())
    setup = (REPO / "cluster" / "aws-setup.sh").read_text()
    rules = re.findall(r"--ip-permissions \"([^\"]+)\"", setup)
    from_outside = [r for r in rules if "IpRanges" in r]
    assert from_outside == ["IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$MY_IP}]"]
    assert all("UserIdGroupPairs=[{GroupId=$sg}]" in r for r in rules if r not in from_outside)
    # instance profiles: the head's may launch instances and pass only the worker role; both reach one bucket
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["node_config"]["IamInstanceProfile"] == {"Name": "t2i-ray-head"}
    assert all(t["node_config"]["IamInstanceProfile"] == {"Name": "t2i-ray-worker"}
               for k, t in types.items() if k != config["head_node_type"])
    for who in ("head", "worker"):
        policy = json.loads((REPO / "cluster" / f"aws-{who}-policy.json").read_text())
        for statement in policy["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert statement["Effect"] == "Allow" and not any(a.endswith("*") for a in actions)
            services = {a.split(":")[0] for a in actions}
            if services == {"s3"}:
                assert statement["Resource"] in ("arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*")
            elif services == {"iam"}:
                assert who == "head" and actions == ["iam:PassRole"] and statement["Resource"].endswith(":role/t2i-ray-worker")
            else:
                assert who == "head" and services == {"ec2"}, statement
    worker = json.loads((REPO / "cluster" / "aws-worker-policy.json").read_text())
    assert {a.split(":")[0] for s in worker["Statement"] for a in s["Action"]} == {"s3"}


def test_gcp_firewall_opens_only_ssh_and_service_accounts_reach_one_bucket():
    config = _load("cluster-gcp.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]
    assert head["serviceAccounts"][0]["email"].startswith("t2i-ray-head@")
    for key, node in types.items():
        # the dedicated network (firewall of cluster/gcp-setup.sh), not the project's default one
        (nic,) = node["node_config"]["networkInterfaces"]
        assert nic["subnetwork"].endswith("/subnetworks/t2i-ray")
        if key != config["head_node_type"]:
            assert node["node_config"]["serviceAccounts"][0]["email"].startswith("t2i-ray-worker@")
    setup = (REPO / "cluster" / "gcp-setup.sh").read_text().replace("\\\n", " ")
    rules = re.findall(r"gcloud compute firewall-rules create (\S+)(.*)", setup)
    assert {name for name, _ in rules} == {"t2i-ray-ssh", "t2i-ray-internal"}
    for name, args in rules:
        allow = re.search(r"--allow (\S+)", args).group(1)
        sources = re.search(r"--source-ranges (\S+)", args).group(1)
        assert "INGRESS" in args
        assert (allow, sources) == (("tcp:22", '"$MY_IP"') if name == "t2i-ray-ssh" else ("tcp,udp,icmp", '"$SUBNET_RANGE"'))
    # storage roles are granted on the bucket, never on the project
    project_roles = re.findall(r"gcloud projects add-iam-policy-binding .*?--role (\S+)", setup)
    assert project_roles == ["roles/compute.instanceAdmin.v1"]
    assert re.findall(r"gcloud storage buckets add-iam-policy-binding \"gs://\$BUCKET\".*?--role (\S+)", setup) == \
        ["roles/storage.objectAdmin"]


@pytest.mark.parametrize("script,first_setting", [("aws-setup.sh", "BUCKET"), ("gcp-setup.sh", "PROJECT")])
def test_setup_scripts_parse_and_refuse_to_run_without_their_settings(script, first_setting, tmp_path):
    import shutil

    bash, path = shutil.which("bash"), REPO / "cluster" / script
    assert subprocess.run([bash, "-n", str(path)]).returncode == 0
    # the settings are checked before any cloud CLI is called (with an empty PATH, any call would fail)
    done = subprocess.run([bash, str(path)], env={"PATH": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode != 0 and f"{first_setting}: set {first_setting} to" in done.stderr, done.stderr
