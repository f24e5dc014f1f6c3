"""Just enough OpenPGP (RFC 4880) to check an Arch package signature in-process.

Why: gpg reads every byte of the package a second time (about 5 CPU s/GB, plus 5-10 ms to
start), while pacswarm already runs a sha256 over the same bytes for the db's ``%SHA256SUM%``.
A v4 signature's digest is ``H(data || hashed part || 0x04 0xFF || len32(hashed part))``, so a
*copy* of that running hash, with the signature's trailer appended, gives the signed digest
without reading the data again (:meth:`Signature.digest`); the public-key step is microseconds
with ``cryptography``.

Scope, deliberately narrow: binary v4 signature and key packets, RSA (1) and legacy EdDSA
(22, curve Ed25519), SHA-256 and SHA-512. Everything else -- armor, v3, partial body lengths,
other algorithms, anything malformed -- is *declined* (a :class:`Unsupported` reason string
returned, never an exception): the caller then hands the signature to gpg, whose verdict is
final. Nothing here decides trust; :mod:`pacswarm.trust` and :mod:`pacswarm.fastverify` do.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256, SHA512, HashAlgorithm

TAG_SIGNATURE = 2
TAG_PUBLIC_KEY = 6
TAG_PUBLIC_SUBKEY = 14

ALGO_RSA = 1
ALGO_EDDSA = 22
#: RFC 4880 9.4 numbers of the hashes we compute, by hashlib name.
HASHES = {8: "sha256", 10: "sha512"}
_CRYPTO_HASH: dict[str, type[HashAlgorithm]] = {"sha256": SHA256, "sha512": SHA512}

#: Signature subpackets (RFC 4880 5.2.3.1) the rules name.
SUB_CREATION_TIME = 2
SUB_EXPIRATION_TIME = 3
SUB_ISSUER = 16
SUB_ISSUER_FPR = 33

#: OID 1.3.6.1.4.1.11591.15.1 (Ed25519 for legacy EdDSA), as encoded in a key packet.
ED25519_OID = bytes.fromhex("2b06010401da470f01")


class Unsupported(ValueError):
    """Not something this module checks; ``str(e)`` says why (gpg decides instead)."""


@dataclass(frozen=True)
class Subpacket:
    type: int
    critical: bool
    body: bytes


@dataclass(frozen=True)
class Signature:
    """One parsed v4 signature packet."""

    sig_type: int
    pubkey_algo: int
    hash_algo: int
    #: The bytes the digest covers after the data: version .. end of the hashed subpackets.
    hashed_part: bytes
    hashed: tuple[Subpacket, ...]
    unhashed: tuple[Subpacket, ...]
    left16: bytes
    #: RSA: (s,); EdDSA: (r, s). Big-endian, as the MPIs carry them (leading zeros dropped).
    mpis: tuple[bytes, ...]

    @property
    def hash_name(self) -> str | None:
        return HASHES.get(self.hash_algo)

    def subpackets(self, kind: int) -> list[Subpacket]:
        return [p for p in (*self.hashed, *self.unhashed) if p.type == kind]

    def digest(self, running: hashlib._Hash) -> bytes:
        """The signed digest, from a *copy* of ``running`` (a hash over exactly the data)."""
        h = running.copy()
        h.update(self.hashed_part)
        h.update(b"\x04\xff" + len(self.hashed_part).to_bytes(4, "big"))
        return h.digest()


@dataclass(frozen=True)
class PublicKey:
    """A v4 primary key or subkey packet: its fingerprint and usable key material."""

    fingerprint: str  # 40 upper-case hex digits, as gpg prints them
    algo: int
    created: int
    rsa: tuple[int, int] | None = None  # (n, e)
    ed25519: bytes | None = None  # the 32-byte point

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]


# -- packet framing -------------------------------------------------------------------------


def packets(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) of each packet in ``data``; raise :class:`Unsupported` otherwise."""
    if data[:64].lstrip().startswith(b"-----BEGIN PGP"):
        raise Unsupported("armored signature")
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, start, length = _header(data, pos)
        if start + length > len(data):
            raise Unsupported("truncated packet")
        out.append((tag, data[start : start + length]))
        pos = start + length
    return out


