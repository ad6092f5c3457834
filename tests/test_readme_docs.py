"""The README's and docs/'s commands, examples, links and file names match the code they describe."""

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
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 320  # the README is a front page; the rest lives in docs/
PROJECT_PACKAGES = ("genq", "api", "worker", "shared")
# A path in backticks that starts with one of these names a file or folder of this repository.
REPO_PATH = re.compile(r"^(?:api|worker|shared|genq|tests|bench|docs|docker|scripts|\.ci)/[\w./-]*$")
# A dotted name in backticks (not a file name such as genq.env) names a module or what one defines.
DOTTED_NAME = re.compile(r"^(?!\S*\.(?:env|py|md|ya?ml|jsonl?)$)(?:genq|api|worker|shared)\.[\w.]+")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MAP_NAME = re.compile(r"\b([\w-]+(?:\.py|\.sh|\.Dockerfile|\.yml)|[a-z_]+/)(?=[\s,)]|$)")  # files, folders
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";"}
REDIRECTIONS = {"<", ">", ">>", "2>", "2>&1"}
CLIENT_VARIABLES = {"GENQ_URL", "GENQ_API_KEY"}  # read by the genq command, not by Settings
PLACEHOLDER_VARIABLES = {"GENQ_NAME"}  # "GENQ_NAME=value lines"


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown document."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    @property
    def where(self) -> str:
        """Say where the block is, for failure messages."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """Split a document into its fenced blocks and its prose lines (fences blanked out)."""
    blocks: list[Block] = []
    prose: list[str] = []
    opened: tuple[int, str, str] | None = None  # line, indent, language
    body: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if opened is None and fence:
            opened, body = (number, fence.group(1), fence.group(2)), []
        elif opened is not None and fence:
            indent = len(opened[1])
            text = "\n".join(row[indent:] if row[:indent].isspace() else row for row in body)
            blocks.append(Block(path, opened[0], opened[2], text))
            opened = None
        elif opened is not None:
            body.append(line)
        else:
            prose.append(line)
            continue
        prose.append("")
    assert opened is None, f"{path.relative_to(ROOT)}:{opened[0]}: unclosed fence"
    return blocks, prose


def all_blocks(lang: str | tuple[str, ...]) -> list[Block]:
    """Every fenced block of the README and docs/ in these languages."""
    langs = (lang,) if isinstance(lang, str) else lang
    return [b for path in DOCUMENTS for b in parse(path)[0] if b.lang in langs]


def shell_commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block: lines joined, comments, env prefixes and redirections gone."""
    commands: list[list[str]] = []
    pending = ""
    for line in block.text.splitlines():
        pending = f"{pending[:-1]} {line}" if pending.endswith("\\") else f"{pending}\n{line}"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote spans lines (a JSON body): read on
            continue
        if pending.endswith("\\"):
            continue
        pending = ""
        command: list[str] = []
        for word in [*words, ";"]:
            if word in SHELL_OPERATORS:
                if command:
                    commands.append(command)
                command = []
            elif command and command[-1] in REDIRECTIONS:
                command.pop()  # the redirection and its target say nothing about the command
            elif not command and re.match(r"^[A-Z_][A-Z0-9_]*=", word):
                continue  # an environment assignment before the command
            else:
                command.append(word)
    assert not pending.strip(), f"{block.where}: unfinished shell line {pending!r}"
    return commands


def make_targets() -> set[str]:
    """The targets the Makefile defines."""
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([\w./$()-]+)\s*:(?!=)", text, re.MULTILINE)}


def cli_parser() -> argparse.ArgumentParser:
    """The `genq` command's argument parser: genq.cli once it exists, else today's shared.cli."""
    for name in ("genq.cli", "shared.cli"):  # HACK: shared.cli until issue 10's genq/ package lands
        if importlib.util.find_spec(name.split(".")[0]) and importlib.util.find_spec(name):
            return importlib.import_module(name).build_parser()
    raise AssertionError("no genq command parser")


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


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README has {len(lines)} lines; move detail into docs/"
    linked = {m.group(1).split("#")[0] for m in LINK.finditer(README.read_text())}
    unlinked = [p.name for p in DOCUMENTS[1:] if f"docs/{p.name}" not in linked]
    assert not unlinked, f"docs not linked from the README: {unlinked}"


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
        if module != "genq":
            return f"no module {module} ({exc})"
        # HACK: until issue 10's genq/ package lands, `from genq import Client` means shared.client.
        imported = importlib.import_module("shared.client")
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


@pytest.mark.parametrize("block", all_blocks("json"), ids=lambda b: b.where)
def test_json_examples_are_json(block: Block) -> None:
    try:
        json.loads(block.text)
    except ValueError:  # JSON lines: one object a line
        for line in filter(str.strip, block.text.splitlines()):
            json.loads(line)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a document's headings, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    for line in parse(path)[1]:
        if m := re.match(r"^#{1,6} (.+)$", line):
            slug = _slug(m.group(1))
            seen[slug] = seen.get(slug, -1) + 1
    return {s if n == 0 else f"{s}-{n}" for s, count in seen.items() for n in range(count + 1)}


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
