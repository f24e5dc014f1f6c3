"""A hostile swarm node: pacswarm's own libp2p host and wire protocol, used to lie.

Run as a child process by the cluster tests (``HostileNode`` below starts it)::

    python -m tests.support.hostile --data-dir D --bootstrap /ip4/127.0.0.1/tcp/N/p2p/ID \\
        --db core:x86_64:MIRROR/core/os/x86_64/core.db --announce lies --gateway consistent

Why pacswarm's own parts (``P2PHost``, its pubsub and request/response services, and
``encode_news``/``encode_inventory``): the attacker then speaks exactly the protocol honest
nodes speak, with valid signatures and well-formed messages, so what the test exercises is the
honest nodes' judgement (verification, strikes, bounds), not a parser rejecting a typo.

What it can do (flags combine):

* ``--announce lies``: for every package of the given dbs, announce the real sha256, size and
  filename with the CID of a *consistent* garbage DAG of that size: every block it serves
  matches its CID, only the whole file's sha256 fails (the hardest lie to spot early).
  ``--announce real``: the true CIDs (computed from ``--packages``), for a peer that looks
  genuine but then stalls or sends garbage.
* ``--bogus N``: also announce N sha256s that are in no db (never to be believed).
* ``--garbage-rate R`` / ``--flood-rate R``: publish R random-byte messages per second, or R
  well-formed news per second full of bogus entries (a topic flood), without waiting for
  the peers' queues as a polite publisher does.
* ``--malformed-rpc``: every ``--repeat`` seconds, a gossipsub frame that is not an RPC at
  all, to every connected peer (py-libp2p's reader raises on it).
* ``--gateway consistent|slow|random|wrong-blocks|stall|none``: what its Trustless Gateway
  answers to every ``/ipfs/`` request: its DAG (``slow``: at 2 MiB/s, logging its progress
  so a test can kill it mid-transfer), random bytes, a CAR whose blocks do not match their
  CIDs, or a few bytes and then silence.
* Bitswap serves its DAGs' blocks (nothing with ``--gateway stall`` or ``slow``: then the
  gateway is the only way to its bytes).

When ready it prints one JSON line on stdout: ``{"peer_id", "addrs", "gateway_port"}``.
It runs until SIGTERM (or ``--duration``); counts go to stderr at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from aiohttp import web

from pacswarm.ipfs.bitswap import MemoryBlocks
from pacswarm.ipfs.car import encode_frame, encode_header
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.host import P2PHost
from pacswarm.ipfs.unixfs import decode_file_node, import_bytes
from pacswarm.repodb import parse_repo_db_file

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_MODES = ("consistent", "slow", "random", "wrong-blocks", "stall", "none")
SLOW_RATE = 2 * 1024 * 1024  # bytes/s of "slow": a peer on a modest link
STALL_BYTES = 64  # what a staller sends before going silent


# -- DAGs (pure) -----------------------------------------------------------------------------


@dataclass
class Dag:
    """A UnixFS file as blocks, so the gateway and Bitswap can serve any subtree."""

    root: CID
    size: int
    blocks: dict[CID, bytes] = field(default_factory=dict)

    def walk(self, cid: CID) -> Iterator[tuple[CID, bytes]]:
        """``cid``'s subtree in depth-first order: the order a trustless CAR must have."""
        block = self.blocks[cid]
        yield cid, block
        if cid.codec != 0x55:  # dag-pb: follow the links; raw leaves end here
            for link in decode_file_node(block).links:
                yield from self.walk(link.cid)


def dag_of(data: bytes) -> Dag:
    result = import_bytes(data)
    dag = Dag(result.root, result.size)
    for leaf in result.leaves:
        dag.blocks[leaf.cid] = data[leaf.offset : leaf.offset + leaf.length]
    for inner in result.inner:
        dag.blocks[inner.cid] = inner.block
    return dag


def garbage_dag(seed: str, size: int) -> Dag:
    """A valid DAG of ``size`` bytes of noise, the same for the same seed."""
    return dag_of(random.Random(seed).randbytes(size))


# -- what it announces -----------------------------------------------------------------------


