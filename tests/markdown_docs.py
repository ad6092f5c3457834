"""Markdown documents as the docs tests read them: fenced blocks, shell commands, prose, heading anchors."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# A path that starts with one of these names a file or folder of this repository.
REPO_PATH = re.compile(r"^(?:api|worker|shared|genq|tests|bench|docs|docker|scripts|\.ci)/[\w./-]*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";"}
REDIRECTIONS = {"<", ">", ">>", "2>", "2>&1"}


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
