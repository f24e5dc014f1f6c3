"""Benchmark: pacswarm against nginx as the Arch Wiki pacman cache, in the same run.

Both proxies sit in front of the same origin (a static nginx serving a throwaway signed repo of
random-byte packages). For each package size, 1 and N concurrent clients, cache miss and cache
hit, it prints median MB/s for both, the ratio pacswarm/nginx next to its target, and the time
to first byte of a miss. Only ratios from one run mean anything on a shared machine.

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
from types import FrameType
from typing import Protocol

from benchprocs import Registry
from benchrepo import Package, check_trust, db_path, kill_agents, make_keys, make_packages
from benchrepo import repo_dir, write_db
from benchreport import NGX, PS, Calibration, Row, print_calibration, print_rows, print_ttfb
from benchreport import size_label
from benchservers import NginxCache, Origin, Pacswarm
from httpclient import get_once, run_clients

MiB = 1 << 20
REQUEST_TIMEOUT = 60.0


class OutOfTime(Exception):
    """The run's time budget is spent: stop measuring and report what we have."""


class Server(Protocol):
    name: str
    port: int

    def clear_cache(self) -> None: ...
    def cached(self, size: int) -> int: ...
    def cpu(self) -> float: ...


@dataclass
class Settings:
    sizes: list[int]
    reps: int
    concurrency: int
    time_limit: float
    tmpdir: str | None
    keep: bool
    pacswarm: str | None
    hit_bytes: int  # bytes a hit repetition moves, at least one GET per client
    miss_bytes: int  # bytes a 1-client miss repetition moves, at least one GET


@dataclass
class Bench:
    settings: Settings
    origin: Origin
    servers: list[Server]
    packages: dict[int, list[Package]]
    deadline: float
    rows: list[Row] = field(default_factory=list)
    cals: list[Calibration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 reps, fewer bytes, no 300 MiB")
    p.add_argument("--sizes", help="package sizes in MiB, comma-separated (default 1,20,300)")
    p.add_argument("--reps", type=int, help="repetitions per row (default 5, --quick 3)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run (600, quick 240)")
    p.add_argument("--tmpdir", help="where to create the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("--pacswarm", help="pacswarm executable (default: next to this python)")
    p.add_argument("--nginx-only", action="store_true", help="do not run pacswarm")
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
        hit_bytes=(64 if a.quick else 256) * MiB,
        miss_bytes=(32 if a.quick else 64) * MiB,
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
