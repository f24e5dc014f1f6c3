"""Who may fetch and how much (pacswarm.swarm.access): the pure rules, with a fake clock."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from pacswarm.config_tables import SwarmConfig
from pacswarm.swarm.access import Access, TokenBucket, is_loopback, normal_ip

A = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
B = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def access(clock: Clock | None = None, **swarm: object) -> Access:
    return Access(replace(SwarmConfig(), **swarm), clock=clock or Clock())  # type: ignore[arg-type]


# ── who is served ──────────────────────────────────────────────────────────────────────


def test_by_default_only_this_machine_is_served_over_http() -> None:
    a = access()
    for ip in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert a.may_fetch_http(ip), ip
    for ip in ("192.168.1.20", "10.0.0.2", "fe80::1%eth0", "", "not an ip"):
        assert not a.may_fetch_http(ip), ip
    assert not a.may_fetch_bitswap(A)


def test_a_joined_peer_is_served_by_its_ips_and_peer_id_until_it_leaves() -> None:
    a = access()
    a.peer_joined(A, ["192.168.1.20", "::ffff:10.0.0.7"])
    assert a.may_fetch_http("192.168.1.20")
    assert a.may_fetch_http("10.0.0.7")  # one spelling per address
    assert a.may_fetch_http("::ffff:192.168.1.20")
    assert not a.may_fetch_http("192.168.1.21")
    assert a.may_fetch_bitswap(A) and not a.may_fetch_bitswap(B)
    a.peer_left(A)
    assert not a.may_fetch_http("192.168.1.20")
    assert not a.may_fetch_bitswap(A)


def test_a_shared_ip_stays_served_while_one_of_its_peers_remains() -> None:
    a = access()
    a.peer_joined(A, ["192.168.1.1"])  # two machines behind one NAT
    a.peer_joined(B, ["192.168.1.1", "192.168.1.9"])
    a.peer_left(B)
    assert a.may_fetch_http("192.168.1.1")
    assert not a.may_fetch_http("192.168.1.9")


def test_joining_again_replaces_the_ips() -> None:
    a = access()
    a.peer_joined(A, ["192.168.1.1"])
    a.peer_joined(A, ["192.168.1.2"])
    assert not a.may_fetch_http("192.168.1.1") and a.may_fetch_http("192.168.1.2")
    assert a.joined() == {A: ["192.168.1.2"]}


def test_serve_public_serves_anyone() -> None:
    a = access(serve_public=True)
    assert a.may_fetch_http("203.0.113.9")
    assert a.may_fetch_bitswap(B)


def test_the_allowlist_keeps_others_out_of_the_swarm() -> None:
    a = access(allowlist=(A,))
    assert a.believe(A) and not a.believe(B)
    a.peer_joined(B, ["192.168.1.66"])  # connected, speaks pacswarm, but not ours
    assert not a.may_fetch_http("192.168.1.66")
    assert not a.may_fetch_bitswap(B)
    a.peer_joined(A, ["192.168.1.10"])
    assert a.may_fetch_http("192.168.1.10") and a.may_fetch_bitswap(A)
    # serve_public opens the gateway (HTTP has no peer ID) but not Bitswap to outsiders.
    both = access(allowlist=(A,), serve_public=True)
    assert both.may_fetch_http("203.0.113.9")
    assert both.may_fetch_bitswap(A) and not both.may_fetch_bitswap(B)


def test_an_empty_allowlist_believes_everyone() -> None:
    assert access().believe(B)


def test_addresses_are_normalised() -> None:
    assert normal_ip("::FFFF:10.0.0.1") == "10.0.0.1"
    assert normal_ip("[fe80::1%eth0]") == "fe80::1"
    assert normal_ip("2001:db8:0:0::1") == "2001:db8::1"
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("10.0.0.1")


# ── limits ─────────────────────────────────────────────────────────────────────────────


def test_concurrency_is_per_client_and_freed_on_close() -> None:
    a = access(peer_concurrency=2)
    a.peer_joined(A, ["10.0.0.2", "10.0.0.3"])
    one, two = a.enter_http("10.0.0.2"), a.enter_http("10.0.0.2")
    assert one is not None and two is not None
    assert a.enter_http("10.0.0.2") is None  # a third in flight: refused
    assert a.enter_http("10.0.0.3") is not None  # another client is not affected
    one.close()
    one.close()  # idempotent: a double close must not free a slot it does not hold
    third = a.enter_http("10.0.0.2")
    assert third is not None
    assert a.enter_http("10.0.0.2") is None
    assert a.usage("ip:10.0.0.2") == (0, 2, 2)


def test_bitswap_slots_are_per_peer_id() -> None:
    a = access(peer_concurrency=1)
    with a.enter_bitswap(A) as lease:  # type: ignore[union-attr]
        assert lease is not None
        assert a.enter_bitswap(A) is None
        assert a.enter_bitswap(B) is not None
    assert a.enter_bitswap(A) is not None


def test_loopback_is_not_limited_unless_asked() -> None:
    clock = Clock()
    a = access(clock, peer_concurrency=1, peer_rate=MiB)
    leases = [a.enter_http("127.0.0.1") for _ in range(5)]
    assert all(leases)
    assert leases[0] is not None and leases[0].pace(100 * MiB) == 0
    strict = Access(replace(SwarmConfig(), peer_concurrency=1), limit_loopback=True)
    assert strict.enter_http("127.0.0.1") is not None
    assert strict.enter_http("127.0.0.1") is None


def test_rate_paces_a_client_to_peer_rate() -> None:
    """Sending as fast as the pacing allows, a client gets peer_rate (plus one burst)."""
    clock = Clock()
    a = access(clock, peer_rate=4 * MiB)
    lease = a.enter_http("192.0.2.7")
    assert lease is not None
    start = clock.now
    sent = 0
    while clock.now - start < 10:
        clock.now += lease.pace(MiB)  # the caller sleeps as told, then sends
        sent += MiB
    elapsed = clock.now - start
    assert sent / elapsed == pytest.approx(4 * MiB, rel=0.15)
    assert a.usage("ip:192.0.2.7") == (sent, 1, 0)


def test_rate_is_shared_by_a_clients_concurrent_requests() -> None:
    clock = Clock()
    a = access(clock, peer_rate=MiB)
    one, two = a.enter_http("192.0.2.7"), a.enter_http("192.0.2.7")
    other = a.enter_http("192.0.2.8")
    assert one and two and other
    assert one.pace(MiB) == 0  # the burst
    assert two.pace(MiB) == pytest.approx(1.0)  # same bucket: waits for the first
    assert other.pace(MiB) == 0  # another client has its own


def test_rate_zero_is_unlimited() -> None:
    a = access(peer_rate=0)
    lease = a.enter_http("192.0.2.7")
    assert lease is not None and lease.pace(10**12) == 0


def test_bucket_refills_up_to_one_burst() -> None:
    b = TokenBucket(100, now=0.0)
    assert b.reserve(100, 0.0) == 0
    assert b.reserve(50, 0.0) == pytest.approx(0.5)
    assert b.full(1000.0)
    assert b.reserve(100, 1000.0) == 0  # idle time does not bank more than one burst
    assert b.reserve(1, 1000.0) > 0


def test_idle_clients_are_forgotten_so_state_stays_bounded() -> None:
    clock = Clock()
    a = access(clock, serve_public=True, peer_rate=1000)
    for i in range(10_000):
        lease = a.enter_http(f"198.51.{i // 250}.{i % 250}")
        assert lease is not None
        lease.pace(10)
        lease.close()
        clock.now += 0.1
    assert len(a._clients) <= 4097


def test_threads_cannot_oversubscribe_a_client() -> None:
    a = access(peer_concurrency=3)
    got: list[object] = []
    barrier = threading.Barrier(16)

    def grab() -> None:
        barrier.wait()
        got.append(a.enter_bitswap(A))

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(g is not None for g in got) == 3
