"""Where the swarm benchmark's wall time goes: pacman's phases and the nodes' logs.

pacman prints a line as each phase of ``-S`` starts (":: Retrieving packages...",
"checking keyring...", "checking package integrity...", ...). Run under ``stdbuf -oL`` its
output arrives line by line, so the time each line arrives splits an install into download,
pacman's own signature checks and the install proper, the same way for direct clients and for
clients of a pacswarm node. A node's log says, with millisecond timestamps, when it committed
each package and from where (``cached ... from <sources>``); against the moment pacman asked
for the packages, that is the node's time to fetch and verify them.
"""

from __future__ import annotations

import re
import resource
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchprocs import cpu_seconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support.cluster import SwarmNode
    from tests.support.pacman import PacmanEnv

#: pacman -S phases, by the line that starts each (first match wins; order = pacman's).
PHASES = (
    ("download", ":: Retrieving packages"),
    ("pacman gpg", "checking keyring"),
    ("install", "loading package files"),
)
_CACHED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+: cached (\S+) \((\d+) bytes, "
    r"verified, from (.*)\)$"
)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ")


@dataclass
class Run:
    """One pacman command: when it started and ended, and when each output line came."""

    who: str
    args: str
    start: float
    end: float
    returncode: int
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "\n".join(text for _, text in self.lines)

    def phases(self) -> dict[str, float]:
        """Seconds in each of :data:`PHASES` (plus "resolve" before the first)."""
        marks = [("resolve", self.start)]
        for name, prefix in PHASES:
            at = next((t for t, text in self.lines if text.startswith(prefix)), None)
            if at is not None:
                marks.append((name, at))
        marks.append(("end", self.end))
        return {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}

    def phase_start(self, name: str) -> float | None:
        prefix = dict(PHASES)[name]
        return next((t for t, text in self.lines if text.startswith(prefix)), None)