@dataclass
class Lies:
    """Everything the hostile node claims, per (repo, arch)."""

    db_order: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # DbItem
    entries: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # Entry
    dags: dict[CID, Dag] = field(default_factory=dict)

    def dag_holding(self, cid: CID) -> Dag | None:
        return next((d for d in self.dags.values() if cid in d.blocks), None)


@contextlib.contextmanager
def _survive(what: str) -> Iterator[None]:
    """A failed publish (no peer yet, a peer that hung up) must not end the attack."""
    try:
        yield
    except Exception as e:
        print(f"hostile: {what} failed: {e!r}", file=sys.stderr, flush=True)


def bogus_sha(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def build_lies(args: argparse.Namespace) -> Lies:
    from pacswarm.swarm.protocol import DbItem, Entry

    lies, rng = Lies(), random.Random(args.seed)
    for spec in args.db:
        repo, arch, path = spec.split(":", 2)
        records = sorted(parse_repo_db_file(Path(path)).records.values(), key=lambda r: r.filename)
        lies.db_order[(repo, arch)] = [DbItem(r.filename, r.sha256, r.csize) for r in records]
        entries = lies.entries.setdefault((repo, arch), [])
        for rec in records:
            if args.announce == "lies":
                dag = garbage_dag(rec.sha256, rec.csize)
            elif args.announce == "real":
                dag = _real_dag(Path(args.packages), rec.filename)
            else:
                continue
            lies.dags[dag.root] = dag
            entries.append(Entry(rec.sha256, str(dag.root), rec.csize, rec.filename))
        for i in range(args.bogus):
            name = f"bogus{i}-1.0-1-{arch}.pkg.tar.zst"
            entries.append(Entry(bogus_sha(rng), str(garbage_dag(name, 1024).root), 1024, name))
    return lies


def _real_dag(packages: Path, filename: str) -> Dag:
    """The true DAG of a package (what an honest peer serves), from the mirror's copy."""
    return dag_of(next(packages.rglob(filename)).read_bytes())


# -- the gateway -----------------------------------------------------------------------------


def gateway_app(lies: Lies, mode: str) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            cid = CID.parse(request.match_info["cid"])
        except ValueError:
            raise web.HTTPBadRequest(text="malformed CID\n") from None
        dag = lies.dag_holding(cid)
        raw = request.query.get("format") == "raw" or "raw" in request.headers.get("Accept", "")
        # What a real gateway says for a streamed file: every block, repeats included, DFS.
        car_type = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
        resp = web.StreamResponse(headers={"Content-Type": car_type})
        if mode == "random":
            resp.content_type = "application/vnd.ipld.raw" if raw else "application/vnd.ipld.car"
            await resp.prepare(request)
            for _ in range(max(1, (dag.size if dag else 1 << 20) // (1 << 16))):
                await resp.write(os.urandom(1 << 16))
            return resp
        if dag is None and mode != "stall":
            raise web.HTTPNotFound(text=f"{cid} is not here\n")
        await resp.prepare(request)
        if mode == "stall":
            await resp.write(encode_header(cid)[:STALL_BYTES])
            await asyncio.sleep(3600)  # silence until the client gives up
            return resp
        assert dag is not None
        if raw:
            await resp.write(dag.blocks[cid])
            return resp
        await resp.write(encode_header(cid))
        sent = 0
        for block_cid, block in dag.walk(cid):
            body = os.urandom(len(block)) if mode == "wrong-blocks" else block
            await resp.write(encode_frame(block_cid, body))
            sent += len(body)
            if mode == "slow":
                # Tests wait for this line to kill the peer mid-transfer.
                print(f"hostile: sent {sent} bytes of {cid}", file=sys.stderr, flush=True)
                await asyncio.sleep(len(body) / SLOW_RATE)
        return resp

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handle)
    return app


# -- the node --------------------------------------------------------------------------------


@dataclass
class Counts:
    news: int = 0
    garbage: int = 0
    flood: int = 0
    inventories: int = 0
    malformed: int = 0


async def publish_lies(
    host: P2PHost, lies: Lies, port: int | None, every: float, n: Counts
) -> None:
    """All claims, again and again: whoever joins later still hears them."""
    from pacswarm.swarm.protocol import batch_news, encode_news, topic

    while True:
        for (repo, arch), entries in lies.entries.items():
            for news in batch_news(repo, arch, entries, port):
                with _survive("publish"):
                    await host.pubsub.publish(topic(repo, arch), encode_news(news))
                    n.news += 1
        await asyncio.sleep(every)


Message = tuple[str, bytes]  # (topic, data)


async def paced(
    host: P2PHost, rate: float, make: Callable[[], Message], sent: Callable[[int], None]
) -> None:
    """``rate`` messages a second from ``make()``, sent in 10 ms bursts, as fast as it goes."""
    per_tick, tick = max(1, int(rate / 100)), 0.01
    while True:
        started = time.monotonic()
        with _survive("flood"):
            sent(await burst(host, [make() for _ in range(per_tick)]))
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))


