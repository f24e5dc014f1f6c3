"""Strikes and bans of peers whose bytes failed verification (pure: the clock is a number)."""

from __future__ import annotations

import pytest

from pacswarm.swarm import reputation as reputation_module
from pacswarm.swarm.reputation import Reputation


def test_a_peer_is_ignored_after_its_strikes_and_only_for_the_ban() -> None:
    rep = Reputation(strikes=3, ban=600.0)
    assert rep.strike("liar", "bad sha256", now=10.0) is False
    assert rep.strike("liar", "bad block", now=20.0) is False
    assert not rep.ignored("liar", now=21.0)
    assert rep.strike("liar", "bad sha256", now=30.0) is True  # the third: banned
    assert rep.ignored("liar", now=31.0)
    assert rep.ignored("liar", now=629.9)
    assert not rep.ignored("liar", now=630.0)  # the ban is over: asked again
    assert not rep.ignored("honest", now=31.0)


def test_after_a_ban_the_count_starts_again() -> None:
    rep = Reputation(strikes=2, ban=100.0)
    rep.strike("p", "bad", 0.0)
    assert rep.strike("p", "bad", 1.0)
    assert rep.strike("p", "while banned", 50.0)  # still ignored; does not stretch the ban
    assert not rep.ignored("p", 101.0)
    assert rep.strike("p", "bad", 200.0) is False  # one strike after the ban is not a ban
    assert rep.strike("p", "bad", 201.0) is True


def test_the_gossipsub_score_is_negative_once_struck_and_lower_while_banned() -> None:
    rep = Reputation(strikes=2, ban=100.0)
    assert rep.score("stranger", 0.0) == 0.0
    rep.strike("p", "bad", 0.0)
    once = rep.score("p", 1.0)
    assert once < 0
    rep.strike("p", "bad", 2.0)
    banned = rep.score("p", 3.0)
    assert banned < once
    after = rep.score("p", 500.0)
    assert banned < after < 0  # forgiven as a source, not forgotten by the router
    assert rep.struck() == {"p": 2}


def test_memory_is_bounded_but_banned_peers_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reputation_module, "MAX_PEERS", 10)
    rep = Reputation(strikes=1, ban=1000.0)
    rep.strike("banned", "bad", 0.0)
    rep2 = Reputation(strikes=5, ban=1000.0)
    for i in range(50):
        rep.strike(f"peer{i}", "bad", 1.0 + i)  # strikes=1: each one banned
        rep2.strike(f"peer{i}", "bad", 1.0 + i)  # one strike each: never banned
    assert rep.ignored("banned", 10.0)  # a ban is never dropped to make room
    assert len(rep2.struck()) == 10
    assert "peer49" in rep2.struck() and "peer0" not in rep2.struck()  # oldest forgotten


def test_strikes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="strikes must be at least 1"):
        Reputation(strikes=0, ban=1.0)
