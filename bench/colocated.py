"""Serving and training on one machine: PPO iteration time and chat latency, each with and
without the other running, with `hhh up`'s CPU plan and without it (every process unpinned).

    .venv/bin/python -m bench.colocated [--iterations 3] [--chat-clients 4] [--chat-seconds 60]
                                        [--modes planned unpinned] [--yield-above N]

Per mode, one vLLM engine (the demo model, `build_demo_model("demo")`, fp32, launched as
`hhh up` launches it: `serving.engine.EngineProcess`, given the engine's CPU set) and one
gateway in front of it (`bench.serving.serve_gateway`, its own process, unpinned as in
`hhh up`), then three phases:

  chat alone   ``--chat-clients`` closed-loop chat clients (non-streamed, temperature 0,
               ``max_tokens`` 32, `bench.serving`'s prompts) for ``--chat-seconds``; the
               trainer is not running. Chat p50/p99.
  PPO alone    a fresh trainer process (pinned and threaded by `trainer.devices.pin_to_cpus`,
               as the daemon is) runs ``--warmup`` + ``--iterations`` PPO iterations, the
               same work as `bench.trainer` (64 prompts, 32 new tokens, 1 epoch, 2 mini-batches,
               micro-batches of 8, LoRA r 8 on every linear layer, a sequence-classifier reward
               on the same base); the engine is up and idle. Median seconds per iteration.
  together     the same PPO run while the chat clients keep chatting; chat latencies count
               only for requests that started while a timed PPO iteration ran.

Modes: ``planned`` — the engine on its share of `common.cpus.default_plan` (2 CPUs: cpu 0,
OpenMP threads bound there), the trainer on its share (cpu 1, one torch thread per CPU);
``unpinned`` — today's behaviour before the plan: nothing pinned, vLLM's OpenMP threads unbound,
torch on its default thread count. ``--yield-above N`` adds ``planned+yield``: the planned mode
with the trainer pausing between iterations while more than N chats are in flight
(`trainer.chat_yield`, at most ``--yield-max-pause-s``); its iteration time includes the pauses.

Targets (2 cores): PPO iteration under chat ≤ 3× alone; chat p99 during PPO ≤ 2× chat p99 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.serving import (
    GATEWAY_MODEL,
    SERVED_BASE,
    Run,
    load_line,
    one_chat,
    pct,
    serve_gateway,
    stop_gateway,
    wait_until_ready,
)
from bench.trainer import ClassifierReward, bench_prompts
from common.cpus import CpuPlan, available_cpus, default_plan, format_cpu_list
from common.processes import free_port
from serving.engine import EngineConfig, EngineProcess

PPO = {"prompts": 64, "batch_size": 64, "num_minibatches": 2, "ppo_epochs": 1, "max_new_tokens": 32,
       "max_prompt_tokens": 32, "micro_batch_size": 8}
"""The PPO work of one iteration, as in `bench.trainer`."""


# ----- the trainer side (runs in a fresh process: python -m bench.colocated worker SPEC) ------


def worker(spec_path: str) -> None:
    """PPO iterations on the spec's CPUs; prints one JSON line: per iteration start, end, pause."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.chat_yield import ChatYield
    from trainer.config import PPOSettings, TrainerSettings
    from trainer.devices import pin_to_cpus
    from trainer.rl.models import load_policy_stack, lora_config
    from trainer.rl.ppo import PPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    pin_to_cpus(TrainerSettings(cpus=spec["cpus"]))
    torch.manual_seed(0)
    model_dir = Path(spec["model"])
    settings = PPOSettings(
        rollout_batch_size=spec["batch_size"], num_minibatches=spec["num_minibatches"],
        ppo_epochs=spec["ppo_epochs"], max_new_tokens=spec["max_new_tokens"],
        max_prompt_tokens=spec["max_prompt_tokens"], micro_batch_size=spec["micro_batch_size"],
        learning_rate=1e-4, kl_target=None, target_approx_kl=None,
    )
    stack = load_policy_stack(model_dir, None, lora_config(settings.lora_rank, settings.lora_alpha,
                                                           settings.lora_target_modules), share_base=True)
    reward = ClassifierReward(AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=torch.float32), AutoTokenizer.from_pretrained(model_dir))
    trainer = PPOTrainer(stack, reward, settings)
    chat_yield = (ChatYield(spec["gateway_url"], spec["yield_above"], spec["yield_max_pause_s"])
                  if spec["yield_above"] is not None else None)
    prompts = bench_prompts(spec["prompts"])
    iterations = []
    for number in range(spec["warmup"] + spec["iterations"]):
        started = time.time()
        paused = chat_yield.pause_while_busy(f"PPO iteration {number + 1}") if chat_yield else 0.0
        trainer.train(prompts, 1)
        if number >= spec["warmup"]:
            iterations.append({"start": started, "end": time.time(), "paused": paused})
    print(json.dumps({"iterations": iterations, "threads": torch.get_num_threads(),
                      "affinity": format_cpu_list(os.sched_getaffinity(0))}))


