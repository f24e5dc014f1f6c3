"""Fetching a package from a peer's trustless gateway as a verified, DFS-ordered CAR.

Why not trust the peer at all: the only thing we know is the root CID (from an announcement
checked against the repo db's sha256 afterwards). So the CAR is walked as it arrives: the root
first, then each link's subtree left to right, and every block must be *the* next block of
that walk and match its CID. Raw leaves are written to ``out`` as they come, which is file
order, so nothing but the current path of the DAG is held in memory. A peer can neither
insert a foreign block, nor reorder, nor send forever: anything unexpected stops the fetch.

Bounds: each node goes through :class:`~pacswarm.ipfs.unixfs.FileBudget` (the one UnixFS
decoder and rule set, shared with the Bitswap fetch), so a DAG declaring more than
``max_size``, or whose parts disagree with what their parents declared, is refused at the block
that says so; the CAR's bytes are capped too. Time: a total ``deadline`` and a minimum speed
(at least ``min_speed`` bytes/s over every ``speed_window`` seconds), so a peer that
trickles a valid CAR a byte a second is cut after one window.

We ask for ``dups=y`` (every occurrence of a repeated block is sent) so nothing needs keeping.
A gateway that answers ``dups=n`` omits repeats (e.g. identical chunks); those are then copied
back from what was already written, which needs ``out`` to be readable and seekable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

import aiohttp

from pacswarm.ipfs.car import MAX_FRAME, CarError, CarReader
from pacswarm.ipfs.cid import CID, DAG_PB, RAW, CIDError
from pacswarm.ipfs.unixfs import FileBudget, UnixFSError, default_deadline

CAR_ACCEPT = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
CAR_QUERY = "format=car&car-order=dfs&car-dups=y"
RAW_ACCEPT = "application/vnd.ipld.raw"
_READ_SIZE = 256 * 1024
_SLACK = 1024 * 1024  # CAR bytes allowed beyond 2 * max_size (header, frames, inner nodes)
#: The slowest peer worth waiting for, and over how long it is judged (curl's LOW_SPEED_TIME,
#: which pacman sets to 10 s; pacman itself only gives up below 1 byte/s). 32 KiB/s is far
#: below any mirror: a peer slower than that should give way to one.
DEFAULT_MIN_SPEED = 32 * 1024
SPEED_WINDOW = 10.0


class GatewayFetchError(Exception):
    """A peer's gateway did not deliver exactly the DAG of the CID asked for, or not in time."""

    def __init__(self, base_url: str, root: CID, reason: str) -> None:
        super().__init__(f"fetching {root} from {base_url}: {reason}")
        self.base_url = base_url
        self.root = root
        self.reason = reason


@dataclass(frozen=True)
class Pace:
    """Time bounds of one fetch: ``deadline`` in total, and ``min_speed`` over each window."""

    deadline: float
    min_speed: int = DEFAULT_MIN_SPEED
    window: float = SPEED_WINDOW


async def fetch_car(
    session: aiohttp.ClientSession,
    base_url: str,
    root: CID,
    out: BinaryIO,
    *,
    max_size: int | None = None,
    deadline: float | None = None,
    min_speed: int = DEFAULT_MIN_SPEED,
    speed_window: float = SPEED_WINDOW,
) -> int:
    """Fetch the UnixFS file ``root`` from a peer, verified, into ``out``; bytes written.

    Raises :class:`GatewayFetchError` for any failure: HTTP, CAR framing, a block that is not
    the expected one or not its CID's, a DAG declaring more than ``max_size`` bytes (or
    inconsistent sizes, see :class:`~pacswarm.ipfs.unixfs.FileBudget`), a truncated stream, a
    CAR over twice ``max_size`` plus 1 MiB, ``deadline`` seconds passed (default
    :func:`~pacswarm.ipfs.unixfs.default_deadline`), or fewer than ``min_speed`` bytes/s
    over ``speed_window`` seconds. Errors writing ``out`` propagate as they are (they are
    ours, not the peer's). ``out`` is written synchronously: a local file.
    """
    fetch = _Fetch.start(session, base_url, root, max_size, deadline, min_speed, speed_window)
    written = 0

    def write(data: bytes | memoryview) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    async with aclosing(_stream(fetch, root, None, write, out)) as steps:
        async for _ in steps:
            pass
    return written


