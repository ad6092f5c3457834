"""The README is a front page, and the README's and docs/'s links, file names and settings are real."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.markdown_docs import DOCUMENTS, README, REPO_PATH, ROOT, Block, anchors, parse

README_MAX_LINES = 320  # the README is a front page; the rest lives in docs/
# A dotted name in backticks (not a file name such as genq.env) names a module or what one defines.
DOTTED_NAME = re.compile(r"^(?!\S*\.(?:env|py|md|ya?ml|jsonl?)$)(?:genq|api|worker|shared)\.[\w.]+")
MAP_NAME = re.compile(r"\b([\w-]+(?:\.py|\.sh|\.Dockerfile|\.yml)|[a-z_]+/)(?=[\s,)]|$)")  # files, folders
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CLIENT_VARIABLES = {"GENQ_URL", "GENQ_API_KEY"}  # read by the genq command, not by Settings
PLACEHOLDER_VARIABLES = {"GENQ_NAME"}  # "GENQ_NAME=value lines"


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README has {len(lines)} lines; move detail into docs/"
    linked = {m.group(1).split("#")[0] for m in LINK.finditer(README.read_text())}
    unlinked = [p.name for p in DOCUMENTS[1:] if f"docs/{p.name}" not in linked]
    assert not unlinked, f"docs not linked from the README: {unlinked}"


def test_documented_settings_exist_and_every_setting_is_documented() -> None:
    from shared.settings import Settings

    fields = {f"GENQ_{name.upper()}" for name in Settings.model_fields}
    named = {v for path in DOCUMENTS for v in re.findall(r"GENQ_[A-Z0-9_]+", path.read_text())}
    compose = set(re.findall(r"GENQ_[A-Z0-9_]+", (ROOT / "docker-compose.yml").read_text()))
    unknown = named - fields - CLIENT_VARIABLES - PLACEHOLDER_VARIABLES - compose
    assert not unknown, f"the documents name settings that do not exist: {sorted(unknown)}"
    table = (ROOT / "docs" / "operations.md").read_text()
    undocumented = {f for f in fields if f"| `{f}` |" not in table}
    assert not undocumented, f"settings missing from docs/operations.md's table: {sorted(undocumented)}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_named_files_exist(path: Path) -> None:
    blocks, prose = parse(path)
    text = "\n".join(prose)
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not this repository's
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            problems.append(f"link to a missing file: {target}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"link to a missing heading: {target}")
    for code in re.findall(r"`([^`\n]+)`", text):
        if REPO_PATH.match(code) and not (ROOT / code).exists():
            problems.append(f"names a missing path: {code}")
        elif (dotted := DOTTED_NAME.match(code)) and (problem := _dotted(dotted.group(0))):
            problems.append(f"names {code}: {problem}")
    problems += [f"code map: {p}" for b in blocks if b.lang == "text" for p in _code_map_problems(b)]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def _dotted(name: str) -> str | None:
    """Say what is missing of a dotted name such as shared.webhooks.verify_signature, or None."""
    parts = name.rstrip(".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return f"{obj.__name__} has no {attr}"
            obj = getattr(obj, attr)
        return None
    return "no such module"


def _code_map_problems(block: Block) -> list[str]:
    """The files and folders a map of the code names that do not exist."""
    problems, folder = [], ROOT
    for line in block.text.splitlines():
        if line and not line[0].isspace():
            head = line.split()[0]
            folder = ROOT / head if head.endswith("/") else ROOT
            if not (ROOT / head).exists():
                problems.append(f"no {head}")
        words = re.sub(r"`[^`]*`", "", line).split()[0 if line[:1].isspace() else 1 :]
        for name in re.findall(
            r"\b([\w-]+(?:\.py|\.sh|\.Dockerfile|\.yml)|[a-z_]+/)(?=[\s,)]|$)", " ".join(words)
        ):
            if not ((folder / name).exists() or (ROOT / name).exists()):
                problems.append(f"no {folder.relative_to(ROOT) / name}")
    return problems
