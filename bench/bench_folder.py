"""Benchmark: a repo folder of 15,000 packages (``extra``-sized), full build vs one update.

Issue 8 keeps a UnixFS folder per repo and updates it after each newly verified or evicted
package; this measures what one update costs with :class:`DirectoryBuilder` (only the shards
on the changed entry's path are re-encoded) against building the whole folder again, and the
same for a ``core``-sized folder (basic, one node). Timings only, never pass/fail.

    PYTHONPATH=src .venv/bin/python bench/bench_folder.py [--entries 15000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pacswarm.ipfs.cid import CID, RAW
from pacswarm.ipfs.unixfsdir import DirectoryBuilder, Entry, build_directory

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the tests' Arch-like package names
    sys.path.insert(0, str(ROOT))
from tests.unit.test_unixfsdir import arch_like_names  # noqa: E402


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench(n: int, reps: int) -> None:
    names = arch_like_names(n)
    entries = {name: Entry(CID.of(name.encode(), RAW), 10_000_000) for name in names}
    full = median_ms(lambda: build_directory(entries), reps)
    builder = DirectoryBuilder(entries)
    first = builder.build()
    counter = iter(range(10**9))

    def update_one() -> None:
        i = next(counter)
        builder.set(names[i % n], Entry(CID.of(f"v{i}".encode(), RAW), i))
        builder.build()

    one = median_ms(update_one, reps * 20)
    fresh = len(builder.fresh_blocks())
    shape = f"sharded, {len(first.blocks)} blocks" if first.sharded else "basic, 1 block"
    print(f"{n:>6} entries ({shape}):")
    print(f"    full build (hash, encode, CIDs):     {full:9.1f} ms")
    print(f"    one-entry update + build:            {one:9.3f} ms ({fresh} blocks re-encoded)")
    print(f"    ratio full / update:                 {full / one:9.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=15_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    bench(args.entries, args.reps)
    bench(1_500, args.reps)  # core-sized: stays a basic directory


if __name__ == "__main__":
    main()