def _header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, body start, body length) of the packet at ``pos`` (RFC 4880 4.2)."""
    first = data[pos]
    if not first & 0x80:
        raise Unsupported("not binary OpenPGP")
    if first & 0x40:  # new format
        tag = first & 0x3F
        if pos + 1 >= len(data):
            raise Unsupported("truncated packet header")
        o1 = data[pos + 1]
        if o1 < 192:
            return tag, pos + 2, o1
        if o1 < 224:
            if pos + 2 >= len(data):
                raise Unsupported("truncated packet header")
            return tag, pos + 3, ((o1 - 192) << 8) + data[pos + 2] + 192
        if o1 == 255:
            if pos + 6 > len(data):
                raise Unsupported("truncated packet header")
            return tag, pos + 6, int.from_bytes(data[pos + 2 : pos + 6], "big")
        raise Unsupported("partial body length")
    tag, kind = (first >> 2) & 0x0F, first & 0x03
    if kind == 3:
        raise Unsupported("indeterminate packet length")
    width = 1 << kind
    if pos + 1 + width > len(data):
        raise Unsupported("truncated packet header")
    return tag, pos + 1 + width, int.from_bytes(data[pos + 1 : pos + 1 + width], "big")


class _Reader:
    """Bounds-checked reads from one packet body: running off the end is :class:`Unsupported`."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Unsupported("truncated packet body")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def mpi(self) -> bytes:
        bits = self.int(2)
        value = self.take((bits + 7) // 8)
        if bits and (not value or value[0] >> ((bits - 1) % 8) != 1):
            raise Unsupported("MPI bit count does not match its value")
        return value

    def at_end(self) -> bool:
        return self.pos == len(self.data)


# -- signatures -----------------------------------------------------------------------------


def parse_signature_packet(body: bytes) -> Signature:
    """A v4 signature packet body (RFC 4880 5.2.3); :class:`Unsupported` for anything else."""
    r = _Reader(body)
    version = r.int(1)
    if version != 4:
        raise Unsupported(f"v{version} signature")
    sig_type, pubkey_algo, hash_algo = r.int(1), r.int(1), r.int(1)
    hashed_area = r.take(r.int(2))
    hashed_part = body[: r.pos]
    unhashed_area = r.take(r.int(2))
    left16 = r.take(2)
    if pubkey_algo == ALGO_RSA:
        mpis: tuple[bytes, ...] = (r.mpi(),)
    elif pubkey_algo == ALGO_EDDSA:
        mpis = (r.mpi(), r.mpi())
    else:
        raise Unsupported(f"public-key algorithm {pubkey_algo}")
    if not r.at_end():
        raise Unsupported("trailing bytes after the signature's MPIs")
    return Signature(
        sig_type=sig_type,
        pubkey_algo=pubkey_algo,
        hash_algo=hash_algo,
        hashed_part=hashed_part,
        hashed=_subpackets(hashed_area),
        unhashed=_subpackets(unhashed_area),
        left16=left16,
        mpis=mpis,
    )


def _subpackets(area: bytes) -> tuple[Subpacket, ...]:
    r = _Reader(area)
    out: list[Subpacket] = []
    while not r.at_end():
        o1 = r.int(1)
        if o1 < 192:
            length = o1
        elif o1 < 255:
            length = ((o1 - 192) << 8) + r.int(1) + 192
        else:
            length = r.int(4)
        if length == 0:
            raise Unsupported("empty signature subpacket")
        kind = r.int(1)
        out.append(Subpacket(kind & 0x7F, bool(kind & 0x80), r.take(length - 1)))
    return tuple(out)


def parse_detached(data: bytes) -> Signature:
    """The one v4 signature of a detached ``.sig``; :class:`Unsupported` for anything else."""
    found = packets(data)
    if not found:
        raise Unsupported("no packets")
    if any(tag != TAG_SIGNATURE for tag, _ in found):
        raise Unsupported("a packet that is not a signature")
    if len(found) != 1:
        raise Unsupported(f"{len(found)} signatures")
    return parse_signature_packet(found[0][1])


# -- keys -----------------------------------------------------------------------------------


def parse_key_packet(body: bytes) -> PublicKey:
    """A v4 public key or subkey packet (RFC 4880 5.5.2); :class:`Unsupported` otherwise."""
    r = _Reader(body)
    version = r.int(1)
    if version != 4:
        raise Unsupported(f"v{version} key")
    created, algo = r.int(4), r.int(1)
    fpr = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if algo == ALGO_RSA:
        n, e = r.mpi(), r.mpi()
        key = PublicKey(
            fpr, algo, created, rsa=(int.from_bytes(n, "big"), int.from_bytes(e, "big"))
        )
    elif algo == ALGO_EDDSA:
        oid = r.take(r.int(1))
        point = r.mpi()
        if oid != ED25519_OID:
            raise Unsupported("EdDSA key on a curve other than Ed25519")
        if len(point) != 33 or point[0] != 0x40:
            raise Unsupported("Ed25519 point not in the 0x40-prefixed native form")
        key = PublicKey(fpr, algo, created, ed25519=point[1:])
    else:
        raise Unsupported(f"public-key algorithm {algo}")
    if not r.at_end():
        raise Unsupported("trailing bytes in a key packet")
    return key


def parse_keys(export: bytes) -> dict[str, PublicKey]:
    """Every usable v4 key and subkey of ``gpg --export`` output, by fingerprint.

    Keys this module cannot use (other versions or algorithms) are left out: a signature by
    one of them is declined, for gpg. A malformed stream gives what was read before the fault.
    """
    keys: dict[str, PublicKey] = {}
    try:
        found = packets(export)
    except Unsupported:
        return keys
    for tag, body in found:
        if tag in (TAG_PUBLIC_KEY, TAG_PUBLIC_SUBKEY):
            try:
                key = parse_key_packet(body)
            except Unsupported:
                continue
            keys[key.fingerprint] = key
    return keys


# -- the math -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verifier:
    """A key ready for the public-key step (built once per trust cache, reused per package)."""

    key: PublicKey
    _rsa: rsa.RSAPublicKey | None
    _ed: Ed25519PublicKey | None

    @classmethod
    def of(cls, key: PublicKey) -> Verifier:
        """:class:`Unsupported` if ``cryptography`` will not load the key material."""
        try:
            if key.rsa is not None:
                n, e = key.rsa
                return cls(key, rsa.RSAPublicNumbers(e, n).public_key(), None)
            assert key.ed25519 is not None
            return cls(key, None, Ed25519PublicKey.from_public_bytes(key.ed25519))
        except (ValueError, TypeError, AssertionError) as e:
            raise Unsupported(f"key material not loadable: {e}") from None

    def verify(self, sig: Signature, digest: bytes) -> bool:
        """Does ``sig`` (by this key) sign ``digest``? False for any mismatch, never raises."""
        name = sig.hash_name
        if name is None or sig.pubkey_algo != self.key.algo or digest[:2] != sig.left16:
            return False
        try:
            if self._rsa is not None:
                size = (self._rsa.key_size + 7) // 8
                (s,) = sig.mpis
                if len(s) > size:
                    return False
                self._rsa.verify(
                    s.rjust(size, b"\0"),
                    digest,
                    padding.PKCS1v15(),
                    Prehashed(_CRYPTO_HASH[name]()),
                )
                return True
            if self._ed is not None:
                r, s = sig.mpis
                if len(r) > 32 or len(s) > 32:
                    return False
                self._ed.verify(r.rjust(32, b"\0") + s.rjust(32, b"\0"), digest)
                return True
        except (InvalidSignature, ValueError, TypeError):
            return False
        return False


__all__ = [
    "HASHES",
    "PublicKey",
    "Signature",
    "Subpacket",
    "Unsupported",
    "Verifier",
    "packets",
    "parse_detached",
    "parse_key_packet",
    "parse_keys",
    "parse_signature_packet",
]
