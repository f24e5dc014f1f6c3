"""HTTP Range headers (RFC 9110 §14), the subset a package proxy needs. Pure.

pacman resumes with ``Range: bytes=N-``; we also accept ``bytes=N-M`` and ``bytes=-N``.
A malformed header or a multi-range request is ignored (the whole file is sent, as the RFC
allows); a well-formed range that starts past the end is *unsatisfiable* (416).
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ValueError):
    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for a {size}-byte file")
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` with ``end`` exclusive, or None to send the whole file."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - length), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and int(last) < start:
        return None  # invalid: ignore it
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)
