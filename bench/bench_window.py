"""Benchmark: what pacswarm's verify window costs a cache miss, window on and off, same run.

Two pacswarm nodes, ``verify_window = 5`` (the default; ``--window``) and ``verify_window = 0``
(off), sit in front of the same nginx origin serving a throwaway signed repo of random-byte
packages. For each *link* (the origin unthrottled, or slowed with nginx ``limit_rate``) and
package size, each repetition GETs a package neither node has yet, one GET at a time, and
records the time to the first body byte, the total time, how long the last 64 KiB took (the
tail pacswarm holds back until sha256 and signature pass) and the longest silence pacman
would see. It prints medians, min-max and the ratios window on / off, and what they mean for
pacman's low-speed rule (a transfer moving < 1 byte/s for 10 s is aborted).

    .venv/bin/python bench/bench_window.py [--quick] [--sizes 1,20,300] [--rates 0,20,2]

Everything lives in a temp dir; every process started (nginx origins, pacswarm, gpg-agents) is
stopped on exit, also on Ctrl-C, SIGTERM or when the time limit is reached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_proxy import _default_pacswarm, loadavg
from benchprocs import OutOfTime, Registry, install_stop_signals
from benchrepo import (
    Package,
    check_trust,
    kill_agents,
    make_keys,
    make_packages,
    repo_dir,
    write_db,
)
from benchservers import Origin, Pacswarm
from httpclient import BUF_SIZE, TAIL, Conn, Head

MiB = 1 << 20
REQUEST_TIMEOUT = 120.0
WARM_SIZE = 300_001  # the warm-up package: its own size, never one of the measured ones
MAX_WIRE = 60.0  # seconds: a size/link pair slower than this is skipped (say so)
PACMAN_LIMIT = 10.0  # pacman aborts a transfer below 1 byte/s for this many seconds
ON, OFF = "on", "off"


@dataclass(frozen=True)
class Link:
    """The origin's speed per request: nginx ``limit_rate`` in bytes/s (0 = unthrottled)."""

    rate: int

    @property
    def label(self) -> str:
        return f"{self.rate / 1e6:g} MB/s" if self.rate else "unthrottled"

    def wire(self, nbytes: int) -> float:
        """Seconds ``nbytes`` take at this speed (0 when unthrottled)."""
        return nbytes / self.rate if self.rate else 0.0


@dataclass(frozen=True)
class Sample:
    """One GET, seconds from sending the request: first body byte, last byte; how long the
    last 64 KiB took; the longest time without a body byte (the first byte or a gap)."""

    ttfb: float
    total: float
    tail: float
    silence: float


@dataclass
class Cell:
    """One (link, size): the samples of each node, and one GET from the origin for scale."""

    link: Link
    size: int
    reps: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    origin: Sample | None = None
    note: str = ""

    def of(self, name: str) -> list[Sample]:
        return self.samples.setdefault(name, [])


@dataclass
class Settings:
    sizes: list[int]
    links: list[Link]
    reps: int
    big_reps: int  # for sizes >= 100 MiB
    window: float
    time_limit: float
    tmpdir: str | None
    keep: bool
    pacswarm: str


