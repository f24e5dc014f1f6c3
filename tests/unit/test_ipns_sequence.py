"""The IPNS sequence counter: peers keep the highest Sequence, so it must never go back."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacswarm.ipns.sequence import SequenceCounter, SequenceError


def test_starts_at_one_and_grows_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "ipns" / "sequence"
    first = SequenceCounter(path)
    assert first.current() == 0
    assert [first.next(), first.next(), first.next()] == [1, 2, 3]
    restarted = SequenceCounter(path)  # a new process reading the same file
    assert restarted.current() == 3
    assert restarted.next() == 4
    assert path.read_text() == "4\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sequence"]  # no temp left


def test_observe_raises_but_never_lowers(tmp_path: Path) -> None:
    counter = SequenceCounter(tmp_path / "sequence")
    counter.next()
    counter.observe(41)  # our own record seen on the network with a higher sequence
    assert counter.next() == 42
    counter.observe(7)
    assert counter.current() == 42


def test_corrupt_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    path.write_text("12x\n")
    counter = SequenceCounter(path)
    with pytest.raises(SequenceError, match="not a number"):
        counter.next()
    assert path.read_text() == "12x\n"  # left for the user to fix, not overwritten


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SequenceError, match="IPNS sequence file"):
        SequenceCounter(blocker / "sequence").next()
