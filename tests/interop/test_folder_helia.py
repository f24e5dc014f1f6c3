"""Helia reads a pacswarm repo folder by path over pacswarm's gateway (issue 8).

Helia's own UnixFS (``@helia/unixfs`` ``ls``/``cat`` with a path, helia_ls.mjs) walks the
folder's directories and HAMT shards itself, fetching single raw blocks from the trustless
gateway and checking each against its CID. So the listings and bytes it returns are what the
DAG really holds, read by code written by others: ``core`` (a basic directory) and ``extra``
(padded to 15,000 more entries, a HAMT).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from pacswarm.ipfs.gateway import gateway_app
from pacswarm.ipfs.unixfsread import list_directory, resolve_path
from tests.integration.test_gateway_paths import ARCH, FILLERS, Folder, build_folder, serve
from tests.support import helia
from tests.support.testrepo import TestRepo

pytestmark = [
    pytest.mark.skipif(not helia.helia_available(), reason=helia.unavailable_reason()),
    pytest.mark.timeout(300),
]


def helia_reads(url: str, folder: Folder, ls: list[str], cat: list[tuple[str, Path]]) -> dict:  # type: ignore[type-arg]
    req = {
        "url": url,
        "root": str(folder.root),
        "ls": ls,
        "cat": [[p, str(f)] for p, f in cat],
        "timeout_ms": 180_000,
    }
    proc = subprocess.run(
        ["node", "helia_ls.mjs"],
        cwd=helia.HELIA_DIR,
        input=json.dumps(req).encode(),
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def run_helia(folder: Folder, ls: list[str], cat: list[tuple[str, Path]]) -> dict:  # type: ignore[type-arg]
    async def main() -> dict:  # type: ignore[type-arg]
        async with serve(gateway_app(folder.blocks)) as port:
            url = f"http://127.0.0.1:{port}"
            return await asyncio.to_thread(helia_reads, url, folder, ls, cat)

    return asyncio.run(main())


def ours(folder: Folder, path: str) -> list[list[object]]:
    get = folder.blocks.get
    cid = resolve_path(get, folder.root, path.split("/"))
    return [[e.name, str(e.cid), e.size] for e in list_directory(get, cid)]


@pytest.mark.parametrize("fillers", [0, FILLERS], ids=["small", "sharded"])
def test_helia_lists_the_folder_and_fetches_packages_by_path(
    test_repo: TestRepo, tmp_path: Path, fillers: int
) -> None:
    folder = build_folder(test_repo, tmp_path, fillers)
    try:
        check_helia_reads(folder, test_repo, tmp_path, fillers)
    finally:
        folder.blocks.close()


def check_helia_reads(folder: Folder, test_repo: TestRepo, tmp_path: Path, fillers: int) -> None:
    wanted = [test_repo.packages[n] for n in ("hello", "extratool", "largepkg")]
    cat = [(f"{p.repo}/os/{ARCH}/{p.filename}", tmp_path / p.filename) for p in wanted]
    cat.append((f"core/os/{ARCH}/core.db", tmp_path / "core.db"))
    ls = [f"core/os/{ARCH}", f"extra/os/{ARCH}"]
    got = run_helia(folder, ls, cat)
    for path in ls:
        assert sorted(got["ls"][path]) == sorted(ours(folder, path)), path
    extra = got["ls"][f"extra/os/{ARCH}"]
    assert len(extra) == fillers + sum(k.startswith("extra/") for k in folder.files)
    for pkg in wanted:
        assert (tmp_path / pkg.filename).read_bytes() == pkg.path.read_bytes(), pkg.name
        assert got["cat"][f"{pkg.repo}/os/{ARCH}/{pkg.filename}"] == pkg.size
    assert (tmp_path / "core.db").read_bytes() == folder.files["core/core.db"]
