"""Benchmark: pacswarm against nginx as the Arch Wiki pacman cache, in the same run.

Both proxies sit in front of the same origin (a static nginx serving a throwaway signed repo of
random-byte packages). For each package size, 1 and N concurrent clients, cache miss and cache
hit, it prints median MB/s for both, the ratio pacswarm/nginx next to its target, CPU s/GB of
pacswarm's own process and of its gpg children, the share of signatures decided in-process,
and the time to first byte of a miss. A second pacswarm node with ``fast_verify = false``
(every signature to gpg) runs the misses in the same repetitions: its table shows what the
in-process check gains. Only ratios from one run mean anything on a shared machine.

Every miss repetition starts on recently used memory (:func:`recycle_pages`: on a VM that
hands free memory back to its host, the first write to such a page costs ~2 CPU s/GB, and
which server paid it used to depend on timing). pacswarm's CPU for a miss is counted until the
node is idle again: the IPFS import and announcement it leaves for after the downloads (they
wait for pacman's downloads to end) are part of what a miss costs.

    .venv/bin/python bench/bench_proxy.py [--quick] [--sizes 1,20,300] [--reps 5]

Everything lives in a temp dir; every process started (nginx masters, pacswarm, gpg-agents) is
stopped on exit, also on Ctrl-C, SIGTERM or when the time limit is reached.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
from benchreport import (
    PS,
    PS_OFF,
    Calibration,
    Row,
    print_calibration,
    print_rows,
    print_ttfb,
    size_label,
)
from benchservers import NginxCache, Origin, Pacswarm
from httpclient import get_once, run_clients

MiB = 1 << 20
REQUEST_TIMEOUT = 60.0


class Server(Protocol):
    name: str
    port: int
    miss_only: bool  # run in the miss rows only

    def clear_cache(self) -> None: ...
    def cached(self, size: int) -> int: ...
    def cpu(self) -> tuple[float, float]: ...


@dataclass
class Settings:
    sizes: list[int]
    reps: int  # per miss row; hit rows get 2 * reps + 1
    concurrency: int
    time_limit: float
    tmpdir: str | None
    keep: bool
    pacswarm: str | None
    hit_bytes: int  # bytes a hit repetition moves, at least one GET per client
    miss_bytes: int  # bytes a 1-client miss repetition moves, at least one GET
    splice: bool  # client discards bodies with splice(2) instead of recv_into
    verify_window: float  # pacswarm's verify_window (its default is 5 s; see --verify-window)
    fast_off: bool  # also run the node with fast_verify = false in the miss rows


@dataclass
class Bench:
    settings: Settings
    origin: Origin
    servers: list[Server]
    packages: dict[int, list[Package]]
    deadline: float
    tmp: Path
    rows: list[Row] = field(default_factory=list)
    cals: list[Calibration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 reps, fewer bytes, no 300 MiB")
    p.add_argument("--sizes", help="package sizes in MiB, comma-separated (default 1,20,300)")
    p.add_argument(
        "--reps",
        type=int,
        help="repetitions of a miss row (default 5, --quick 3); hit rows, "
        "which are cheap and noisier, get twice as many plus one",
    )
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run (600, quick 240)")
    p.add_argument("--tmpdir", help="where to create the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("--pacswarm", help="pacswarm executable (default: next to this python)")
    p.add_argument("--nginx-only", action="store_true", help="do not run pacswarm")
    p.add_argument(
        "--client",
        choices=["recv", "splice"],
        default="recv",
        help="recv: copy bodies to user space like pacman/curl (default); splice: zero-copy "
        "to /dev/null, so the client takes less CPU from the servers on a small machine",
    )
    p.add_argument(
        "--verify-window",
        type=float,
        default=0.0,
        help="pacswarm's verify_window in seconds (default 0: bytes stream as they arrive, as "
        "with nginx, so first bytes compare; bench_window.py measures the window itself)",
    )
    p.add_argument(
        "--no-fast-off",
        action="store_true",
        help="do not run the second node with fast_verify = false (shorter run)",
    )
    a = p.parse_args(argv)
    default_sizes = "1,20" if a.quick else "1,20,300"
    sizes = [int(float(s) * MiB) for s in (a.sizes or default_sizes).split(",") if s.strip()]
    return Settings(
        sizes=sorted(set(sizes)),
        reps=a.reps or (3 if a.quick else 5),
        concurrency=max(1, a.concurrency),
        time_limit=a.time_limit or (240.0 if a.quick else 600.0),
        tmpdir=a.tmpdir,
        keep=a.keep,
        pacswarm=None if a.nginx_only else (a.pacswarm or _default_pacswarm()),
        hit_bytes=(128 if a.quick else 256) * MiB,
        miss_bytes=(32 if a.quick else 64) * MiB,
        splice=a.client == "splice",
        verify_window=a.verify_window,
        fast_off=not a.no_fast_off,
    )


def _default_pacswarm() -> str:
    beside = Path(sys.executable).parent / "pacswarm"  # the venv's bin/, not resolved
    if beside.exists():
        return str(beside)
    return str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "pacswarm")


def package_counts(s: Settings) -> dict[int, int]:
    """One package per client per size, more for small sizes so misses move enough bytes."""
    counts = {}
    for size in s.sizes:
        per_client = max(1, min(4, s.miss_bytes // (s.concurrency * size)))
        counts[size] = s.concurrency * per_client
    return counts


def check_time(bench: Bench) -> None:
    if time.monotonic() > bench.deadline:
        raise OutOfTime(f"time limit of {bench.settings.time_limit:.0f} s reached")


def miss_plans(bench: Bench, size: int, clients: int) -> list[list[str]]:
    """Distinct packages, so every GET is a miss: 1 client walks a few, N clients split all."""
    pkgs = bench.packages[size]
    if clients == 1:
        count = min(len(pkgs), max(1, math.ceil(bench.settings.miss_bytes / size)))
        return [[p.path for p in pkgs[:count]]]
    return [[p.path for p in pkgs[i::clients]] for i in range(clients)]


def hit_plans(bench: Bench, size: int, clients: int) -> list[list[str]]:
    """Client i cycles through packages i, i+N, ... until the repetition moved hit_bytes."""
    pkgs = bench.packages[size]
    per_client = max(1, math.ceil(bench.settings.hit_bytes / (clients * size)))
    return [
        [pkgs[(i + j * clients) % len(pkgs)].path for j in range(per_client)]
        for i in range(clients)
    ]


def measure(bench: Bench, server: Server, row: Row, plans: list[list[str]]) -> None:
    """One repetition against one server; checks every body had the package's size."""
    checks0 = server.signature_checks() if isinstance(server, Pacswarm) else None
    own0, helpers0 = server.cpu()
    run = run_clients(server.port, plans, REQUEST_TIMEOUT, splice=bench.settings.splice)
    during = server.cpu()[0] - own0
    if isinstance(server, Pacswarm) and row.case == "miss":
        server.settle()  # the import and announcement each miss leaves behind are its cost
    own1, helpers1 = server.cpu()
    checks1 = server.signature_checks() if isinstance(server, Pacswarm) else None
    short = [f for f in run.fetches if f.nbytes != row.size]
    if short:
        raise RuntimeError(f"{server.name}: {short[0].path} came back with {short[0].nbytes} B")
    series = row.of(server.name)
    series.add(run.nbytes, run.wall, (own1 - own0, helpers1 - helpers0), run.cpu, during)
    series.add_checks(checks0, checks1)
    if row.case == "miss":
        series.ttfb_ms.extend(f.ttfb * 1000 for f in run.fetches)
        series.tail_ms.extend(f.tail_wait * 1000 for f in run.fetches if f.tail_at)


