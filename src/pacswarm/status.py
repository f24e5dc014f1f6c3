"""The status page's model, its JSON twin, its HTML and its terminal summary. Pure: no I/O.

Why one model rendered three ways (``/status.json``, ``/status``, ``pacswarm status``): a
user who compares the page, a script's JSON and the terminal must see the same figures; so
the node takes a :class:`Snapshot` of its parts, :func:`build` turns it into the JSON-ready
model, and every view renders that model (the CLI renders the JSON it fetched).

The HTML is static and self-contained: no script, no stylesheet or font fetched, plain
tables that a terminal browser (w3m, lynx) shows as well as a graphical one, and a small
inline SVG chart of bytes by source per hour (a graphical bonus; the table beside it has
the same figures).
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from typing import Any

from pacswarm.traffic import SOURCES, Traffic

#: Colours of the chart's sources (also shown in the legend, with their names).
COLOURS = {"cache": "#2e7d32", "peer": "#1565c0", "mirror": "#ef6c00"}
CHART_W, CHART_H, CHART_HOURS = 720, 160, 24


@dataclass(frozen=True)
class DownloadInfo:
    repo: str
    filename: str
    written: int
    size: int
    sources: tuple[str, ...]


@dataclass(frozen=True)
class PeerInfo:
    peer_id: str
    strikes: int
    #: Bytes this peer gave us in total (kept across restarts).
    gave: int = 0


@dataclass(frozen=True)
class MirrorInfo:
    url: str
    healthy: bool
    failures: int
    last_error: str


@dataclass(frozen=True)
class DbInfo:
    repo: str
    arch: str
    #: The db's Last-Modified (epoch seconds), None if no copy is held.
    modified: float | None


@dataclass(frozen=True)
class Snapshot:
    """What the node's parts say at one moment (the node fills it; nothing here reads)."""

    now: float
    traffic: Traffic
    cache_bytes: int = 0
    cache_packages: int = 0
    #: ``cache_max_size`` as configured (bytes or a text such as ``"10%"``); None: no cap.
    cache_cap: int | str | None = None
    downloads: tuple[DownloadInfo, ...] = ()
    peers: tuple[PeerInfo, ...] = ()
    mirrors: tuple[MirrorInfo, ...] = ()
    dbs: tuple[DbInfo, ...] = ()
    #: Age in seconds beyond which a held db is shown as possibly frozen.
    freeze_after: float = 7 * 86400


def saved_share(counts: dict[str, int]) -> float | None:
    """The share of bytes that did not come from a mirror; None when nothing moved."""
    total = sum(counts.values())
    return None if total == 0 else (total - counts.get("mirror", 0)) / total


def build(s: Snapshot) -> dict[str, Any]:
    """The status model: plain JSON types, the contract of ``/status.json``."""
    today, total = s.traffic.today_at(s.now), dict(s.traffic.total)
    return {
        "generated_at": s.now,
        "traffic": {
            "today": today,
            "total": total,
            "saved_today": saved_share(today),
            "saved_total": saved_share(total),
            "hourly": [{"hour": h, **v} for h, v in s.traffic.series(s.now, CHART_HOURS)],
        },
        "cache": {"bytes": s.cache_bytes, "packages": s.cache_packages, "cap": s.cache_cap},
        "downloads": [
            {
                "repo": d.repo,
                "filename": d.filename,
                "written": d.written,
                "size": d.size,
                "sources": list(d.sources),
            }
            for d in s.downloads
        ],
        "peers": [{"id": p.peer_id, "strikes": p.strikes, "gave": p.gave} for p in s.peers],
        # Who gave us what, in total: every peer by its ID (connected now or not) and every
        # mirror by its URL, the largest first.
        "givers": {
            "peers": _largest_first(s.traffic.peers),
            "mirrors": _largest_first(s.traffic.mirrors),
        },
        "mirrors": [
            {"url": m.url, "healthy": m.healthy, "failures": m.failures, "last_error": m.last_error}
            for m in s.mirrors
        ],
        "dbs": [
            {
                "repo": d.repo,
                "arch": d.arch,
                "modified": d.modified,
                "age": None if d.modified is None else max(0.0, s.now - d.modified),
                "frozen": d.modified is not None and s.now - d.modified > s.freeze_after,
            }
            for d in s.dbs
        ],
    }


def _largest_first(givers: dict[str, int]) -> dict[str, int]:
    return dict(sorted(givers.items(), key=lambda kv: (-kv[1], kv[0])))


def to_json(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=1, sort_keys=True) + "\n"


# -- formatting -------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    """``1.5 MiB``: binary units, as pacman prints sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "none held"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def cap_text(cap: int | str | None) -> str:
    if cap is None:
        return "no cap"
    return human_bytes(cap) if isinstance(cap, int) else str(cap)


