"""Redis stays behind the store: api/ never touches the connection, and only shared/keys.py names keys."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from shared import keys, transitions

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "shared", "worker")
# A key name: the prefix, a colon, then a name ("genq: ..." messages and "<<genq:crash-worker>>" are none).
KEY_NAME = re.compile(rf"(?<![<\w]){keys.PREFIX}:\w")


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def test_api_never_touches_the_stores_connection() -> None:
    found = []
    for path in _modules("api"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            # store.r, self.r, batches.r, ...: the raw redis.Redis of JobStore/BatchStore.
            if isinstance(node, ast.Attribute) and node.attr in {"r", "raw", "_claim", "_finish"}:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert found == [], "api/ must call JobStore/BatchStore methods, not Redis:\n" + "\n".join(found)


def test_only_shared_keys_names_redis_keys() -> None:
    found = []
    for path in _modules(*PACKAGES):
        if path == ROOT / "shared" / "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY_NAME.search(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert found == [], "name Redis keys in shared/keys.py only:\n" + "\n".join(found)


def test_every_transition_script_takes_its_key_names_from_keys() -> None:
    scripts = {
        n: v
        for n, v in vars(transitions).items()
        if n.isupper() and not n.startswith("_") and isinstance(v, str)
    }
    assert {"CREATE", "CREATE_BATCH", "CLAIM", "FINISH", "CANCEL", "REQUEUE"} <= set(scripts)
    for name, lua in scripts.items():
        assert lua.startswith(transitions._KEYS), name
        assert not KEY_NAME.search(lua.removeprefix(transitions._KEYS)), name
    for name, value in keys.LUA_PREFIXES.items():
        assert f'local K_{name} = "{value}"' in transitions._KEYS
