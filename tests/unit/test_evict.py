"""The eviction policy: pacman's version order, keep-N per package, the size cap."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from pacswarm.evict import Entry, SizeCap, choose, split_filename, vercmp

# Pairs whose order trips naive comparisons (string order, float parsing, dropping epochs).
VERSIONS = [
    "1.0-1",
    "1.0-2",
    "1.0-10",
    "1.0a-1",
    "1.0.1-1",
    "1.0rc1-1",
    "1.9-1",
    "1.10-1",
    "1:0.5-1",
    "2:0.1-1",
    "1.0+git1-1",
    "1.0.r5.gabc-1",
    "1.0_1-1",
    "01.0-1",
    "1..0-1",
    "1.0",
    "20240101-1",
    "1.0-1.1",
    "a-1",
    "1.0alpha-1",
    "1.0beta-1",
]


def test_vercmp_orders_like_pacman() -> None:
    assert vercmp("1.10-1", "1.9-1") == 1  # not string order
    assert vercmp("1:0.5-1", "2.0-1") == 1  # the epoch wins
    assert vercmp("1.0a-1", "1.0-1") == -1  # a trailing alpha part is older
    assert vercmp("1.0.1-1", "1.0-1") == 1
    assert vercmp("1.0-10", "1.0-2") == 1  # pkgrel numerically
    assert vercmp("1.0", "1.0-5") == 0  # no pkgrel on one side: pkgver decides
    assert vercmp("01.0-1", "1.0-1") == 0  # leading zeros do not count


@pytest.mark.skipif(shutil.which("vercmp") is None, reason="pacman's vercmp is not installed")
def test_vercmp_matches_the_real_vercmp_on_every_pair() -> None:
    """Every ordered pair of a tricky list, against the vercmp binary pacman ships."""
    pairs = list(itertools.product(VERSIONS, repeat=2))
    script = "".join(f'vercmp "{a}" "{b}"\n' for a, b in pairs)
    out = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    expected = [max(-1, min(1, int(x))) for x in out]
    assert [vercmp(a, b) for a, b in pairs] == expected


def test_split_filename_takes_the_last_three_dashes() -> None:
    assert split_filename("python-foo-bar-1:2.3-4-any.pkg.tar.zst") == ("python-foo-bar", "1:2.3-4")
    assert split_filename("zstd-1.5.6-1-x86_64.pkg.tar.xz") == ("zstd", "1.5.6-1")
    assert split_filename("notapackage.tar.zst") is None
    assert split_filename("x-1-any.pkg.tar.zst") is None


def entry(filename: str, size: int = 100, served: float = 0.0, repo: str = "core") -> Entry:
    return Entry(repo, "x86_64", filename, size, served)


def pkg(name: str, version: str) -> str:
    return f"{name}-{version}-x86_64.pkg.tar.zst"


def names(evictions: list) -> list[str]:
    return [e.entry.filename for e in evictions]


def test_keeps_the_newest_versions_by_vercmp_not_by_name_or_age() -> None:
    # Cached in an order that is neither version order nor name order.
    cached = [
        entry(pkg("foo", "1.10-1"), served=1),
        entry(pkg("foo", "1.9-1"), served=5),
        entry(pkg("foo", "1:0.1-1"), served=0),
        entry(pkg("foo", "1.2-1"), served=9),
        entry(pkg("foo-libs", "0.1-1")),
    ]
    out = choose(cached, keep_versions=2, max_size=None)
    # Newest: 1:0.1-1 (epoch), then 1.10-1; 1.9 and 1.2 go although served most recently.
    assert sorted(names(out)) == sorted([pkg("foo", "1.9-1"), pkg("foo", "1.2-1")])
    assert {e.reason for e in out} == {"older version"}


def test_versions_are_counted_per_repo() -> None:
    cached = [entry(pkg("foo", "2-1"), repo="testing"), entry(pkg("foo", "1-1"))]
    assert choose(cached, keep_versions=1, max_size=None) == []


def test_cap_evicts_older_versions_first_then_least_recently_served() -> None:
    cached = [
        entry(pkg("a", "2-1"), served=10),
        entry(pkg("a", "1-1"), served=50),  # older version, though served later
        entry(pkg("b", "1-1"), served=5),  # newest of b, served longest ago
        entry(pkg("c", "1-1"), served=20),
    ]
    out = choose(cached, keep_versions=3, max_size=250)
    assert names(out) == [pkg("a", "1-1"), pkg("b", "1-1")]
    assert [e.reason for e in out] == ["older version", "least recently served"]


def test_a_package_bigger_than_the_cap_is_never_kept() -> None:
    cached = [entry(pkg("huge", "1-1"), size=1000, served=99), entry(pkg("small", "1-1"))]
    out = choose(cached, keep_versions=3, max_size=500)
    assert names(out) == [pkg("huge", "1-1")]
    assert out[0].reason == "bigger than the cap"


def test_under_the_cap_nothing_goes() -> None:
    cached = [entry(pkg("a", "1-1")), entry(pkg("b", "1-1"))]
    assert choose(cached, keep_versions=1, max_size=200) == []


def test_keep_versions_must_be_positive() -> None:
    with pytest.raises(ValueError):
        choose([], keep_versions=0, max_size=None)


def test_size_cap_resolves_shares_with_the_ceiling() -> None:
    assert SizeCap(bytes=8 << 20).resolve(1 << 40) == 8 << 20
    assert SizeCap(fraction=0.1).resolve(1000) == 100
    assert SizeCap(fraction=0.1, ceiling=50).resolve(1000) == 50
