"""Every variable the deployment files set is one hhh (or vLLM) reads, every command they run
exists, and what they tell Kafka and the engines agrees with what they tell hhh."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from serving.adapters.config import AdapterSettings
from serving.engine import EngineConfig, EngineProcess
from streams.codec import COMPACTED_TOPICS, TOPIC_SCHEMAS
from streams.config import KafkaSettings
from tests.deploy.manifests import (
    THIRD_PARTY_VARIABLES,
    Container,
    compose,
    compose_containers,
    dockerfile_env,
    hhh_variables,
    k8s_by_kind,
    k8s_containers,
    kustomization,
    settings_classes,
    vllm_variables,
)

ALL_CONTAINERS = compose_containers() + k8s_containers()
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}
ENGINE_COMMAND = ["python", "-m", "vllm.entrypoints.openai.api_server"]


def _unknown(names: set[str]) -> set[str]:
    hhh, vllm = hhh_variables(), vllm_variables()
    return {
        name for name in names
        if name not in hhh and name not in vllm and name not in THIRD_PARTY_VARIABLES
    }


def test_settings_are_discovered_from_the_code() -> None:
    names = {cls.__name__ for cls in settings_classes()}
    assert {"GatewaySettings", "AdapterSettings", "KafkaSettings", "TrainerSettings"} <= names
    variables = hhh_variables()
    assert {"HHH_HOME", "HHH_ADAPTERS_REPLICA_ID", "HHH_GATEWAY_ENGINE_URLS",
            "HHH_KAFKA_REPLICATION_FACTOR", "HHH_TRAINER_BASE_MODEL"} <= variables
    assert "HHH_GATEWAY_NO_SUCH_THING" in _unknown({"HHH_GATEWAY_NO_SUCH_THING"})
    assert "VLLM_API_KEY" in vllm_variables()


def test_both_deployments_have_gateway_engine_and_trainer_containers() -> None:
    commands = {(c.where.split()[0], tuple(c.command[:3])) for c in ALL_CONTAINERS}
    for platform in ("compose", "StatefulSet"):
        assert any(p == platform and cmd[:2] == ("hhh", "serve") for p, cmd in commands)
    assert ("StatefulSet", tuple(ENGINE_COMMAND)) in commands
    assert ("Deployment", ("hhh", "train")) in commands


@pytest.mark.parametrize("container", ALL_CONTAINERS, ids=lambda c: c.where)
def test_every_environment_variable_is_a_real_setting(container: Container) -> None:
    assert _unknown(container.env) == set()


def test_the_image_sets_only_real_settings() -> None:
    assert _unknown(set(dockerfile_env())) == set()


def test_set_values_are_valid_for_the_settings() -> None:
    """Each container's values, given to the settings classes they belong to, are accepted."""
    for container in ALL_CONTAINERS:
        values = {k: v for k, v in container.env_values.items() if k.startswith("HHH_")}
        for cls in settings_classes():
            prefix = cls.model_config["env_prefix"]
            if any(key.startswith(prefix) for key in values):
                with pytest.MonkeyPatch.context() as patch:
                    for key, value in values.items():
                        patch.setenv(key, value)
                    cls()  # raises a ValidationError naming the bad value


def _hhh_invocations(container: Container) -> list[list[str]]:
    command = container.command
    if command[:1] == ["hhh"]:
        return [command[1:]]
    if command[:1] and command[0] in SHELLS:
        script = command[-1].replace("$$", "$")  # compose escapes $ as $$
        return [shlex.split(args) for args in re.findall(r"\bhhh ([a-z][a-z -]*)", script)]
    return []


@pytest.mark.parametrize("container", ALL_CONTAINERS, ids=lambda c: c.where)
def test_every_command_exists(container: Container) -> None:
    from hhh.cli import build_parser

    if container.command[:2] == ["python", "-m"]:
        module = container.command[2]
        assert _module_file(module).is_file(), module
        return
    invocations = _hhh_invocations(container)
    assert invocations, f"{container.where}: no hhh command in {container.command}"
    for arguments in invocations:
        build_parser().parse_args(arguments)  # SystemExit(2) with argparse's message if not


def _module_file(module: str) -> Path:
    """Where a module's source is, found without importing its package (vLLM is slow to import)."""
    import importlib.util

    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    assert spec is not None and spec.submodule_search_locations, f"{top} is not installed"
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*rest).with_suffix(".py")


