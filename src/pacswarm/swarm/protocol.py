"""STAND-IN (helper H5): only the contract's ``Entry``, so audit.py and its tests import.

H2 owns this module; at merge, H2's protocol.py replaces this file entirely.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One announced package: the db's sha256, its CID, size and filename."""

    sha256: str
    cid: str
    size: int
    filename: str
