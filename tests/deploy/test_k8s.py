"""The Kubernetes manifests (deploy/kustomization.yaml and deploy/k8s/): valid against the
Kubernetes API schemas (kubernetes-validate, offline), and the topology the operator guide
describes."""

from __future__ import annotations

import pytest

from serving.config import GatewaySettings
from tests.deploy.manifests import DEPLOY, k8s_by_kind, k8s_documents, kustomization, pod_spec

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (the `test` extra has it)"
)


def _validate(document: dict) -> None:
    """Raises kubernetes_validate.ValidationError (strict: unknown fields too)."""
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def generated_config_maps() -> list[dict]:
    """The ConfigMaps the kustomization generates, as kustomize builds them (without the hash)."""
    return [
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
            "data": {name.rsplit("/", 1)[-1]: (DEPLOY / name).read_text() for name in generator["files"]},
        }
        for generator in kustomization()["configMapGenerator"]
    ]


@pytest.mark.parametrize("document", k8s_documents() + generated_config_maps(),
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_against_the_kubernetes_schema(document: dict) -> None:
    _validate(document)


def test_the_schema_check_refuses_an_invalid_manifest() -> None:
    gateway = k8s_by_kind("StatefulSet")["gateway"]
    broken = {**gateway, "spec": {**gateway["spec"], "replica": 2}}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


def test_generated_config_maps_fit_in_a_config_map() -> None:
    for config_map in generated_config_maps():
        assert sum(len(v.encode()) for v in config_map["data"].values()) < 1_000_000


def _workloads() -> dict[str, dict]:
    return {**k8s_by_kind("StatefulSet"), **k8s_by_kind("Deployment"), **k8s_by_kind("Job")}


def test_everything_a_pod_refers_to_is_defined() -> None:
    config_maps = set(k8s_by_kind("ConfigMap")) | {g["name"] for g in kustomization()["configMapGenerator"]}
    claims = set(k8s_by_kind("PersistentVolumeClaim"))
    secrets = k8s_by_kind("Secret")
    for name, workload in _workloads().items():
        spec = pod_spec(workload)
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
            if "secret" in volume:
                secret = secrets[volume["secret"]["secretName"]]
                keys = {item["key"] for item in volume["secret"].get("items", [])}
                assert keys <= set(secret["stringData"]), (name, volume)
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, (name, mount)
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, (name, source)


def test_the_secret_template_holds_only_placeholders_the_gateway_refuses() -> None:
    secret = k8s_by_kind("Secret")["hhh-secrets"]["stringData"]
    assert "hhh-secrets" not in str(kustomization()["resources"])
    assert {secret["signing-key"], secret["admin-key"], secret["engine-api-key"]} == {"changeme"}
    with pytest.raises(ValueError, match="placeholder"):
        GatewaySettings(signing_key=secret["signing-key"])


def test_gateways_two_replicas_probed_with_graceful_termination() -> None:
    gateway = k8s_by_kind("StatefulSet")["gateway"]
    assert gateway["spec"]["replicas"] == 2
    spec = pod_spec(gateway)
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop_s
    env = {e["name"]: e for e in container["env"]}
    assert env["HHH_ADAPTERS_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    service = k8s_by_kind("Service")["gateway"]
    assert service["spec"]["selector"] == gateway["spec"]["template"]["metadata"]["labels"]
    assert "nvidia.com/gpu" not in str(container["resources"])


def test_engines_and_trainer_run_on_gpu_nodes() -> None:
    for workload in (k8s_by_kind("StatefulSet")["engine"], k8s_by_kind("Deployment")["trainer"]):
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_gateway_engine_urls_name_each_engine_pod() -> None:
    """Adapters are loaded per engine, so every engine must be addressable on its own."""
    import json

    engine = k8s_by_kind("StatefulSet")["engine"]
    assert k8s_by_kind("Service")["engine"]["spec"]["clusterIP"] == "None"
    (container,) = pod_spec(k8s_by_kind("StatefulSet")["gateway"])["containers"]
    urls = json.loads({e["name"]: e.get("value") for e in container["env"]}["HHH_GATEWAY_ENGINE_URLS"])
    assert urls == [f"http://engine-{i}.engine:8000" for i in range(engine["spec"]["replicas"])]


def test_adapter_store_is_read_write_many_and_shared_the_dataset_is_the_trainers() -> None:
    claims = k8s_by_kind("PersistentVolumeClaim")
    assert claims["adapters"]["spec"]["accessModes"] == ["ReadWriteMany"]

    def claim_mounts(workload: dict) -> dict[str, str]:
        spec = pod_spec(workload)
        by_volume = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                     for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = spec["containers"][0]["volumeMounts"]
        return {m["mountPath"]: by_volume.get(m["name"], m["name"]) for m in mounts}

    gateway = claim_mounts(k8s_by_kind("StatefulSet")["gateway"])
    trainer = claim_mounts(k8s_by_kind("Deployment")["trainer"])
    engine = claim_mounts(k8s_by_kind("StatefulSet")["engine"])
    assert {mounts["/srv/hhh/adapters"] for mounts in (gateway, trainer, engine)} == {"adapters"}
    assert trainer["/var/lib/hhh"] == "trainer-data" != gateway["/var/lib/hhh"]


def test_prometheus_and_grafana_get_the_monitoring_files() -> None:
    generated = {g["name"]: g["files"] for g in kustomization()["configMapGenerator"]}
    assert set(generated["prometheus-config"]) == {"prometheus-cluster.yml", "alerts.yml"}
    dashboards = {path.name for path in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert {name.rsplit("/", 1)[-1] for name in generated["grafana-dashboards"]} == dashboards
