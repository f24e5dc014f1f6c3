"""Mirror order: the user's ranking, with failing mirrors moved last for a while."""

from __future__ import annotations

from pacswarm.health import MirrorHealth

A, B, C = "https://a/$repo/os/$arch", "https://b/$repo/os/$arch", "https://c/$repo/os/$arch"


def test_mirrorlist_order_is_kept_when_all_are_healthy() -> None:
    health = MirrorHealth([A, B, C], penalty=120)
    assert health.ordered(now=0) == [A, B, C]
    assert health.ordered(now=1e9) == [A, B, C]


def test_a_failed_mirror_moves_last_until_its_penalty_expires() -> None:
    health = MirrorHealth([A, B, C], penalty=120)
    health.failed(A, "timed out", now=1000)
    assert health.ordered(now=1000) == [B, C, A]
    assert health.ordered(now=1119.9) == [B, C, A]
    assert health.ordered(now=1120) == [A, B, C]


def test_a_penalised_mirror_is_still_tried_rather_than_dropped() -> None:
    health = MirrorHealth([A, B], penalty=120)
    health.failed(A, "refused", now=0)
    health.failed(B, "refused", now=0)
    assert sorted(health.ordered(now=1)) == sorted([A, B])


def test_penalised_mirrors_come_soonest_forgiven_first() -> None:
    health = MirrorHealth([A, B, C], penalty=100)
    health.failed(A, "stall", now=50)  # until 150
    health.failed(B, "stall", now=10)  # until 110
    assert health.ordered(now=60) == [C, B, A]
    assert health.ordered(now=120) == [B, C, A]


def test_repeated_failures_double_the_penalty_up_to_sixteen_times() -> None:
    health = MirrorHealth([A, B], penalty=10)
    expected = [10, 20, 40, 80, 160, 160, 160]
    for length in expected:
        health.failed(A, "HTTP 500", now=0)
        assert health.state(A).penalised_until == length
    assert health.ordered(now=159) == [B, A]
    assert health.ordered(now=160) == [A, B]


def test_penalty_counts_from_the_latest_failure() -> None:
    health = MirrorHealth([A, B], penalty=10)
    health.failed(A, "x", now=0)  # until 10
    health.failed(A, "x", now=100)  # second failure: 20 s from now
    assert health.ordered(now=119) == [B, A]
    assert health.ordered(now=120) == [A, B]


def test_success_forgives_and_resets_the_doubling() -> None:
    health = MirrorHealth([A, B], penalty=10)
    for _ in range(3):
        health.failed(A, "stall", now=0)
    health.succeeded(A, now=0)  # a success while penalised does not cut the penalty short
    assert health.ordered(now=0) == [B, A]
    assert health.state(A).failures == 3
    health.succeeded(A, now=1000)  # once the penalty is over, a success forgives the past
    assert health.ordered(now=1000) == [A, B]
    assert health.state(A).failures == 0
    assert health.state(A).last_error == ""
    health.failed(A, "stall", now=1000)
    assert health.state(A).penalised_until == 1010  # back to the base penalty


def test_last_error_is_remembered_for_the_log() -> None:
    health = MirrorHealth([A], penalty=10)
    health.failed(A, "sent a bad zstd-1.5.6-1-x86_64.pkg.tar.zst", now=0)
    assert health.state(A).last_error == "sent a bad zstd-1.5.6-1-x86_64.pkg.tar.zst"
    assert health.state(A).failures == 1


def test_unknown_mirrors_are_ignored() -> None:
    health = MirrorHealth([A, B], penalty=10)
    health.failed("https://stranger/$repo", "x", now=0)
    health.succeeded("https://stranger/$repo", now=0)
    assert health.ordered(now=0) == [A, B]
