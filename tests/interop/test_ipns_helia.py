"""Helia's own IPNS code (the npm ``ipns`` package) judges pacswarm's IPNS records.

``tests/interop/helia/ipns_check.mjs`` runs ``ipnsValidator`` (the validator Helia's DHT and
IPNS-over-PubSub use) and ``unmarshalIPNSRecord`` on a record built by
:mod:`pacswarm.ipns.record`, and builds Helia's own record from the same inputs: ed25519
signatures are deterministic, so the two must be byte-identical (for a validity whose
nanoseconds do not end in 0: Helia pads the fraction to nine digits, Go and we trim it; both
parse either). A record with a trimmed validity is checked too. Skipped when node or the
``ipns`` package is missing.

Then Helia's stack resolves our node's name from our node: ``ipns_resolve.mjs`` runs
js-libp2p with ``@libp2p/kad-dht`` (GET_VALUE under the binary routing key, the ``ipns``
validator and selector) or ``@libp2p/gossipsub`` (the IPNS-over-PubSub ``/record/`` topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from pacswarm.config_tables import IpnsConfig
from pacswarm.ipfs.cid import CID, encode_varint
from pacswarm.ipfs.host import P2PHost
from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipns.publisher import IpnsPublisher
from pacswarm.ipns.record import (
    build_record,
    format_validity,
    ipns_name,
    name_multihash,
    routing_key,
)
from pacswarm.ipns.resolver import IpnsResolver
from pacswarm.ipns.sequence import SequenceCounter
from tests.support.helia import HELIA_DIR, node_major_version
from tests.support.protowire import field_value_offset

SCRIPT = HELIA_DIR / "ipns_check.mjs"
HOUR = 3600 * 10**9
TTL = 300 * 10**9
VALUE = "/ipfs/bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def _unavailable() -> str | None:
    major = node_major_version()
    if major is None or major < 20:
        return "ipns interop: needs node >= 20 on PATH"
    if not (HELIA_DIR / "node_modules" / "ipns" / "package.json").is_file():
        return (
            f"ipns interop: the npm 'ipns' package is not installed in {HELIA_DIR} "
            f"(npm install --prefix {HELIA_DIR} --save-exact ipns@10.1.6)"
        )
    return None


pytestmark = [
    pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or ""),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return create_new_key_pair(b"\x07" * 32)


def _js_private_key(key: KeyPair) -> str:
    """The libp2p PrivateKey protobuf as js-libp2p and Go read it: 64 bytes (seed + public).

    py-libp2p's own ``serialize()`` writes only the 32-byte seed, which js-libp2p refuses.
    """
    body = key.private_key.to_bytes() + key.public_key.to_bytes()
    return (b"\x08\x01\x12" + encode_varint(len(body)) + body).hex()


def _check(tmp_path: Path, raw: bytes, key: KeyPair, *extra: str) -> tuple[int, dict[str, Any]]:
    record_file = tmp_path / "record.bin"
    record_file.write_bytes(raw)
    rkey = routing_key(name_multihash(key.public_key)).hex()
    node = shutil.which("node")
    assert node is not None
    proc = subprocess.run(
        [node, str(SCRIPT), str(record_file), rkey, *extra],
        cwd=HELIA_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip(), f"ipns_check.mjs printed nothing; stderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def _record(key: KeyPair, now_ns: int, lifetime_ns: int = 48 * HOUR, sequence: int = 5) -> bytes:
    return build_record(
        key.private_key,
        VALUE,
        sequence=sequence,
        now_ns=now_ns,
        lifetime_ns=lifetime_ns,
        ttl_ns=TTL,
    )


def test_helia_validates_and_unmarshals_our_record(tmp_path: Path, key: KeyPair) -> None:
    # Odd nanoseconds: Go's format (ours) and Helia's (always nine digits) then agree, so
    # Helia's own record for the same inputs must be byte-identical to ours.
    now = time.time_ns() | 1
    raw = _record(key, now)
    validity = format_validity(now + 48 * HOUR)
    rc, out = _check(tmp_path, raw, key, _js_private_key(key), VALUE, "5", validity, str(TTL))
    assert rc == 0, out
    assert out["valid"] is True
    assert out["value"] == VALUE
    assert out["sequence"] == "5"
    assert out["validity"] == validity
    assert out["ttl"] == str(TTL)
    assert out["v1"] is True and out["signatureV1Valid"] is True
    # Helia building the record itself from the same inputs produces our exact bytes.
    assert out["heliaRecordHex"] == raw.hex()


def test_helia_accepts_gos_trimmed_validity(tmp_path: Path, key: KeyPair) -> None:
    now = (time.time_ns() // 10**9) * 10**9  # whole seconds: Validity has no fraction
    raw = _record(key, now)
    rc, out = _check(tmp_path, raw, key)
    assert rc == 0, out
    assert out["validity"] == format_validity(now + 48 * HOUR)
    assert "." not in out["validity"]


def test_helia_refuses_a_tampered_signature(tmp_path: Path, key: KeyPair) -> None:
    raw = bytearray(_record(key, time.time_ns()))
    sig_at = field_value_offset(bytes(raw), 8)  # signatureV2, 64 bytes
    raw[sig_at + 5] ^= 1
    rc, out = _check(tmp_path, bytes(raw), key)
    assert rc == 1 and out["valid"] is False
    assert "SignatureVerification" in out["error"]


def test_helia_refuses_v1_value_not_matching_signed_data(tmp_path: Path, key: KeyPair) -> None:
    raw = _record(key, time.time_ns())
    forged_v1 = VALUE[:-1] + ("a" if VALUE[-1] != "a" else "b")
    tampered = raw.replace(VALUE.encode(), forged_v1.encode(), 1)  # the V1 field comes first
    assert tampered != raw
    rc, out = _check(tmp_path, tampered, key)
    assert rc == 1 and "did not match" in out["error"]


def test_helia_refuses_an_expired_record_and_another_names(tmp_path: Path, key: KeyPair) -> None:
    expired = _record(key, time.time_ns() - 2 * HOUR, lifetime_ns=HOUR)
    rc, out = _check(tmp_path, expired, key)
    assert rc == 1 and "expired" in out["error"]
    other = create_new_key_pair(b"\x08" * 32)
    rc, out = _check(tmp_path, _record(key, time.time_ns()), other)
    assert rc == 1 and out["valid"] is False


# --- Helia resolves our name from our node (its DHT client, its pubsub) ---------------------

RESOLVE_SCRIPT = HELIA_DIR / "ipns_resolve.mjs"
RESOLVE_MODULES = ("libp2p", "@libp2p/kad-dht", "@libp2p/gossipsub", "@libp2p/tcp", "ipns")
ROOT = CID.of(b"pacswarm folder root for helia")
ROOT2 = CID.of(b"pacswarm folder root for helia, take two")


def _resolve_unavailable() -> str | None:
    for module in RESOLVE_MODULES:
        if not (HELIA_DIR / "node_modules" / module / "package.json").is_file():
            return f"ipns resolve interop: npm {module} missing (npm ci --prefix {HELIA_DIR})"
    return None


needs_resolve = pytest.mark.skipif(
    _resolve_unavailable() is not None, reason=_resolve_unavailable() or ""
)


@asynccontextmanager
async def our_node(tmp_path: Path) -> AsyncIterator[tuple[P2PHost, IpnsPublisher]]:
    """A real P2PHost on 127.0.0.1 with our publisher; always stopped."""
    host = P2PHost(tmp_path / "identity.key", ["/ip4/127.0.0.1/tcp/0"], bootstrap=(), mdns=False)
    await host.start()
    try:
        key = load_or_create_identity(tmp_path / "identity.key").private_key
        counter = SequenceCounter(tmp_path / "ipns" / "sequence")
        yield host, IpnsPublisher(key, counter, IpnsConfig(), host)
    finally:
        await host.stop()


async def _resolver(mode: str, addr: str, arg: str, *extra: str) -> asyncio.subprocess.Process:
    """ipns_resolve.mjs MODE ADDR ARG (a routing key in hex, or put's value) 30000 EXTRA..."""
    node = shutil.which("node")
    assert node is not None
    return await asyncio.create_subprocess_exec(
        node, str(RESOLVE_SCRIPT), mode, addr, arg, "30000", *extra,
        cwd=HELIA_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"ipns_resolve.mjs ended: {(await proc.stderr.read()).decode()}")
    return dict(json.loads(line))


async def _finish(proc: asyncio.subprocess.Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@needs_resolve
def test_helia_resolves_our_name_over_its_dht(tmp_path: Path) -> None:
    """kad-dht's GET_VALUE under the binary key reaches our handler, and Helia's validator
    (inside kad-dht, and again in the script) accepts what we serve."""

    async def main() -> tuple[dict[str, Any], int, IpnsPublisher, str]:
        async with our_node(tmp_path) as (host, publisher):
            await publisher.publish(ROOT)
            proc = await _resolver("dht", host.listen_addrs()[0], publisher.routing_key.hex())
            out = await _line(proc)
            return out, await _finish(proc), publisher, host.peer_id

    out, code, publisher, peer_id = asyncio.run(main())
    assert code == 0 and out["ok"] is True, out
    assert out["value"] == f"/ipfs/{ROOT}" and out["sequence"] == "1"
    assert out["from"] == peer_id
    assert out["ttl"] == str(300 * 10**9)
    assert publisher.current is not None and out["validity"] == publisher.current.validity


@needs_resolve
def test_helia_receives_our_record_over_ipns_pubsub(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, Any], int, str]:
        async with our_node(tmp_path) as (host, publisher):
            await publisher.publish(ROOT)  # joins our own /record/ topic
            proc = await _resolver(
                "pubsub", host.listen_addrs()[0], publisher.routing_key.hex(), "2"
            )
            ready = await _line(proc)
            assert ready.get("ready") is True, ready
            assert ready["topic"] == publisher.topic
            deadline = time.monotonic() + 20
            while ready["peer_id"] not in await host.pubsub.mesh_peers(publisher.topic):
                assert time.monotonic() < deadline, "Helia never joined our mesh"
                await asyncio.sleep(0.1)
            await publisher.publish(ROOT2)
            out = await _line(proc)
            return out, await _finish(proc), host.peer_id

    out, code, peer_id = asyncio.run(main())
    assert code == 0 and out["ok"] is True, out
    assert out["value"] == f"/ipfs/{ROOT2}" and out["sequence"] == "2"
    assert out["from"] == peer_id


@needs_resolve
def test_helia_stores_its_own_record_on_our_node_and_we_resolve_it(tmp_path: Path) -> None:
    """kad-dht's put (FIND_NODE answered by KadDHT through our handler, then PUT_VALUE under
    Helia's binary key answered by ours): we keep Helia's record and resolve its name."""

    async def main() -> tuple[dict[str, Any], int, bytes | None, Any, str]:
        async with our_node(tmp_path) as (host, publisher):
            proc = await _resolver("put", host.listen_addrs()[0], f"/ipfs/{ROOT}")
            proc_args = await _line(proc)
            code = await _finish(proc)
            key = bytes.fromhex(proc_args.get("routing_key_hex", ""))
            held = host.ipns_records.get(key)
            resolver = IpnsResolver(publisher, host)
            name = ipns_name(key[len(b"/ipns/") :])
            resolved = await resolver.resolve(name)
            await resolver.stop()
            return proc_args, code, held.raw if held else None, resolved, host.peer_id

    out, code, held, resolved, peer_id = asyncio.run(main())
    assert code == 0 and out["ok"] is True, out
    assert out["stored_at"] == [peer_id]
    assert held is not None
    assert resolved is not None and resolved.value == ROOT and resolved.record == held
