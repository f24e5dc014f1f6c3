"""Range headers as pacman (libcurl) and other clients send them."""

from __future__ import annotations

import pytest

from pacswarm.httprange import RangeNotSatisfiable, parse_range

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-", (0, SIZE)),
        ("bytes=500-", (500, SIZE)),  # pacman resuming a .part file
        ("bytes=999-", (999, SIZE)),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-199", (100, 200)),
        ("bytes=500-5000", (500, SIZE)),  # end past the file: clamped
        ("bytes=999-999", (999, SIZE)),
        ("bytes=-100", (900, SIZE)),
        ("bytes=-1", (999, SIZE)),
        ("bytes=-5000", (0, SIZE)),  # suffix longer than the file: the whole file
        ("  bytes=10-19  ", (10, 20)),
    ],
)
def test_satisfiable_ranges(header: str, expected: tuple[int, int]) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=5000-", "bytes=-0"])
def test_ranges_starting_past_the_end_are_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as err:
        parse_range(header, SIZE)
    assert err.value.size == SIZE


def test_any_range_of_an_empty_file_is_not_satisfiable() -> None:
    # RFC 9110 14.1.2: a suffix range of a zero-length representation is unsatisfiable.
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-5", 0)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes=",
        "bytes=-",
        "bytes=abc-",
        "bytes=5-2",  # last before first: invalid, ignored
        "bytes=0-1,5-6",  # multi-range: the whole file is sent instead
        "bytes=0-99, 200-299",
        "items=0-10",
        "bytes 0-10",
        "bytes=1.5-",
        "bytes=+5-",
        "BYTES=0-",
    ],
)
def test_malformed_or_multi_ranges_are_ignored(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


def test_huge_numbers_do_not_crash() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=9999999999999999999-", SIZE)
    assert parse_range("bytes=0-9999999999999999999", SIZE) == (0, SIZE)
    assert parse_range("bytes=-9999999999999999999", SIZE) == (0, SIZE)


@pytest.mark.parametrize(
    "header",
    ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000],
    ids=["start", "end", "suffix"],
)
def test_absurdly_long_numbers_are_ignored_or_unsatisfiable(header: str) -> None:
    # Python refuses int() of more than 4300 digits; that must not become a 500 error.
    try:
        result = parse_range(header, SIZE)
    except RangeNotSatisfiable:
        return
    assert result in (None, (0, SIZE))


def test_a_range_inside_a_big_package() -> None:
    size = 300 * 1024 * 1024
    assert parse_range(f"bytes={size - 1}-", size) == (size - 1, size)
