"""Who may fetch from this node, and how much: the rules both servers (gateway, Bitswap) ask.

Why: CIDs are deterministic, so anyone on a network the laptop joins can compute them offline
and probe which package versions it holds (vulnerable ones included), then pull them as fast
as the disk goes. By default the node therefore serves only

* this machine (loopback clients of the gateway), and
* peers of its swarm: connected libp2p peers speaking the pacswarm inventory protocol (the
  lead registers them with :meth:`Access.peer_joined`); over HTTP a swarm peer is known by the
  IPs of its libp2p connections, over Bitswap by its peer ID.

``[swarm] serve_public = true`` serves anyone. A non-empty ``[swarm] allowlist`` makes the
swarm private: other peer IDs are never joined (so their IPs are not served either), never
believed, and never served over Bitswap, even with ``serve_public`` (a peer ID outside a
private swarm is exactly what the allowlist names as unwanted; HTTP clients carry no peer ID,
so ``serve_public`` still opens the gateway).

Limits, per client IP (gateway) and per peer ID (Bitswap): ``peer_rate`` bytes/s through a
token bucket (0 = unlimited) that *paces* a response rather than refusing it, and
``peer_concurrency`` requests (gateway) or responder streams (Bitswap) in flight. Loopback
clients are this machine, not peers: they are not limited (several local nodes share
127.0.0.1 in tests and benchmarks) unless ``limit_loopback=True``.

Everything here is pure bookkeeping under one lock (the gateway asks on the asyncio loop,
Bitswap on the trio thread), with an injectable clock: no I/O, no sleeping. Callers sleep for
the delays :meth:`Lease.pace` returns.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pacswarm.config_tables import SwarmConfig

#: Client states kept before idle ones (nothing in flight, bucket full) are swept.
_SWEEP_AT = 4096


def normal_ip(ip: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, no zone, compressed IPv6.

    Unparseable input comes back stripped and lower-cased (it then matches nothing joined).
    """
    text = ip.strip().lower().removeprefix("[").removesuffix("]").split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped forms: this machine."""
    try:
        return ipaddress.ip_address(normal_ip(ip)).is_loopback
    except ValueError:
        return False


class TokenBucket:
    """Bytes per second with a one-second burst; pure, the caller passes the time.

    :meth:`reserve` never refuses: it takes the bytes (the balance may go negative, a debt)
    and says how long to wait before sending them, so a stream is paced per batch, not per
    byte, and concurrent streams of one client share its rate.
    """

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.burst = float(rate)
        self.tokens = float(rate)
        self.stamp = now
        #: Bytes reserved so far (the accounting tests and metrics read).
        self.taken = 0

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; seconds to wait before sending them (0 when within the burst)."""
        self.taken += nbytes
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        """True once the bucket has refilled: the client's state may be forgotten."""
        if self.rate <= 0:
            return True
        self._refill(now)
        return self.tokens >= self.burst


@dataclass
class _Client:
    bucket: TokenBucket
    inflight: int = 0
    refused: int = 0


