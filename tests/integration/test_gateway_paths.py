"""The gateway's paths (issue 8) over real HTTP: a repo folder in a real PackageBlockstore.

The folder is what a node publishes: ``<repo>/os/x86_64/`` with the signed test repository's
dbs, packages and ``.sig`` files (packages as cache files, the rest as copied blocks), and an
``extra`` of 15,000 more entries so that it is a HAMT, as Arch's is. Clients: aiohttp (what
curl and a browser send), the real pacman syncing and installing with
``Server = http://127.0.0.1:<port>/ipfs/<root>/$repo/os/$arch``, and machines on a LAN of
network namespaces for the access rules.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from libp2p.crypto.ed25519 import create_new_key_pair

from pacswarm.config_tables import SwarmConfig
from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.car import CarReader
from pacswarm.ipfs.cid import CID, DAG_PB
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.gateway import gateway_app
from pacswarm.ipfs.unixfsdir import Block, Entry, build_directory
from pacswarm.ipfs.unixfsread import iter_file, resolve_path, walk_path
from pacswarm.ipns.names import NameResolver, Resolved
from pacswarm.ipns.record import build_record, ipns_name, name_multihash, validate_record
from pacswarm.swarm.access import Access
from tests.support.netns import Lan, lan
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo
from tests.unit.test_unixfsdir import arch_like_names

pytestmark = pytest.mark.timeout(300)

ARCH = "x86_64"
FILLERS = 15_000
PEER = "12D3KooWPeerOfTheSwarmPeerOfTheSwarmPeerOfTheSwarm"


class CountingStore(PackageBlockstore):
    """The real blockstore, counting block reads (to prove what a Range did not read)."""

    reads = 0

    def get(self, cid: CID) -> bytes | None:
        self.reads += 1
        return super().get(cid)


@dataclass
class Folder:
    """A published repo folder and what it links to."""

    blocks: CountingStore
    root: CID
    size: int
    files: dict[str, bytes] = field(default_factory=dict)  # "repo/name" -> bytes
    cids: dict[str, CID] = field(default_factory=dict)  # "repo/name" -> CID
    dir_blocks: tuple[Block, ...] = ()

    def path(self, repo: str, name: str = "") -> str:
        return f"/ipfs/{self.root}/{repo}/os/{ARCH}/{name}"


def cumulative_size(blocks: PackageBlockstore, root: CID) -> int:
    """A link's Tsize: every block under it, counted as often as it is linked."""
    return sum(len(block) for _, block in blocks.dag_blocks(root))


def build_folder(test_repo: TestRepo, base: Path, fillers: int = FILLERS) -> Folder:
    """The test repository as a node's folder (``extra`` padded to ``fillers`` more entries)."""
    blocks = CountingStore(base / "blocks.sqlite", lambda key: _locate(test_repo, key))
    folder = Folder(blocks, CID.of(b""), 0)
    trees: dict[str, dict[str, Entry]] = {"core": {}, "extra": {}}
    for repo, entries in trees.items():
        for path in sorted(test_repo.repo_dir(repo).iterdir()):
            data = path.read_bytes()
            if path.name.endswith(".pkg.tar.zst"):
                cid = blocks.add_package(f"{repo}/{ARCH}/{path.name}", path)
            else:
                prefix = "@sig" if path.name.endswith(".pkg.tar.zst.sig") else "@db"
                cid = blocks.add_copy(f"{prefix}/{repo}/{ARCH}/{path.name}", data)
            entries[path.name] = Entry(cid, cumulative_size(blocks, cid))
            folder.files[f"{repo}/{path.name}"] = data
            folder.cids[f"{repo}/{path.name}"] = cid
    filler = blocks.add_copy("@db/filler", b"a file many names link to\n")
    for name in arch_like_names(fillers):
        trees["extra"][name] = Entry(filler, cumulative_size(blocks, filler))
    repos: dict[str, Entry] = {}
    all_blocks: list[Block] = []
    for repo, entries in trees.items():
        arch = build_directory(entries)
        os_dir = build_directory({ARCH: Entry(arch.root, arch.size)})
        top = build_directory({"os": Entry(os_dir.root, os_dir.size)})
        all_blocks += [*arch.blocks, *os_dir.blocks, *top.blocks]
        repos[repo] = Entry(top.root, top.size)
        assert arch.sharded == (repo == "extra" and fillers > 3000)
    root = build_directory(repos)
    all_blocks += root.blocks
    blocks.put_blocks("@folder/1", root.root, root.size, ((b.cid, b.data) for b in all_blocks))
    folder.root, folder.size, folder.dir_blocks = root.root, root.size, tuple(all_blocks)
    return folder