async def burst(host: P2PHost, messages: list[Message]) -> int:
    """Publish without the courtesy wait for peers' queues (an attacker does not wait): on
    py-libp2p's own pubsub, in one hop to the trio thread. Falls back to the public API."""
    raw = getattr(host.pubsub, "_pubsub", None)
    if raw is None:
        for topic, data in messages:
            await host.pubsub.publish(topic, data)
        return len(messages)

    async def in_trio() -> int:
        done = 0
        for topic, data in messages:
            with contextlib.suppress(Exception):
                await raw.publish(topic, data)
                done += 1
            await trio.lowlevel.checkpoint()
        return done

    return int(await host.bridge.run(in_trio))


def flooders(
    host: P2PHost, lies: Lies, args: argparse.Namespace, n: Counts
) -> list[Coroutine[Any, Any, None]]:
    from pacswarm.swarm.protocol import MAX_ENTRIES, MAX_MESSAGE, Entry, News, encode_news, topic

    topics = [topic(repo, arch) for repo, arch in lies.db_order]
    rng = random.Random(args.seed + 1)
    some_cid = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"

    # Pools made once, cycled: a publish costs the attacker little, and 1,000 floods of 64
    # entries are 64,000 distinct bogus sha256s, more than any bounded pending set keeps.
    junk = [
        (rng.choice(topics), rng.randbytes(rng.randint(1, 2 * MAX_MESSAGE))) for _ in range(256)
    ]
    floods = []
    for _ in range(1000 if args.flood_rate > 0 else 0):
        repo, arch = rng.choice(list(lies.db_order))
        entries = tuple(
            Entry(
                bogus_sha(rng), some_cid, 1024, f"f{rng.randrange(1 << 30)}-1-1-{arch}.pkg.tar.zst"
            )
            for _ in range(min(MAX_ENTRIES, 64))
        )
        floods.append((topic(repo, arch), encode_news(News(repo, arch, entries, None, None))))
    garbage, flood = itertools.cycle(junk).__next__, itertools.cycle(floods or junk).__next__

    def count(field: str) -> Callable[[int], None]:
        return lambda k: setattr(n, field, getattr(n, field) + k)

    jobs: list[Coroutine[Any, Any, None]] = []
    if args.garbage_rate > 0:
        jobs.append(paced(host, args.garbage_rate, garbage, count("garbage")))
    if args.flood_rate > 0:
        jobs.append(paced(host, args.flood_rate, flood, count("flood")))
    return jobs


async def malformed_rpcs(host: P2PHost, every: float, n: Counts) -> None:
    """Open a gossipsub stream to every connected peer and send a frame that is no RPC.

    Byte 0x0f is field 1 with wire type 7, which no protobuf has: a parser must refuse it.
    An honest node must drop the stream (or the peer), never its whole libp2p side.
    """
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.utils import encode_varint_prefixed

    async def in_trio(peer: str) -> None:
        assert host.libp2p_host is not None
        stream = await host.libp2p_host.new_stream(
            ID.from_base58(peer), [TProtocol("/meshsub/1.1.0")]
        )
        await stream.write(encode_varint_prefixed(b"\x0f" + os.urandom(63)))

    while True:
        for peer in host.connected_peers():
            with _survive("malformed rpc"):
                await host.bridge.run(in_trio, peer)
                n.malformed += 1
        await asyncio.sleep(every)