async def iter_file(
    session: aiohttp.ClientSession,
    base_url: str,
    root: CID,
    *,
    offset: int = 0,
    max_size: int | None = None,
    deadline: float | None = None,
    min_speed: int = DEFAULT_MIN_SPEED,
    speed_window: float = SPEED_WINDOW,
) -> AsyncIterator[bytes]:
    """The bytes of the UnixFS file ``root`` from ``offset`` on, in order, each verified.

    The same walk and bounds as :func:`fetch_car`. From an offset, the root block is fetched
    alone (``?format=raw``) and its subtrees that end before the offset are skipped; the
    others come as one CAR each. A file of one level (at most 174 chunks, 45 MiB) comes as
    one CAR, the bytes before the offset checked but not yielded. The deadline and speed do
    not count the time the consumer holds a chunk (between yields). A gateway answering
    ``dups=n`` is refused (repeats cannot be copied back without an output file). Raises
    :class:`GatewayFetchError` as :func:`fetch_car` does.
    """
    fetch = _Fetch.start(session, base_url, root, max_size, deadline, min_speed, speed_window)
    parts = [_Part(root, None, 0)] if offset <= 0 else await _parts_from(fetch, offset)
    pending: list[bytes | memoryview] = []
    for part in parts:
        position = part.start
        steps = _stream(fetch, part.cid, part.size, pending.append, None)
        async with aclosing(steps):  # a consumer leaving early closes the response at once
            async for _ in steps:
                for data in pending:
                    start, position = position, position + len(data)
                    if position > offset:
                        yield bytes(data[max(0, offset - start) :])
                pending.clear()


Write = Callable[[bytes | memoryview], None]
T = TypeVar("T")


@dataclass
class _Fetch:
    """What the requests for one file share: the peer, the file's root, the bounds, the clock."""

    session: aiohttp.ClientSession
    base_url: str
    root: CID
    max_size: int | None
    clock: _Clock
    budget: FileBudget

    @classmethod
    def start(
        cls,
        session: aiohttp.ClientSession,
        base_url: str,
        root: CID,
        max_size: int | None,
        deadline: float | None,
        min_speed: int,
        speed_window: float,
    ) -> _Fetch:
        limit = default_deadline(max_size) if deadline is None else deadline
        clock = _Clock(Pace(limit, min_speed, speed_window))
        return cls(session, base_url.rstrip("/"), root, max_size, clock, FileBudget(max_size))

    def get(self, cid: CID, query: str, accept: str) -> Awaitable[aiohttp.ClientResponse]:
        url = f"{self.base_url}/ipfs/{cid}?{query}"
        return self.clock.wait(
            self.session.get(url, headers={"Accept": accept}, allow_redirects=False)
        )

    @contextmanager
    def reported(self) -> Iterator[None]:
        """Every failure of the peer as a :class:`GatewayFetchError` naming the file's root."""
        try:
            yield
        except _Refused as e:
            raise GatewayFetchError(self.base_url, self.root, str(e)) from None
        except UnixFSError as e:
            raise GatewayFetchError(self.base_url, self.root, f"bad DAG: {e}") from None
        except (CarError, CIDError) as e:
            raise GatewayFetchError(self.base_url, self.root, f"bad CAR: {e}") from None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise GatewayFetchError(self.base_url, self.root, f"transfer failed: {e!r}") from None


@dataclass(frozen=True)
class _Part:
    """A subtree of the file fetched as one CAR: its CID, its size (None: the root), offset."""

    cid: CID
    size: int | None
    start: int


async def _parts_from(fetch: _Fetch, offset: int) -> list[_Part]:
    """The root's subtrees that hold bytes at or after ``offset`` (see :func:`iter_file`)."""
    if fetch.root.codec != DAG_PB:
        return [_Part(fetch.root, None, 0)]
    with fetch.reported():
        block = await _raw_block(fetch, fetch.root)
        node = fetch.budget.decode(fetch.root, block)
        fetch.budget.node(fetch.root, node, None)
    if node.data or any(link.cid.codec != DAG_PB for link in node.links):
        fetch.budget = FileBudget(fetch.max_size)  # the whole-file CAR walks the root again
        return [_Part(fetch.root, None, 0)]
    parts, start = [], 0
    for link, size in zip(node.links, node.blocksizes, strict=True):
        if start + size > offset:
            parts.append(_Part(link.cid, size, start))
        start += size
    return parts


