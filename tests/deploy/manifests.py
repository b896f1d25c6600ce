"""The deployment files of deploy/, read the way the tests here need them.

Every hhh container of the compose file and of the Kubernetes manifests becomes one `Container`
(its command and the environment variable names it gets), so that the checks on settings and
commands run over both the same way. The hhh settings themselves are discovered from the code:
every pydantic-settings class in the serving, streams and trainer packages.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS_PACKAGES = ("serving", "streams", "trainer")
HHH_IMAGE = re.compile(r"^hhh(:|$)")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

THIRD_PARTY_VARIABLES = {
    # Variables the image sets for the libraries it runs, not for hhh (VLLM_* are checked
    # against vLLM's own list instead).
    "PATH": "the shell: the image's virtualenv first",
    "PYTHONUNBUFFERED": "Python: log lines reach the container log at once",
    "HF_HUB_OFFLINE": "huggingface_hub: models are local folders, never downloaded",
}


@dataclass
class Container:
    """One hhh container: where it is defined, its command line and its environment names."""

    where: str
    command: list[str]
    env: set[str] = field(default_factory=set)
    env_values: dict[str, str] = field(default_factory=dict)


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def kustomization() -> dict:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def k8s_documents() -> list[dict]:
    """Every resource the kustomization lists, plus the Secret template."""
    files = [DEPLOY / name for name in kustomization()["resources"]]
    files.append(DEPLOY / "k8s" / "secrets.example.yaml")
    return [doc for path in files for doc in load_yaml_documents(path)]


def k8s_by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _compose_secret_env(service: dict) -> set[str]:
    """Secrets mounted under a variable's name (the image's entrypoint exports them)."""
    targets = {
        secret["target"] if isinstance(secret, dict) else secret
        for secret in service.get("secrets", [])
    }
    return {target for target in targets if ENV_NAME.match(target)}


def compose_containers() -> list[Container]:
    containers = []
    for name, service in compose()["services"].items():
        if not HHH_IMAGE.match(service.get("image", "")):
            continue
        environment = service.get("environment", {})
        containers.append(Container(
            where=f"compose service {name}",
            command=list(service.get("command", [])),
            env=set(environment) | _compose_secret_env(service),
            env_values={key: str(value) for key, value in environment.items()},
        ))
    return containers


def k8s_containers() -> list[Container]:
    config_maps = k8s_by_kind("ConfigMap")
    containers = []
    for doc in k8s_documents():
        if doc["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        spec = pod_spec(doc)
        secret_env = {
            item["path"]
            for volume in spec.get("volumes", [])
            for item in volume.get("secret", {}).get("items", [])
            if ENV_NAME.match(item["path"])
        }
        for container in spec["containers"]:
            if not HHH_IMAGE.match(container["image"]):
                continue
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            for source in container.get("envFrom", []):
                env |= config_maps[source["configMapRef"]["name"]]["data"]
            containers.append(Container(
                where=f"{doc['kind']} {doc['metadata']['name']}/{container['name']}",
                command=list(container.get("command", [])) + list(container.get("args", [])),
                env=set(env) | secret_env,
                env_values={key: str(value) for key, value in env.items() if value is not None},
            ))
    return containers


def dockerfile_env() -> dict[str, str]:
    """The ENV instructions of the Dockerfile's final stage, the image that runs."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    final_stage = text.split("\nFROM ")[-1]
    values = {}
    for line in final_stage.splitlines():
        if line.startswith("ENV "):
            for assignment in line[4:].split():
                name, _, value = assignment.partition("=")
                values[name] = value
    return values


def _settings_modules() -> list[str]:
    """Modules of the settings packages whose source defines a class on BaseSettings."""
    modules = []
    for package in SETTINGS_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            bases = {
                ast.unparse(base)
                for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                for base in node.bases
            }
            if "BaseSettings" in bases:
                modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return modules


def settings_classes() -> list[type[BaseSettings]]:
    """Every pydantic-settings class of hhh, wherever it lives."""
    for module in _settings_modules():
        importlib.import_module(module)
    found, pending = [], list(BaseSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in SETTINGS_PACKAGES:
            found.append(cls)
    return found


def _direct_variables() -> set[str]:
    """HHH_* variables the code reads itself (``os.environ.get("HHH_HOME", ...)``)."""
    read = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["'](HHH_[A-Z0-9_]+)["']""")
    return {
        name
        for package in SETTINGS_PACKAGES + ("hhh",)
        for path in (ROOT / package).rglob("*.py")
        for name in read.findall(path.read_text())
    }


def hhh_variables() -> set[str]:
    """Every environment variable hhh reads: settings fields (prefix + name, or their alias)
    and the variables read directly."""
    names = set(_direct_variables())
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for name, info in cls.model_fields.items():
            alias = info.validation_alias or info.alias
            names.add(str(alias).upper() if isinstance(alias, str) else (prefix + name).upper())
    return names


def vllm_variables() -> set[str]:
    """The variables vLLM reads (the keys of ``vllm/envs.py``'s table), without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return set()
    source = Path(next(iter(spec.submodule_search_locations))) / "envs.py"
    return set(re.findall(r'^\s+"(VLLM_[A-Z0-9_]+)":\s*lambda', source.read_text(), re.M))