async def orphan_watch(stop: asyncio.Event) -> None:
    """A test killed hard cannot stop us: leave when our parent is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


def inventory_handler(
    lies: Lies, port: int | None, n: Counts
) -> Callable[[str, bytes], Awaitable[bytes]]:
    from pacswarm.swarm.protocol import decode_request, encode_inventory

    async def answer(peer: str, data: bytes) -> bytes:
        try:
            req = decode_request(data)
        except ValueError:
            return b""
        order = lies.db_order.get((req.repo, req.arch), [])
        held = {e.sha256: e.cid for e in lies.entries.get((req.repo, req.arch), [])}
        n.inventories += 1
        return encode_inventory(req.repo, req.arch, order, held, req.db, port)

    return answer


async def serve(args: argparse.Namespace) -> None:
    from pacswarm.swarm.protocol import INVENTORY_PROTOCOL, topic

    lies, n = build_lies(args), Counts()
    blocks = MemoryBlocks()
    # A staller or a slow peer is only reachable through its gateway: no quick way around.
    if args.gateway not in ("stall", "slow"):
        for dag in lies.dags.values():
            for cid, block in dag.blocks.items():
                blocks.put(cid, block)
    port, runner = None, None
    if args.gateway != "none":
        runner = web.AppRunner(gateway_app(lies, args.gateway), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
    data_dir = Path(args.data_dir)
    host = P2PHost(data_dir / "identity.key", ["/ip4/127.0.0.1/tcp/0"], (), False, blocks)
    await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        host.requests.serve(
            INVENTORY_PROTOCOL, inventory_handler(lies, port, n), 64 * 1024, 1 << 20
        )
        for repo, arch in lies.db_order:
            await host.pubsub.join(topic(repo, arch), lambda p, d: True, lambda p, d: None)
        floods = flooders(host, lies, args, n)  # its pools are built before "ready"
        for addr in args.bootstrap:
            await host.connect(addr)
        print(
            json.dumps(
                {"peer_id": host.peer_id, "addrs": host.listen_addrs(), "gateway_port": port}
            ),
            flush=True,
        )
        jobs = [publish_lies(host, lies, port, args.repeat, n), *floods]
        if args.malformed_rpc:
            jobs.append(malformed_rpcs(host, args.repeat, n))
        jobs.append(orphan_watch(stop))
        tasks = [asyncio.ensure_future(job) for job in jobs]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration or None)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(f"hostile: {n}", file=sys.stderr, flush=True)
        await host.stop()
        if runner is not None:
            await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="a hostile pacswarm peer, for tests")
    p.add_argument("--data-dir", required=True, help="where its identity key lives")
    p.add_argument("--bootstrap", action="append", default=[], help="multiaddr to dial")
    p.add_argument("--db", action="append", default=[], help="REPO:ARCH:PATH of a repo db")
    p.add_argument("--announce", choices=["lies", "real", "none"], default="lies")
    p.add_argument("--packages", default="", help="dir holding the real packages (--announce real)")
    p.add_argument("--bogus", type=int, default=0, help="entries with sha256s in no db")
    p.add_argument("--garbage-rate", type=float, default=0.0, help="random messages per second")
    p.add_argument("--flood-rate", type=float, default=0.0, help="bogus news per second")
    p.add_argument(
        "--malformed-rpc", action="store_true", help="send gossipsub frames that are no RPC"
    )
    p.add_argument("--gateway", choices=GATEWAY_MODES, default="consistent")
    p.add_argument("--repeat", type=float, default=2.0, help="seconds between re-announcements")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until SIGTERM)")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


# -- the test side ---------------------------------------------------------------------------


class HostileNode:
    """The program above as a child process, with what it printed when ready."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.args = args
        self.log_path = workdir.with_name(workdir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.peer_id = ""
        self.addrs: list[str] = []
        self.gateway_port: int | None = None

    def start(self, timeout: float = 60.0) -> HostileNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tests.support.hostile", "--data-dir", str(self.workdir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*argv, *self.args], stdout=subprocess.PIPE, stderr=log,
                stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"hostile node not ready in {timeout} s:\n{self.log()}")
        info = json.loads(line)
        self.peer_id, self.addrs, self.gateway_port = (
            info["peer_id"],
            info["addrs"],
            info["gateway_port"],
        )
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def kill9(self) -> None:
        """SIGKILL, as a crash or a pulled plug: no goodbye to its peers."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


if __name__ == "__main__":
    asyncio.run(serve(parse_args()))
