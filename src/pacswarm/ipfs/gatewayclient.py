"""Fetching a package from a peer's trustless gateway as a verified, DFS-ordered CAR.

Why not trust the peer at all: the only thing we know is the root CID (from an announcement
checked against the repo db's sha256 afterwards). So the CAR is walked as it arrives: the root
first, then each link's subtree left to right, and every block must be *the* next block of
that walk and match its CID. Raw leaves are written to ``out`` as they come, which is file
order, so nothing but the current path of the DAG is held in memory. A peer can neither
insert a foreign block, nor reorder, nor send forever: anything unexpected stops the fetch,
as does output growing past ``max_size``.

We ask for ``dups=y`` (every occurrence of a repeated block is sent) so nothing needs keeping.
A gateway that answers ``dups=n`` omits repeats (e.g. identical chunks); those are then copied
back from what was already written, which needs ``out`` to be readable and seekable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

import aiohttp

from pacswarm.ipfs.car import CarError, CarReader
from pacswarm.ipfs.cid import CID, DAG_PB, RAW, CIDError, decode_varint
from pacswarm.ipfs.dagpb import decode_node

CAR_ACCEPT = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
_READ_SIZE = 256 * 1024
_SLACK = 1024 * 1024  # CAR bytes allowed beyond 2 * max_size (header, frames, inner nodes)
_UNIXFS_RAW, _UNIXFS_FILE = 0, 2


class GatewayFetchError(Exception):
    """A peer's gateway did not deliver exactly the DAG of the CID asked for."""

    def __init__(self, base_url: str, root: CID, reason: str) -> None:
        super().__init__(f"fetching {root} from {base_url}: {reason}")
        self.base_url = base_url
        self.root = root
        self.reason = reason


async def fetch_car(
    session: aiohttp.ClientSession,
    base_url: str,
    root: CID,
    out: BinaryIO,
    *,
    max_size: int | None = None,
) -> int:
    """Fetch the UnixFS file ``root`` from a peer, verified, into ``out``; bytes written.

    Raises :class:`GatewayFetchError` for any failure (HTTP, CAR framing, a block that is
    not the expected one or not its CID's, a truncated stream, more than ``max_size`` bytes
    written, or a CAR over twice ``max_size`` plus 1 MiB: a peer-made DAG of empty nodes
    could otherwise go on for ever without writing a byte). Errors writing ``out`` propagate
    as they are (they are ours, not the peer's). Stalls are bounded by the session's
    ``ClientTimeout`` (set ``sock_read``). ``out`` is written synchronously: a local file.
    """
    budget = None if max_size is None else 2 * max_size + _SLACK
    url = f"{base_url.rstrip('/')}/ipfs/{root}?format=car&car-order=dfs&car-dups=y"
    try:
        async with session.get(url, headers={"Accept": CAR_ACCEPT}, allow_redirects=False) as resp:
            if resp.status != 200:
                raise _Refused(f"HTTP {resp.status}")
            dups = _check_content_type(resp.headers.get("Content-Type", ""))
            walker = _DagWalker(root, out, max_size, dups)
            reader = CarReader()
            received = 0
            async for chunk in resp.content.iter_any():  # as received: no re-chunking copy
                received += len(chunk)
                if budget is not None and received > budget:
                    raise _Refused(f"CAR larger than {budget} bytes for max_size={max_size}")
                for cid, block in _feed(reader, chunk):
                    walker.check_roots(reader.roots)
                    walker.accept(cid, block)
            reader.finish()
            walker.check_roots(reader.roots)
            return walker.finish()
    except _Refused as e:
        raise GatewayFetchError(base_url, root, str(e)) from None
    except (CarError, CIDError) as e:
        raise GatewayFetchError(base_url, root, f"bad CAR: {e}") from None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise GatewayFetchError(base_url, root, f"transfer failed: {e!r}") from None


def _feed(reader: CarReader, chunk: bytes) -> list[tuple[CID, bytes]]:
    """``reader.feed``, with every parse failure as :class:`CarError`.

    ``car._parse_header`` can raise ``IndexError`` (header cut after a CID tag) or
    ``CIDError`` on hostile input; a peer must not be able to escape our error type.
    """
    try:
        return reader.feed(chunk)
    except (ValueError, IndexError) as e:
        raise CarError(str(e) or type(e).__name__) from None


class _Refused(Exception):
    """Internal: the stream broke a rule; becomes a :class:`GatewayFetchError`."""


def _check_content_type(value: str) -> bool:
    """Refuse anything but a CARv1 in DFS order; True if the peer sends duplicates."""
    parts = [p.strip().lower() for p in value.split(";")]
    if parts[0] != "application/vnd.ipld.car":
        raise _Refused(f"Content-Type {value[:100]!r} is not a CAR")
    params = dict(p.partition("=")[::2] for p in parts[1:])
    if params.get("version", "1") != "1":
        raise _Refused(f"CAR version {params['version'][:10]!r} is not 1")
    if params.get("order", "dfs") not in ("dfs", "unk"):
        raise _Refused(f"CAR order {params['order'][:10]!r} cannot be walked")
    return params.get("dups") == "y"