async def _raw_block(fetch: _Fetch, cid: CID) -> bytes:
    """One block (``?format=raw``), checked against its CID."""
    async with await fetch.get(cid, "format=raw", RAW_ACCEPT) as resp:
        if resp.status != 200:
            raise _Refused(f"HTTP {resp.status} for block {cid}")
        data = bytearray()
        while chunk := await fetch.clock.wait(resp.content.readany()):
            fetch.clock.got(len(chunk))
            data += chunk
            if len(data) > MAX_FRAME:
                raise _Refused(f"block {cid} is over {MAX_FRAME} bytes")
    if not cid.verify(data):
        raise _Refused(f"block {cid} does not match its CID")
    return bytes(data)


async def _stream(
    fetch: _Fetch, part: CID, size: int | None, write: Write, reread: BinaryIO | None
) -> AsyncIterator[None]:
    """Walk the CAR of ``part`` (``size`` bytes of the file), calling ``write`` in file order;
    yields after each chunk.

    Never yields inside a timeout: each wait is bounded on its own (:class:`_Clock`), so a
    consumer holding a yielded chunk is neither timed nor cancelled.
    """
    budget = None if fetch.max_size is None else 2 * fetch.max_size + _SLACK
    clock = fetch.clock
    with fetch.reported():
        async with await fetch.get(part, CAR_QUERY, CAR_ACCEPT) as resp:
            if resp.status != 200:
                raise _Refused(f"HTTP {resp.status}")
            dups = _check_content_type(resp.headers.get("Content-Type", ""))
            if not dups and reread is None:
                raise _Refused("peer omits repeated blocks (dups=n): cannot stream the file")
            walker = _DagWalker(part, size, write, reread, fetch.budget, dups)
            reader = CarReader()
            received = 0
            while chunk := await clock.wait(resp.content.readany()):
                clock.got(len(chunk))
                received += len(chunk)
                if budget is not None and received > budget:
                    raise _Refused(f"CAR larger than {budget} bytes for max_size={fetch.max_size}")
                for cid, block in _feed(reader, chunk):
                    walker.check_roots(reader.roots)
                    walker.accept(cid, block)
                held = time.monotonic()
                yield
                clock.held += time.monotonic() - held
            reader.finish()
            walker.check_roots(reader.roots)
            walker.finish()


class _Clock:
    """Bounds each wait on the peer by what is left of the deadline and of the speed window.

    The fetch's time is wall time less the time a consumer of :func:`iter_file` held a chunk
    (``held``). A window ends once it has brought ``min_speed * window`` bytes; a wait that
    would outlast it is a peer too slow.
    """

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.started = time.monotonic()
        self.held = 0.0
        self.window_start = 0.0
        self.window_bytes = 0

    def now(self) -> float:
        return time.monotonic() - self.started - self.held

    async def wait(self, step: Awaitable[T]) -> T:
        now = self.now()
        deadline_left = self.pace.deadline - now
        window_left = self.window_start + self.pace.window - now
        try:
            async with asyncio.timeout(max(0.0, min(deadline_left, window_left))) as scope:
                return await step
        except TimeoutError:
            if not scope.expired():
                raise  # aiohttp's own (sock_read): a transfer failure
            if deadline_left <= window_left:
                raise _Refused(
                    f"not done within the deadline of {self.pace.deadline:g} s"
                ) from None
            raise _Refused(
                f"slower than {self.pace.min_speed} bytes/s over {self.pace.window:g} s"
                f" ({self.window_bytes} bytes)"
            ) from None

    def got(self, n: int) -> None:
        self.window_bytes += n
        if self.window_bytes >= self.pace.min_speed * self.pace.window:
            self.window_start, self.window_bytes = self.now(), 0


def _feed(reader: CarReader, chunk: bytes) -> list[tuple[CID, memoryview]]:
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


