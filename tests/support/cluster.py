"""A cluster of real pacswarm nodes on 127.0.0.1, each with its own data dir and pacman.

Why real processes: the swarm's promises (a package fetched once upstream for a whole
household, a lying peer that cannot make pacman fail) live in the interplay of gossipsub,
inventory pulls, peer downloads and verification across processes; only real nodes joined
by libp2p show it. Nodes find each other by ``--bootstrap`` (mDNS off), listen on loopback
ports the OS picks, and every node and keyring is stopped by :meth:`Cluster.stop`, which the
fixture calls even when a test fails.

Identities are made before a node first starts (``ipfs/identity.key`` in its data dir, the
file the node itself loads), so a test knows every peer ID up front: allowlists can name
peers that have not started yet.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pacswarm.ipfs.identity import peer_id_of
from tests.support import gpg
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode, free_port
from tests.support.pacman import PacmanEnv

#: Where the swarm glue keeps its announcement cache, relative to the data dir (the lead's
#: ``service.py`` decides; :func:`known_holders` reads it with H2's own class).
ANNOUNCEMENT_DB = Path("swarm") / "announcements.sqlite"
#: Bounded waits: generous, they only end a broken test; a passing one returns at once.
P2P_TIMEOUT = 30.0
KNOW_TIMEOUT = 60.0
#: Package files and their signatures: what "refuse every package" refuses (dbs still served).
PACKAGE_PATTERNS = ("*.pkg.tar.zst", "*.pkg.tar.zst.sig")

TableValue = str | int | float | bool | Sequence[str]


class LanHost(Protocol):
    """What a node needs of a network namespace (tests/support/netns.py ``NsHost``)."""

    ip: str

    def command(self, argv: Sequence[str]) -> list[str]: ...


def toml_tables(tables: Mapping[str, Mapping[str, TableValue]]) -> str:
    """``{"swarm": {"strikes": 1}}`` -> ``[swarm]\\nstrikes = 1\\n`` (values via JSON, which
    TOML reads the same for strings, numbers, booleans and lists of strings)."""
    out = []
    for name, values in tables.items():
        out.append(f"[{name}]")
        for key, value in values.items():
            out.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
        out.append("")
    return "\n".join(out)


def make_identity(data_dir: Path) -> str:
    """Create the node's libp2p key where the node loads it; return its peer ID."""
    return peer_id_of(data_dir / "ipfs" / "identity.key")


