"""Start, watch, restart and stop child processes: one supervisor for `genq up`, the bench and tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1  # prctl option: the signal Linux sends a process when its parent dies
STOP_TIMEOUT_S = 20.0  # seconds a child gets after SIGTERM before SIGKILL
LOG_TAIL_LINES = 25  # lines of a dead child's log quoted in an error


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (no orphaned children)."""
    # Not Linux: children are still stopped on Ctrl-C and SIGTERM. Linux ties this to the parent
    # *thread*, so start children from a thread that lives as long as they should.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_exit(returncode: int) -> str:
    """Return how a process ended, e.g. 'killed by SIGKILL' or 'exit code 3'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Child:
    """One child process, logging to a file (or to our stdout), stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
        *,
        quiet: bool = False,
        own_session: bool = False,
        orphan_safe: bool = False,
    ) -> None:
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log_path = log
        self.quiet = quiet  # no log file: discard its output instead of sharing ours
        # Its own session: a terminal's Ctrl-C reaches only us, and we stop it in order.
        self.own_session = own_session
        self.orphan_safe = orphan_safe  # SIGTERM it if we die
        self._log: IO[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (or start again) the process; its log file is appended to."""
        out: IO[bytes] | int | None = subprocess.DEVNULL if self.quiet else None
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
            out = self._log
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if self.log_path is not None else None,
            start_new_session=self.own_session,
            preexec_fn=die_with_parent if self.orphan_safe else None,
        )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.proc.pid

    def poll(self) -> int | None:
        """Return the exit code, or None while it runs."""
        return self.proc.poll()

    def log(self) -> str:
        """Return what the child printed so far (empty without a log file)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of the child's log."""
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        """Send a signal to the child."""
        self.proc.send_signal(signum)

    def reap_group(self) -> None:
        """SIGKILL what the dead child left in its session (gunicorn's workers would keep its port)."""
        if self.own_session and self.poll() is not None:
            # The id of a live group is never reused as a pid, so this reaches only its leftovers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the child, SIGKILL it if it has not stopped after timeout_s; return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"genq: {self.name} did not stop in {timeout_s:.0f} s; killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        self.reap_group()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited unexpectedly is started again, and when to give up on it."""

    backoff_s: float = 1.0  # delay before a restart; doubles with each early death in a row
    max_backoff_s: float = 30.0  # the longest delay between restarts
    early_s: float = 60.0  # a death within this many seconds of its start is 'right after start'
    max_early_deaths: int = 5  # this many early deaths in a row: give up (CrashLoop)

    def delay_s(self, early_deaths: int) -> float:
        """Return the seconds to wait before the next start, after early_deaths in a row."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, early_deaths - 1))


class ChildExited(RuntimeError):
    """A child that must not exit did; the message names it, says how, and quotes its log."""


class CrashLoop(RuntimeError):
    """A supervised child keeps dying right after start; the message says which and how."""


class Supervisor:
    """The children of one program: started in order, restarted by policy, stopped newest first."""

    def __init__(
        self,
        logdir: Path | None = None,
        cwd: Path | None = None,
        *,
        own_session: bool = True,
        orphan_safe: bool = True,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.logdir, self.cwd = logdir, cwd
        self.own_session, self.orphan_safe = own_session, orphan_safe
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.children: list[Child] = []
        self._policy: dict[int, RestartPolicy] = {}  # by id(child)
        self._early: dict[int, int] = {}  # early deaths in a row, by id(child)
        self._restart_at: dict[int, float] = {}  # when a dead child starts again, by id(child)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        quiet: bool = False,
        restart: RestartPolicy | None = None,
    ) -> Child:
        """Start a child (logging to logdir/name.log when there is a logdir); restart it per policy."""
        log = self.logdir / f"{name}.log" if self.logdir is not None else None
        child = Child(
            name,
            argv,
            env,
            log,
            self.cwd,
            quiet=quiet,
            own_session=self.own_session,
            orphan_safe=self.orphan_safe,
        )
        self.children.append(child)
        if restart is not None:
            self._policy[id(child)], self._early[id(child)] = restart, 0
        return child

    def check(self) -> None:
        """Raise ChildExited if a child without a restart policy has exited, with the end of its log."""
        for child in self.children:
            code = child.poll()
            if code is not None and id(child) not in self._policy:
                tail = child.tail()
                ends = f"; its log ends:\n{tail}" if tail else ""
                raise ChildExited(f"{child.name} exited ({describe_exit(code)}){ends}")

    def tend(self) -> None:
        """Restart dead supervised children after their backoff; raise CrashLoop on one that keeps dying."""
        self.check()
        now = time.monotonic()
        for child in self.children:
            key = id(child)
            if key not in self._policy:
                continue
            if key in self._restart_at:
                if now >= self._restart_at[key]:
                    del self._restart_at[key]
                    child.start()
                    self.say(f"genq: {child.name} restarted (pid {child.pid})")
                continue
            code = child.poll()
            if code is None:
                continue
            child.reap_group()
            policy, lived = self._policy[key], now - child.started_at
            self._early[key] = self._early[key] + 1 if lived < policy.early_s else 0
            how = f"{child.name} (pid {child.pid}) died: {describe_exit(code)} after {lived:.1f} s"
            if self._early[key] >= policy.max_early_deaths:
                raise CrashLoop(
                    f"{how}; it died {self._early[key]} times in a row within {policy.early_s:.0f} s of "
                    "its start, so it is not restarted again"
                )
            delay = policy.delay_s(self._early[key])
            self.say(f"genq: {how}; restarting it in {delay:.1f} s")
            self._restart_at[key] = now + delay

    def stop(self, child: Child, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Stop one child and forget it; return its exit code."""
        code = child.stop(timeout_s)
        self.children = [c for c in self.children if c is not child]
        for table in (self._policy, self._early, self._restart_at):
            table.pop(id(child), None)
        return code

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every child, newest first (so the API and workers go before Redis)."""
        for child in reversed(list(self.children)):
            self.stop(child, timeout_s)
