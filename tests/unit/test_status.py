"""The status model, its views, the traffic record and the metrics registry: pure, fast."""

from __future__ import annotations

import json
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacswarm import status
from pacswarm.metrics import Metrics, source_kind
from pacswarm.traffic import MAX_GIVERS, Traffic

NOON = time.mktime((2026, 12, 2, 12, 0, 0, 0, 0, -1))
MIB = 1 << 20


def _snapshot(**kwargs: object) -> status.Snapshot:
    traffic = Traffic()
    traffic.add("mirror", 3 * MIB, NOON - 7200)
    traffic.add("cache", 9 * MIB, NOON)
    base: dict[str, object] = {"now": NOON, "traffic": traffic}
    base.update(kwargs)
    return status.Snapshot(**base)  # type: ignore[arg-type]


def test_model_counts_today_total_and_the_share_saved() -> None:
    model = status.build(_snapshot())
    assert model["traffic"]["today"] == {"cache": 9 * MIB, "peer": 0, "mirror": 3 * MIB}
    assert model["traffic"]["saved_total"] == pytest.approx(0.75)
    hourly = model["traffic"]["hourly"]
    assert len(hourly) == 24
    assert hourly[-1]["cache"] == 9 * MIB and hourly[-3]["mirror"] == 3 * MIB
    # The JSON twin is plain JSON with the same figures.
    assert json.loads(status.to_json(model))["traffic"]["total"]["cache"] == 9 * MIB


def test_today_starts_at_zero_on_a_new_day() -> None:
    model = status.build(_snapshot(now=NOON + 86400))
    assert model["traffic"]["today"] == {"cache": 0, "peer": 0, "mirror": 0}
    assert model["traffic"]["total"]["cache"] == 9 * MIB
    assert model["traffic"]["saved_today"] is None


def test_old_db_is_shown_possibly_frozen_and_no_cap_when_unset() -> None:
    dbs = (
        status.DbInfo("core", "x86_64", NOON - 3600),
        status.DbInfo("extra", "x86_64", NOON - 30 * 86400),
    )
    text = status.render_text(status.build(_snapshot(dbs=dbs)))
    assert "core/x86_64: 60 min old\n" in text
    assert "extra/x86_64: 30 days old, possibly frozen" in text
    assert "(cap: no cap)" in text
    capped = status.render_text(status.build(_snapshot(cache_cap="10%")))
    assert "(cap: 10%)" in capped


def test_text_and_page_show_the_same_figures() -> None:
    downloads = (status.DownloadInfo("core", "big-1-1-x86_64.pkg.tar.zst", MIB, 4 * MIB, ("m",)),)
    model = status.build(_snapshot(downloads=downloads, cache_bytes=12 * MIB, cache_packages=2))
    text, page = status.render_text(model), status.render_html(model)
    for figure in ("9.0 MiB", "3.0 MiB", "75%", "12.0 MiB", "1.0 MiB of 4.0 MiB (25%)"):
        assert figure in text and figure in page, figure
    assert str(9 * MIB) in page and str(9 * MIB) in text


def test_page_is_self_contained_and_escapes_what_it_shows() -> None:
    hostile = 'http://m.example/<script>alert("x")</script>'
    mirrors = (status.MirrorInfo(hostile, False, 2, "<img src=http://evil/>"),)
    page = status.render_html(status.build(_snapshot(mirrors=mirrors)))
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page
    # Nothing loaded from anywhere: no src attributes, no external stylesheet, links local.
    assert not re.search(r"<[^>]*\ssrc=", page)
    assert "<link" not in page
    assert all(h.startswith("/") for h in re.findall(r'href="([^"]*)"', page))


def test_chart_stacks_sources_scaled_to_the_busiest_hour() -> None:
    svg = status.chart_svg(status.build(_snapshot())["traffic"]["hourly"])
    heights = {
        cls: float(h) for cls, h in re.findall(r'class="bar-(\w+)"[^>]*height="([\d.]+)"', svg)
    }
    assert heights["cache"] == pytest.approx(status.CHART_H - 4)
    assert heights["mirror"] == pytest.approx((status.CHART_H - 4) / 3)
    assert "peer" not in heights  # no bytes, no bar


