"""The house's rules that no single module can check: which package may import which, and that
every setting says what it does.

Dependencies run one way, ``common`` ← ``streams`` ← ``serving`` ← ``trainer`` ← ``hhh`` (the
composition root): a package imports only itself and the packages to its left. ``bench/`` may
use every product package; nothing outside ``tests/`` imports a test module.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["common", "streams", "serving", "trainer", "hhh"]
"""Each package may import the packages before it, never one after it."""


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level package of every absolute import in ``path`` (functions included) -> a line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def modules_of(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    forbidden = set(LAYERS[LAYERS.index(package) + 1 :]) | {"tests", "bench"}
    modules = modules_of(package)
    assert modules, f"no modules under {package}/"
    breaches = [f"{path.relative_to(REPO)}:{line} imports {name}"
                for path in modules for name, line in imported_packages(path).items() if name in forbidden]
    assert not breaches, "imports against the direction of the house:\n" + "\n".join(breaches)


def test_benchmarks_import_no_test_module() -> None:
    breaches = [f"{path.relative_to(REPO)}:{line}" for path in modules_of("bench")
                for name, line in imported_packages(path).items() if name == "tests"]
    assert not breaches, breaches


def test_the_rule_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from trainer.demo_model import build\n")
    assert imported_packages(module) == {"os": 1, "trainer": 4}


def settings_classes() -> list[type[BaseModel]]:
    """Every settings class (pydantic-settings) and config model defined in the product packages."""
    found = []
    for package in LAYERS:
        for path in modules_of(package):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            if name.endswith("__main__"):
                continue
            module = importlib.import_module(name.removesuffix(".__init__"))
            found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                      if cls.__module__ == module.__name__ and issubclass(cls, BaseSettings)]
    return found


def test_every_setting_is_described() -> None:
    classes = settings_classes()
    assert len(classes) >= 8, [c.__name__ for c in classes]
    undocumented = [f"{cls.__module__}.{cls.__name__}.{field}" for cls in classes
                    for field, info in cls.model_fields.items() if not info.description]
    assert not undocumented, undocumented


def test_each_settings_prefix_belongs_to_one_class() -> None:
    prefixes = [cls.model_config.get("env_prefix") for cls in settings_classes()]
    assert len(prefixes) == len(set(prefixes)), prefixes
