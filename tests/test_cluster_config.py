"""cluster.yaml: valid for Ray's cluster launcher, and set up as the README's Azure section describes."""

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
AZURE_DEFAULTS_YAML = Path(ray.autoscaler.__file__).parent / "azure" / "defaults.yaml"
ENV_FILE = "~/.rayetl.env"
SOURCE_ENV_FILE = re.compile(r"(?:^|[;&|\s])(?:\.|source) ~/\.rayetl\.env\b")


@pytest.fixture(scope="module")
def raw_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def config(raw_config: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` sees it: merged with Ray's Azure defaults, setup commands merged."""
    return prepare_config(copy.deepcopy(raw_config))


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def _ray_start_command(commands: list[str]) -> str:
    starts = [command for command in commands if "ray start" in command]
    assert len(starts) == 1, f"expected one `ray start` command, found {starts}"
    return starts[0]


def test_cluster_yaml_passes_ray_validation(config: dict[str, Any]) -> None:
    validate_config(config)


def test_cluster_runs_on_azure_with_placement_settings(raw_config: dict[str, Any]) -> None:
    provider = raw_config["provider"]
    assert raw_config["cluster_name"] == "rayetl"
    assert provider["type"] == "azure"
    # Ray's Azure bootstrap asserts on these two; checking here fails before any cloud call.
    assert provider["location"]
    assert provider["resource_group"]


def test_azure_ssh_keys_are_given_as_a_pair(raw_config: dict[str, Any]) -> None:
    auth = raw_config["auth"]
    # The Azure provider rejects a config naming only one of the two keys.
    assert ("ssh_private_key" in auth) == ("ssh_public_key" in auth)
    assert auth["ssh_user"]


def test_cluster_has_an_autoscaling_cpu_worker_type(config: dict[str, Any]) -> None:
    workers = _worker_types(config)
    assert any(
        node_type["min_workers"] == 0
        and node_type["max_workers"] > 0
        and node_type["resources"].get("CPU", 0) > 0
        for node_type in workers.values()
    ), f"no worker type scales from zero with CPUs: {workers}"
    assert config["max_workers"] >= max(node_type["max_workers"] for node_type in workers.values())


def test_head_offers_fewer_cpus_than_a_worker(config: dict[str, Any]) -> None:
    head_cpus = config["available_node_types"][config["head_node_type"]]["resources"]["CPU"]
    worker_cpus = max(t["resources"].get("CPU", 0) for t in _worker_types(config).values())
    assert head_cpus <= 1 < worker_cpus


def test_setup_installs_rayetl_from_the_mounted_wheel(config: dict[str, Any]) -> None:
    assert config["file_mounts"]["~/rayetl-dist"] == "./dist"
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        installs = [c for c in commands if "pip install" in c and "~/rayetl-dist/rayetl-" in c]
        assert installs, f"no setup command installs the rayetl wheel: {commands}"


def test_setup_pins_the_ray_version_of_the_launching_machine(config: dict[str, Any]) -> None:
    pins = re.findall(r'"ray\[[^\]]*\]==([^"]+)"', " ".join(config["setup_commands"]))
    assert pins == [ray.__version__], (
        f"cluster.yaml pins Ray {pins}, this machine runs {ray.__version__}: "
        "update the pin in setup_commands (and the Azure SDK pins from Ray's defaults.yaml)"
    )


def test_head_setup_keeps_the_azure_sdk_from_ray_defaults(config: dict[str, Any]) -> None:
    defaults = yaml.safe_load(AZURE_DEFAULTS_YAML.read_text())
    wanted = {word for command in defaults["head_setup_commands"] for word in command.split() if "==" in word}
    ours = set(" ".join(config["head_setup_commands"]).split())
    assert wanted <= ours, f"head_setup_commands lacks Ray's Azure SDK pins: {wanted - ours}"


def test_rayetl_env_file_is_mounted_and_sourced_before_ray_start(config: dict[str, Any]) -> None:
    assert config["file_mounts"][ENV_FILE] == ENV_FILE
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = _ray_start_command(commands)
        sourced = SOURCE_ENV_FILE.search(start)
        assert sourced, f"`ray start` runs without sourcing {ENV_FILE}: {start}"
        assert "set -a" in start[: sourced.start()], "the env file must be sourced with `set -a`"
        assert sourced.start() < start.index("ray start")


def test_rayetl_secrets_stay_out_of_the_config(raw_config: dict[str, Any]) -> None:
    # The config is copied in clear to the head (~/ray_bootstrap_config.yaml); only the env file
    # may carry these.
    text = json.dumps(raw_config)
    for name in ("RAYETL_DATABASE_URL", "RAYETL_STORAGE_OPTIONS", "RAYETL_API_TOKEN"):
        assert name not in text


def test_every_node_starts_ray_with_token_auth(config: dict[str, Any]) -> None:
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in _ray_start_command(commands)
    assert "RAY_AUTH_MODE=disabled" not in json.dumps(config)


def test_head_start_deploys_the_serve_app(config: dict[str, Any]) -> None:
    commands = config["head_start_ray_commands"]
    deploys = [c for c in commands if "serve deploy rayetl.serve_app:build_app" in c]
    assert deploys, f"the head never deploys the API: {commands}"
    assert commands.index(deploys[0]) > commands.index(_ray_start_command(commands))
