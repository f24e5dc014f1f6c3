"""A node's repo folders as a mirror, found by its IPNS name (issue 8, end to end).

Real nodes (tests/support/cluster.py) on 127.0.0.1: b installs packages through its own
proxy, so its folder links them; a plain pacman whose only Server line is
``http://<b's gateway>/ipns/<b's name>/$repo/os/$arch`` then syncs and installs from that
folder while the upstream mirror refuses every package. Node a, b's swarm peer, resolves
b's name (IPNS over pubsub or the DHT) and lists b's folder through its own gateway, with
b's directory blocks fetched from b.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipns.record import (
    IpnsRecord,
    ipns_name,
    name_multihash,
    parse_ipns_name,
    validate_record,
)
from tests.support.browser import render
from tests.support.cluster import Cluster, SwarmNode, refuse_packages
from tests.support.mirror import MirrorServer
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo

pytest.importorskip("pacswarm.ipns.folderservice")
pytestmark = pytest.mark.timeout(300)

#: Bounded waits: generous, they only end a broken test.
PUBLISH_TIMEOUT = 60.0


def name_of(node: SwarmNode) -> str:
    pair = load_or_create_identity(node.data_dir / "ipfs" / "identity.key")
    return ipns_name(name_multihash(pair.public_key))


def get(url: str, timeout: float = 15.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_listing(url: str, wanted: list[str], timeout: float = PUBLISH_TIMEOUT) -> str:
    """Until the directory listing at ``url`` names every file in ``wanted``."""
    deadline = time.monotonic() + timeout
    last = (0, b"")
    while time.monotonic() < deadline:
        last = get(url)
        page = last[1].decode(errors="replace")
        if last[0] == 200 and all(name in page for name in wanted):
            return page
        time.sleep(0.5)
    raise AssertionError(f"{url} never listed {wanted}: HTTP {last[0]} {last[1][:500]!r}")


def test_pacman_installs_from_another_nodes_ipns_folder(
    tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    b = cluster.add("b")
    a = cluster.add("a", bootstrap=[b])
    b.install("hello")
    hello, libgreet = test_repo.packages["hello"], test_repo.packages["libgreet"]
    name = name_of(b)
    folder = f"{b.gateway_url}/ipns/{name}/core/os/x86_64/"
    wait_listing(folder, [hello.filename, f"{hello.filename}.sig", libgreet.filename, "core.db"])
    refuse_packages(mirror)  # from here on only b's folder has the packages

    pacman = PacmanEnv(
        tmp_path / "plain-pacman",
        [f"{b.gateway_url}/ipns/{name}/$repo/os/$arch"],
        test_repo.make_pacman_gpgdir(tmp_path / "plain-gnupg"),
        repos=("core",),
    )
    try:
        sync = pacman.run("-Sy")
        assert sync.returncode == 0, sync.stdout
        result = pacman.run("-S", "hello")
        assert result.returncode == 0, result.stdout
    finally:
        pacman.close()
    for pkg in (hello, libgreet):
        assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()

    # The listing renders in a real browser: every file a link, by its name.
    dom, shot = render(folder, tmp_path / "browser")
    for pkg in (hello, libgreet):
        assert f'href="{pkg.filename}"' in dom or f'href="./{pkg.filename}"' in dom, dom[:2000]
    assert shot.read_bytes().startswith(b"\x89PNG"), "no screenshot of the listing"

    # A peer resolves b's name and lists b's folder through its own gateway.
    page = wait_listing(f"{a.gateway_url}/ipns/{name}/core/os/x86_64/", [hello.filename])
    assert re.search(r"core\.db", page), page[:500]
    status, record = get(f"{a.gateway_url}/ipns/{name}?format=ipns-record")
    assert status == 200 and len(record) > 100, (status, record[:200])


def cli(node: SwarmNode, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pacswarm", *args, "--config", str(node.config)]
    argv += ["--listen", f"127.0.0.1:{node.port}"]
    if args[0] == "id":
        argv += ["--data-dir", str(node.data_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=150, check=False)


def served_record(node: SwarmNode, name: str) -> IpnsRecord:
    status, raw = get(f"{node.gateway_url}/ipns/{name}?format=ipns-record")
    assert status == 200, (status, raw[:300])
    return validate_record(raw, parse_ipns_name(name), now_ns=time.time_ns())


def test_pacswarm_publish_and_a_restart_keep_the_name_and_raise_the_sequence(
    test_repo: TestRepo, cluster: Cluster
) -> None:
    b = cluster.add("b")
    b.install("hello")
    name = name_of(b)
    ident = cli(b, "id")
    assert f"/ipns/{name}" in ident.stdout, ident.stdout + ident.stderr
    published = cli(b, "publish")
    assert published.returncode == 0, published.stdout + published.stderr
    root = re.search(r"root: /ipfs/(\S+)", published.stdout)
    sequence = re.search(r"sequence: (\d+)", published.stdout)
    assert root and sequence, published.stdout
    record = served_record(b, name)
    assert record.value.decode() == f"/ipfs/{root[1]}"
    assert record.sequence == int(sequence[1])

    b.stop()
    b.start()
    again = cli(b, "publish")
    assert again.returncode == 0, again.stdout + again.stderr
    after = served_record(b, name)
    # Same packages, same dbs: the same folder root; a sequence that only grew.
    assert after.value == record.value, (after.value, record.value)
    assert after.sequence > record.sequence
    listing = wait_listing(f"{b.gateway_url}/ipns/{name}/core/os/x86_64/", ["hello-"])
    assert test_repo.packages["hello"].filename in listing
