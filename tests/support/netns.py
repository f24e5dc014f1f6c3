"""Network namespaces on a bridge: separate "machines" on one private LAN, made per test.

Why: some behaviour depends on *not* being 127.0.0.1 (the gateway serves loopback clients but
not strangers) or on a real broadcast domain (mDNS between nodes). Each namespace gets a veth
pair whose other end is enslaved to a fresh bridge; the root namespace (where an in-process
pacswarm node runs) gets an address on the bridge too, so it is reachable from the namespaces
by a non-loopback IP. Nothing is routed beyond the bridge: the namespaces' default route is
the host's bridge address and IP forwarding is left as it is (off), so nothing here can reach
the public network.

Usage::

    with lan(n=3) as hosts:
        hosts.host_ip                      # the root namespace's address on the bridge
        hosts[0].ip                        # 10.x.y.2, 10.x.y.3, ...
        hosts[0].run(["curl", ...])        # a CompletedProcess, inside the namespace
        proc = hosts[1].popen([...])       # stopped at exit if still running
        argv = hosts[2].command([...])     # for asyncio.create_subprocess_exec

Names (namespaces, links) and the /24 are unique per use; everything is removed on exit, even
when the test fails. :func:`lan` skips the test, with the reason, if ``ip netns add`` is not
permitted (not root, no CAP_SYS_ADMIN, no ``ip``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import pytest

_IP = shutil.which("ip") or "/usr/sbin/ip"


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building the LAN (its stderr is in the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([_IP, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass
class NsHost:
    """One namespace on the bridge: its name, its address, and ways to run things in it."""

    netns: str
    ip: str
    veth: str  # the interface name inside the namespace
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this namespace (for any process launcher)."""
        return [_IP, "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run to completion inside the namespace (output captured as text by default)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), timeout=timeout, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start inside the namespace; :func:`lan` stops it at exit if it still runs."""
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def _stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        # Anything still in the namespace was started by this test (it made the namespace).
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


class Lan(Sequence[NsHost]):
    """The namespaces of one bridge, indexable; ``host_ip`` is the root namespace's address."""

    def __init__(self, bridge: str, network: ipaddress.IPv4Network, hosts: list[NsHost]) -> None:
        self.bridge = bridge
        self.network = network
        self.host_ip = str(network.network_address + 1)
        self.hosts = hosts

    @overload
    def __getitem__(self, i: int) -> NsHost: ...

    @overload
    def __getitem__(self, i: slice) -> list[NsHost]: ...

    def __getitem__(self, i: int | slice) -> NsHost | list[NsHost]:
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)


def _free_network() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no local interface or route uses (other tests may run at once)."""
    used = _ip("-4", "route", "show", "table", "all", check=False).stdout
    used += _ip("-4", "addr", check=False).stdout
    rng = random.SystemRandom()
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}.0/24")
        if f"{net.network_address}".rsplit(".", 1)[0] + "." not in used:
            return net
    raise NetnsError("no free 10.x.y.0/24 for a test LAN")


def _require_netns(probe: str) -> None:
    """Skip (with why) when namespaces cannot be made here; leave no probe behind."""
    if not os.path.exists(_IP):
        pytest.skip("network namespaces: the `ip` command (iproute2) is not installed")
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        pytest.skip(f"network namespaces not permitted here (`ip netns add`): {done.stderr}")
    _ip("netns", "del", probe, check=False)


@contextlib.contextmanager
def lan(n: int = 2) -> Iterator[Lan]:
    """``n`` namespaces and the root namespace on one fresh bridge; all removed at exit."""
    token = os.urandom(3).hex()
    _require_netns(f"ps-{token}-probe")
    network = _free_network()
    bridge = f"psb{token}"
    addrs = list(network.hosts())
    hosts: list[NsHost] = []
    made_bridge = False
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made_bridge = True
        # No IGMP snooping: mDNS multicast must reach every port without a querier.
        _ip("link", "set", bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("addr", "add", f"{addrs[0]}/{network.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(n):
            hosts.append(_add_host(token, i, bridge, str(addrs[i + 1]), network, str(addrs[0])))
        yield Lan(bridge, network, hosts)
    finally:
        for host in hosts:
            host._stop()
            _ip("netns", "del", host.netns, check=False)  # takes its veth pair along
        if made_bridge:
            _ip("link", "del", bridge, check=False)


def _add_host(
    token: str, i: int, bridge: str, ip: str, network: ipaddress.IPv4Network, gateway: str
) -> NsHost:
    netns, outer, inner = f"ps-{token}-{i}", f"psv{token}{i}", f"psn{token}{i}"
    _ip("netns", "add", netns)
    host = NsHost(netns, ip, "eth0")
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "master", bridge, "up")
        _ip("link", "set", inner, "netns", netns)
        _ip("-n", netns, "link", "set", inner, "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{ip}/{network.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "route", "add", "default", "via", gateway)
    except BaseException:
        _ip("netns", "del", netns, check=False)
        _ip("link", "del", outer, check=False)
        raise
    return host
