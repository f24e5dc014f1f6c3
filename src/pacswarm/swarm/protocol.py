"""The swarm's wire protocol, version 1: pure encoding and validation, no I/O.

Two exchanges (docs/protocol.md describes them field by field, with sizes):

* **News** on gossipsub, one topic per repo/arch (:func:`topic`): a batch of :class:`Entry`
  (the db's sha256 -> the CID this node verified, plus size and filename), the sender's
  gateway port, and optionally a :class:`Digest` of the set it announces.
* **Inventory** over request/response (:data:`INVENTORY_PROTOCOL`): the asker names its db;
  if the answerer has the same db it sends a bitfield in db order (1.9 KB for 15,000
  packages) plus the binary CIDs of the set bits, otherwise an explicit entry list.

The encoding is a small hand-rolled binary format (unsigned LEB128 varints, length-prefixed
UTF-8, raw 32-byte digests, binary CIDs) rather than JSON: a hex sha256 alone is 64 bytes of
JSON against 32 here, a CID 60 against 36, and a strict binary reader bounds every length
before it allocates. Every ``decode_*`` treats its input as hostile: version, lengths,
counts, hex digests, CIDs, sizes, names and trailing bytes are checked, and anything wrong
raises :class:`ProtocolError` with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pacswarm.ipfs.cid import CID, DAG_PB, RAW, CIDError, decode_varint, encode_varint
from pacswarm.requestpath import BadPath, FileKind, parse_request_path

VERSION = 1
INVENTORY_PROTOCOL = "/pacswarm/inventory/1.0.0"

#: Largest News message. Gossipsub resets a stream on an RPC > 1 MiB and each RPC carries
#: ~400 B of signature and key; 64 KiB (about 550 entries) keeps one message well inside
#: that and small enough that a validator decodes it in about a millisecond.
MAX_MESSAGE = 64 * 1024
#: Most entries in one News message (a batch; more become several messages).
MAX_ENTRIES = 1024
#: Largest inventory request (repo, arch, db digest: under 150 bytes in practice).
MAX_REQUEST = 1024
#: Largest inventory response: the whole of a 100,000-package db as an explicit list fits;
#: it stays under py-libp2p's RequestResponse default of 10 MiB.
MAX_INVENTORY = 8 * 1024**2
#: Most packages in one db, and so most entries or bits in one inventory (extra: ~15,000).
MAX_INVENTORY_ENTRIES = 100_000
#: Largest package size believed (1 TiB; Arch's largest packages are a few GB).
MAX_SIZE = 1 << 40

_NEWS, _REQUEST, _INVENTORY = 1, 2, 3
_HAS_PORT, _HAS_DIGEST, _BITFIELD = 0x01, 0x02, 0x04
_MAX_CID = 64  # a CIDv1 with a sha2-256 multihash is 36 bytes


class ProtocolError(ValueError):
    """A swarm message that is malformed, oversized or of an unknown version (dropped)."""


@dataclass(frozen=True)
class Entry:
    """One announced package: the db's sha256 (hex) maps to this verified CID (CIDv1)."""

    sha256: str
    cid: str
    size: int
    filename: str


@dataclass(frozen=True)
class Digest:
    """A sender's view in 80 bytes: its db (:func:`db_digest`), count and held set hash."""

    db: str
    count: int
    held: str


@dataclass(frozen=True)
class News:
    repo: str
    arch: str
    entries: tuple[Entry, ...]
    gateway_port: int | None
    digest: Digest | None = None


@dataclass(frozen=True)
class DbItem:
    """A package of a db as the inventory sees it; db order = sorted by filename."""

    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class InventoryRequest:
    repo: str
    arch: str
    db: str  # the asker's db_digest: the same as the answerer's means "send a bitfield"


def topic(repo: str, arch: str) -> str:
    """The gossipsub topic for news of one repo/arch (the version is part of the name)."""
    _check_name(repo, "repository")
    _check_name(arch, "architecture")
    return f"/pacswarm/{VERSION}/{repo}/{arch}"


# --- validation -------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    """Repo and arch names as pacswarm.requestpath accepts them in a request path."""
    repo, arch = (name, "x86_64") if what == "repository" else ("core", name)
    try:
        parse_request_path(repo, "os", arch, "x.pkg.tar.zst")
    except BadPath as e:
        raise ProtocolError(f"invalid {what} name {name[:70]!r}") from e