def run_pacman(env: PacmanEnv, who: str, *args: str, timeout: float) -> Run:
    """``env.run(*args)`` with line-buffered output, each line stamped (wall clock)."""
    from tests.support import gpg

    env.unlock()
    proc = subprocess.Popen(
        ["stdbuf", "-oL", *env.command(*args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=gpg.gpg_env(),
    )
    run = Run(who, " ".join(args), time.time(), 0.0, 0)
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append((time.time(), line.rstrip("\n")))
            if time.monotonic() > deadline:
                proc.kill()
                run.lines.append((time.time(), f"[bench: pacman killed after {timeout} s]"))
                break
        run.returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        run.end = time.time()
        gpg.kill_agent(env.gpgdir)
    env.unlock()
    return run


def _when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass(frozen=True)
class Cached:
    at: float
    path: str
    size: int
    sources: tuple[str, ...]

    @property
    def kind(self) -> str:
        """ "mirror", "peer" or "mirror+peer" (both sent part of it)."""
        kinds = sorted({"mirror" if s.startswith("http") else "peer" for s in self.sources})
        return "+".join(kinds)


def cached_lines(log: str) -> list[Cached]:
    out = []
    for line in log.splitlines():
        m = _CACHED.match(line)
        if m:
            sources = tuple(s.strip() for s in m.group(4).split(", "))
            out.append(Cached(_when(m.group(1)), m.group(2), int(m.group(3)), sources))
    return out


def warnings(log: str, since: float) -> list[str]:
    """WARNING/ERROR lines logged at or after ``since`` (wall clock)."""
    out = []
    for line in log.splitlines():
        m = _STAMP.match(line)
        if m and m.group(2) in ("WARNING", "ERROR") and _when(m.group(1)) >= since - 0.001:
            out.append(line)
    return out


def describe_node(name: str, log: str, install: Run) -> str:
    """One line: where this node's packages came from and how long it took to have them."""
    asked = install.phase_start("download") or install.start
    got = [c for c in cached_lines(log) if c.at >= install.start - 0.001]
    if not got:
        return f"  {name}: no package cached during its install (all were cached before?)"
    kinds: dict[str, int] = {}
    for c in got:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    first, last = min(c.at for c in got) - asked, max(c.at for c in got) - asked
    gpg_at = install.phase_start("pacman gpg")
    after = f"; pacman's checks began {gpg_at - asked:.2f} s" if gpg_at else ""
    return (
        f"  {name}: {len(got)} cached ("
        + ", ".join(f"{n} from {k}" for k, n in sorted(kinds.items()))
        + f"); first {first:.2f} s, last {last:.2f} s after pacman asked{after}"
    )


def phase_table(label: str, runs: list[Run]) -> str:
    """Median seconds per phase over ``runs`` (one pacman -S each), one line."""
    if not runs:
        return f"  {label}: -"
    per = [r.phases() for r in runs]
    names = ["resolve", *(n for n, _ in PHASES)]
    cells = []
    for n in names:
        values = [p[n] for p in per if n in p]
        if values:
            cells.append(f"{n} {statistics.median(values):.2f}")
    total = statistics.median(r.end - r.start for r in runs)
    return f"  {label} (n={len(runs)}, median s): " + ", ".join(cells) + f"; total {total:.2f}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def in_parallel(jobs: list[Callable[[], None]]) -> float:
    """Run the callables at once in threads; wall seconds; the first error re-raised."""
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def waited_cpu() -> float:
    """CPU seconds of the bench's reaped children (pacman, and the gpg pacman runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def nodes_cpu(nodes: list[SwarmNode]) -> tuple[float, float]:
    """CPU seconds of the node processes themselves, and of their helpers (gpg)."""
    pairs = [cpu_seconds(n.proc.pid) for n in nodes if n.proc is not None]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


# -- optional: py-spy on the nodes (``--profile``) -----------------------------------------


def start_profilers(
    pyspy: str, pids: dict[str, int], outdir: Path
) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (raw collapsed stacks, CPU only) on each node, until stopped."""
    outdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        argv = [pyspy, "record", "--pid", str(pid), "--format", "raw", "--nonblocking",
                "--output", str(outdir / f"{name}.txt"), "--duration", "600"]  # fmt: skip
        log = open(outdir / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        log.close()
    time.sleep(1.0)  # py-spy attaches
    return procs


def stop_profilers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT makes py-spy write what it sampled; kill any that does not end."""
    import signal

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _frame(text: str) -> str:
    """``func (path/to/mod.py:12)`` -> ``func (mod.py)``."""
    func, _, where = text.partition(" (")
    return f"{func} ({where.rsplit('/', 1)[-1].split(':', 1)[0]})"


#: Leaf frames of a thread that waits (py-spy --nonblocking still samples some of them).
IDLE_LEAVES = frozenset(
    ("EpollIOManager.get_events", "Condition.wait", "EpollSelector.select", "_worker", "Event.wait")
)


def profile_summary(files: list[Path], top: int = 12) -> list[str]:
    """Where the nodes' busy samples went: by leaf function, and by innermost pacswarm frame.

    Samples whose leaf is a wait (:data:`IDLE_LEAVES`) are left out; under contention a
    thread that is runnable but not running still counts, so shares are indicative only.
    """
    leaf: dict[str, int] = {}
    ours: dict[str, int] = {}
    total = idle = 0
    for file in files:
        if not file.exists():
            continue
        for line in file.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f for f in stack.split(";") if " (" in f]
            if not count.isdigit() or not frames:
                continue
            n = int(count)
            key = _frame(frames[-1])
            if key.split(" (")[0] in IDLE_LEAVES:
                idle += n
                continue
            total += n
            leaf[key] = leaf.get(key, 0) + n
            mine = [f for f in frames if "(pacswarm/" in f]
            where = _frame(mine[-1]) if mine else "(no pacswarm frame)"
            if "_thread_main (bridge.py)" in where:
                where = "libp2p's trio thread (ipfs/bridge.py)"
            ours[where] = ours.get(where, 0) + n
    if not total:
        return ["  no samples (py-spy could not attach?)"]
    out = [f"  {total} busy samples (100/s per thread) over every node; {idle} waiting, left out"]
    for title, table in (("leaf function", leaf), ("innermost pacswarm frame", ours)):
        out.append(f"  by {title}:")
        for key, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"    {100 * n / total:5.1f}%  {key}")
    return out