class SwarmNode(PacswarmNode):
    """A :class:`PacswarmNode` with a name, a known peer ID, bootstrap peers and a pacman."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        mirrors: list[str],
        gpgdir: Path,
        pacman_gpgdir: Path,
        *,
        bootstrap: Sequence[str] = (),
        extra_config: str = "",
        lan_host: LanHost | None = None,
    ) -> None:
        self.name = name
        self.peer_id = make_identity(data_dir)
        super().__init__(data_dir, mirrors, gpgdir, extra_config=extra_config)
        #: A network namespace to run in (tests/support/netns.py), as a host on a LAN.
        self.lan_host = lan_host
        self.listen_ip = "127.0.0.1"
        if lan_host is not None:
            # Its own machine: every face on its LAN address, and peers found by mDNS.
            self.listen_ip = lan_host.ip
            self.base_url = f"http://{lan_host.ip}:{self.port}"
            self.url_template = self.base_url + "/$repo/os/$arch"
            self.config.write_text(self.config.read_text().replace("mdns = false", "mdns = true"))
        #: Multiaddrs dialled at start (a list, so a restart can point elsewhere).
        self.bootstrap = list(bootstrap)
        # Fixed ports, like a real machine's 4001/4080: a restarted node is where it was, so
        # peers' bootstrap lists and remembered gateway ports stay right.
        self.p2p_port, self.gateway_port = free_port(), free_port()
        #: More command-line flags (they override the config file: ``--log-level info``).
        self.extra_args: list[str] = []
        self.pacman = PacmanEnv(
            data_dir.parent / f"{name}-pacman", [self.url_template], pacman_gpgdir
        )

    def command(self) -> list[str]:
        ip = self.listen_ip
        argv = [
            f"{ip}:{self.port}" if a == f"127.0.0.1:{self.port}" else a for a in super().command()
        ]
        argv += ["--p2p-listen", f"/ip4/{ip}/tcp/{self.p2p_port}"]
        argv += ["--gateway-listen", f"{ip}:{self.gateway_port}"]
        for addr in self.bootstrap:
            argv += ["--bootstrap", addr]
        argv += self.extra_args
        return self.lan_host.command(argv) if self.lan_host is not None else argv

    def start(self, timeout: float | None = None) -> SwarmNode:
        """Start; a stale ``config.json`` of the previous run must not pass for this one's.

        In a namespace a start took 15-25 s here (on loopback 2-3 s), nearly all of it before
        the node's first log line; hence the longer default there.
        """
        (self.data_dir / "ipfs" / "config.json").unlink(missing_ok=True)
        super().start(timeout or (90.0 if self.lan_host is not None else 30.0))
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def addr(self) -> str:
        """One multiaddr other nodes can bootstrap to (``/ip4/127.0.0.1/tcp/N/p2p/ID``)."""
        addrs = self.p2p_addrs
        mine = [a for a in addrs if a.startswith(f"/ip4/{self.listen_ip}/")]
        return (mine or addrs)[0]

    def log_lines(self, *words: str) -> list[str]:
        """Log lines containing every one of ``words`` (case-insensitive)."""
        wanted = [w.lower() for w in words]
        return [line for line in self.log().splitlines() if all(w in line.lower() for w in wanted)]

    def sync(self, timeout: float = 120) -> None:
        """``pacman -Sy`` on this node's pacman (the node fetches the dbs)."""
        sync = self.pacman.run("-Sy", timeout=timeout)
        assert sync.returncode == 0, f"{self.name}: pacman -Sy failed:\n{sync.stdout}"

    def install(self, *packages: str, sync: bool = True, timeout: float = 180) -> str:
        """``pacman -S`` (after ``-Sy`` unless ``sync=False``); the output, or AssertionError."""
        if sync:
            self.sync(timeout)
        result = self.pacman.run("-S", *packages, timeout=timeout)
        assert result.returncode == 0, (
            f"{self.name}: pacman -S {' '.join(packages)} failed:\n{result.stdout}\n"
            f"--- {self.name} log tail ---\n{tail(self.log())}"
        )
        return result.stdout

    def start_pacman(self, *args: str) -> subprocess.Popen[str]:
        """pacman in the background (to act while it downloads); ``communicate()`` it, then
        :meth:`close` kills its gpg-agent."""
        self.pacman.unlock()
        return subprocess.Popen(
            self.pacman.command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, env=gpg.gpg_env(),
        )  # fmt: skip

    def close(self) -> None:
        """Stop the node and kill the gpg-agents of its keyrings (safe to call twice)."""
        try:
            self.stop()
        finally:
            self.pacman.close()
            gpg.kill_agent(self.gpgdir)


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """Nodes over the same mirrors; ``keyring(dest)`` makes a trusted pacman keyring copy."""

    def __init__(self, base: Path, mirrors: list[str], keyring: Callable[[Path], Path]) -> None:
        self.base = base
        self.mirrors = list(mirrors)
        self.keyring = keyring
        self.nodes: dict[str, SwarmNode] = {}

    def identity(self, name: str) -> str:
        """The peer ID node ``name`` will have (made now, so allowlists can name it)."""
        return make_identity(self.base / name)

    def add(
        self,
        name: str,
        *,
        bootstrap: Iterable[SwarmNode] | None = None,
        tables: Mapping[str, Mapping[str, TableValue]] | None = None,
        extra: str = "",
        args: Sequence[str] = (),
        lan: LanHost | None = None,
        start: bool = True,
    ) -> SwarmNode:
        """A node bootstrapping to ``bootstrap`` (default: the first node added, if any)."""
        if bootstrap is None:
            bootstrap = list(self.nodes.values())[:1]
        boot = [peer.addr for peer in bootstrap]
        node = SwarmNode(
            name,
            self.base / name,
            self.mirrors,
            self.keyring(self.base / f"{name}-node-gnupg"),
            self.keyring(self.base / f"{name}-pacman-gnupg"),
            bootstrap=boot,
            extra_config=extra + toml_tables(tables or {}),
            lan_host=lan,
        )
        node.extra_args = list(args)
        self.nodes[name] = node
        return node.start() if start else node

    def __getitem__(self, name: str) -> SwarmNode:
        return self.nodes[name]

    def wait_p2p(self, timeout: float = P2P_TIMEOUT) -> None:
        """Until every running node has published its libp2p addresses."""
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            while node.running and not _has_addrs(node):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{node.name}: libp2p not up in {timeout} s\n{self.logs()}"
                    )
                time.sleep(0.05)

    def logs(self, lines: int = 40) -> str:
        """Every node's log tail, labelled: the message a failing assertion carries."""
        return "\n".join(
            f"--- {n.name} ({n.peer_id}) ---\n{tail(n.log(), lines)}" for n in self.nodes.values()
        )

    def stop(self) -> None:
        """Stop every node (and keyring agent); one that fails to stop does not keep the rest."""
        errors = []
        for node in reversed(list(self.nodes.values())):
            try:
                node.close()
            except Exception as e:  # keep stopping the others
                errors.append(f"{node.name}: {e!r}")
        if errors:
            raise RuntimeError("could not stop every node: " + "; ".join(errors))


