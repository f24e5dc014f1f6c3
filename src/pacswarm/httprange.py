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
    # Beyond 19 digits a number exceeds any file size (and int() refuses > 4300 digits):
    # clamp it to "past the end" without converting it.
    huge = 1 << 64
    first_n = (int(first) if len(first) <= 19 else huge) if first else None
    last_n = (int(last) if len(last) <= 19 else huge) if last else None
    if first_n is None:  # suffix range: the last N bytes
        if not last_n or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - last_n), size
    start = first_n
    if last_n is not None and last_n < start:
        return None  # invalid: ignore it
    end = size if last_n is None else last_n + 1
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)