@dataclass
class Bench:
    settings: Settings
    packages: dict[int, list[Package]]
    origins: dict[Link, Origin]
    nodes: dict[str, Pacswarm]
    mirrorlist: Path
    deadline: float
    cells: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 and 20 MiB, links 0 and 2 MB/s, 3 reps")
    p.add_argument("--sizes", help="package sizes in MiB, comma-separated (default 1,20,300)")
    p.add_argument(
        "--rates",
        help="origin link speeds in MB/s (10^6 B/s), 0 = unthrottled (default 0,20,2; quick 0,2)",
    )
    p.add_argument("--reps", type=int, help="repetitions per row (default 5, quick 3)")
    p.add_argument("--window", type=float, default=5.0, help="verify_window of the 'on' node")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run (840, quick 100)")
    p.add_argument("--tmpdir", help="where to create the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("--pacswarm", help="pacswarm executable (default: next to this python)")
    a = p.parse_args(argv)
    sizes = a.sizes or ("1,20" if a.quick else "1,20,300")
    rates = a.rates or ("0,2" if a.quick else "0,20,2")
    reps = a.reps or (3 if a.quick else 5)
    return Settings(
        sizes=sorted({int(float(s) * MiB) for s in sizes.split(",") if s.strip()}),
        links=[Link(int(float(r) * 1e6)) for r in rates.split(",") if r.strip()],
        reps=reps,
        big_reps=min(reps, 3),
        window=a.window,
        time_limit=a.time_limit or (100.0 if a.quick else 840.0),
        tmpdir=a.tmpdir,
        keep=a.keep,
        pacswarm=a.pacswarm or _default_pacswarm(),
    )


def reps_for(s: Settings, size: int) -> int:
    return s.big_reps if size >= 100 * MiB else s.reps


class GapConn(Conn):
    """A Conn that also records the longest wait between two body reads.

    pacman's libcurl aborts when fewer than 1 byte/s arrive for 10 s, so the number that
    matters is the longest silence: the first byte (the window) or a gap mid-body.
    """

    gap = 0.0

    def _read_plain(
        self, sock: socket.socket, head: Head, first: float
    ) -> tuple[int, float, float]:
        got, want = len(head.leftover), head.length
        if want is None:
            raise RuntimeError("pacswarm sent no Content-Length for a package")
        tail_mark = want - TAIL if want > TAIL else None
        tail_at, gap, last = 0.0, 0.0, time.perf_counter()
        while got < want:
            if tail_mark is not None and not tail_at and got >= tail_mark:
                tail_at = time.perf_counter()
            n = sock.recv_into(self.view, min(BUF_SIZE, want - got))
            now = time.perf_counter()
            if n == 0:
                self.close()
                raise RuntimeError(f"body truncated at {got} of {want} bytes")
            first = first or now
            gap, last = max(gap, now - last), now
            got += n
        self.gap = gap
        return got, first, tail_at


def fetch(port: int, pkg: Package) -> Sample:
    """One GET on a fresh connection; fails unless the whole package came back."""
    conn = GapConn(port, REQUEST_TIMEOUT)
    try:
        f = conn.get(pkg.path)
    finally:
        conn.release()
    if f.status != 200 or f.nbytes != pkg.size:
        raise RuntimeError(f"GET {pkg.path}: HTTP {f.status}, {f.nbytes} of {pkg.size} bytes")
    return Sample(f.ttfb, f.total, f.tail_wait, max(f.ttfb, conn.gap))


def check_time(bench: Bench) -> None:
    if time.monotonic() > bench.deadline:
        raise OutOfTime(f"time limit of {bench.settings.time_limit:.0f} s reached")


def run_cell(bench: Bench, link: Link, size: int) -> None:
    """Repetitions of one (link, size): each a package new to both nodes, order alternating."""
    cell = Cell(link, size, reps_for(bench.settings, size))
    bench.cells.append(cell)
    if link.wire(size) > MAX_WIRE:
        cell.note = f"skipped: {link.wire(size):.0f} s per GET at this speed"
        return
    if link.wire(size) <= 2.0:  # the origin alone, for scale (cheap rows only)
        cell.origin = fetch(bench.origins[link].port, bench.packages[size][0])
    names = list(bench.nodes)
    for rep in range(cell.reps):
        check_time(bench)
        pkg = bench.packages[size][rep]
        for name in names if rep % 2 == 0 else reversed(names):
            os.sync()  # the last repetition's writeback must not cost this one
            cell.of(name).append(fetch(bench.nodes[name].port, pkg))
        on, off = cell.of(ON)[-1], cell.of(OFF)[-1]
        print(
            f"  {link.label} {size / MiB:g} MiB rep {rep + 1}: TTFB on {on.ttfb:.3f} s, "
            f"off {off.ttfb:.3f} s; total on {on.total:.3f} s, off {off.total:.3f} s",
            flush=True,
        )


def point_nodes_at(bench: Bench, link: Link, first: bool) -> None:
    """Mirrorlist -> this link's origin; fresh nodes (empty caches); one warm-up miss each."""
    port = bench.origins[link].port
    bench.mirrorlist.write_text(f"Server = http://127.0.0.1:{port}/$repo/os/$arch\n")
    for node in bench.nodes.values():
        if not first:
            node.clear_cache()  # a restart on a new data dir, reading the new mirrorlist
        fetch(node.port, bench.packages[WARM_SIZE][0])  # first gpg run, first connection


def build_repo(s: Settings, tmp: Path, homes: list[Path]) -> tuple[Path, dict[int, list[Package]]]:
    """Keys, keyring, signed random packages (one per repetition and size) and the repo db."""
    t0 = time.monotonic()
    keys = make_keys(tmp / "keys", homes)
    counts = {size: reps_for(s, size) for size in s.sizes}
    counts[WARM_SIZE] = 1
    packages = make_packages(keys, tmp / "origin", counts)
    flat = [p for size in sorted(packages) for p in packages[size]]
    write_db(tmp / "origin", flat)
    check_trust(keys, repo_dir(tmp / "origin") / flat[0].filename)
    total = sum(p.size for p in flat)
    print(
        f"repo: {len(flat)} signed packages, {total / MiB:.0f} MiB, {time.monotonic() - t0:.1f} s"
    )
    return keys.gpgdir, packages


def start_servers(
    s: Settings, tmp: Path, reg: Registry, gpgdir: Path
) -> tuple[dict[Link, Origin], dict[str, Pacswarm], Path]:
    if not Path(s.pacswarm).exists():
        raise RuntimeError(f"{s.pacswarm} does not exist: pass --pacswarm or install the venv")
    origins = {
        link: Origin(reg, tmp / f"origin-{link.rate}", tmp / "origin", link.rate)
        for link in s.links
    }
    mirrorlist = tmp / "mirrorlist"
    port = origins[s.links[0]].port
    mirrorlist.write_text(f"Server = http://127.0.0.1:{port}/$repo/os/$arch\n")
    configs = {ON: f"verify_window = {s.window}\n", OFF: "verify_window = 0\n"}
    nodes = {
        name: Pacswarm(reg, tmp / f"pacswarm-{name}", s.pacswarm, mirrorlist, gpgdir, extra)
        for name, extra in configs.items()
    }
    return origins, nodes, mirrorlist


def run_all(s: Settings, tmp: Path, reg: Registry, homes: list[Path], box: list[Bench]) -> None:
    start = time.monotonic()
    print(f"load average at the start: {loadavg()} ({os.cpu_count()} CPUs)", flush=True)
    gpgdir, packages = build_repo(s, tmp, homes)
    origins, nodes, mirrorlist = start_servers(s, tmp, reg, gpgdir)
    bench = Bench(s, packages, origins, nodes, mirrorlist, start + s.time_limit)
    box.append(bench)
    for i, link in enumerate(s.links):
        check_time(bench)
        print(f"{link.label}:", flush=True)
        point_nodes_at(bench, link, first=i == 0)
        for size in s.sizes:
            run_cell(bench, link, size)


# -- the report -------------------------------------------------------------------------


def _stat(values: list[float]) -> str:
    """``median [min-max]`` in seconds, or n/a."""
    if not values:
        return f"{'n/a':<21}"
    med = statistics.median(values)
    return f"{med:6.3f} [{min(values):.3f}-{max(values):.3f}]".ljust(21)


def _ratio(on: list[float], off: list[float]) -> str:
    if not on or not off or not statistics.median(off):
        return f"{'n/a':>7}"
    r = statistics.median(on) / statistics.median(off)
    return f"{r:7.0f}" if r >= 100 else f"{r:7.2f}"


def _paired(on: list[float], off: list[float]) -> str:
    """Lowest-highest ratio of the repetitions (same package, back to back)."""
    pairs = [a / b for a, b in zip(on, off, strict=False) if b]
    return f"{min(pairs):.2f}-{max(pairs):.2f}" if pairs else "n/a"


def _head(cell: Cell) -> str:
    done = min((len(v) for v in cell.samples.values()), default=0)
    reps = f"{done}" if done == cell.reps else f"{done}/{cell.reps}"
    return f"{cell.link.label:>11} {cell.size / MiB:>5g} MiB {reps:>4}"


def _values(cell: Cell, name: str, what: str) -> list[float]:
    return [getattr(s, what) for s in cell.samples.get(name, [])]


def print_first_byte(cells: list[Cell], window: float) -> None:
    print(f"\ntime to first body byte, s (window on = {window:g} s, off = 0)")
    print(
        f"{'link':>11} {'size':>9} {'reps':>4}  {'window on':<21} {'window off':<21} "
        f"{'on/off':>7} {'origin':>7}"
    )
    for c in cells:
        if c.note:
            print(f"{_head(c)}  {c.note}")
            continue
        on, off = _values(c, ON, "ttfb"), _values(c, OFF, "ttfb")
        origin = f"{c.origin.ttfb:7.3f}" if c.origin else f"{'-':>7}"
        print(f"{_head(c)}  {_stat(on)} {_stat(off)} {_ratio(on, off)} {origin}")


def print_total(cells: list[Cell]) -> None:
    print("\ntotal time of the miss (request to last byte), s; wire = size / nominal speed")
    print(
        f"{'link':>11} {'size':>9} {'reps':>4}  {'window on':<21} {'window off':<21} "
        f"{'on/off':>7} {'rep range':>9} {'origin':>7} {'wire':>7}"
    )
    for c in cells:
        if c.note:
            continue
        on, off = _values(c, ON, "total"), _values(c, OFF, "total")
        origin = f"{c.origin.total:7.3f}" if c.origin else f"{'-':>7}"
        wire = f"{c.link.wire(c.size):7.2f}" if c.link.rate else f"{'-':>7}"
        print(
            f"{_head(c)}  {_stat(on)} {_stat(off)} {_ratio(on, off)} "
            f"{_paired(on, off):>9} {origin} {wire}"
        )


def print_silence(cells: list[Cell]) -> None:
    print("\npacman's low-speed rule: the longest time pacman got no body byte (first byte or")
    print(
        f"a gap), worst repetition, and what is left of its {PACMAN_LIMIT:g} s; * = under 3 s left"
    )
    print(
        f"{'link':>11} {'size':>9} {'reps':>4}  {'on: silence':>11} {'left':>6}  "
        f"{'off: silence':>12} {'left':>6}"
    )
    for c in cells:
        if c.note:
            continue
        line = _head(c) + " "
        for name, width in ((ON, 11), (OFF, 12)):
            worst = max(_values(c, name, "silence"), default=None)
            if worst is None:
                line += f" {'n/a':>{width}} {'':>6} "
                continue
            left = PACMAN_LIMIT - worst
            line += f" {worst:>{width}.3f} {left:6.2f}{'*' if left < 3 else ' '}"
        print(line)


def print_tail(cells: list[Cell], window: float) -> None:
    """The held-back tail: from the last upstream byte to its release is the verification."""
    print("\nverification at the end of a miss: how long the last 64 KiB took, s. pacswarm")
    print("releases them once sha256 + gpg pass, so unthrottled this is the verification work")
    print("left after the last upstream byte; throttled it also holds the 64 KiB's own wire")
    print("time (33 ms at 2 MB/s) and up to one 50 ms pacing step of the origin nginx.")
    print("Window on: only rows that outlived the window.")
    print(f"{'link':>11} {'size':>9} {'reps':>4}  {'window on':<21} {'window off':<21}")
    for c in cells:
        if c.note:
            continue
        cols = []
        for name in (ON, OFF):
            samples = c.samples.get(name, [])
            if name == ON:  # verified inside the window: the whole file came at once
                samples = [s for s in samples if s.ttfb >= window * 0.95]
            cols.append(
                _stat([s.tail for s in samples]) if samples else f"{'(verified in window)':<21}"
            )
        print(f"{_head(c)}  {cols[0]} {cols[1]}")


def _med(cell: Cell, name: str, what: str) -> float:
    return statistics.median(_values(cell, name, what))


def print_summary(cells: list[Cell], window: float) -> None:
    """The numbers against pacman's rule, in words; which rows outlived the window."""
    measured = [c for c in cells if c.samples.get(ON) and c.samples.get(OFF)]
    if not measured:
        return
    worst = max(measured, key=lambda c: max(_values(c, ON, "silence")))
    silence = max(_values(worst, ON, "silence"))
    off_worst = max(max(_values(c, OFF, "silence")) for c in measured)
    outlived = [c for c in measured if _med(c, ON, "ttfb") >= window * 0.95]
    inside = [c for c in measured if c not in outlived]
    print(f"\nWhat this means (window on = {window:g} s; pacman: < 1 byte/s for 10 s = abort):")
    print("- Inside the window a miss reaches pacman only verified: first byte = download +")
    print("  verification, then the whole file at local speed. A miss that outlives it streams")
    print(f"  from the window's end (first byte at ~{window:g} s), the last 64 KiB held until")
    print("  verified: its total time stays the download's.")
    where = f"{worst.link.label}, {worst.size / MiB:g} MiB"
    print(f"- Longest silence with the window on: {silence:.3f} s ({where}):")
    print(f"  {PACMAN_LIMIT - silence:.2f} s left of pacman's 10 s; window off: {off_worst:.3f} s.")
    for label, group in (("verified inside the window", inside), ("outlived it", outlived)):
        if not group:
            continue
        extra = [_med(c, ON, "total") - _med(c, OFF, "total") for c in group]
        ratio = [_med(c, ON, "total") / _med(c, OFF, "total") for c in group]
        print(
            f"- Rows {label} (by median first byte; {len(group)}): total time on - off "
            f"{min(extra):+.3f} to {max(extra):+.3f} s, on/off {min(ratio):.2f}-{max(ratio):.2f}."
        )


def print_report(cells: list[Cell], window: float, notes: list[str]) -> None:
    print("\nverify window: cache-miss GETs through pacswarm, one at a time, 127.0.0.1, same run.")
    print(f"Two nodes: verify_window = {window:g} s (on) and 0 (off). link = the origin nginx's")
    print("limit_rate per request (MB/s = 10^6 B/s). Values: median [min-max] over the")
    print("repetitions, each a package neither node had; origin = one GET straight from it.")
    print_first_byte(cells, window)
    print_total(cells)
    print_silence(cells)
    print_tail(cells, window)
    print_summary(cells, window)
    for note in notes:
        print(f"\nnote: {note}")


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    install_stop_signals()
    signal.alarm(int(s.time_limit) + 60)
    tmp = Path(tempfile.mkdtemp(prefix="pacswarm-bench-window-", dir=s.tmpdir))
    reg, homes, box = Registry(), list[Path](), list[Bench]()
    stopped, code = "", 0
    try:
        run_all(s, tmp, reg, homes, box)
    except (KeyboardInterrupt, OutOfTime) as e:
        stopped = str(e) or type(e).__name__
    except Exception as e:
        stopped, code = f"error: {e!r}", 1
        import traceback

        traceback.print_exc()
        for node in box[0].nodes.values() if box else []:
            print(f"\n{node.root.name} log tail:\n{node.log_tail()}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.alarm(0)
        reg.stop_all()
        kill_agents(homes)
        if s.keep:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if box:
        box[0].notes.append(f"load average at the end: {loadavg()} ({os.cpu_count()} CPUs)")
        print_report(box[0].cells, s.window, box[0].notes)
    if stopped:
        print(f"\nstopped early: {stopped}")
    return code


if __name__ == "__main__":
    sys.exit(main())
