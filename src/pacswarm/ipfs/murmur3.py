"""murmur3-x64-64, the hash of UnixFS HAMT directories (multicodec 0x22). Pure.

It is the first 64-bit half (h1) of MurmurHash3_x64_128 with seed 0, as big-endian bytes
(what Go's ``spaolacci/murmur3`` ``New64().Sum(nil)`` gives boxo). ``mmh3`` (a C extension)
is used when installed (py-libp2p's multihash pulls it in); the pure-Python version below
gives the same digest and is checked against it in tests.
"""

from __future__ import annotations

_M = 0xFFFFFFFFFFFFFFFF
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    return k ^ (k >> 33)


def _mix_k1(k1: int) -> int:
    return (_rotl((k1 * _C1) & _M, 31) * _C2) & _M


def _mix_k2(k2: int) -> int:
    return (_rotl((k2 * _C2) & _M, 33) * _C1) & _M


def murmur3_x64_128_py(data: bytes, seed: int = 0) -> tuple[int, int]:
    """(h1, h2) of MurmurHash3_x64_128, in pure Python."""
    h1 = h2 = seed & _M
    nblocks = len(data) // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        h1 ^= _mix_k1(k1)
        h1 = (_rotl(h1, 27) + h2) & _M
        h1 = (h1 * 5 + 0x52DCE729) & _M
        h2 ^= _mix_k2(k2)
        h2 = (_rotl(h2, 31) + h1) & _M
        h2 = (h2 * 5 + 0x38495AB5) & _M
    tail = data[16 * nblocks :]
    if len(tail) > 8:
        h2 ^= _mix_k2(int.from_bytes(tail[8:], "little"))
    if tail:
        h1 ^= _mix_k1(int.from_bytes(tail[:8], "little"))
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    return h1, h2


def murmur3_x64_64_py(data: bytes) -> bytes:
    return murmur3_x64_128_py(data)[0].to_bytes(8, "big")


try:
    import mmh3 as _mmh3
except ImportError:  # pragma: no cover - mmh3 comes with py-libp2p's dependencies
    _mmh3 = None


def murmur3_x64_64(data: bytes) -> bytes:
    """The HAMT hash of ``data``: 8 bytes, most significant (first level's slot) first."""
    if _mmh3 is None:
        return murmur3_x64_64_py(data)
    return _mmh3.hash64(data, seed=0, x64arch=True, signed=False)[0].to_bytes(8, "big")
