"""The nemesis soak, short and seeded: kills and pauses under load, then the checker finds nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.checker import VIOLATIONS

ROOT = Path(__file__).resolve().parent.parent
SOAK_S = 60  # seconds of load under the nemesis
RUN_TIMEOUT_S = 900  # start-up, the soak, and every job settling, on a busy machine


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_a_short_seeded_soak_violates_nothing(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "chaos", "--seconds", str(SOAK_S), "--seed", "11", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    summary = [line for line in run.stdout.splitlines() if line.startswith("chaos: seed=11 seconds=")][-1]
    assert run.returncode == 0, f"{summary}\n{run.stderr[-3000:]}"
    for name in VIOLATIONS:
        assert f" {name}=0" in summary, summary
    assert summary.endswith("-> OK")
    answered = int(re.search(r"answered=(\d+)", summary).group(1))
    assert answered > 20, summary  # the load did run
    actions = [json.loads(line) for line in (tmp_path / "nemesis.log").read_text().splitlines()]
    kills = [a for a in actions if a["action"] not in ("started", "resumed")]
    assert len(kills) >= 4 and all(isinstance(a["t"], float) for a in actions), actions
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["seed"] == 11 and sum(report["nemesis"].values()) == len(kills)
