"""genq.supervisor on tiny real child processes: stop, restart with backoff, and give up on a crash loop."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from genq.supervisor import (
    ChildExited,
    CrashLoop,
    RestartPolicy,
    Supervisor,
    describe_exit,
    free_port,
)
from tests.support import wait_until

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
FAILER = [sys.executable, "-c", "import sys; sys.exit(3)"]
QUICK = RestartPolicy(backoff_s=0.05, max_backoff_s=0.2)  # 5 early deaths in a row give up


def tend_until(sup: Supervisor, predicate, timeout_s: float, what: str) -> None:
    """Tend the supervisor until predicate holds."""

    def step() -> bool:
        sup.tend()
        return bool(predicate())

    wait_until(step, timeout_s, what, 0.02)


def test_exits_are_described_by_signal_or_code() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(0) == "exit code 0"
    assert 0 < free_port() < 65536


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=1.0, max_backoff_s=5.0)
    assert [policy.delay_s(n) for n in range(6)] == [1.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_stop_all_ends_children_newest_first_and_logs_them(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    first, second = sup.start("first", SLEEPER), sup.start("second", SLEEPER)
    wait_until(lambda: "up" in first.log() and "up" in second.log(), 30, "both children to print")
    sup.stop_all(5)
    assert first.poll() == second.poll() == -signal.SIGTERM
    assert sup.children == []


def test_a_child_that_hangs_on_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
    child = Supervisor(tmp_path).start("stubborn", [sys.executable, "-c", stubborn + "time.sleep(600)"])
    wait_until(lambda: "up" in child.log(), 30, "the child to ignore SIGTERM")
    assert child.stop(0.5) == -signal.SIGKILL


def test_an_unsupervised_child_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start("talker", [sys.executable, "-c", "print('last words'); raise SystemExit(4)"])
    with pytest.raises(ChildExited, match=r"talker exited \(exit code 4\); its log ends:\nlast words"):
        wait_until(lambda: sup.check(), 30, "the child to exit")  # check() returns None while it runs
    sup.stop_all()


def test_a_killed_child_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    said: list[str] = []
    sup = Supervisor(tmp_path, say=said.append)
    victim = sup.start("victim", SLEEPER, restart=QUICK)
    bystander = sup.start("bystander", SLEEPER, restart=QUICK)
    wait_until(lambda: victim.log().count("up") == 1, 30, "the victim to start")
    old_pid, bystander_pid = victim.pid, bystander.pid
    victim.signal(signal.SIGKILL)
    tend_until(sup, lambda: victim.pid != old_pid and victim.poll() is None, 30, "the victim to restart")
    assert said[0].startswith(f"genq: victim (pid {old_pid}) died: killed by SIGKILL after ")
    assert (
        said[0].endswith("restarting it in 0.1 s") and said[1] == f"genq: victim restarted (pid {victim.pid})"
    )
    wait_until(lambda: victim.log().count("up") == 2, 30, "the restarted victim to print (same log)")
    assert bystander.pid == bystander_pid and bystander.poll() is None
    sup.stop_all(5)


def test_a_child_that_keeps_dying_at_start_is_given_up(tmp_path: Path) -> None:
    said: list[str] = []
    sup = Supervisor(tmp_path, say=said.append)
    sup.start("failer", FAILER, restart=QUICK)
    sleeper = sup.start("sleeper", SLEEPER, restart=QUICK)
    t0 = time.monotonic()
    with pytest.raises(
        CrashLoop, match=r"failer \(pid \d+\) died: exit code 3 .* 5 times in a row within 60 s"
    ):
        tend_until(sup, lambda: False, 60, "the crash loop to be detected")
    assert time.monotonic() - t0 < 60
    assert [line.split(": ", 1)[0] for line in said].count("genq") == len(said) == 8  # 4 deaths, 4 restarts
    assert sum("restarting it in" in line for line in said) == 4
    assert sleeper.poll() is None  # the supervisor does not stop the others by itself
    sup.stop_all(5)