@dataclass
class _End:
    """Marks where a subtree ends on the walk stack, to remember its range of output."""

    name: bytes
    start: int


@dataclass
class _DagWalker:
    """Checks that blocks arrive in DFS order of ``root``'s DAG and writes the file's bytes."""

    root: CID
    out: BinaryIO
    max_size: int | None
    dups: bool
    written: int = 0
    stack: list[CID | _End] = field(default_factory=list)
    done: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    roots_checked: bool = False

    def __post_init__(self) -> None:
        self.stack.append(self.root)

    def check_roots(self, roots: tuple[CID, ...]) -> None:
        if self.roots_checked:
            return
        if _name(self.root) not in [_name(r) for r in roots]:
            shown = ", ".join(str(r) for r in roots) or "none"
            raise _Refused(f"CAR roots ({shown}) do not include {self.root}")
        self.roots_checked = True

    def accept(self, cid: CID, block: bytes) -> None:
        """One verified block from the stream: it must be the next one of the walk."""
        self._skip_done(_name(cid))
        if not self.stack:
            raise _Refused(f"unexpected block {cid} after the end of the DAG")
        expected = self.stack.pop()
        if not isinstance(expected, CID) or _name(cid) != _name(expected):
            raise _Refused(f"got block {cid} where {expected} was due")
        if cid.codec == RAW:
            self._write(block)
            self.done[_name(cid)] = (self.written - len(block), self.written)
        elif cid.codec == DAG_PB:
            self._inner(cid, block)
        else:
            raise _Refused(f"block {cid} has a codec that is not UnixFS")

    def finish(self) -> int:
        """After the last block: the walk must be complete."""
        self._skip_done(None)
        if self.stack:
            raise _Refused(f"CAR ended before block {self._next()} (incomplete DAG)")
        return self.written

    def _inner(self, cid: CID, block: bytes) -> None:
        try:
            node = decode_node(block)
        except CIDError as e:
            raise _Refused(f"block {cid} is not valid dag-pb: {e}") from None
        kind, data = _unixfs_data(node.data)
        if kind not in (_UNIXFS_RAW, _UNIXFS_FILE):
            raise _Refused(f"block {cid} is not a UnixFS file node (type {kind})")
        start = self.written
        self._write(data)
        self.stack.append(_End(_name(cid), start))
        self.stack.extend(reversed([link.cid for link in node.links]))

    def _skip_done(self, incoming: bytes | None) -> None:
        """Close finished subtrees; copy back repeats a ``dups=n`` peer leaves out."""
        while self.stack:
            top = self.stack[-1]
            if isinstance(top, _End):
                self.stack.pop()
                self.done[top.name] = (top.start, self.written)
                continue
            name = _name(top)
            if self.dups or name == incoming or name not in self.done:
                return
            self.stack.pop()
            self._copy_back(*self.done[name])

    def _copy_back(self, start: int, end: int) -> None:
        if not (self.out.seekable() and self.out.readable()):
            raise _Refused("peer omitted a repeated block and the output cannot be re-read")
        pos = start
        while pos < end:
            self.out.seek(pos)
            data = self.out.read(min(_READ_SIZE, end - pos))
            if not data:
                raise _Refused("output shrank while copying a repeated block")
            self.out.seek(self.written)
            self._write(data)
            pos += len(data)

    def _write(self, data: bytes) -> None:
        if self.max_size is not None and self.written + len(data) > self.max_size:
            raise _Refused(f"more than max_size={self.max_size} bytes")
        self.out.write(data)
        self.written += len(data)

    def _next(self) -> str:
        top = self.stack[-1]
        return str(top) if isinstance(top, CID) else "?"


def _name(cid: CID) -> bytes:
    """Compare CIDs by content: v0 and v1 of one dag-pb block are the same block."""
    return bytes([cid.codec]) + cid.digest


def _unixfs_data(data: bytes | None) -> tuple[int, bytes]:
    """(UnixFS type, inline bytes) from a dag-pb node's Data; refuses a non-UnixFS node."""
    if data is None:
        raise _Refused("dag-pb node without UnixFS data")
    kind, inline, pos = -1, b"", 0
    try:
        while pos < len(data):
            tag, pos = decode_varint(data, pos)
            if tag & 7 == 0:
                value, pos = decode_varint(data, pos)
                if tag >> 3 == 1:
                    kind = value
            elif tag & 7 == 2:
                length, pos = decode_varint(data, pos)
                if pos + length > len(data):
                    raise _Refused("truncated UnixFS data")
                if tag >> 3 == 2:
                    inline = data[pos : pos + length]
                pos += length
            else:
                raise _Refused("UnixFS data with an unexpected wire type")
    except CIDError:
        raise _Refused("malformed UnixFS data") from None
    return kind, inline
