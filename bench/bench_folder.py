"""Benchmark: a repo folder of 15,000 packages (``extra``-sized), full build vs one update.

Issue 8 keeps a UnixFS folder per repo and updates it after each newly verified or evicted
package; this measures what one update costs with :class:`DirectoryBuilder` (only the shards
on the changed entry's path are re-encoded) against building the whole folder again, and the
same for a ``core``-sized folder (basic, one node). Then the whole path the node runs, on a
real PackageBlockstore in a temporary directory: one event (a package verified, with its
``.sig``) -> RepoFolders build -> directory blocks stored as a new generation -> new root,
against storing a from-scratch build of the same tree. Timings only, never pass/fail.

    PYTHONPATH=src .venv/bin/python bench/bench_folder.py [--entries 15000] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.cid import CID, RAW
from pacswarm.ipfs.unixfsdir import DirectoryBuilder, Entry, build_directory
from pacswarm.ipns.folders import FolderTree
from pacswarm.ipns.folderservice import RepoFolders

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


def fill(store: PackageBlockstore, names: list[str]) -> list[tuple[CID, int]]:
    """Small stand-in packages (one raw block each), stored as the cache would hold them."""
    return [(store.add_copy(f"extra/x86_64/{n}", n.encode()), len(n)) for n in names]


def from_scratch(
    store: PackageBlockstore, names: list[str], packages: list[tuple[CID, int]], reps: int
) -> list[float]:
    """Seconds to build the same tree from nothing and store it, ``reps`` times."""
    times = []
    for i in range(reps):
        start = time.perf_counter()
        tree = FolderTree()
        for name, (cid, size) in zip(names, packages, strict=True):
            tree.set("extra", "x86_64", name, Entry(cid, size))
        built = tree.build()
        blocks_of = ((b.cid, b.data) for b in built.blocks)
        store.put_blocks(f"@bench/{i}", built.root, built.size, blocks_of)
        times.append(time.perf_counter() - start)
    return times


async def service(store: PackageBlockstore, names: list[str], reps: int) -> None:
    packages = fill(store, names)
    folders = RepoFolders(store, quiet=0.05, max_delay=0.5)
    for name, (cid, size) in zip(names, packages, strict=True):
        folders.package_added("extra", "x86_64", name, cid, size, None)
    await folders.start()
    start = time.perf_counter()
    await folders.flush()
    first = (time.perf_counter() - start) * 1000
    one, debounced, fresh = [], [], []
    for i in range(reps * 4):
        name = f"new{i}-1.0-1-x86_64.pkg.tar.zst"
        cid = store.add_copy(f"extra/x86_64/{name}", name.encode())
        start = time.perf_counter()
        folders.package_added("extra", "x86_64", name, cid, len(name), b"sig " + name.encode())
        if i % 2:
            roots = folders.generation
            async with asyncio.timeout(60):
                while folders.generation == roots:  # the debounce's own timer builds it
                    await asyncio.sleep(0.001)
            debounced.append(time.perf_counter() - start)
        else:
            await folders.flush()
            one.append(time.perf_counter() - start)
        assert folders.last_build is not None
        fresh.append(len(folders.last_build.fresh))
    beside = []
    for i in range(reps):
        name = f"core{i}-1.0-1-x86_64.pkg.tar.zst"
        cid = store.add_copy(f"core/x86_64/{name}", name.encode())
        start = time.perf_counter()
        folders.package_added("core", "x86_64", name, cid, len(name), None)
        await folders.flush()
        beside.append(time.perf_counter() - start)
    await folders.stop()
    assert folders.last_build is not None
    blocks = len(folders.last_build.blocks)
    scratch = from_scratch(store, names, packages, reps)
    ms = statistics.median
    print(f"RepoFolders on a real blockstore, extra/os/x86_64 with {len(names)} entries:")
    print(f"    first build + store ({blocks} directory blocks):      {first:9.1f} ms")
    print(
        f"    one event (package + .sig) -> new root, flush():   {ms(one) * 1000:9.1f} ms"
        f" ({statistics.median(fresh):.0f} fresh blocks)"
    )
    print(f"    same, through the debounce (quiet 50 ms):          {ms(debounced) * 1000:9.1f} ms")
    print(f"    one event in core/, beside that extra/:            {ms(beside) * 1000:9.1f} ms")
    print(f"    from-scratch build + store, for comparison:        {ms(scratch) * 1000:9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=15_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    bench(args.entries, args.reps)
    bench(1_500, args.reps)  # core-sized: stays a basic directory
    with tempfile.TemporaryDirectory(prefix="bench-folder-") as tmp:
        store = PackageBlockstore(Path(tmp) / "blocks.sqlite", lambda key: Path(tmp) / key)
        try:
            asyncio.run(service(store, arch_like_names(args.entries), args.reps))
        finally:
            store.close()


if __name__ == "__main__":
    main()
