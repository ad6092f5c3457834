"""Dependencies point down: shared/ imports nothing above it, and the client stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib

import pytest

from tests.support import GENQ, ROOT

UPPER_LAYERS = {"api", "worker", "genq"}  # what shared/ must never import
HEAVY = ("torch", "transformers", "flask", "celery")  # what `import genq` must not pull in


def imported_modules(tree: ast.AST) -> set[str]:
    """Return the absolute module names a parsed module imports, anywhere in it (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_walker_sees_every_kind_of_import() -> None:
    tree = ast.parse(
        "import api.app\nfrom worker import main\ndef f():\n    from genq.client import Client\n"
    )
    assert {name.split(".")[0] for name in imported_modules(tree)} == UPPER_LAYERS


@pytest.mark.parametrize("path", sorted((ROOT / "shared").glob("*.py")), ids=lambda p: p.name)
def test_shared_imports_neither_api_nor_worker_nor_genq(path) -> None:
    upward = {m for m in imported_modules(ast.parse(path.read_text())) if m.split(".")[0] in UPPER_LAYERS}
    assert not upward, f"shared/{path.name} imports {sorted(upward)}"


@pytest.mark.parametrize("path", sorted((ROOT / "api").rglob("*.py")), ids=lambda p: p.name)
def test_api_imports_neither_the_worker_nor_the_model_stack(path) -> None:
    banned = {"worker", "torch", "transformers"}  # what both sides need lives in shared/
    found = {m for m in imported_modules(ast.parse(path.read_text())) if m.split(".")[0] in banned}
    assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}"


def test_the_client_imports_without_the_model_web_or_queue_stacks() -> None:
    code = (
        "import json, sys, genq\n"
        "assert genq.Client and issubclass(genq.GenqError, Exception)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [], f"`import genq` imported {out.stdout.strip()}"


def test_the_genq_command_runs_as_a_module_and_has_every_command() -> None:
    out = subprocess.run([*GENQ, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in (
        "submit",
        "get",
        "cancel",
        "jobs",
        "models",
        "batch",
        "worker",
        "prepare",
        "api",
        "keys",
        "up",
    ):
        assert command in out.stdout, f"`genq {command}` is missing:\n{out.stdout}"


def test_the_console_script_and_the_images_carry_the_genq_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["genq"] == "genq.cli:main"
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [pattern.rstrip("*") for pattern in include]
    assert "genq" in packages
    subpackages = {p.parent.name for p in ROOT.glob("*/*/__init__.py") if p.parent.parent.name in packages}
    assert "openai" in subpackages, "a subpackage such as api/openai must be installed too"
    for image in ("api", "worker"):
        text = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
        for package in packages:
            assert f"COPY {package} ./{package}" in text, (
                f"docker/{image}.Dockerfile does not copy {package}/"
            )