@dataclass(frozen=True)
class _Due:
    """A block due next on the walk, and the file bytes it must hold (None: the root)."""

    cid: CID
    size: int | None


@dataclass
class _End:
    """Marks where a subtree ends on the walk stack, to remember its range of output."""

    name: bytes
    start: int


@dataclass
class _DagWalker:
    """Checks that blocks arrive in DFS order of ``root``'s DAG and writes the file's bytes."""

    root: CID
    root_size: int | None  # the file bytes under root (None: the file's root, max_size bounds)
    write: Write
    reread: BinaryIO | None  # the output so far, to copy back what a dups=n peer omits
    budget: FileBudget
    dups: bool
    written: int = 0
    stack: list[_Due | _End] = field(default_factory=list)
    done: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    roots_checked: bool = False

    def __post_init__(self) -> None:
        self.stack.append(_Due(self.root, self.root_size))

    def check_roots(self, roots: tuple[CID, ...]) -> None:
        if self.roots_checked:
            return
        if _name(self.root) not in [_name(r) for r in roots]:
            shown = ", ".join(str(r) for r in roots) or "none"
            raise _Refused(f"CAR roots ({shown}) do not include {self.root}")
        self.roots_checked = True

    def accept(self, cid: CID, block: memoryview) -> None:
        """One verified block from the stream: it must be the next one of the walk."""
        self._skip_done(_name(cid))
        if not self.stack:
            raise _Refused(f"unexpected block {cid} after the end of the DAG")
        due = self.stack.pop()
        if not isinstance(due, _Due) or _name(cid) != _name(due.cid):
            raise _Refused(f"got block {cid} where {self._shown(due)} was due")
        if cid.codec == RAW:
            self.budget.leaf(cid, len(block), due.size)
            self._write(block)
            self.done[_name(cid)] = (self.written - len(block), self.written)
        elif cid.codec == DAG_PB:
            node = self.budget.decode(cid, block)
            self.budget.node(cid, node, due.size)
            self.stack.append(_End(_name(cid), self.written))
            self._write(node.data)
            children = zip(node.links, node.blocksizes, strict=True)
            self.stack.extend(reversed([_Due(link.cid, size) for link, size in children]))
        else:
            raise _Refused(f"block {cid} has a codec that is not UnixFS")

    def finish(self) -> int:
        """After the last block: the walk must be complete."""
        self._skip_done(None)
        if self.stack:
            raise _Refused(f"CAR ended before block {self._shown(self.stack[-1])} (incomplete DAG)")
        return self.written

    def _skip_done(self, incoming: bytes | None) -> None:
        """Close finished subtrees; copy back repeats a ``dups=n`` peer leaves out."""
        while self.stack:
            top = self.stack[-1]
            if isinstance(top, _End):
                self.stack.pop()
                self.done[top.name] = (top.start, self.written)
                continue
            name = _name(top.cid)
            if self.dups or name == incoming or name not in self.done:
                return
            self.stack.pop()
            start, end = self.done[name]
            if top.size is not None and end - start != top.size:
                raise _Refused(
                    f"repeated block {top.cid} holds {end - start} bytes, not {top.size}"
                )
            self._copy_back(start, end)

    def _copy_back(self, start: int, end: int) -> None:
        out = self.reread
        if out is None or not (out.seekable() and out.readable()):
            raise _Refused("peer omitted a repeated block and the output cannot be re-read")
        pos = start
        while pos < end:
            out.seek(pos)
            data = out.read(min(_READ_SIZE, end - pos))
            if not data:
                raise _Refused("output shrank while copying a repeated block")
            out.seek(self.written)
            self._write(data)
            pos += len(data)

    def _write(self, data: bytes | memoryview) -> None:
        limit = self.budget.max_size
        if limit is not None and self.written + len(data) > limit:
            raise _Refused(f"more than max_size={limit} bytes")
        if data:
            self.write(data)
        self.written += len(data)

    @staticmethod
    def _shown(entry: _Due | _End) -> str:
        return str(entry.cid) if isinstance(entry, _Due) else "the end of a node"


def _name(cid: CID) -> bytes:
    """Compare CIDs by content: v0 and v1 of one dag-pb block are the same block."""
    return bytes([cid.codec]) + cid.digest
