"""Pure rules: judging pacman's resumed .part files, and which mirror redirects to follow."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from yarl import URL

from pacswarm.config import load_config
from pacswarm.errors import ConfigError
from pacswarm.fetch.resume import Cut, CutTransfers, chain_to
from pacswarm.upstream import redirect_refusal

KEY = ("core", "x86_64", "foo.pkg.tar.zst")


def _cut(data: bytes, start: int, end: int) -> Cut:
    return Cut(start, end, hashlib.sha256(data[start:end]).hexdigest())


def test_chain_follows_resumes_back_to_the_first_byte() -> None:
    cuts = [Cut(0, 100, "a"), Cut(100, 250, "b"), Cut(0, 40, "c")]
    assert chain_to(cuts, 250) == [Cut(0, 100, "a"), Cut(100, 250, "b")]
    assert chain_to(cuts, 40) == [Cut(0, 40, "c")]
    assert chain_to(cuts, 120) is None  # pacman holds bytes no recorded transfer sent


def test_a_good_prefix_is_resumed_and_a_bad_one_is_not(tmp_path: Path) -> None:
    good = bytes(range(256)) * 40
    verified = tmp_path / "verified"
    verified.write_bytes(good)
    bad = bytearray(good)
    bad[10] ^= 1
    cuts = CutTransfers()
    assert cuts.judge(KEY, 5000, verified) is None  # no record: an ordinary resume
    cuts.add(KEY, _cut(good, 0, 5000))
    assert cuts.judge(KEY, 5000, verified) is True
    cuts.add(KEY, _cut(bytes(bad), 0, 6000))
    assert cuts.judge(KEY, 6000, verified) is False
    assert cuts.judge(KEY, 7000, verified) is False  # unknown length: start over


def test_records_stay_bounded() -> None:
    cuts = CutTransfers()
    for i in range(5000):
        cuts.add(("core", "x86_64", f"p{i}"), Cut(0, 1, "x"))
    assert not cuts.known(("core", "x86_64", "p0"))
    assert cuts.known(("core", "x86_64", "p4999"))


@pytest.mark.parametrize(
    ("origin", "target", "refused"),
    [
        ("https://m.example/core/x", "https://m.example/core/y", None),
        ("http://m.example/core/x", "https://m.example/core/x", None),
        ("https://m.example/core/x", "http://m.example/core/x", "plain http"),
        ("https://m.example/core/x", "https://other.example/core/x", "another host"),
        ("http://127.0.0.1:80/x", "http://127.0.0.1:81/x", "another host"),
        ("https://m.example/x", "file:///etc/passwd", "'file'"),
    ],
)
def test_redirect_rules(origin: str, target: str, refused: str | None) -> None:
    why = redirect_refusal(URL(origin), URL(target))
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


@pytest.mark.parametrize("value", [-1, 8, 30, True, "5"])
def test_verify_window_out_of_range_is_refused_by_name(tmp_path: Path, value: object) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"verify_window = {value!r}\n".replace("'", '"').replace("True", "true"))
    with pytest.raises(ConfigError, match="verify_window"):
        load_config(config)


def test_verify_window_zero_turns_it_off(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("verify_window = 0\n")
    assert load_config(config).verify_window == 0.0
    assert load_config(None).verify_window == 5.0


def test_a_settled_resume_drops_its_own_cuts_and_keeps_the_others() -> None:
    """Two machines cut by one attempt hold the same bytes: judging one keeps the other's
    record; a resume no record explains drops them all (no stale refusals later)."""
    cuts = CutTransfers()
    cuts.add(KEY, Cut(0, 100, "a"))
    cuts.add(KEY, Cut(0, 100, "a"))
    cuts.settled(KEY, 100)
    assert cuts.known(KEY)
    cuts.settled(KEY, 100)
    assert not cuts.known(KEY)
    cuts.add(KEY, Cut(0, 100, "a"))
    cuts.settled(KEY, 120)
    assert not cuts.known(KEY)