def _has_addrs(node: PacswarmNode) -> bool:
    try:
        return bool(node.p2p_addrs)
    except (KeyError, AssertionError):
        return False


# -- what the mirror saw -------------------------------------------------------------------


def refuse_packages(mirror: MirrorServer) -> None:
    """The mirror drops the connection on every package and package ``.sig``; dbs still work."""
    for pattern in PACKAGE_PATTERNS:
        mirror.set_fault("refuse", pattern)


def downloads(mirror: MirrorServer, filename: str) -> int:
    """Bodies of ``filename`` the mirror actually sent (200/206); refused GETs do not count."""
    return sum(1 for status in mirror.statuses("/" + filename) if status in (200, 206))


# -- what a node believes ------------------------------------------------------------------


def known_holders(node: PacswarmNode, sha256: str) -> list[str]:
    """Peer IDs ``node``'s announcement cache lists for ``sha256`` (H2's AnnouncementCache)."""
    from pacswarm.swarm.announcements import AnnouncementCache

    path = node.data_dir / ANNOUNCEMENT_DB
    if not path.exists():
        return []
    cache = AnnouncementCache(path, max_entries=1_000_000, peer_expiry=365 * 86400.0)
    try:
        return [holder.peer for holder in cache.holders(sha256)]
    finally:
        cache.close()


def wait_known(
    node: SwarmNode,
    sha256s: Iterable[str],
    holder: str | None = None,
    timeout: float = KNOW_TIMEOUT,
) -> None:
    """Until ``node`` lists a holder (``holder`` if given) for every one of ``sha256s``.

    A node believes announcements only of packages in its current dbs: one that never
    synced gets its dbs first (``pacman -Sy`` through it), as its user would.
    """
    if not (node.pacman.dbpath / "sync").is_dir() and node.running:
        node.sync()
    wanted = list(sha256s)
    deadline = time.monotonic() + timeout
    while True:
        missing = [s for s in wanted if not _holds(known_holders(node, s), holder)]
        if not missing:
            return
        if time.monotonic() > deadline:
            where = node.data_dir / ANNOUNCEMENT_DB
            raise AssertionError(
                f"{node.name} did not learn holders of {len(missing)} package(s) within "
                f"{timeout} s (announcement cache {where}, exists: {where.exists()}; if the "
                f"swarm keeps it elsewhere, set cluster.ANNOUNCEMENT_DB)\n"
                f"{tail(node.log())}"
            )
        time.sleep(0.2)


def own_announced(node: PacswarmNode) -> set[str]:
    """What the node offers its peers (the swarm's own set), read from its database."""
    path = node.data_dir / "swarm" / "announcements.sqlite"
    if not path.exists():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as sql:
        return {row[0] for row in sql.execute("SELECT filename FROM own")}


def wait_offered(node: SwarmNode, filenames: Iterable[str], timeout: float = KNOW_TIMEOUT) -> None:
    """Until ``node`` offers every one of ``filenames`` to its peers.

    A node imports and announces what it cached once its downloads are over (the import
    waits for them: ``Downloader.quiet``), so a peer asking right after a ``pacman -S``
    would find it still importing.
    """
    wanted = set(filenames)
    deadline = time.monotonic() + timeout
    while not wanted <= (offered := own_announced(node)):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{node.name} does not offer {sorted(wanted - offered)} after {timeout} s\n"
                f"{tail(node.log())}"
            )
        time.sleep(0.1)


def _holds(holders: list[str], holder: str | None) -> bool:
    return bool(holders) if holder is None else holder in holders


def wait_log(node: PacswarmNode, pattern: str, timeout: float = KNOW_TIMEOUT) -> str:
    """The first log line matching the regex ``pattern`` (case-insensitive), waiting for it."""
    regex = re.compile(pattern, re.IGNORECASE)
    deadline = time.monotonic() + timeout
    while True:
        for line in node.log().splitlines():
            if regex.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no log line matching {pattern!r} in {timeout} s:\n{tail(node.log())}"
            )
        time.sleep(0.2)