def test_traffic_round_trips_and_refuses_a_damaged_record() -> None:
    traffic = _snapshot().traffic
    again = Traffic.from_json(traffic.to_json())
    assert again.total == traffic.total and again.hours == traffic.hours
    for bad in ("", "[]", '{"total": {"cache": -1}, "today": {}, "day": "", "hours": {}}'):
        with pytest.raises(ValueError):
            Traffic.from_json(bad)


def test_traffic_keeps_two_days_of_hours() -> None:
    traffic = Traffic()
    for hour in range(60):
        traffic.add("peer", 1, NOON + hour * 3600)
    assert len(traffic.hours) == 48
    assert traffic.total["peer"] == 60


def test_source_names_map_to_their_kind() -> None:
    assert source_kind("cache") == "cache"
    assert source_kind("peer http://10.0.0.2:8080") == "peer"
    assert source_kind("peer bitswap 12D3KooW") == "peer"
    assert source_kind("https://geo.mirror.pkgbuild.com/core/os/x86_64") == "mirror"


def test_each_node_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.received("https://mirror.example/$repo/os/$arch", 100, None)
    one.hit("package", 50)

    def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode())
            for s in f.samples
        }

    got = samples(one)
    assert got[("pacswarm_bytes_total", (("kind", "package"), ("source", "mirror")))] == 100
    assert got[("pacswarm_bytes_total", (("kind", "package"), ("source", "cache")))] == 50
    assert not any(name == "pacswarm_bytes_total" for name, _ in samples(two))
    assert one.traffic.total == {"cache": 50, "peer": 0, "mirror": 100}


def test_who_gave_what_is_kept_by_peer_id_and_mirror_and_survives_a_restart() -> None:
    """A peer is named by its peer ID whatever address its source had; dbs count as mirror
    bytes (they only come from mirrors); the record round-trips through its file."""
    m = Metrics()
    m.received("peer http://10.0.0.2:4080", 300, "12D3KooWA")
    m.received("peer bitswap 12D3KooWA", 200, "12D3KooWA")
    m.received("peer http://10.0.0.3:4080", 50, "12D3KooWB")
    m.received("https://mirror.example/$repo/os/$arch", 70, None)
    m.db_received("https://mirror.example/$repo/os/$arch", 30)
    again = Traffic.from_json(m.traffic.to_json())
    assert again.peers == {"12D3KooWA": 500, "12D3KooWB": 50}
    assert again.mirrors == {"https://mirror.example/$repo/os/$arch": 100}
    assert again.total == {"cache": 0, "peer": 550, "mirror": 100}
    snap = status.Snapshot(
        now=NOON, traffic=again, peers=(status.PeerInfo("12D3KooWB", 1, again.peers["12D3KooWB"]),)
    )
    model = status.build(snap)
    assert list(model["givers"]["peers"].items()) == [("12D3KooWA", 500), ("12D3KooWB", 50)]
    assert model["peers"] == [{"id": "12D3KooWB", "strikes": 1, "gave": 50}]
    text = status.render_text(model)
    assert "  peer 12D3KooWA: 500 B (500)" in text and "gave us 50 B" in text
    assert "<td>peer 12D3KooWA</td><td>500 B</td><td>500</td>" in status.render_html(model)


def test_givers_stay_bounded_and_an_old_record_without_them_loads() -> None:
    traffic = Traffic()
    for i in range(MAX_GIVERS + 10):
        traffic.gave(traffic.peers, f"peer{i}", i + 1)
    assert len(traffic.peers) == MAX_GIVERS
    assert "peer0" not in traffic.peers and f"peer{MAX_GIVERS + 9}" in traffic.peers
    old = '{"total": {"cache": 1}, "today": {}, "day": "2026-01-01", "hours": {}}'
    assert Traffic.from_json(old).peers == {}
