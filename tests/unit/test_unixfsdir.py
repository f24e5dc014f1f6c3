"""UnixFS directories (src/pacswarm/ipfs/unixfsdir.py): murmur3, basic and HAMT shapes."""

from __future__ import annotations

import random

from pacswarm.ipfs.cid import CID, RAW


def arch_like_names(n: int, seed: int = 8) -> list[str]:
    """``n`` distinct package filenames shaped like Arch's (name-ver-rel-arch.pkg.tar.zst)."""
    rng = random.Random(seed)
    words = ["lib", "python", "perl", "haskell", "ttf", "kde", "gst", "qt6", "rust", "go"]
    names: set[str] = set()
    while len(names) < n:
        base = f"{rng.choice(words)}-{rng.choice(words)}{rng.randrange(10_000)}"
        ver = f"{rng.randrange(30)}.{rng.randrange(100)}.{rng.randrange(10)}-{rng.randrange(1, 5)}"
        names.add(f"{base}-{ver}-{rng.choice(['x86_64', 'any'])}.pkg.tar.zst")
    return sorted(names)


def raw_cid(name: str) -> CID:
    return CID.of(name.encode(), RAW)
