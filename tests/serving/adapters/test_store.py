"""The adapter store: immutable versions, manifests, refusals, rollback and pin; the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving.adapters.store import (
    AdapterRefused,
    AdapterStore,
    Refusal,
    base_model_fingerprint,
    matching_modules,
    sha256_file,
)
from streams.codec import ADAPTERS
from streams.events import AdapterPublishedEvent
from streams.sqlite_log import SqliteEventLog
from trainer.demo_model.adapters import make_lora_adapter


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few adapter folders of the tiny model, made once for the module."""
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "a": make_lora_adapter(tiny_model_dir, root / "a", seed=1),
        "b": make_lora_adapter(tiny_model_dir, root / "b", seed=2, rank=16, targets=("o_proj",)),
    }
    no_match = root / "no-match"
    shutil.copytree(made["a"], no_match)
    config = json.loads((no_match / "adapter_config.json").read_text())
    (no_match / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["nonexistent_proj"]}))
    made["no-match"] = no_match
    return made


@pytest.fixture
def other_base(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A base model folder with another architecture (more layers), same weights file."""
    folder = tmp_path / "other-base"
    folder.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    (folder / "model.safetensors").symlink_to(tiny_model_dir / "model.safetensors")
    return folder


def test_publish_writes_an_immutable_version_with_its_manifest(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path / "store")
    first = store.publish(adapters["a"], "global", base_model=tiny_model_dir, metrics={"reward": 0.5})
    second = store.publish(adapters["b"], "global", base_model=tiny_model_dir)

    assert (first.version, second.version) == (1, 2)
    assert second.parent_version == 1 and first.parent_version is None
    assert (first.rank, first.target_modules, second.rank, second.target_modules) == (
        8, ["q_proj", "v_proj"], 16, ["o_proj"])
    assert first.base_model == tiny_model_dir.name
    assert first.base_model_config_sha256 == base_model_fingerprint(tiny_model_dir)
    assert first.metrics == {"reward": 0.5}
    folder = store.path("global", 1)
    assert first.files == {name: sha256_file(adapters["a"] / name) for name in
                           ("adapter_config.json", "adapter_model.safetensors", "README.md")
                           if (adapters["a"] / name).exists()}
    assert set(first.files) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert store.get("global", 1) == first and store.latest("global") == second
    assert store.state("global").current == 2
    assert not [p for p in (tmp_path / "store" / "global").iterdir() if p.name.startswith(".staging")]
    store.verify(first, tiny_model_dir)  # intact: no exception


def test_concurrent_publishes_get_distinct_versions(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path / "store")
    with ThreadPoolExecutor(4) as pool:
        manifests = list(pool.map(
            lambda _: store.publish(adapters["a"], "user:ann", base_model=tiny_model_dir), range(6)))
    assert sorted(m.version for m in manifests) == [1, 2, 3, 4, 5, 6]
    assert [info.manifest.version for info in store.list("user:ann")] == [1, 2, 3, 4, 5, 6]
    assert store.scopes() == ["user:ann"]


def test_publish_refuses_what_cannot_serve_and_stores_nothing(
    adapters: dict[str, Path], tiny_model_dir: Path, other_base: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(AdapterRefused, match="nonexistent_proj.*match no module") as refused:
        store.publish(adapters["no-match"], "global", base_model=tiny_model_dir)
    assert refused.value.reason == "no_matching_modules"
    with pytest.raises(AdapterRefused, match="no adapter_config.json") as refused:
        store.publish(tmp_path, "global", base_model=tiny_model_dir)
    assert refused.value.reason == "not_lora"
    with pytest.raises(ValueError, match="scope 'everyone' is not"):
        store.publish(adapters["a"], "everyone", base_model=tiny_model_dir)
    with pytest.raises(ValueError, match="user id '..' is only dots"):
        store.publish(adapters["a"], "user:..", base_model=tiny_model_dir)
    assert store.list() == []
    # An adapter of another base model publishes fine against that base, and is refused on ours.
    manifest = store.publish(adapters["a"], "global", base_model=other_base)
    with pytest.raises(AdapterRefused, match="config hash") as refused:
        store.verify(manifest, tiny_model_dir)
    assert refused.value.reason == "wrong_base_model"


def test_verify_refuses_corrupted_missing_and_oversized(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path / "store")
    big = store.publish(adapters["b"], "global", base_model=tiny_model_dir)
    with pytest.raises(AdapterRefused, match="rank 16 exceeds the engines' max_lora_rank=8") as refused:
        store.verify(big, tiny_model_dir, max_rank=8)
    assert refused.value.reason == "rank_too_high"

    manifest = store.publish(adapters["a"], "global", base_model=tiny_model_dir)
    weights = store.path("global", manifest.version) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterRefused, match="adapter_model.safetensors does not match its sha256") as refused:
        store.verify(manifest, tiny_model_dir)
    assert refused.value.reason == "checksum_mismatch"
    weights.unlink()
    with pytest.raises(AdapterRefused, match="lacks") as refused:
        store.verify(manifest, tiny_model_dir)
    assert refused.value.reason == "missing_file"


@pytest.mark.parametrize(
    ("plant", "reason", "message"),
    [
        (lambda folder, _: (folder / "extra.json").symlink_to("/etc/passwd"), "unsafe_file",
         "extra.json is a symbolic link"),
        (lambda folder, _: (folder / "nested").symlink_to(folder.parent), "unsafe_file",
         "nested is a symbolic link"),
        (lambda folder, _: (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle"), "pickled_weights",
         "adapter_model.bin is a pickle"),
        (lambda folder, _: (folder / "optimizer.pt").write_bytes(b"\x80\x04"), "pickled_weights", "optimizer.pt"),
        (lambda folder, _: (folder / "state.pkl").write_bytes(b"\x80\x04"), "pickled_weights", "state.pkl"),
        (lambda folder, _: os.mkfifo(folder / "pipe"), "unsafe_file", "pipe is not a plain file"),
    ],
    ids=["file-symlink", "folder-symlink", "bin", "pt", "pkl", "fifo"],
)
def test_symlinks_special_files_and_pickled_weights_are_refused_at_publish_and_verify(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, plant, reason: str, message: str,  # noqa: ANN001
) -> None:
    source = tmp_path / "source"
    shutil.copytree(adapters["a"], source)
    plant(source, tmp_path)
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(AdapterRefused, match=message) as refused:
        store.publish(source, "global", base_model=tiny_model_dir)
    assert refused.value.reason == reason and store.list() == []

    manifest = store.publish(adapters["a"], "global", base_model=tiny_model_dir)
    plant(store.path("global", manifest.version), tmp_path)  # planted in the store afterwards
    with pytest.raises(AdapterRefused, match=message) as refused:
        store.verify(manifest, tiny_model_dir)
    assert refused.value.reason == reason


def test_only_safetensors_weights_are_served(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(adapters["a"], source)
    (source / "adapter_model.safetensors").rename(source / "adapter_model.weights")
    with pytest.raises(AdapterRefused, match="has no adapter_model.safetensors") as refused:
        AdapterStore(tmp_path / "store").publish(source, "global", base_model=tiny_model_dir)
    assert refused.value.reason == "not_lora"


def test_verify_returns_a_private_copy_of_the_verified_bytes(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path / "store")
    manifest = store.publish(adapters["a"], "global", base_model=tiny_model_dir)
    original = store.path("global", manifest.version)
    copy = store.verify(manifest, tiny_model_dir)
    assert copy.parent == store.root / ".verified" and copy != original
    assert {name: sha256_file(copy / name) for name in manifest.files} == manifest.files
    assert sorted(p.name for p in copy.iterdir()) == sorted(manifest.files)
    assert all((copy / name).stat().st_mode & 0o222 == 0 for name in manifest.files)  # read-only

    assert store.verify(manifest, tiny_model_dir) == copy  # made once per content, checked again

    weights = original / "adapter_model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-8] + b"\0" * 8)  # the folder changes after the check
    assert sha256_file(copy / "adapter_model.safetensors") == manifest.files["adapter_model.safetensors"]
    with pytest.raises(AdapterRefused, match="does not match its sha256"):
        store.verify(manifest, tiny_model_dir)  # and the next check sees it

    weights.write_bytes(intact)
    (copy / "adapter_model.safetensors").chmod(0o644)
    (copy / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(AdapterRefused, match="its verified copy .* was changed") as refused:
        store.verify(manifest, tiny_model_dir)
    assert refused.value.reason == "checksum_mismatch"


def test_non_finite_metrics_are_refused_at_publish(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="metrics must be finite numbers"):
            store.publish(adapters["a"], "global", base_model=tiny_model_dir, metrics={"kl": value})
    assert store.list() == []
    refused = hhh("adapters", "publish", str(adapters["a"]), "--scope", "global", "--metric", "reward=nan",
                  home=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "--metric 'reward=nan' must be a finite number" in refused.stderr
    assert AdapterStore(tmp_path / "adapters").list() == []
    with SqliteEventLog(tmp_path / "events.db") as event_log, event_log.consumer(None, [ADAPTERS]) as reader:
        assert reader.poll(timeout_s=0.2) == []


def test_rollback_pin_and_unpin(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    for _ in range(3):
        store.publish(adapters["a"], "global", base_model=tiny_model_dir)
    store.record_refusal("global", 2, Refusal(reason="canary_failed", detail="same as base", replica="r1"))

    assert store.rollback("global").version == 1  # skips the refused version 2
    assert store.state("global").current == 1
    with pytest.raises(ValueError, match="no earlier unrefused version"):
        store.rollback("global")
    assert store.rollback("global", to=3).version == 3
    with pytest.raises(AdapterRefused, match="global@9 is not in the store"):
        store.rollback("global", to=9)

    assert store.pin("global").version == 3
    store.publish(adapters["a"], "global", base_model=tiny_model_dir)
    assert store.state("global").desired == 3  # the pin wins over the new current version 4
    with pytest.raises(ValueError, match="pinned to version 3; unpin it first"):
        store.rollback("global")
    assert store.unpin("global").version == 4
    with pytest.raises(ValueError, match="is not pinned"):
        store.unpin("global")
    listed = {info.manifest.version: info for info in store.list("global")}
    assert [r.reason for r in listed[2].refusals] == ["canary_failed"] and listed[4].current


def test_target_modules_match_like_peft() -> None:
    names = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
             "model.layers.0.mlp.down_proj", "lm_head", "model.embed_tokens"}
    assert matching_modules(["q_proj"], names) == {"model.layers.0.self_attn.q_proj"}
    assert matching_modules(["proj"], names) == set()  # a list entry is a whole name part
    assert matching_modules(r".*\.(q|v)_proj", names) == {
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"}
    assert matching_modules("all-linear", names) == names - {"lm_head", "model.embed_tokens"}


def hhh(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HHH_HOME": str(home), **env}
    command = [sys.executable, "-c", "from hhh.cli import main; main()", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


def test_cli_publishes_lists_and_rolls_back_with_events(adapters: dict[str, Path], tmp_path: Path) -> None:
    published = hhh("adapters", "publish", str(adapters["a"]), "--scope", "user:ann",
                    "--metric", "reward=0.25", home=tmp_path)  # base: the adapter's recorded base
    assert published.returncode == 0, published.stderr
    assert "published user:ann@1" in published.stdout
    assert hhh("adapters", "publish", str(adapters["b"]), "--scope", "user:ann", home=tmp_path).returncode == 0

    rolled = hhh("adapters", "rollback", "--scope", "user:ann", home=tmp_path)
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back to user:ann@1" in rolled.stdout
    listing = hhh("adapters", "list", home=tmp_path)
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[6]) for row in rows] == [("user:ann", "1", "current"), ("user:ann", "2", "stored")]
    assert "reward=0.25" in listing.stdout

    with SqliteEventLog(tmp_path / "events.db") as event_log, event_log.consumer(None, [ADAPTERS]) as reader:
        events = [record.event for record in reader.poll(timeout_s=0.5)]
    assert [(e.scope, e.version, e.parent_version) for e in events if isinstance(e, AdapterPublishedEvent)] == [
        ("user:ann", 1, None), ("user:ann", 2, 1), ("user:ann", 1, None)]
    assert events[0].sha256 == sha256_file(tmp_path / "adapters" / "user" / "ann" / "v000001" / "manifest.json")

    refused = hhh("adapters", "publish", str(adapters["no-match"]), "--scope", "global", home=tmp_path)
    assert refused.returncode == 1
    assert "no_matching_modules" in refused.stderr and "nonexistent_proj" in refused.stderr
    bad_metric = hhh("adapters", "publish", str(adapters["a"]), "--scope", "global", "--metric", "x=high",
                     home=tmp_path)
    assert "--metric 'x=high' must be NAME=NUMBER" in bad_metric.stderr
