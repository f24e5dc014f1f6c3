"""openpgp.py on signatures and keys made by the real gpg, and on damaged bytes.

The math must agree with gpg on good signatures (else the fast path is useless) and say no on
anything changed (else it would accept what gpg rejects); malformed input must be a decline
(:class:`Unsupported`), never another exception, since a ``.sig`` comes from a mirror.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacswarm import openpgp
from pacswarm.openpgp import Unsupported
from tests.support import gpg

DATA = bytes(range(256)) * 400


@dataclass(frozen=True)
class Keys:
    home: Path
    ed: str
    rsa: str
    export: bytes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    home = gpg.make_homedir(tmp_path_factory.mktemp("openpgp") / "gnupg")
    try:
        ed = gpg.generate_key(home, "ed <ed@pacswarm.test>")
        gpg.run_gpg(home, "--quick-generate-key", "rsa <rsa@pacswarm.test>", "rsa2048", "sign")
        listing = gpg.run_gpg(home, "--with-colons", "--list-keys", "rsa@pacswarm.test").stdout
        rsa = next(ln.split(":")[9] for ln in listing.decode().splitlines() if ln[:4] == "fpr:")
        yield Keys(home, ed, rsa, gpg.run_gpg(home, "--export").stdout)
    finally:
        gpg.kill_agent(home)


def _sign(keys: Keys, fpr: str, *extra: str, data: bytes = DATA) -> bytes:
    src = keys.home.parent / "data"
    src.write_bytes(data)
    out = gpg.run_gpg(
        keys.home, *extra, "--local-user", f"{fpr}!", "--detach-sign", "-o", "-", str(src)
    )
    return out.stdout


def _check(keys: Keys, sig: bytes, data: bytes = DATA) -> bool:
    parsed = openpgp.parse_detached(sig)
    issuer = parsed.subpackets(openpgp.SUB_ISSUER_FPR)[0].body[1:].hex().upper()
    key = openpgp.parse_keys(keys.export)[issuer]
    assert parsed.hash_name is not None
    return openpgp.Verifier.of(key).verify(
        parsed, parsed.digest(hashlib.new(parsed.hash_name, data))
    )


def test_export_gives_both_keys_with_gpgs_fingerprints(keys: Keys) -> None:
    found = openpgp.parse_keys(keys.export)
    assert {keys.ed, keys.rsa} <= set(found)
    assert found[keys.ed].algo == openpgp.ALGO_EDDSA and found[keys.ed].ed25519 is not None
    assert found[keys.rsa].algo == openpgp.ALGO_RSA and found[keys.rsa].rsa is not None


@pytest.mark.parametrize("digest", ["SHA256", "SHA512"])
@pytest.mark.parametrize("who", ["ed", "rsa"])
def test_gpgs_good_signature_verifies_and_other_data_does_not(
    keys: Keys, who: str, digest: str
) -> None:
    sig = _sign(keys, getattr(keys, who), "--digest-algo", digest)
    parsed = openpgp.parse_detached(sig)
    assert parsed.hash_name == digest.lower()
    assert parsed.sig_type == 0
    assert len(parsed.subpackets(openpgp.SUB_CREATION_TIME)) == 1
    assert _check(keys, sig)
    assert not _check(keys, sig, DATA + b"x")
    assert not _check(keys, sig, DATA[:-1])


def test_running_hash_is_not_consumed(keys: Keys) -> None:
    """digest() works on a copy: the caller's hash still gives the file's sha256."""
    parsed = openpgp.parse_detached(_sign(keys, keys.ed, "--digest-algo", "SHA256"))
    running = hashlib.sha256(DATA)
    parsed.digest(running)
    assert running.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_flipped_signature_bit_is_rejected(keys: Keys) -> None:
    for who in (keys.ed, keys.rsa):
        sig = bytearray(_sign(keys, who))
        sig[-5] ^= 0x01  # inside the last MPI
        assert not _check(keys, bytes(sig))


def test_key_of_another_signer_does_not_verify(keys: Keys) -> None:
    sig = openpgp.parse_detached(_sign(keys, keys.ed))
    other = openpgp.Verifier.of(openpgp.parse_keys(keys.export)[keys.rsa])
    assert not other.verify(sig, sig.digest(hashlib.sha256(DATA)))


def test_text_signature_parses_as_type_1(keys: Keys) -> None:
    assert openpgp.parse_detached(_sign(keys, keys.ed, "--textmode")).sig_type == 1


def test_armored_and_two_signatures_are_declined(keys: Keys) -> None:
    with pytest.raises(Unsupported, match="armored"):
        openpgp.parse_detached(_sign(keys, keys.ed, "--armor"))
    one = _sign(keys, keys.ed)
    with pytest.raises(Unsupported, match="2 signatures"):
        openpgp.parse_detached(one + one)


def test_v3_and_partial_lengths_are_declined(keys: Keys) -> None:
    body = bytearray(openpgp.packets(_sign(keys, keys.ed))[0][1])
    body[0] = 3
    with pytest.raises(Unsupported, match="v3"):
        openpgp.parse_detached(bytes([0x88, len(body)]) + bytes(body))
    with pytest.raises(Unsupported, match="partial"):
        openpgp.parse_detached(bytes([0xC2, 0xE1]) + bytes(body))
    with pytest.raises(Unsupported, match="indeterminate"):
        openpgp.parse_detached(bytes([0x8B]) + bytes(body))


def test_every_truncation_and_byte_flip_is_a_decline_or_a_no(keys: Keys) -> None:
    """No prefix or single-byte change of a real signature raises anything but Unsupported,
    and none verifies except the original (a changed byte in the unhashed area is the one
    exception gpg shares: it is not covered by the signature)."""
    export = openpgp.parse_keys(keys.export)
    for who in (keys.ed, keys.rsa):
        sig = _sign(keys, who)
        verifier = openpgp.Verifier.of(export[who])
        unhashed = _unhashed_span(sig)
        for cut in range(len(sig)):
            with pytest.raises(Unsupported):
                openpgp.parse_detached(sig[:cut])
        for i in range(len(sig)):
            damaged = bytearray(sig)
            damaged[i] ^= 0x41
            try:
                parsed = openpgp.parse_detached(bytes(damaged))
            except Unsupported:
                continue
            if parsed.hash_name is None:
                continue
            ok = verifier.verify(parsed, parsed.digest(hashlib.new(parsed.hash_name, DATA)))
            assert not ok or i in unhashed, f"byte {i} changed and still verifies"


def _unhashed_span(sig: bytes) -> range:
    """Offsets of the unhashed subpackets' bytes within ``sig``."""
    _tag, header, _length = openpgp._header(sig, 0)
    hashed_len = int.from_bytes(sig[header + 4 : header + 6], "big")
    start = header + 6 + hashed_len
    unhashed_len = int.from_bytes(sig[start : start + 2], "big")
    return range(start + 2, start + 2 + unhashed_len)


def test_garbage_never_raises() -> None:
    for blob in (b"", b"\x00", b"\xff" * 40, b"\x89\x01", b"\xc2\xff\x00\x00", b"\x88\x05\x04"):
        with pytest.raises(Unsupported):
            openpgp.parse_detached(blob)
    assert openpgp.parse_keys(b"\x99\x00\x10garbage") == {}