def recycle_pages(tmp: Path, nbytes: int) -> None:
    """Write and delete a file as big as what the repetition will cache, just before it.

    On a VM whose balloon driver hands free memory back to the host (free page reporting,
    as here), the first write to a page the host took back costs ~2 CPU s/GB, ten times a
    page-cache write on bare metal (0.2). Which server paid it depended on timing: nginx's
    cache is cleared right before its repetition, so it reused the pages it had just
    freed, while a pacswarm node restarts in between, long enough for the host to take
    them back. This gives every server, every repetition, recently used pages, as on a
    machine without that tax.
    """
    path = tmp / "recycle-pages"
    piece = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range((nbytes + nbytes // 4 + (64 << 20)) >> 20):
            f.write(piece)
    path.unlink()


def drop_pacswarm(bench: Bench, row: Row | None, error: BaseException, name: str) -> None:
    """A pacswarm node failed: say why (with its log) and go on without it."""
    server = next((s for s in bench.servers if s.name == name), None)
    tail = server.log_tail() if isinstance(server, Pacswarm) else ""
    bench.notes.append(f"{name} failed ({error}); later rows are without it. Log tail:\n{tail}")
    bench.servers = [s for s in bench.servers if s.name != name]
    if row is not None:
        row.note = f"{name} failed"


def run_row(bench: Bench, size: int, clients: int, case: str) -> None:
    reps = bench.settings.reps
    row = Row(size, clients, case, reps if case == "miss" else 2 * reps + 1)
    bench.rows.append(row)
    make = miss_plans if case == "miss" else hit_plans
    plans = make(bench, size, clients)
    servers = [s for s in bench.servers if case == "miss" or not s.miss_only]
    for rep in range(row.reps):
        check_time(bench)
        order = servers if rep % 2 == 0 else list(reversed(servers))
        for server in order:
            if server not in bench.servers:
                continue  # it failed earlier in this row
            try:
                if case == "miss":
                    server.clear_cache()
                    os.sync()  # earlier repetitions' writeback must not cost this one
                    recycle_pages(bench.tmp, row.size * sum(len(p) for p in plans))
                measure(bench, server, row, plans)
            except (OSError, RuntimeError) as e:
                if not isinstance(server, Pacswarm):
                    raise
                drop_pacswarm(bench, row, e, server.name)
        print(f"  {size_label(size)} x{clients} {case} rep {rep + 1}: {_progress(row)}", flush=True)


def _progress(row: Row) -> str:
    return ", ".join(f"{name} {s.mbps[-1]:.0f} MB/s" for name, s in row.series.items() if s.mbps)


def warm(bench: Bench, server: Server, size: int) -> None:
    """GET every package once through ``server`` and wait until its cache holds them all."""
    pkgs = bench.packages[size]
    for pkg in pkgs:
        fetch = get_once(server.port, pkg.path, REQUEST_TIMEOUT)
        if fetch.status != 200:
            raise RuntimeError(f"{server.name}: GET {pkg.path}: HTTP {fetch.status}")
    deadline = time.monotonic() + 60
    while server.cached(size) < len(pkgs):
        check_time(bench)
        if time.monotonic() > deadline:
            bench.notes.append(
                f"{server.name}: after 60 s only {server.cached(size)} of {len(pkgs)} "
                f"{size_label(size)} packages found in its cache dir; hits may be misses"
            )
            return
        time.sleep(0.1)


def curl_mbps(port: int, paths: list[str]) -> float | None:
    """The same GETs with curl on one connection (bodies to /dev/null), as a client check."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    argv = [curl, "-s", "-w", "%{size_download} %{time_total}\\n"]
    for path in paths:
        argv += ["-o", "/dev/null", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False).stdout
    pairs = [line.split() for line in out.splitlines() if line.strip()]
    nbytes, seconds = sum(float(p[0]) for p in pairs), sum(float(p[1]) for p in pairs)
    return nbytes / seconds / 1e6 if seconds else None


def calibrate(bench: Bench, size: int) -> None:
    """Our client and curl straight from the origin: the client must not be the bottleneck."""
    plan = hit_plans(bench, size, 1)[0]
    for pkg in bench.packages[size]:  # also pulls the origin's files into the page cache
        get_once(bench.origin.port, pkg.path, REQUEST_TIMEOUT)
    port, splice = bench.origin.port, bench.settings.splice
    runs = [run_clients(port, [plan], REQUEST_TIMEOUT, splice) for _ in range(3)]
    best = max(runs, key=lambda r: r.nbytes / r.wall)
    curl = curl_mbps(bench.origin.port, plan[:64])
    per_gb = best.cpu / (best.nbytes / 1e9)
    bench.cals.append(Calibration(size, best.nbytes / best.wall / 1e6, curl, per_gb))


def run_size(bench: Bench, size: int) -> None:
    print(f"{size_label(size)}:", flush=True)
    calibrate(bench, size)
    for clients in sorted({1, bench.settings.concurrency}):
        run_row(bench, size, clients, "miss")
    for server in [s for s in bench.servers if not s.miss_only]:
        try:
            warm(bench, server, size)
        except (OSError, RuntimeError) as e:
            if not isinstance(server, Pacswarm):
                raise
            drop_pacswarm(bench, None, e, server.name)
    for clients in sorted({1, bench.settings.concurrency}):
        run_row(bench, size, clients, "hit")


def build_origin(
    s: Settings, tmp: Path, homes: list[Path]
) -> tuple[Path, dict[int, list[Package]]]:
    """Keys, keyring, signed random packages and the repo db; returns (gpgdir, packages)."""
    t0 = time.monotonic()
    keys = make_keys(tmp / "keys", homes)
    packages = make_packages(keys, tmp / "origin", package_counts(s))
    flat = [p for size in sorted(packages) for p in packages[size]]
    write_db(tmp / "origin", flat)
    check_trust(keys, repo_dir(tmp / "origin") / flat[0].filename)
    total = sum(p.size for p in flat)
    print(
        f"origin: {len(flat)} signed packages, {total / MiB:.0f} MiB, {time.monotonic() - t0:.1f} s"
    )
    return keys.gpgdir, packages


def start_servers(
    s: Settings, tmp: Path, reg: Registry, gpgdir: Path
) -> tuple[Origin, list[Server], list[str]]:
    """Origin, nginx cache and the pacswarm nodes that start; the strs say who is missing."""
    origin = Origin(reg, tmp / "nginx-origin", tmp / "origin")
    servers: list[Server] = [NginxCache(reg, tmp / "nginx-cache", origin.port)]
    if s.pacswarm is None:
        return origin, servers, ["pacswarm not run (--nginx-only)"]
    if not Path(s.pacswarm).exists():
        return origin, servers, [f"pacswarm not run: {s.pacswarm} does not exist"]
    mirrorlist = tmp / "mirrorlist"
    mirrorlist.write_text(f"Server = http://127.0.0.1:{origin.port}/$repo/os/$arch\n")
    window = f"verify_window = {s.verify_window:g}\n"
    nodes = [(PS, window, False)]
    if s.fast_off:
        nodes.append((PS_OFF, window + "fast_verify = false\n", True))
    why = []
    for name, config, miss_only in nodes:
        try:
            node = Pacswarm(
                reg, tmp / name, s.pacswarm, mirrorlist, gpgdir, config, name, miss_only
            )
        except (OSError, RuntimeError) as e:
            why.append(f"{name} could not start (config: {config.strip()!r}): {e}")
            continue
        servers.insert(len(servers) - 1, node)
    return origin, servers, why


def run_all(
    s: Settings, tmp: Path, reg: Registry, homes: list[Path], bench_box: list[Bench]
) -> None:
    start = time.monotonic()
    print(f"load average at the start: {loadavg()} ({os.cpu_count()} CPUs)", flush=True)
    gpgdir, packages = build_origin(s, tmp, homes)
    origin, servers, why = start_servers(s, tmp, reg, gpgdir)
    bench = Bench(s, origin, servers, packages, start + s.time_limit, tmp)
    bench_box.append(bench)
    for reason in why:
        bench.notes.append(reason)
        print(reason, flush=True)
    for size in s.sizes:
        run_size(bench, size)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def report(bench: Bench | None, stopped: str) -> None:
    if bench is not None:
        bench.notes.append(f"load average at the end: {loadavg()} ({os.cpu_count()} CPUs)")
        client = "splice to /dev/null" if bench.settings.splice else "recv_into a buffer"
        window = f"verify_window = {bench.settings.verify_window:g} s"
        print_rows(bench.rows, client, PS, f" (fast path on, {window})")
        print_rows(bench.rows, client, PS_OFF, f" (fast_verify = false, {window}; misses only)")
        print_ttfb(bench.rows, PS)
        print_ttfb(bench.rows, PS_OFF)
        print_calibration(bench.cals)
        for note in bench.notes:
            print(f"\nnote: {note}")
    if stopped:
        print(f"\nstopped early: {stopped}")


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    install_stop_signals()
    signal.alarm(int(s.time_limit) + 120)
    tmp = Path(tempfile.mkdtemp(prefix="pacswarm-bench-", dir=s.tmpdir))
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
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.alarm(0)
        reg.stop_all()
        kill_agents(homes)
        if s.keep:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(box[0] if box else None, stopped)
    return code


if __name__ == "__main__":
    sys.exit(main())
