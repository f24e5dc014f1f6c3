"""The IPFS service's pure helpers."""

from __future__ import annotations

from pacswarm.ipfs.service import expand_unspecified


def test_unspecified_listen_addresses_expand_to_interfaces() -> None:
    addrs = ["/ip4/0.0.0.0/tcp/4001/p2p/12D3KooWX", "/ip4/127.0.0.1/tcp/5/p2p/12D3KooWX"]
    assert expand_unspecified(addrs, ["127.0.0.1", "10.1.2.3"]) == [
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWX",
        "/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWX",
        "/ip4/127.0.0.1/tcp/5/p2p/12D3KooWX",
    ]
    assert expand_unspecified(addrs[:1], []) == addrs[:1]  # nothing known: leave it