@dataclass
class Lease:
    """One admitted request (gateway) or responder (Bitswap); :meth:`close` exactly once."""

    access: Access
    key: str
    client: _Client
    closed: bool = field(default=False)

    def pace(self, nbytes: int) -> float:
        """Seconds to wait before sending ``nbytes`` (the client's rate, shared)."""
        return self.access._pace(self, nbytes)

    def close(self) -> None:
        self.access._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Access:
    """Admission and per-client limits for the gateway and Bitswap. Thread-safe."""

    def __init__(
        self,
        swarm: SwarmConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        limit_loopback: bool = False,
    ) -> None:
        self.swarm = swarm
        self._allow = frozenset(swarm.allowlist)
        self._clock = clock
        self._limit_loopback = limit_loopback
        self._lock = threading.Lock()
        self._peers: dict[str, frozenset[str]] = {}  # peer ID -> its IPs
        self._ips: dict[str, set[str]] = {}  # IP -> peer IDs joined from it
        self._clients: dict[str, _Client] = {}

    # who is in the swarm ------------------------------------------------------------------

    def believe(self, peer_id: str) -> bool:
        """Allowlist check: True for everyone when the allowlist is empty."""
        return not self._allow or peer_id in self._allow

    def peer_joined(self, peer_id: str, ips: Iterable[str]) -> None:
        """A swarm peer connected (again): its IPs may fetch over HTTP. Replaces its IPs.

        Ignored for a peer outside a non-empty allowlist.
        """
        if not self.believe(peer_id):
            return
        new = frozenset(normal_ip(ip) for ip in ips)
        with self._lock:
            self._drop_ips(peer_id)
            self._peers[peer_id] = new
            for ip in new:
                self._ips.setdefault(ip, set()).add(peer_id)

    def peer_left(self, peer_id: str) -> None:
        """The peer's last connection closed: its IPs are no longer served (unless shared)."""
        with self._lock:
            self._drop_ips(peer_id)
            self._peers.pop(peer_id, None)

    def _drop_ips(self, peer_id: str) -> None:
        for ip in self._peers.get(peer_id, ()):
            holders = self._ips.get(ip)
            if holders is not None:
                holders.discard(peer_id)
                if not holders:
                    del self._ips[ip]

    def joined(self) -> dict[str, list[str]]:
        """Swarm peers and their IPs (status pages, tests)."""
        with self._lock:
            return {p: sorted(ips) for p, ips in self._peers.items()}

    # admission ---------------------------------------------------------------------------

    def may_fetch_http(self, ip: str) -> bool:
        """Loopback, an IP of a joined swarm peer, or anyone with ``serve_public``."""
        if self.swarm.serve_public or is_loopback(ip):
            return True
        with self._lock:
            return normal_ip(ip) in self._ips

    def may_fetch_bitswap(self, peer_id: str) -> bool:
        """A joined swarm peer, or with ``serve_public`` anyone the allowlist does not exclude."""
        if self.swarm.serve_public and self.believe(peer_id):
            return True
        with self._lock:
            return peer_id in self._peers

    # limits ------------------------------------------------------------------------------

    def enter_http(self, ip: str) -> Lease | None:
        """A slot for one gateway request of ``ip``; None when it has ``peer_concurrency``."""
        ip = normal_ip(ip)
        if is_loopback(ip) and not self._limit_loopback:
            return self._enter(f"local:{ip}", unlimited=True)
        return self._enter(f"ip:{ip}")

    def enter_bitswap(self, peer_id: str) -> Lease | None:
        """A slot for one Bitswap responder stream of ``peer_id``; None over the limit."""
        return self._enter(f"peer:{peer_id}")

    def _enter(self, key: str, unlimited: bool = False) -> Lease | None:
        now = self._clock()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if len(self._clients) >= _SWEEP_AT:
                    self._sweep(now)
                rate = 0 if unlimited else self.swarm.peer_rate
                client = self._clients[key] = _Client(TokenBucket(rate, now))
            if not unlimited and client.inflight >= self.swarm.peer_concurrency:
                client.refused += 1
                return None
            client.inflight += 1
            return Lease(self, key, client)

    def _pace(self, lease: Lease, nbytes: int) -> float:
        now = self._clock()
        with self._lock:
            return lease.client.bucket.reserve(nbytes, now)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if lease.closed:
                return
            lease.closed = True
            lease.client.inflight -= 1

    def _sweep(self, now: float) -> None:
        """Forget idle clients, so a public node's state stays bounded."""
        for key in [k for k, c in self._clients.items() if not c.inflight and c.bucket.full(now)]:
            del self._clients[key]

    def usage(self, key: str) -> tuple[int, int, int] | None:
        """(bytes reserved, in flight, refused) of ``ip:<ip>``/``peer:<id>``; None if unknown."""
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                return None
            return client.bucket.taken, client.inflight, client.refused