def _locate(test_repo: TestRepo, key: str) -> Path:
    repo, arch, name = key.split("/")
    return test_repo.root / repo / "os" / arch / name


@pytest.fixture(scope="module")
def folder(test_repo: TestRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    """One folder for the module: building 15,000 entries takes seconds; tests only read."""
    made = build_folder(test_repo, tmp_path_factory.mktemp("folder"))
    yield made
    made.blocks.close()


@asynccontextmanager
async def serve(app: web.Application, extra_host: str | None = None) -> AsyncIterator[int]:
    """``app`` on 127.0.0.1 (and ``extra_host``), one free port; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    if extra_host is not None:
        await web.TCPSite(runner, extra_host, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def run(
    app: web.Application, scenario: Callable[[str, aiohttp.ClientSession], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with serve(app) as port, aiohttp.ClientSession() as session:
            await scenario(f"http://127.0.0.1:{port}", session)

    asyncio.run(main())


def package(test_repo: TestRepo, name: str) -> tuple[str, str]:
    pkg = test_repo.packages[name]
    return pkg.repo, pkg.filename


# -- files ----------------------------------------------------------------------------------


def test_files_by_path_with_range_head_and_etag(folder: Folder, test_repo: TestRepo) -> None:
    repo, name = package(test_repo, "largepkg")  # 20 MiB, in the sharded extra
    data, cid = folder.files[f"{repo}/{name}"], folder.cids[f"{repo}/{name}"]
    url_path = folder.path(repo, name)

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(url + url_path) as r:
            assert r.status == 200
            assert await r.read() == data
            assert r.headers["Content-Length"] == str(len(data))
            assert r.headers["Accept-Ranges"] == "bytes"
            assert r.headers["ETag"] == f'"{cid}"'
            assert r.headers["Content-Type"] == "application/zstd"
            assert r.headers["Cache-Control"] == "public, max-age=29030400, immutable"
            assert r.headers["X-Ipfs-Path"] == url_path
        async with s.head(url + url_path) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(len(data))
            assert await r.read() == b""
        for header, status, want in [
            ("bytes=100-199", 206, data[100:200]),
            ("bytes=-10", 206, data[-10:]),
            (f"bytes={len(data) - 5}-", 206, data[-5:]),
            (f"bytes=262143-{262144 * 3}", 206, data[262143 : 262144 * 3 + 1]),
        ]:
            async with s.get(url + url_path, headers={"Range": header}) as r:
                assert (header, r.status) == (header, status)
                assert await r.read() == want
                start = len(data) - len(want) if header.startswith("bytes=-") else None
                if start is not None:
                    assert (
                        r.headers["Content-Range"] == f"bytes {start}-{len(data) - 1}/{len(data)}"
                    )
        async with s.get(url + url_path, headers={"Range": f"bytes={len(data)}-"}) as r:
            assert r.status == 416
            assert r.headers["Content-Range"] == f"bytes */{len(data)}"
        async with s.get(url + url_path, headers={"If-None-Match": f'"{cid}"'}) as r:
            assert r.status == 304
            assert await r.read() == b""
        sig = folder.path(repo, name + ".sig")
        async with s.get(url + sig) as r:
            assert r.status == 200
            assert await r.read() == folder.files[f"{repo}/{name}.sig"]
            assert r.headers["Content-Type"] == "application/pgp-signature"
        async with s.get(url + folder.path("core", "core.db")) as r:
            assert await r.read() == folder.files["core/core.db"]
            assert r.headers["Content-Type"] == "application/octet-stream"

    run(gateway_app(folder.blocks), scenario)


def test_a_range_at_the_end_reads_only_the_blocks_it_needs(
    folder: Folder, test_repo: TestRepo
) -> None:
    """The 20 MiB package is 80 leaves; its last 10 bytes must not cost 80 block reads."""
    repo, name = package(test_repo, "largepkg")
    data = folder.files[f"{repo}/{name}"]
    leaves = len(decode_node(folder.blocks.get(folder.cids[f"{repo}/{name}"]) or b"").links)
    assert leaves == 81  # 20 MiB + the package's metadata: 81 chunks of 256 KiB

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        folder.blocks.reads = 0
        async with s.get(url + folder.path(repo, name), headers={"Range": "bytes=-10"}) as r:
            assert r.status == 206
            assert await r.read() == data[-10:]
        # The path (root, extra, os, the HAMT root and sub-shard), the file's root, one leaf;
        # is_directory and file_size read the terminal again.
        assert folder.blocks.reads <= 10, folder.blocks.reads

    run(gateway_app(folder.blocks), scenario)


# -- directories ----------------------------------------------------------------------------


def test_directories_redirect_then_list(folder: Folder, test_repo: TestRepo) -> None:
    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        bare = folder.path("core").rstrip("/")
        async with s.get(url + bare + "?x=1", allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == bare + "/?x=1"
        async with s.get(url + f"/ipfs/{folder.root}", allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == f"/ipfs/{folder.root}/"
        async with s.get(url + folder.path("core")) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            page = await r.text()
        names = sorted(k.split("/", 1)[1] for k in folder.files if k.startswith("core/"))
        assert re.findall(r'<a href="([^"/]+)">', page) == ["..", *names]
        for name in names:
            cid = folder.cids[f"core/{name}"]
            assert f'<a href="/ipfs/{cid}"><code>{cid}</code></a>' in page
        assert "<script" not in page and "http://" not in page and "https://" not in page
        async with s.get(url + folder.path("extra")) as r:  # the HAMT, flattened
            extra = await r.text()
        assert extra.count("<tr>") == 1 + FILLERS + sum(
            k.startswith("extra/") for k in folder.files
        )
        async with s.head(url + folder.path("extra")) as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == len(extra.encode())
        async with s.get(url + f"/ipfs/{folder.root}/") as r:
            assert re.findall(r'<a href="([^"/]+)">', await r.text()) == ["..", "core", "extra"]

    run(gateway_app(folder.blocks), scenario)


def test_listing_escapes_names_and_serves_index_html(tmp_path: Path) -> None:
    blocks = PackageBlockstore(tmp_path / "b.sqlite", lambda key: tmp_path / key)
    evil = '<img src=x onerror="alert(1)">&.txt'
    page = b"<!DOCTYPE html><p>my own index</p>"
    entries = {}
    for name, data in ((evil, b"x"), ("a b#c?.txt", b"y")):
        entries[name] = Entry(blocks.add_copy(f"@db/{name}", data), len(data))
    plain = build_directory(entries)
    with_index = build_directory(
        {**entries, "index.html": Entry(blocks.add_copy("@db/i", page), len(page))}
    )
    for key, d in (("@folder/1", plain), ("@folder/2", with_index)):
        blocks.put_blocks(key, d.root, d.size, ((b.cid, b.data) for b in d.blocks))

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{plain.root}/") as r:
            text = await r.text()
        assert "<img" not in text
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;.txt" in text
        assert 'href="a%20b%23c%3F.txt"' in text
        async with s.get(f"{url}/ipfs/{plain.root}/a%20b%23c%3F.txt") as r:
            assert await r.read() == b"y"
        async with s.get(f"{url}/ipfs/{with_index.root}/") as r:
            assert await r.read() == page
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"

    try:
        run(gateway_app(blocks), scenario)
    finally:
        blocks.close()


def test_unknown_paths_are_404_with_a_plain_message(folder: Folder, test_repo: TestRepo) -> None:
    repo, name = package(test_repo, "hello")

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        for path in (
            folder.path("core", "nope-1.0-1-x86_64.pkg.tar.zst"),
            folder.path("extra", "nope-1.0-1-x86_64.pkg.tar.zst"),  # looked up in the HAMT
            f"/ipfs/{folder.root}/community/os/x86_64/",
            folder.path(repo, name) + "/inside",  # below a file
        ):
            async with s.get(url + path) as r:
                status, text = r.status, await r.text()
            assert status == 404, path
            assert r.headers["Content-Type"].startswith("text/plain")
            assert "/ipfs/" in text and ("no such file" in text or "not a directory" in text)
        async with s.get(url + folder.path(repo, name) + "?format=raw&x=/../") as r:
            assert r.status == 200  # a query is not a path

    run(gateway_app(folder.blocks), scenario)


# -- raw and CAR by path --------------------------------------------------------------------


def car_of(body: bytes) -> tuple[tuple[CID, ...], list[tuple[CID, bytes]]]:
    reader = CarReader()
    blocks = [(c, bytes(b)) for c, b in reader.feed(body)]
    reader.finish()
    assert all(c.verify(b) for c, b in blocks)
    return reader.roots, blocks


def test_raw_and_car_by_path_carry_the_path_blocks_first(
    folder: Folder, test_repo: TestRepo
) -> None:
    repo, name = package(test_repo, "extratool")  # in the sharded extra
    segments = [repo, "os", ARCH, name]
    cid = folder.cids[f"{repo}/{name}"]
    terminal, walked = walk_path(folder.blocks.get, folder.root, segments)
    assert terminal == cid and len(walked) >= 5  # root, extra, os, HAMT root, sub-shard

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(url + folder.path(repo, name) + "?format=raw") as r:
            assert r.status == 200
            assert await r.read() == folder.blocks.get(cid)
        async with s.get(url + folder.path(repo, name) + "?format=car") as r:
            assert r.status == 200
            assert r.headers["X-Ipfs-Roots"].split(",") == [str(c) for c in [*walked, cid]]
            roots, blocks = car_of(await r.read())
        assert roots == (folder.root,)
        assert [c for c, _ in blocks[: len(walked)]] == walked
        # A client holding only the CAR verifies the path and gets the package's bytes.
        got = {c.to_bytes(): b for c, b in blocks}
        get: Callable[[CID], bytes | None] = lambda c: got.get(c.to_bytes())  # noqa: E731
        assert resolve_path(get, folder.root, segments) == cid
        assert b"".join(iter_file(get, cid)) == folder.files[f"{repo}/{name}"]
        # dag-scope=entity of the sharded directory: its shards, none of its 15,000 entries
        arch_path = folder.path("extra").rstrip("/")
        async with s.get(url + arch_path + "?format=car&dag-scope=entity") as r:
            _, blocks = car_of(await r.read())
        assert all(c.codec == DAG_PB for c, _ in blocks)  # no entry's file came along
        assert {(decode_node(b).data or b"")[:2] for _, b in blocks[3:]} == {b"\x08\x05"}
        shards = [
            b for b in folder.dir_blocks if (decode_node(b.data).data or b"")[:2] == b"\x08\x05"
        ]
        assert len(blocks) == 3 + len(shards)
        async with s.get(url + arch_path + "?format=car&dag-scope=block") as r:
            _, blocks = car_of(await r.read())
        assert len(blocks) == 4  # root, extra, os, and the HAMT's root node

    run(gateway_app(folder.blocks), scenario)


# -- /ipns/ ---------------------------------------------------------------------------------


@dataclass
class Names:
    """The NameResolver protocol over records signed here (part C resolves for real)."""

    records: dict[str, Resolved] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)

    async def resolve(self, name: str) -> Resolved | None:
        if name in self.slow:
            raise TimeoutError
        return self.records.get(name)


def publish(names: Names, root: CID, seed: bytes = b"\x07" * 32) -> tuple[str, bytes]:
    key = create_new_key_pair(seed)
    now = time.time_ns()
    record = build_record(
        key.private_key,
        f"/ipfs/{root}",
        sequence=3,
        now_ns=now,
        lifetime_ns=48 * 3600 * 10**9,
        ttl_ns=300 * 10**9,
    )
    name = ipns_name(name_multihash(key.public_key))
    names.records[name] = Resolved(root, record, 300.0)
    return name, name_multihash(key.public_key)


def test_ipns_paths_and_records(folder: Folder, test_repo: TestRepo) -> None:
    names = Names()
    name, multihash = publish(names, folder.root)
    unknown, _ = publish(Names(), folder.root, b"\x08" * 32)
    slow, _ = publish(Names(), folder.root, b"\x09" * 32)
    names.slow.add(slow)
    repo, pkg = package(test_repo, "hello")
    resolver: NameResolver = names

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipns/{name}/{repo}/os/{ARCH}/{pkg}") as r:
            assert r.status == 200
            assert await r.read() == folder.files[f"{repo}/{pkg}"]
            assert r.headers["Cache-Control"] == "public, max-age=300"
            assert r.headers["X-Ipfs-Path"] == f"/ipns/{name}/{repo}/os/{ARCH}/{pkg}"
        async with s.get(f"{url}/ipns/{name}/core", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (301, f"/ipns/{name}/core/")
        async with s.get(f"{url}/ipns/{name}/core/os/{ARCH}/") as r:
            assert pkg in await r.text()
        async with s.get(f"{url}/ipns/{name}/core/?format=car&dag-scope=block") as r:
            # named by the root the record points at: a new record, a new ETag
            assert r.headers["ETag"] == f'"/ipfs/{folder.root}/core.car.v1.dfs.dups-n.block"'
            assert r.headers["Cache-Control"] == "public, max-age=300"
        for ask in ({"params": {"format": "ipns-record"}}, {"headers": {"Accept": IPNS}}):
            async with s.get(f"{url}/ipns/{name}", **ask) as r:  # type: ignore[arg-type]
                assert r.status == 200
                assert r.headers["Content-Type"] == IPNS
                body = await r.read()
            record = validate_record(body, multihash, now_ns=time.time_ns())
            assert record.value == f"/ipfs/{folder.root}".encode()
        for path, status in (
            (f"/ipns/{unknown}/core/", 404),
            (f"/ipns/{slow}/core/", 504),
            ("/ipns/not-a-name/core/", 400),
            ("/ipns/k51qzi5uqu5dnope/", 400),
            (f"/ipns/{name}/core/?format=ipns-record", 400),
        ):
            async with s.get(url + path) as r:
                text = await r.text()
                assert (path, r.status) == (path, status), text
                if status == 504:
                    assert f"resolving /ipns/{slow} timed out" in text

    run(gateway_app(folder.blocks, resolver=resolver), scenario)

    async def no_resolver(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipns/{name}/core/") as r:
            assert r.status == 404
            assert "resolves no IPNS names" in await r.text()

    run(gateway_app(folder.blocks), no_resolver)


IPNS = "application/vnd.ipfs.ipns-record"


# -- the real pacman ------------------------------------------------------------------------


def test_pacman_syncs_and_installs_from_the_folder(
    folder: Folder, test_repo: TestRepo, tmp_path: Path, pacman_gpgdir: Path
) -> None:
    """``Server = .../ipfs/<root>/$repo/os/$arch`` and ``.../ipns/<name>/...``: pacman syncs
    the dbs and installs from ``core`` (a basic directory) and ``extra`` (the HAMT)."""
    names = Names()
    name, _ = publish(names, folder.root)
    wanted = ("extratool", "hello", "libgreet", "bigpkg")

    async def main() -> list[tuple[PacmanEnv, str, str]]:
        out = []
        app = gateway_app(folder.blocks, resolver=names)
        async with serve(app) as port:
            for label, prefix in (("ipfs", f"ipfs/{folder.root}"), ("ipns", f"ipns/{name}")):
                server = f"http://127.0.0.1:{port}/{prefix}/$repo/os/$arch"
                with PacmanEnv(tmp_path / label, [server], pacman_gpgdir) as pacman:
                    sync = await asyncio.to_thread(pacman.run, "-Sy")
                    install = await asyncio.to_thread(pacman.run, "-S", "extratool", "bigpkg")
                    out.append((pacman, sync.stdout, install.stdout))
                    assert sync.returncode == 0, sync.stdout
                    assert install.returncode == 0, install.stdout
        return out

    for pacman, sync, install in asyncio.run(main()):
        assert "downloading extra" in sync or "extra downloading" in sync, sync
        assert "installing extratool" in install and "installing bigpkg" in install, install
        assert pacman.installed_file("usr/bin/extratool-pacswarm").exists()
        assert pacman.installed_file("usr/bin/hello-pacswarm").exists()
        for pkg_name in wanted:
            pkg = test_repo.packages[pkg_name]
            assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()


# -- who is served --------------------------------------------------------------------------


@pytest.fixture
def net() -> Iterator[Lan]:
    with lan(n=2) as hosts:
        yield hosts


async def curl(net: Lan, i: int, url: str) -> tuple[int, bytes]:
    """GET ``url`` from LAN machine ``i`` (not this machine): (status, body)."""
    argv = ["curl", "-s", "-m", "60", "-o", "-", "-w", "\n%{http_code}", url]
    proc = await asyncio.create_subprocess_exec(
        *net[i].command(argv), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    body, _, status = out.rpartition(b"\n")
    return int(status), body


def test_access_rules_and_the_loopback_only_fetch(
    folder: Folder, test_repo: TestRepo, net: Lan, tmp_path: Path
) -> None:
    """A stranger gets 403 on every route; a swarm peer gets paths from the store but never
    makes the node fetch; this machine's own client does (the fetch hook)."""
    elsewhere = PackageBlockstore(tmp_path / "elsewhere.sqlite", lambda key: tmp_path / key)
    remote_data = os.urandom(600_000)  # three blocks only "the network" has
    remote = elsewhere.add_copy("@db/remote", remote_data)
    fetched: list[CID] = []

    async def fetch(cid: CID) -> bytes | None:
        fetched.append(cid)
        return await asyncio.to_thread(elsewhere.get, cid)

    access = Access(replace(SwarmConfig(), peer_concurrency=4))
    access.peer_joined(PEER, [net[1].ip])
    names = Names()
    name, _ = publish(names, folder.root)
    repo, pkg = package(test_repo, "hello")
    paths = [
        folder.path(repo, pkg),
        folder.path("extra"),
        f"/ipns/{name}/{repo}/os/{ARCH}/{pkg}",
        f"/ipns/{name}?format=ipns-record",
    ]

    async def main() -> None:
        app = gateway_app(folder.blocks, access, resolver=names, fetch=fetch)
        async with serve(app, net.host_ip) as port, aiohttp.ClientSession() as s:
            base = f"http://{net.host_ip}:{port}"
            for path in paths:
                status, body = await curl(net, 0, base + path)
                assert status == 403 and b"join its swarm" in body, path
                assert (await curl(net, 1, base + path))[0] == 200, path
            assert (await curl(net, 1, f"{base}/ipfs/{remote}"))[0] == 404
            assert (await curl(net, 1, f"{base}/ipfs/{remote}?format=raw"))[0] == 404
            assert fetched == []  # a peer never makes this node fetch for it
            async with s.get(f"http://127.0.0.1:{port}/ipfs/{remote}") as r:
                assert r.status == 200
                assert await r.read() == remote_data
            assert len(fetched) >= 3

    try:
        asyncio.run(main())
    finally:
        elsewhere.close()


def test_a_busy_client_gets_429_on_paths(folder: Folder, test_repo: TestRepo) -> None:
    """``peer_concurrency`` holds for path answers: one slow download in flight, the next
    request waits (loopback is counted here with ``limit_loopback``)."""
    access = Access(
        replace(SwarmConfig(), peer_concurrency=1, peer_rate=256 * 1024), limit_loopback=True
    )
    repo, name = package(test_repo, "largepkg")

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(url + folder.path(repo, name)) as slow:
            assert slow.status == 200
            await slow.content.read(1024)  # the body is flowing: the slot is held
            async with s.get(url + folder.path("core")) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == "1"
            slow.close()
        deadline = time.monotonic() + 20
        while True:
            async with s.get(url + folder.path("core", "core.db")) as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, "the slow client's slot never came free"
            await asyncio.sleep(0.05)

    run(gateway_app(folder.blocks, access), scenario)


def test_a_package_gone_bad_mid_download_cuts_the_transfer(
    test_repo: TestRepo, tmp_path: Path
) -> None:
    """The cache file rots after the folder was built: the first MiB goes out, then the
    connection drops. pacman sees a failed download (and tries its next server), never a
    complete-looking wrong file; the blockstore reports the package to its owner."""
    pkg = test_repo.packages["largepkg"]
    key = f"{pkg.repo}/{ARCH}/{pkg.filename}"
    (tmp_path / key).parent.mkdir(parents=True)
    (tmp_path / key).write_bytes(pkg.path.read_bytes())
    corrupt: list[str] = []
    blocks = PackageBlockstore(tmp_path / "b.sqlite", lambda k: tmp_path / k, corrupt.append)
    cid = blocks.add_package(key, tmp_path / key)
    arch = build_directory({pkg.filename: Entry(cid, cumulative_size(blocks, cid))})
    blocks.put_blocks("@folder/1", arch.root, arch.size, ((b.cid, b.data) for b in arch.blocks))
    with open(tmp_path / key, "r+b") as f:  # bit rot past the first MiB
        f.seek(5 * 1024 * 1024)
        f.write(b"\0" * 16)

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{arch.root}/{pkg.filename}") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(pkg.size)
            got = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    got += chunk
        assert len(got) < pkg.size
        assert got == pkg.path.read_bytes()[: len(got)]  # what came is right, just short

    try:
        run(gateway_app(blocks), scenario)
    finally:
        blocks.close()
    assert corrupt == [key]