def _engine_flags(container: Container) -> dict[str, str | None]:
    flags = {}
    for argument in container.command[3:]:
        name, _, value = argument.partition("=")
        flags[name] = value or None
    return flags


ENGINES = [c for c in ALL_CONTAINERS if c.command[:3] == ENGINE_COMMAND]


@pytest.mark.parametrize("engine", ENGINES, ids=lambda c: c.where)
def test_engines_use_only_flags_the_tested_engine_launcher_uses(engine: Container, tmp_path: Path) -> None:
    """The flags of `EngineProcess`, which the vllm-marked tests start for real; LoRA on, and
    its rank limit the one the gateways check adapters against."""
    launcher = EngineProcess(EngineConfig(model_dir=tmp_path, log_path=tmp_path / "log", max_cpu_loras=16))
    known = {argument for argument in launcher.command() if argument.startswith("--")}
    flags = _engine_flags(engine)
    assert set(flags) - known == set()
    assert "--enable-lora" in flags
    gateway_ranks = {
        c.env_values.get("HHH_ADAPTERS_MAX_LORA_RANK", str(AdapterSettings().max_lora_rank))
        for c in ALL_CONTAINERS
        if c.command[:2] == ["hhh", "serve"] and c.where.split()[0] == engine.where.split()[0]
    }
    assert gateway_ranks == {flags["--max-lora-rank"]}
    assert "VLLM_API_KEY" in engine.env, "the engine needs its API key"


def _topic_commands(script: str) -> dict[str, dict[str, list[str]]]:
    """`--topic X --partitions N ...` lines of a topic-creation script, by topic."""
    topics = {}
    for line in script.splitlines():
        words = shlex.split(line.replace("$$", "$"))
        if "--topic" not in words:
            continue
        options: dict[str, list[str]] = {}
        for flag, value in zip(words, words[1:]):
            if flag.startswith("--"):
                options.setdefault(flag, []).append(value)
        topics[options["--topic"][0]] = options
    return topics


def _topic_scripts() -> list[tuple[str, str, list[Container]]]:
    """(where, script, the hhh containers of that deployment)."""
    job = k8s_by_kind("Job")["kafka-topics"]
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    return [
        ("compose", compose()["services"]["kafka-topics"]["command"][0], compose_containers()),
        ("k8s", job_container["command"][-1], k8s_containers()),
    ]


@pytest.mark.parametrize("where, script, containers", _topic_scripts(), ids=["compose", "k8s"])
def test_topics_are_created_as_the_settings_ask(
    where: str, script: str, containers: list[Container]
) -> None:
    users = [c for c in containers if c.env_values.get("HHH_EVENTS_BACKEND") == "kafka"]
    assert users, f"{where}: no hhh container uses Kafka"
    for container in users:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in container.env_values.items():
                patch.setenv(key, value)
            kafka = KafkaSettings()
        topics = _topic_commands(script)
        assert set(topics) == {kafka.topic_prefix + topic for topic in TOPIC_SCHEMAS}, where
        for topic, options in topics.items():
            assert options["--partitions"] == [str(kafka.partitions)], topic
            assert options["--replication-factor"] == [str(kafka.replication_factor)], topic
            compacted = topic.removeprefix(kafka.topic_prefix) in COMPACTED_TOPICS
            assert ("cleanup.policy=compact" in options.get("--config", [])) == compacted, topic


def test_kubernetes_kafka_has_three_brokers_and_topics_survive_one_down() -> None:
    kafka = k8s_by_kind("StatefulSet")["kafka"]
    assert kafka["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in kafka["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert k8s_by_kind("ConfigMap")["hhh-event-log"]["data"]["HHH_KAFKA_REPLICATION_FACTOR"] == "3"


def _images() -> dict[str, str]:
    """Every image named, by where."""
    images = {f"compose {name}": s["image"] for name, s in compose()["services"].items()}
    for kind in ("StatefulSet", "Deployment", "Job"):
        for name, workload in k8s_by_kind(kind).items():
            for container in workload["spec"]["template"]["spec"]["containers"]:
                images[f"{kind} {name}/{container['name']}"] = container["image"]
    return images


def test_every_image_is_hhh_built_here_or_a_pinned_release() -> None:
    hhh_services = [s for s in compose()["services"].values() if s["image"].startswith("hhh:")]
    assert hhh_services and all(s["build"]["dockerfile"] == "deploy/Dockerfile" for s in hhh_services)
    assert [image["name"] for image in kustomization()["images"]] == ["hhh"]
    for where, image in _images().items():
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and "$" not in name, f"{where}: {image}"
