"""deploy/compose/compose.yaml: valid against the Compose specification, and the topology the
operator guide describes (no container runtime works here, so it is checked, not run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import COMPOSE_FILE, compose

CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists() and shutil.which("check-jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (the `test` extra has it)")
    executable = str(CHECK_JSONSCHEMA) if CHECK_JSONSCHEMA.exists() else "check-jsonschema"
    return subprocess.run(
        [executable, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = _validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_an_invalid_compose_file(tmp_path: Path) -> None:
    document = compose()
    document["services"]["engine"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "one"
    document["services"]["proxy"]["restart_policy"] = "always"  # not a service key
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(document))
    assert _validate(broken).returncode != 0


def test_files_the_compose_file_mounts_exist() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source}"
        build = service.get("build")
        if build:
            context = COMPOSE_FILE.parent / build["context"]
            assert (context / build["dockerfile"]).is_file(), name


def test_kafka_runs_in_kraft_mode_with_one_broker() -> None:
    kafka = compose()["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 1
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # the topics job creates them


def test_two_gateways_with_their_own_replica_id_and_outbox_behind_one_port() -> None:
    services = compose()["services"]
    gateways = {name: s for name, s in services.items() if s.get("command") == ["hhh", "serve"]}
    assert len(gateways) == 2
    replica_ids = {s["environment"]["HHH_ADAPTERS_REPLICA_ID"] for s in gateways.values()}
    state_volumes = {
        v.split(":")[0] for s in gateways.values() for v in s["volumes"] if v.endswith(":/var/lib/hhh")
    }
    assert len(replica_ids) == 2 and len(state_volumes) == 2
    upstreams = re.findall(r"server (\S+):8000", (COMPOSE_FILE.parent / "nginx.conf").read_text())
    assert sorted(upstreams) == sorted(gateways)
    assert services["proxy"]["ports"] == ["8000:8000"]
    assert all("gateway-pods" in s["networks"]["default"]["aliases"] for s in gateways.values())


def _gpu_reserved(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in device.get("capabilities", []) for device in devices)


def test_engine_and_trainer_get_a_gpu_and_the_gateways_do_not() -> None:
    services = compose()["services"]
    assert _gpu_reserved(services["engine"]) and _gpu_reserved(services["trainer"])
    assert not any(_gpu_reserved(services[name]) for name in ("gateway-1", "gateway-2"))


def test_the_adapter_store_is_shared_and_the_trainer_has_its_own_dataset_volume() -> None:
    services = compose()["services"]

    def mounts(name: str) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}

    for name in ("engine", "gateway-1", "gateway-2", "trainer"):
        assert mounts(name)["/srv/hhh/adapters"] == "adapters", name
    trainer_home = mounts("trainer")["/var/lib/hhh"]
    assert trainer_home not in {mounts(g)["/var/lib/hhh"] for g in ("gateway-1", "gateway-2")}


def test_secrets_are_compose_secrets_from_files_outside_git() -> None:
    document = compose()
    assert all("file" in secret for secret in document["secrets"].values())
    assert all(secret["file"].startswith("./secrets/") for secret in document["secrets"].values())
    assert "secrets/" in (COMPOSE_FILE.parent / ".gitignore").read_text().split()
    for name, service in document["services"].items():
        for key, value in service.get("environment", {}).items():
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", key) or key.endswith("_FILE"), (name, key)
