"""The golden CIDs of tests/unit/test_unixfs_golden.py, recomputed by a live kubo and Helia.

The unit test pins literal CIDs so that it runs without either; this is where they are shown
to still be what the other implementations give (a kubo or Helia upgrade that changed its
import would show here first). kubo gives its default add (CIDv0, dag-pb leaves); Helia gives
``ipfs add --cid-version=1`` (its importer set to kubo's settings, see helia_peer.mjs).

The 174^2-chunk case (a 7.9 GB sparse file of zeros, about a minute for the two) runs only
with ``PACSWARM_GOLDEN_BIG=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helia import HeliaPeer, helia_available
from tests.support.helia import unavailable_reason as helia_reason
from tests.support.kubo import KuboPeer, kubo_available
from tests.support.kubo import unavailable_reason as kubo_reason
from tests.unit.test_unixfs_golden import V0, V1, ZEROS_SIZE, ZEROS_V0, ZEROS_V1, golden_data

pytestmark = pytest.mark.timeout(300)
BIG = pytest.mark.skipif(
    os.environ.get("PACSWARM_GOLDEN_BIG") != "1", reason="set PACSWARM_GOLDEN_BIG=1 (7.9 GB)"
)


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboPeer]:
    if not kubo_available():
        pytest.skip(kubo_reason())
    with KuboPeer(tmp_path_factory.mktemp("kubo") / "repo") as peer:
        yield peer


@pytest.fixture(scope="module")
def helia() -> Iterator[HeliaPeer]:
    if not helia_available():
        pytest.skip(helia_reason())
    with HeliaPeer() as peer:
        yield peer


def write(path: Path, size: int) -> Path:
    path.write_bytes(golden_data(size))
    return path


@pytest.mark.parametrize("size", sorted(V0))
def test_kubo_default_add_gives_the_pinned_cidv0(kubo: KuboPeer, tmp_path: Path, size: int) -> None:
    assert kubo.add(write(tmp_path / "f", size), timeout=120) == V0[size]


@pytest.mark.parametrize("size", sorted(V1))
def test_helia_with_kubo_settings_gives_the_pinned_cidv1(
    helia: HeliaPeer, tmp_path: Path, size: int
) -> None:
    assert helia.add(write(tmp_path / "f", size), timeout=120) == V1[size]


def sparse_zeros(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(ZEROS_SIZE)
    return path


@BIG
def test_kubo_past_174_squared_chunks(kubo: KuboPeer, tmp_path: Path) -> None:
    assert kubo.add(sparse_zeros(tmp_path / "zeros"), timeout=280) == ZEROS_V0


@BIG
def test_helia_past_174_squared_chunks(helia: HeliaPeer, tmp_path: Path) -> None:
    assert helia.add(sparse_zeros(tmp_path / "zeros"), timeout=280) == ZEROS_V1
