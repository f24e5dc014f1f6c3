"""Which cached packages to evict: the pure policy, no I/O (:mod:`pacswarm.gc` runs it).

Three rules, applied in this order, so a user keeps what paccache would keep and the cache
never outgrows its cap:

1. a package bigger than the whole cap is never kept (it was served to pacman whole; keeping
   it would push everything else out and still break the cap);
2. of each package (same repo, arch and name) only the newest ``keep_versions`` versions
   stay, newest by pacman's own version comparison (``vercmp``: ``epoch:pkgver-pkgrel``);
3. while the rest is over the cap, older versions go first, then the least recently served.

Versions are compared exactly as libalpm's ``alpm_pkg_vercmp`` does (the tests check this
function against the real ``vercmp`` binary), so "newest" means what pacman means by it:
``1:1.0`` beats ``2.0``, ``1.0a`` is older than ``1.0``, ``1.10`` is newer than ``1.9``.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

_PACKAGE_SUFFIX = re.compile(r"\.pkg\.tar(\.[A-Za-z0-9]+)?$")


@dataclass(frozen=True)
class Entry:
    """One cached package as the policy sees it."""

    repo: str
    arch: str
    filename: str
    size: int
    #: When pacman (or a peer) last got it, or when it was cached if never since (epoch s).
    last_served: float


@dataclass(frozen=True)
class Eviction:
    entry: Entry
    #: "bigger than the cap", "older version", "least recently served": said in the log.
    reason: str


def split_filename(filename: str) -> tuple[str, str] | None:
    """``name-pkgver-pkgrel-arch.pkg.tar.zst`` -> ``(name, "pkgver-pkgrel")``; None if not.

    The name may contain dashes; pkgver, pkgrel and arch may not, so the last three dashes
    split the file name (pacman's own rule). The epoch, if any, stays in the version.
    """
    match = _PACKAGE_SUFFIX.search(filename)
    if match is None:
        return None
    parts = filename[: match.start()].rsplit("-", 3)
    if len(parts) != 4 or not all(parts):
        return None
    name, pkgver, pkgrel, _arch = parts
    return name, f"{pkgver}-{pkgrel}"


def _alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _segment_end(s: str, i: int, digits: bool) -> int:
    test = str.isdigit if digits else str.isalpha
    while i < len(s) and s[i].isascii() and test(s[i]):
        i += 1
    return i


def rpmvercmp(a: str, b: str) -> int:
    """libalpm's ``rpmvercmp``: -1, 0 or 1 (a transcription of version.c, ASCII only)."""
    if a == b:
        return 0
    one = two = p1 = p2 = 0
    while one < len(a) and two < len(b):
        while one < len(a) and not _alnum(a[one]):
            one += 1
        while two < len(b) and not _alnum(b[two]):
            two += 1
        if one >= len(a) or two >= len(b):
            break
        if one - p1 != two - p2:  # separators of different lengths
            return -1 if one - p1 < two - p2 else 1
        digits = a[one].isdigit()
        p1, p2 = _segment_end(a, one, digits), _segment_end(b, two, digits)
        if two == p2:  # b has a segment of the other type here
            return 1 if digits else -1
        seg1, seg2 = a[one:p1], b[two:p2]
        if digits:
            seg1, seg2 = seg1.lstrip("0"), seg2.lstrip("0")
            if len(seg1) != len(seg2):
                return 1 if len(seg1) > len(seg2) else -1
        if seg1 != seg2:
            return 1 if seg1 > seg2 else -1
        one, two = p1, p2
    rest1, rest2 = a[one:], b[two:]
    if not rest1 and not rest2:
        return 0
    # A remaining alpha part never beats an empty string ("1.0a" < "1.0" < "1.0.1").
    if (not rest1 and not rest2[:1].isalpha()) or rest1[:1].isalpha():
        return -1
    return 1


def _parse_evr(evr: str) -> tuple[str, str, str | None]:
    i = 0
    while i < len(evr) and evr[i].isdigit():
        i += 1
    epoch, rest = "0", evr
    if evr[i : i + 1] == ":":
        epoch, rest = evr[:i] or "0", evr[i + 1 :]
    version, dash, release = rest.rpartition("-")
    if not dash:
        return epoch, rest, None
    return epoch, version, release


def vercmp(a: str, b: str) -> int:
    """pacman's ``vercmp``: compare ``[epoch:]pkgver[-pkgrel]`` strings; -1, 0 or 1."""
    if a == b:
        return 0
    e1, v1, r1 = _parse_evr(a)
    e2, v2, r2 = _parse_evr(b)
    result = rpmvercmp(e1, e2)
    if result == 0:
        result = rpmvercmp(v1, v2)
        if result == 0 and r1 is not None and r2 is not None:
            result = rpmvercmp(r1, r2)
    return result


def _by_version_newest_first(entries: list[tuple[str, Entry]]) -> list[Entry]:
    def compare(x: tuple[str, Entry], y: tuple[str, Entry]) -> int:
        return vercmp(y[0], x[0]) or (x[1].filename > y[1].filename) - (
            x[1].filename < y[1].filename
        )

    return [e for _, e in sorted(entries, key=functools.cmp_to_key(compare))]


def choose(entries: Iterable[Entry], keep_versions: int, max_size: int | None) -> list[Eviction]:
    """What to evict, in the order to evict it. ``max_size`` None: no size cap.

    Files whose names are not package names (none should be cached) are never removed by
    the version rule, only by the size rules.
    """
    if keep_versions < 1:
        raise ValueError("keep_versions must be at least 1")
    out: list[Eviction] = []
    kept: list[Entry] = []
    for entry in entries:
        if max_size is not None and entry.size > max_size:
            out.append(Eviction(entry, "bigger than the cap"))
        else:
            kept.append(entry)
    groups: dict[tuple[str, ...], list[tuple[str, Entry]]] = defaultdict(list)
    for entry in kept:
        parsed = split_filename(entry.filename)
        name, version = parsed if parsed else (f"\0{entry.filename}", "0")
        groups[(entry.repo, entry.arch, name)].append((version, entry))
    survivors: list[tuple[bool, Entry]] = []  # (is the newest of its package, entry)
    for members in groups.values():
        ordered = _by_version_newest_first(members)
        for rank, entry in enumerate(ordered):
            if rank < keep_versions:
                survivors.append((rank == 0, entry))
            else:
                out.append(Eviction(entry, "older version"))
    if max_size is None:
        return out
    total = sum(e.size for _, e in survivors)
    # Older versions before newest ones, then least recently served first.
    survivors.sort(key=lambda s: (s[0], s[1].last_served, s[1].filename))
    for newest, entry in survivors:
        if total <= max_size:
            break
        out.append(Eviction(entry, "least recently served" if newest else "older version"))
        total -= entry.size
    return out


@dataclass(frozen=True)
class SizeCap:
    """``cache_max_size``: a byte count, or a share of the cache filesystem (with a ceiling).

    The share is resolved when the policy runs (:meth:`resolve`), so a disk that grows or a
    data dir moved to another filesystem changes the cap without a config edit.
    """

    bytes: int | None = None
    fraction: float | None = None
    #: Upper bound on a share (the default's "sane absolute bound"); None: none.
    ceiling: int | None = None

    def resolve(self, filesystem_size: int) -> int:
        """The cap in bytes for a cache on a filesystem of ``filesystem_size`` bytes."""
        if self.bytes is not None:
            return self.bytes
        cap = int(filesystem_size * (self.fraction or 0.0))
        return cap if self.ceiling is None else min(cap, self.ceiling)

    def __str__(self) -> str:
        """The setting as it is written in pacswarm.toml ("20 GiB", "10% up to 20 GiB")."""
        if self.bytes is not None:
            return format_size(self.bytes)
        text = f"{(self.fraction or 0.0) * 100:g}%"
        return text if self.ceiling is None else f"{text} up to {format_size(self.ceiling)}"


def format_size(size: int) -> str:
    """Bytes as the config writes them: ``"20 GiB"`` when exact, else a byte count."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"