def summary_rows(model: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(source, today, total, plain-bytes total) rows; the same in the page and the terminal."""
    t = model["traffic"]
    rows = [
        (src, human_bytes(t["today"][src]), human_bytes(t["total"][src]), str(t["total"][src]))
        for src in SOURCES
    ]
    rows.append(("saved", percent(t["saved_today"]), percent(t["saved_total"]), ""))
    return rows


def render_text(model: dict[str, Any]) -> str:
    """The terminal summary (``pacswarm status``), from the JSON model."""
    cache = model["cache"]
    lines = ["bytes served    today        total        (bytes)"]
    lines += [f"  {a:<12}  {b:>11}  {c:>11}  {d}".rstrip() for a, b, c, d in summary_rows(model)]
    lines.append(
        f"cache: {human_bytes(cache['bytes'])} in {cache['packages']} packages "
        f"(cap: {cap_text(cache['cap'])})"
    )
    lines.append(f"downloads in flight: {len(model['downloads'])}")
    for d in model["downloads"]:
        lines.append(f"  {d['filename']}: {_progress(d)} from {', '.join(d['sources']) or '-'}")
    peers = model["peers"]
    lines.append(f"peers: {len(peers)}")
    lines += [
        f"  {p['id']} (strikes: {p['strikes']}, gave us {human_bytes(p['gave'])})" for p in peers
    ]
    lines.append("who gave us what (total):")
    lines += [f"  {who}: {human_bytes(n)} ({n})" for who, n in giver_rows(model)]
    lines.append("mirrors:")
    lines += [f"  {m['url']}: {_health(m)}" for m in model["mirrors"]]
    lines.append("dbs held:")
    lines += [f"  {d['repo']}/{d['arch']}: {_db_age(d)}" for d in model["dbs"]]
    return "\n".join(lines) + "\n"


def giver_rows(model: dict[str, Any]) -> list[tuple[str, int]]:
    """(peer ID or mirror URL, bytes) rows: peers first, each part largest first."""
    givers = model["givers"]
    return [(f"peer {p}", n) for p, n in givers["peers"].items()] + list(givers["mirrors"].items())


def _progress(d: dict[str, Any]) -> str:
    share = d["written"] / d["size"] if d["size"] else 1.0
    return f"{human_bytes(d['written'])} of {human_bytes(d['size'])} ({share * 100:.0f}%)"


def _health(m: dict[str, Any]) -> str:
    if m["healthy"]:
        return "ok"
    return f"skipped for now ({m['failures']} failures: {m['last_error']})"


def _db_age(d: dict[str, Any]) -> str:
    age = human_age(d["age"])
    return f"{age} old, possibly frozen" if d["frozen"] else f"{age} old"


# -- HTML -------------------------------------------------------------------------------------


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], cls: str = "") -> str:
    e = html.escape
    attr = f' class="{cls}"' if cls else ""
    out = [f"<table{attr}><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    if not rows:
        out.append(f'<tr><td colspan="{len(head)}">none</td></tr>')
    return "".join(out) + "</table>"


def chart_svg(hourly: list[dict[str, Any]]) -> str:
    """Stacked bars of bytes per hour by source, scaled to the busiest hour."""
    peak = max((sum(h[s] for s in SOURCES) for h in hourly), default=0) or 1
    bar_w = CHART_W / max(len(hourly), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H + 20}" '
        f'role="img" aria-label="bytes by source per hour, last {len(hourly)} hours">',
        f'<rect x="0" y="0" width="{CHART_W}" height="{CHART_H}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for i, h in enumerate(hourly):
        y = float(CHART_H)
        for src in SOURCES:
            height = h[src] / peak * (CHART_H - 4)
            if height <= 0:
                continue
            y -= height
            label = html.escape(f"{time.strftime('%H:00', time.localtime(h['hour']))} {src}: ")
            parts.append(
                f'<rect class="bar-{src}" x="{i * bar_w + 1:.1f}" y="{y:.1f}" '
                f'width="{bar_w - 2:.1f}" height="{height:.1f}" fill="{COLOURS[src]}">'
                f"<title>{label}{html.escape(human_bytes(h[src]))}</title></rect>"
            )
    parts.append(
        f'<text x="0" y="{CHART_H + 15}" font-size="12">peak {html.escape(human_bytes(peak))}'
        "/h</text></svg>"
    )
    return "".join(parts)


STYLE = (
    "body{font-family:sans-serif;margin:1em;color:#222}table{border-collapse:collapse;"
    "margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
    "th{background:#eee}.num td+td{text-align:right}"
)


def render_html(model: dict[str, Any]) -> str:
    """The whole ``/status`` page."""
    cache = model["cache"]
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(model["generated_at"]))
    legend = " ".join(f'<span style="color:{COLOURS[s]}">&#9632;</span> {s}' for s in SOURCES)
    body = [
        "<h1>pacswarm status</h1>",
        f"<p>at {html.escape(generated)} (reload for new figures; "
        '<a href="/status.json">JSON</a>, <a href="/metrics">metrics</a>)</p>',
        "<h2>Bytes served</h2>",
        _table(("source", "today", "total", "bytes"), summary_rows(model), "num traffic"),
        f"<h2>Last {CHART_HOURS} hours</h2>",
        f"<p>{legend}</p>",
        chart_svg(model["traffic"]["hourly"]),
        "<h2>Cache</h2>",
        _table(
            ("size", "packages", "cap"),
            [(human_bytes(cache["bytes"]), str(cache["packages"]), cap_text(cache["cap"]))],
            "cache",
        ),
        "<h2>Downloads in flight</h2>",
        _table(
            ("file", "progress", "from"),
            [(d["filename"], _progress(d), ", ".join(d["sources"])) for d in model["downloads"]],
        ),
        f"<h2>Peers ({len(model['peers'])})</h2>",
        _table(
            ("peer", "strikes", "gave us"),
            [(p["id"], str(p["strikes"]), human_bytes(p["gave"])) for p in model["peers"]],
        ),
        "<h2>Who gave us what</h2>",
        _table(
            ("source", "total", "bytes"),
            [(who, human_bytes(n), str(n)) for who, n in giver_rows(model)],
            "num givers",
        ),
        "<h2>Mirrors</h2>",
        _table(("mirror", "health"), [(m["url"], _health(m)) for m in model["mirrors"]]),
        "<h2>Repo dbs held</h2>",
        _table(("db", "age"), [(f"{d['repo']}/{d['arch']}", _db_age(d)) for d in model["dbs"]]),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>pacswarm status</title>"
        f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n"
    )
