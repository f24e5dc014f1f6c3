"""The benchmark's servers: a static nginx origin, nginx as the Arch Wiki pacman cache
(proxy_store recipe), and pacswarm. Each runs in the foreground as our child, in its own
session (so Ctrl-C reaches only the bench, which then stops them), with its logs in the temp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from httpclient import HttpError, get_once

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Registry:
    """Every process the bench started, so the finally block can stop them all."""

    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path) -> Proc:
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (by pid, never by name)."""
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                print(f"warning: could not stop {proc.name} (pid {proc.popen.pid}): {e!r}")


def _proc_cpu(pid: int, with_waited: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_waited:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (children it reaped)
    return ticks / CLK_TCK


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of (the process itself, its helper processes: reaped or live descendants)."""
    own = _proc_cpu(pid, with_waited=False)
    helpers = _proc_cpu(pid, with_waited=True) - own
    stack = _children(pid)
    while stack:
        child = stack.pop()
        helpers += _proc_cpu(child, with_waited=True)
        stack.extend(_children(child))
    return own, helpers


def wait_ready(proc: Proc, port: int, probe: str | None, timeout: float = 20.0) -> None:
    """Wait until ``port`` accepts and (if given) GET ``probe`` answers 200."""
    deadline = time.monotonic() + timeout
    last = "no connection yet"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}; log:\n{proc.log_tail()}"
            )
        try:
            if probe is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            fetch = get_once(port, probe, timeout=5)
            if fetch.status == 200:
                return
            last = f"GET {probe}: HTTP {fetch.status}"
        except (OSError, HttpError) as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} not ready after {timeout:.0f} s ({last}); log:\n{proc.log_tail()}"
    )


class OutOfTime(Exception):
    """The run's time budget is spent: stop measuring and report what we have."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime("hard time limit reached (a step hung)")


def install_stop_signals() -> None:
    """Ctrl-C, SIGTERM and the SIGALRM hard limit all unwind to the caller's finally."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_alarm)
