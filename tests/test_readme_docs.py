"""The README's and docs/'s commands and examples run against the code: make, genq, curl, Python, JSON."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from tests.markdown_docs import REPO_PATH, ROOT, Block, all_blocks, shell_commands

PROJECT_PACKAGES = ("genq", "api", "worker", "shared")


def make_targets() -> set[str]:
    """The targets the Makefile defines."""
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([\w./$()-]+)\s*:(?!=)", text, re.MULTILINE)}


def cli_parser() -> argparse.ArgumentParser:
    """The `genq` command's argument parser."""
    return importlib.import_module("genq.cli").build_parser()


def check_command(argv: list[str], parser: argparse.ArgumentParser, targets: set[str]) -> str | None:
    """Say what is wrong with one documented command line, or None."""
    program = Path(argv[0]).name
    if program == "make":
        missing = [t for t in argv[1:] if not t.startswith("-") and "=" not in t and t not in targets]
        return f"no Makefile target {missing}" if missing else None
    if program == "genq":
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                return f"`genq` refuses it: {err.getvalue().strip().splitlines()[-1]}"
        return None
    if program.startswith("python") and len(argv) > 2 and argv[1] == "-m":
        return None if importlib.util.find_spec(argv[2]) else f"no module {argv[2]}"
    missing = [w for w in argv[1:] if REPO_PATH.match(w) and not (ROOT / w).exists()]
    return f"no such path {missing}" if missing else None


def test_shell_blocks_name_real_make_targets_genq_commands_and_paths() -> None:
    parser, targets = cli_parser(), make_targets()
    checked, problems = 0, []
    for block in all_blocks(("bash", "sh", "shell")):
        for argv in shell_commands(block):
            checked += 1
            problem = check_command(argv, parser, targets)
            if problem:
                problems.append(f"{block.where}: {shlex.join(argv)[:100]}: {problem}")
    assert checked > 50, "the documents' shell blocks were not found"
    assert not problems, "\n".join(problems)


def test_a_refused_command_is_caught() -> None:
    """The checks above can fail: a made-up target, subcommand or option is reported."""
    parser, targets = cli_parser(), make_targets()
    assert check_command(["make", "deploy"], parser, targets)
    assert check_command(["genq", "frobnicate"], parser, targets)
    assert check_command(["genq", "submit", "hi", "--temperture", "1"], parser, targets)
    assert check_command([".venv/bin/python", "-m", "bench.nothing"], parser, targets)
    assert check_command(["pytest", "tests/test_nothing.py"], parser, targets)
    assert check_command(["genq", "submit", "hi", "--wait"], parser, targets) is None


def test_curl_examples_hit_routes_the_api_serves(app) -> None:
    urls = app.url_map.bind("127.0.0.1:8000")
    checked, problems = 0, []
    for block in all_blocks(("bash", "sh", "shell")):
        for argv in shell_commands(block):
            if Path(argv[0]).name != "curl":
                continue
            url = next((w for w in argv if w.startswith("http://127.0.0.1:8000")), None)
            assert url, f"{block.where}: a curl example without the API's URL: {shlex.join(argv)}"
            explicit = argv[argv.index("-X") + 1] if "-X" in argv else None
            sends = any(w in ("-d", "--data", "-F", "--form") for w in argv)
            method = explicit or ("POST" if sends else "GET")
            path = url.removeprefix("http://127.0.0.1:8000").split("?")[0] or "/"
            checked += 1
            try:
                urls.match(path, method=method)
            except (NotFound, MethodNotAllowed, RequestRedirect) as exc:
                problems.append(f"{block.where}: {method} {path}: {type(exc).__name__}")
    assert checked > 20, "the documents' curl examples were not found"
    assert not problems, "\n".join(problems)


def test_documented_job_and_batch_bodies_are_accepted(http) -> None:
    """Each JSON body sent to /v1/jobs or /v1/batches gets a 202, or the error its block shows."""
    sent, problems = 0, []
    for block in all_blocks(("bash", "sh", "shell")):
        for argv in shell_commands(block):
            path = next((w for w in argv if w.startswith("http://127.0.0.1:8000/v1/")), "")
            path = path.removeprefix("http://127.0.0.1:8000")
            if Path(argv[0]).name != "curl" or "-d" not in argv or path not in ("/v1/jobs", "/v1/batches"):
                continue
            headers = dict(argv[i + 1].split(": ", 1) for i, w in enumerate(argv) if w == "-H")
            resp = http.post(path, data=argv[argv.index("-d") + 1], headers=headers)
            sent += 1
            code = ((resp.get_json(silent=True) or {}).get("error") or {}).get("code")
            if resp.status_code != 202 and f'"code":"{code}"' not in block.text.replace(" ", ""):
                problems.append(f"{block.where}: POST {path}: {resp.status_code} {resp.text}")
    assert sent >= 5, "the documents' job bodies were not found"
    assert not problems, "\n".join(problems)


def _resolve(module: str, names: list[str]) -> str | None:
    """Say which of these names a project module lacks, or None when all are there."""
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        return f"no module {module} ({exc})"
    missing = [n for n in names if not hasattr(imported, n)]
    return f"{module} has no {missing}" if missing else None


def test_python_blocks_compile_and_their_project_imports_resolve() -> None:
    blocks = all_blocks("python")
    assert len(blocks) >= 5, "the documents' Python examples were not found"
    problems = []
    for block in blocks:
        tree = ast.parse(block.text, block.where)
        for node in tree.body:
            names = [a.name for a in getattr(node, "names", [])]
            module = getattr(node, "module", None)
            if module and module.split(".")[0] in PROJECT_PACKAGES:
                problem = _resolve(module, names)
            elif module is None and names and names[0].split(".")[0] in PROJECT_PACKAGES:
                problem = _resolve(names[0], [])
            else:
                continue
            if problem:
                problems.append(f"{block.where}: {problem}")
        compile(tree, block.where, "exec")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", all_blocks("json"), ids=lambda b: b.where)
def test_json_examples_are_json(block: Block) -> None:
    try:
        json.loads(block.text)
    except ValueError:  # JSON lines: one object a line
        for line in filter(str.strip, block.text.splitlines()):
            json.loads(line)