def _check_filename(filename: str) -> None:
    try:
        path = parse_request_path("core", "os", "x86_64", filename)
    except BadPath as e:
        raise ProtocolError(f"invalid package file name {filename[:70]!r}") from e
    if path.kind is not FileKind.PACKAGE:
        raise ProtocolError(f"{filename[:70]!r} is not a package file name")


def _check_hex(value: str, what: str) -> bytes:
    if len(value) != 64 or value != value.lower():
        raise ProtocolError(f"{what} must be 64 lowercase hex digits, got {value[:70]!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError(f"{what} is not hex: {value[:70]!r}") from None


def _check_size(size: int, what: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise ProtocolError(f"{what} {size!r} is not an integer in 0..{MAX_SIZE}")


def _check_port(port: int | None) -> None:
    if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        raise ProtocolError(f"gateway port {port!r} is not in 1..65535")


def _cid_bytes(text: str) -> bytes:
    try:
        cid = CID.parse(text)
    except CIDError as e:
        raise ProtocolError(f"bad CID: {e}") from None
    if cid.version != 1:
        raise ProtocolError(f"CID {text[:70]!r} is not a CIDv1")
    return cid.to_bytes()


def check_entry(entry: Entry) -> None:
    """Raise ProtocolError unless every field of ``entry`` could be sent and believed."""
    _check_hex(entry.sha256, "sha256")
    _cid_bytes(entry.cid)
    _check_size(entry.size)
    _check_filename(entry.filename)


# --- low-level writer and reader ----------------------------------------------------------


def _str(text: str) -> bytes:
    raw = text.encode()
    return encode_varint(len(raw)) + raw


def _entry_bytes(entry: Entry) -> bytes:
    check_entry(entry)
    cid = _cid_bytes(entry.cid)
    return (
        bytes.fromhex(entry.sha256)
        + encode_varint(len(cid))
        + cid
        + encode_varint(entry.size)
        + _str(entry.filename)
    )


class _Reader:
    """Bounds-checked reads from a hostile buffer: every length is checked before use."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"truncated message (reading {what})")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def varint(self, what: str, limit: int) -> int:
        start = self.pos
        try:
            value, self.pos = decode_varint(self.data, self.pos)
        except CIDError:
            raise ProtocolError(f"truncated or overlong varint ({what})") from None
        if self.pos - start > 1 and self.data[self.pos - 1] == 0:
            raise ProtocolError(f"non-minimal varint ({what})")  # one encoding per message
        if value > limit:
            raise ProtocolError(f"{what} {value} exceeds the limit {limit}")
        return value

    def text(self, what: str, limit: int = 255) -> str:
        raw = self.take(self.varint(f"{what} length", limit), what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8") from None

    def cid(self) -> str:
        raw = self.take(self.varint("CID length", _MAX_CID), "CID")
        try:
            cid, used = CID.from_bytes(raw)
        except CIDError as e:
            raise ProtocolError(f"bad CID: {e}") from None
        if used != len(raw) or cid.version != 1 or cid.codec not in (RAW, DAG_PB):
            raise ProtocolError("CID is not a CIDv1 (raw or dag-pb, sha2-256)")
        return str(cid)

    def entry(self) -> Entry:
        sha256 = self.take(32, "sha256").hex()
        cid = self.cid()
        size = self.varint("size", MAX_SIZE)
        filename = self.text("filename")
        _check_filename(filename)
        return Entry(sha256, cid, size, filename)

    def header(self, kind: int, max_len: int) -> None:
        if len(self.data) > max_len:
            raise ProtocolError(f"message of {len(self.data)} bytes exceeds {max_len}")
        if len(self.data) < 2:
            raise ProtocolError("truncated message (header)")
        version, got = self.data[0], self.data[1]
        if version != VERSION:
            raise ProtocolError(f"unsupported protocol version {version} (this is {VERSION})")
        if got != kind:
            raise ProtocolError(f"message type {got}, expected {kind}")
        self.pos = 2

    def repo_arch(self) -> tuple[str, str]:
        repo, arch = self.text("repository", 64), self.text("architecture", 64)
        _check_name(repo, "repository")
        _check_name(arch, "architecture")
        return repo, arch

    def flags(self, allowed: int) -> int:
        flags = self.take(1, "flags")[0]
        if flags & ~allowed:
            raise ProtocolError(f"unknown flags 0x{flags:02x}")
        return flags

    def port(self) -> int:
        port = int.from_bytes(self.take(2, "gateway port"), "big")
        _check_port(port)
        return port

    def extensions(self) -> None:
        """Skip (tag, length, bytes) extensions: optional fields newer peers may add."""
        while self.pos < len(self.data):
            self.varint("extension tag", 1 << 32)
            self.take(self.varint("extension length", MAX_INVENTORY), "extension")


def _header(kind: int, repo: str, arch: str) -> bytes:
    _check_name(repo, "repository")
    _check_name(arch, "architecture")
    return bytes([VERSION, kind]) + _str(repo) + _str(arch)


# --- news -------------------------------------------------------------------------------


def _digest_bytes(digest: Digest) -> bytes:
    if not 0 <= digest.count <= MAX_INVENTORY_ENTRIES:
        raise ProtocolError(f"digest count {digest.count} not in 0..{MAX_INVENTORY_ENTRIES}")
    db = _check_hex(digest.db, "digest db")
    return db + encode_varint(digest.count) + _check_hex(digest.held, "digest held")


def encode_news(news: News) -> bytes:
    """Encode (and validate) a News message; ProtocolError if it is invalid or too big."""
    _check_port(news.gateway_port)
    if len(news.entries) > MAX_ENTRIES:
        raise ProtocolError(f"{len(news.entries)} entries exceed {MAX_ENTRIES}: use batch_news")
    flags = (_HAS_PORT if news.gateway_port else 0) | (_HAS_DIGEST if news.digest else 0)
    parts = [_header(_NEWS, news.repo, news.arch), bytes([flags])]
    if news.gateway_port:
        parts.append(news.gateway_port.to_bytes(2, "big"))
    if news.digest:
        parts.append(_digest_bytes(news.digest))
    parts.append(encode_varint(len(news.entries)))
    parts.extend(_entry_bytes(e) for e in news.entries)
    data = b"".join(parts)
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"news of {len(data)} bytes exceeds {MAX_MESSAGE}: use batch_news")
    return data


def decode_news(data: bytes) -> News:
    """Decode a News message from any peer; ProtocolError (with the reason) if invalid."""
    r = _Reader(data)
    r.header(_NEWS, MAX_MESSAGE)
    repo, arch = r.repo_arch()
    flags = r.flags(_HAS_PORT | _HAS_DIGEST)
    port = r.port() if flags & _HAS_PORT else None
    digest = None
    if flags & _HAS_DIGEST:
        db = r.take(32, "digest db").hex()
        count = r.varint("digest count", MAX_INVENTORY_ENTRIES)
        digest = Digest(db, count, r.take(32, "digest held").hex())
    entries = tuple(r.entry() for _ in range(r.varint("entry count", MAX_ENTRIES)))
    r.extensions()
    return News(repo, arch, entries, port, digest)


def batch_news(
    repo: str,
    arch: str,
    entries: Iterable[Entry],
    gateway_port: int | None,
    digest: Digest | None = None,
) -> list[News]:
    """Split ``entries`` into News messages that each encode within the limits.

    The digest rides on the last message only (it describes the set after all of them). With
    no entries and a digest, the result is one digest-only message; with neither, nothing.
    """
    fixed = len(encode_news(News(repo, arch, (), gateway_port, digest)))
    batches: list[list[Entry]] = [[]]
    used = fixed
    for entry in entries:
        size = len(_entry_bytes(entry))
        # +2: the entry count's varint grows from 1 byte (in ``fixed``) to 2; one spare.
        full = len(batches[-1]) >= MAX_ENTRIES or used + size + 2 > MAX_MESSAGE
        if full and batches[-1]:
            batches.append([])
            used = fixed
        batches[-1].append(entry)
        used += size
    if not batches[-1] and len(batches) == 1 and digest is None:
        return []
    last = len(batches) - 1
    return [
        News(repo, arch, tuple(b), gateway_port, digest if i == last else None)
        for i, b in enumerate(batches)
    ]


# --- digests ----------------------------------------------------------------------------


def in_db_order(items: Iterable[DbItem]) -> list[DbItem]:
    """The db order both sides of a bitfield agree on: sorted by filename."""
    return sorted(items, key=lambda item: item.filename)


def db_digest(items: Sequence[DbItem]) -> str:
    """A hash of a db's packages (filename, sha256, size) in db order, whatever ``items``'s order.

    Two nodes with the same digest number the same packages the same way, so a bitfield
    from one means the same packages to the other.
    """
    h = hashlib.sha256(b"pacswarm-db-1\n")
    for item in in_db_order(items):
        h.update(f"{item.filename}\0{item.sha256}\0{item.size}\n".encode())
    return h.hexdigest()


def held_digest(sha256s: Iterable[str]) -> str:
    """A hash of a set of sha256s (order and duplicates do not matter)."""
    h = hashlib.sha256(b"pacswarm-held-1\n")
    for sha256 in sorted(set(sha256s)):
        h.update(bytes.fromhex(sha256))
    return h.hexdigest()


# --- inventory --------------------------------------------------------------------------


def encode_request(request: InventoryRequest) -> bytes:
    db = _check_hex(request.db, "db digest")
    return _header(_REQUEST, request.repo, request.arch) + db


def decode_request(data: bytes) -> InventoryRequest:
    r = _Reader(data)
    r.header(_REQUEST, MAX_REQUEST)
    repo, arch = r.repo_arch()
    db = r.take(32, "db digest").hex()
    r.extensions()
    return InventoryRequest(repo, arch, db)


def encode_inventory(
    repo: str,
    arch: str,
    db_order: Sequence[DbItem],
    held: Mapping[str, str],
    asker_db: str,
    gateway_port: int | None,
) -> bytes:
    """Our inventory for an asker: a bitfield if ``asker_db`` is our db's digest, else a list.

    ``held`` maps sha256 -> CID of what we announce; ``db_order`` is our db (any order:
    it is sorted here). Held sha256s not in our db are only sent in the list form.
    """
    _check_port(gateway_port)
    items = in_db_order(db_order)
    ours = db_digest(items)
    flags = _HAS_PORT if gateway_port else 0
    parts = [_header(_INVENTORY, repo, arch)]
    port = gateway_port.to_bytes(2, "big") if gateway_port else b""
    if asker_db == ours:
        bits = bytearray((len(items) + 7) // 8)
        cids = []
        for i, item in enumerate(items):
            if item.sha256 in held:
                bits[i >> 3] |= 0x80 >> (i & 7)
                cid = _cid_bytes(held[item.sha256])
                cids.append(encode_varint(len(cid)) + cid)
        parts += [bytes([flags | _BITFIELD]), port, bytes.fromhex(ours)]
        parts += [encode_varint(len(items)), bytes(bits), *cids]
    else:
        by_sha = {item.sha256: item for item in items}
        entries = [
            _entry_bytes(Entry(sha, cid, by_sha[sha].size, by_sha[sha].filename))
            for sha, cid in sorted(held.items())
            if sha in by_sha
        ]
        parts += [bytes([flags]), port, encode_varint(len(entries)), *entries]
    data = b"".join(parts)
    if len(data) > MAX_INVENTORY:
        raise ProtocolError(f"inventory of {len(data)} bytes exceeds {MAX_INVENTORY}")
    return data


def decode_inventory(data: bytes, db_order: Sequence[DbItem]) -> tuple[list[Entry], int | None]:
    """Decode an inventory against our db: (entries, the answerer's gateway port).

    A bitfield is only accepted for the db it was made for: its db digest must be ours.
    """
    r = _Reader(data)
    r.header(_INVENTORY, MAX_INVENTORY)
    r.repo_arch()
    flags = r.flags(_HAS_PORT | _BITFIELD)
    port = r.port() if flags & _HAS_PORT else None
    if not flags & _BITFIELD:
        count = r.varint("entry count", MAX_INVENTORY_ENTRIES)
        entries = [r.entry() for _ in range(count)]
        r.extensions()
        return entries, port
    items = in_db_order(db_order)
    if r.take(32, "db digest").hex() != db_digest(items):
        raise ProtocolError("bitfield made for another db (digest differs from ours)")
    if r.varint("bitfield length", MAX_INVENTORY_ENTRIES) != len(items):
        raise ProtocolError("bitfield length differs from our db's package count")
    bits = r.take((len(items) + 7) // 8, "bitfield")
    if len(items) % 8 and bits[-1] & (0xFF >> (len(items) % 8)):
        raise ProtocolError("bitfield has bits set past the end of the db")
    entries = []
    for i, item in enumerate(items):
        if bits[i >> 3] & (0x80 >> (i & 7)):
            entries.append(Entry(item.sha256, r.cid(), item.size, item.filename))
    r.extensions()
    return entries, port
