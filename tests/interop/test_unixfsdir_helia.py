"""pacswarm's UnixFS directories against Helia's importer with kubo's settings (issue 8).

The expectation is computed independently: Helia imports the same files (helia_dir.mjs) and
builds the directory itself; pacswarm builds it from the files' CIDs alone. A small folder
stays basic, a folder of 15,000 Arch-like package names shards (fanout 256, several levels).
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfs import import_bytes
from pacswarm.ipfs.unixfsdir import Entry, build_directory
from tests.support import helia
from tests.unit.test_unixfsdir import HELIA_15000_ROOT, arch_like_names, boundary_names

pytestmark = pytest.mark.skipif(not helia.helia_available(), reason=helia.unavailable_reason())


def helia_directory(files: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """(root CID, the directory's blocks) as Helia builds them from ``files``."""
    req = {"files": [[n, base64.b64encode(d).decode()] for n, d in files.items()]}
    proc = subprocess.run(
        ["node", "helia_dir.mjs"],
        cwd=helia.HELIA_DIR,
        input=json.dumps(req).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = json.loads(proc.stdout)
    return out["root"], {c: base64.b64decode(b) for c, b in out["blocks"].items()}


def pacswarm_directory(files: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    entries = {}
    for name, data in files.items():
        result = import_bytes(data)
        tsize = len(data) + sum(len(inner.block) for inner in result.inner)
        entries[name] = Entry(result.root, tsize)
    built = build_directory(entries)
    return str(built.root), {str(b.cid): b.data for b in built.blocks}


def describe(blocks: dict[str, bytes], cid: str, depth: int = 0) -> list[str]:
    """A readable dump of the first differing shard, for the assertion message."""
    node = decode_node(blocks[cid])
    lines = [f"{'  ' * depth}{cid} data={node.data.hex() if node.data else None}"]
    for link in node.links[:20]:
        lines.append(f"{'  ' * depth}  {link.name!r} {link.cid} tsize={link.tsize}")
    return lines


def test_small_folder_matches_helia() -> None:
    files = {
        "core.db": b"db contents " * 100,
        "core.files": b"files " * 50_000,  # > 256 KiB: a dag-pb file with two chunks
        "linux-6.9.1-1-x86_64.pkg.tar.zst": b"pkg" * 1000,
        "linux-6.9.1-1-x86_64.pkg.tar.zst.sig": b"sig",
        "Z-upper.pkg.tar.zst": b"upper sorts before lower by bytes",
        "\u00e9t\u00e9-1.0-1-any.pkg.tar.zst": b"non-ascii name",
    }
    expected, theirs = helia_directory(files)
    got, ours = pacswarm_directory(files)
    assert got == expected, "\n".join(describe(theirs, expected) + describe(ours, got))


def test_sharded_folder_of_15000_packages_matches_helia() -> None:
    files = {name: name.encode() for name in arch_like_names(15_000)}
    expected, theirs = helia_directory(files)
    got, ours = pacswarm_directory(files)
    assert len(ours) > 1, "15,000 packages must shard"
    assert got == expected, "\n".join(describe(theirs, expected) + describe(ours, got))


@pytest.mark.parametrize("extra", [0, 1])
def test_threshold_boundary_matches_helia(extra: int) -> None:
    """Exactly 262,144 estimated bytes stays basic, one byte more shards: in both."""
    files = {name: name.encode() for name in boundary_names(extra)}
    expected, _ = helia_directory(files)
    got, ours = pacswarm_directory(files)
    assert (len(ours) > 1) == bool(extra)
    assert got == expected


def test_unit_golden_root_is_helias() -> None:
    """The root pinned in tests/unit/test_unixfsdir.py is what Helia builds."""
    files = {name: name.encode() for name in arch_like_names(15_000)}
    assert helia_directory(files)[0] == HELIA_15000_ROOT