async def run_ppo(spec: dict) -> dict:
    """Run `worker` in a fresh process (so chat load keeps running here) and return its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.colocated", "worker", f.name, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        if process.returncode:
            raise RuntimeError(f"the PPO worker failed:\n{err.decode()[-4000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])
    finally:
        os.unlink(f.name)


# ----- chat load ------------------------------------------------------------------------------


@dataclass
class ChatSamples:
    """Chat requests of a steady load: (start time, latency) of each answered one."""

    answered: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0

    def latencies(self, windows: list[tuple[float, float]] | None = None) -> list[float]:
        """Latencies of the requests that started within one of ``windows`` (None: all)."""
        return [latency for started, latency in self.answered
                if windows is None or any(a <= started < b for a, b in windows)]


async def steady_chat(client: httpx.AsyncClient, clients: int, stop: asyncio.Event) -> ChatSamples:
    """``clients`` closed-loop chat clients until ``stop`` is set."""
    samples = ChatSamples()

    async def chat_client(first: int) -> None:
        index = first
        while not stop.is_set():
            run, started = Run(), time.time()
            try:
                await one_chat(client, GATEWAY_MODEL, index, False, run)
            except httpx.HTTPError:
                run.errors += 1
            samples.errors += run.errors
            samples.answered += [(started, latency) for latency in run.latencies]
            index += clients

    await asyncio.gather(*(chat_client(k) for k in range(clients)))
    return samples


async def chat_for(client: httpx.AsyncClient, clients: int, seconds: float) -> ChatSamples:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await steady_chat(client, clients, stop)


# ----- one mode -------------------------------------------------------------------------------


@dataclass
class ModeResult:
    name: str
    plan: CpuPlan
    chat_alone: ChatSamples
    ppo_alone: dict
    ppo_together: dict
    chat_together: ChatSamples

    @staticmethod
    def seconds_per_iteration(ppo: dict) -> float:
        return statistics.median(i["end"] - i["start"] for i in ppo["iterations"])

    def chat_during_ppo(self) -> list[float]:
        return self.chat_together.latencies([(i["start"], i["end"]) for i in self.ppo_together["iterations"]])


async def measure_mode(name: str, plan: CpuPlan, yield_above: int | None, args: argparse.Namespace,
                       folder: Path) -> ModeResult:
    """Engine and gateway for this mode, then chat alone, PPO alone, and both together."""
    engine = EngineProcess(EngineConfig(model_dir=args.model_path, served_model_name=SERVED_BASE,
                                        log_path=folder / f"vllm-{name}.log", cpus=plan.engine))
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    gateway = None
    try:
        engine.start()
        print(f"{name}: {plan.describe()}; starting vLLM (log {engine.config.log_path}) ...", flush=True)
        engine.wait_ready()
        gateway = multiprocessing.get_context("spawn").Process(
            target=serve_gateway, name="bench-gateway",
            args=(engine.url, str(folder / name), gateway_port, secrets.token_hex(32), None))
        (folder / name).mkdir()
        gateway.start()
        wait_until_ready(f"{gateway_url}/readyz", 60, gateway.is_alive)
        spec = {**PPO, "model": str(args.model_path), "iterations": args.iterations, "warmup": args.warmup,
                "cpus": "all" if plan.trainer is None else format_cpu_list(plan.trainer),
                "gateway_url": gateway_url, "yield_above": yield_above,
                "yield_max_pause_s": args.yield_max_pause_s,
                **{key: getattr(args, key) for key in ("prompts", "batch_size", "max_new_tokens")
                   if getattr(args, key) is not None}}
        limits = httpx.Limits(max_connections=args.chat_clients, max_keepalive_connections=args.chat_clients)
        async with httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=600) as client:
            await chat_for(client, args.chat_clients, min(10.0, args.chat_seconds))  # warm-up
            print(f"{name}: chat alone, {args.chat_clients} clients, {args.chat_seconds:.0f} s ...", flush=True)
            chat_alone = await chat_for(client, args.chat_clients, args.chat_seconds)
            print(f"{name}: PPO alone, {args.warmup} + {args.iterations} iterations ...", flush=True)
            ppo_alone = await run_ppo(spec)
            print(f"{name}: PPO under chat ...", flush=True)
            stop = asyncio.Event()
            chatting = asyncio.create_task(steady_chat(client, args.chat_clients, stop))
            ppo_together = await run_ppo(spec)
            stop.set()
            chat_together = await chatting
        return ModeResult(name, plan, chat_alone, ppo_alone, ppo_together, chat_together)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        engine.stop()


# ----- report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "**MISS**"


def report(results: list[ModeResult], args: argparse.Namespace) -> None:
    print(f"\nmodel {args.model_path}, {len(available_cpus())} CPUs ({format_cpu_list(available_cpus())}), "
          f"{args.chat_clients} chat clients, median of {args.iterations} PPO iterations "
          f"({args.warmup} warm-up not counted); {load_line()}\n")
    print("| mode | engine CPUs | trainer CPUs (torch threads) | PPO s/iter alone | PPO s/iter under chat "
          "| ratio (≤ 3×) | chat p50 ms idle | chat p99 ms idle | chat p50 ms during PPO "
          "| chat p99 ms during PPO | p99 ratio (≤ 2×) | chats during PPO | errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        alone, together = ModeResult.seconds_per_iteration(r.ppo_alone), ModeResult.seconds_per_iteration(r.ppo_together)
        idle, busy = r.chat_alone.latencies(), r.chat_during_ppo()
        p99_idle, p99_busy = pct(idle, 99), pct(busy, 99)
        engine_cpus = "all" if r.plan.engine is None else format_cpu_list(r.plan.engine)
        paused = sum(i["paused"] for i in r.ppo_together["iterations"])
        print(f"| {r.name} | {engine_cpus} | {r.ppo_together['affinity']} ({r.ppo_together['threads']}) "
              f"| {alone:.2f} | {together:.2f}{f' (paused {paused:.0f} s)' if paused else ''} "
              f"| {together / alone:.2f}× {verdict(together <= 3 * alone)} "
              f"| {pct(idle, 50):.0f} | {p99_idle:.0f} | {pct(busy, 50):.0f} | {p99_busy:.0f} "
              f"| {p99_busy / p99_idle:.2f}× {verdict(p99_busy <= 2 * p99_idle)} | {len(busy)} "
              f"| {r.chat_alone.errors + r.chat_together.errors} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model folder (default: the demo model, built if missing)")
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per run")
    parser.add_argument("--warmup", type=int, default=1, help="PPO iterations run first, not timed")
    parser.add_argument("--chat-clients", type=int, default=4, help="closed-loop chat clients")
    parser.add_argument("--chat-seconds", type=float, default=60, help="length of the chat-alone phase")
    parser.add_argument("--modes", nargs="+", choices=("planned", "unpinned"), default=["planned", "unpinned"])
    parser.add_argument("--yield-above", type=int, help="also run planned+yield with this threshold")
    parser.add_argument("--yield-max-pause-s", type=float, default=60)
    parser.add_argument("--prompts", type=int, help=f"PPO prompt pool (default {PPO['prompts']}; tiny checks)")
    parser.add_argument("--batch-size", type=int, help=f"PPO rollout batch (default {PPO['batch_size']})")
    parser.add_argument("--max-new-tokens", type=int, help=f"PPO response length (default {PPO['max_new_tokens']})")
    args = parser.parse_args()
    if args.model:
        args.model_path = Path(args.model)
    else:
        from streams.config import hhh_home
        from trainer.demo_model.build import build_demo_model

        args.model_path = build_demo_model("demo", home=hhh_home())
    planned = default_plan(available_cpus())
    modes = [(name, planned if name == "planned" else CpuPlan(None, None), None) for name in args.modes]
    if args.yield_above is not None:
        modes.append(("planned+yield", planned, args.yield_above))
    print(f"start: {load_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hhh-bench-colocated-") as scratch:
        results = [asyncio.run(measure_mode(name, plan, yield_above, args, Path(scratch)))
                   for name, plan, yield_above in modes]
    report(results, args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:
        main()
