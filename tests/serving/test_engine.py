"""The vLLM engine launcher: config rules, readiness, runtime LoRA loading, failing fast."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import psutil
import pytest
from peft import LoraConfig, get_peft_model
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from serving.engine import EngineConfig, EngineProcess, EngineStartError
from tests.fixtures.vllm_engine import TINY_SERVED_NAME


def test_config_names_the_offending_values(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="max_cpu_loras=2 must be at least max_loras=4"):
        EngineConfig(model_dir=tmp_path, log_path=tmp_path / "log", max_cpu_loras=2)
    with pytest.raises(ValidationError, match="max_lora_rank"):
        EngineConfig(model_dir=tmp_path, log_path=tmp_path / "log", max_lora_rank=12)


def test_command_and_environment_enable_runtime_lora(tmp_path: Path) -> None:
    engine = EngineProcess(EngineConfig(model_dir=tmp_path / "m", log_path=tmp_path / "log",
                                        port=8123, max_lora_rank=32))
    command = engine.command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-lora" in command
    assert command[command.index("--max-lora-rank") + 1] == "32"
    assert command[command.index("--served-model-name") + 1] == "m"
    assert engine.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert engine.url == "http://127.0.0.1:8123"


def test_a_cpu_set_binds_the_openmp_threads_to_it_unless_the_binding_is_set(tmp_path: Path) -> None:
    def bind(**options: object) -> str:
        return EngineProcess(EngineConfig(model_dir=tmp_path, log_path=tmp_path / "log", **options)
                             ).environment()["VLLM_CPU_OMP_THREADS_BIND"]

    assert bind() == "nobind"
    assert bind(cpus=frozenset({0, 1, 2, 5})) == "0-2,5"
    assert bind(cpus=frozenset({0}), cpu_omp_threads_bind="auto") == "auto"


@pytest.mark.vllm
def test_an_engine_given_a_cpu_set_runs_all_its_processes_on_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    config = EngineConfig(model_dir=tiny_model_dir, log_path=tmp_path / "engine.log", cpus=frozenset({cpu}))
    with EngineProcess(config) as engine:
        server = psutil.Process(engine.pid)
        processes = [server, *server.children(recursive=True)]
        assert len(processes) >= 2  # the API server and its engine core
        assert {tuple(p.cpu_affinity()) for p in processes} == {(cpu,)}
        assert f"core ids=[{cpu}]" in engine.log_tail(400)  # vLLM bound its OpenMP threads there


def test_a_folder_without_a_model_fails_before_launching(tmp_path: Path) -> None:
    engine = EngineProcess(EngineConfig(model_dir=tmp_path / "missing", log_path=tmp_path / "log"))
    with pytest.raises(EngineStartError, match="not a Hugging Face model folder"):
        engine.start()
    assert engine.pid is None and not (tmp_path / "log").exists()


@pytest.mark.vllm
def test_a_broken_model_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    engine = EngineProcess(EngineConfig(model_dir=broken, log_path=tmp_path / "engine.log"))
    engine.start()
    pid = engine.pid
    started = time.monotonic()
    exited = r"exited with code \d+ before becoming ready"
    with pytest.raises(EngineStartError, match=exited) as err:
        engine.wait_ready(timeout=240)
    assert time.monotonic() - started < 120
    assert "Traceback" in str(err.value) or "Error" in str(err.value)  # the log's tail
    assert not engine.running
    with pytest.raises(ProcessLookupError):  # no vLLM child process left behind
        os.killpg(pid, 0)


@pytest.mark.vllm
def test_the_session_engine_is_ready_and_lists_its_model(vllm_engine: EngineProcess) -> None:
    assert vllm_engine.running
    models = httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]
    assert {m["id"]: m["parent"] for m in models}[TINY_SERVED_NAME] is None  # the base model
    with pytest.raises(EngineStartError, match="already running"):
        vllm_engine.start()


@pytest.mark.vllm
def test_adapters_load_and_unload_at_runtime(
    vllm_engine: EngineProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "adapter")
    body = {"lora_name": "smoke-adapter", "lora_path": str(tmp_path / "adapter")}

    loaded = httpx.post(f"{vllm_engine.url}/v1/load_lora_adapter", json=body, timeout=60)
    assert loaded.status_code == 200, loaded.text
    models = httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]
    assert {"smoke-adapter": TINY_SERVED_NAME} == {
        m["id"]: m["parent"] for m in models if m["id"] == "smoke-adapter"}
    unloaded = httpx.post(f"{vllm_engine.url}/v1/unload_lora_adapter",
                          json={"lora_name": "smoke-adapter"}, timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    models = httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]
    assert "smoke-adapter" not in {m["id"] for m in models}
