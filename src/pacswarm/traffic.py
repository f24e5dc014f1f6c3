"""Bytes by source (cache, peer, mirror): in total, today, per hour for the status chart, and
who gave them (each peer by its peer ID, each mirror by its URL).

Why its own record and not the Prometheus counters: those start at zero with every process,
and a user asks "how much did the cache save me", over months and restarts. So the figures
are kept in ``DATA_DIR/traffic.json`` (written atomically, at most every
:data:`SAVE_EVERY` seconds and at stop); a missing or damaged file starts the record afresh
(the figures are statistics, never worth refusing to start for).

The model is pure: callers give the time; :meth:`Traffic.to_json` / :meth:`from_json` are
the persisted form.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("cache", "peer", "mirror")
#: Hourly buckets kept for the chart: two days.
HOURS_KEPT = 48
#: Seconds between two saves while bytes flow.
SAVE_EVERY = 30.0
#: Peers (and mirrors) whose bytes are kept one by one; beyond it the smallest is forgotten
#: (peers come and go; a hostile swarm must not grow the record without bound).
MAX_GIVERS = 256


def _zero() -> dict[str, int]:
    return dict.fromkeys(SOURCES, 0)


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(t))


@dataclass
class Traffic:
    total: dict[str, int] = field(default_factory=_zero)
    today: dict[str, int] = field(default_factory=_zero)
    day: str = ""
    #: (hour start, epoch seconds) -> bytes by source; oldest first.
    hours: dict[int, dict[str, int]] = field(default_factory=dict)
    #: Bytes received in total from each peer (by peer ID) and each mirror (by URL).
    peers: dict[str, int] = field(default_factory=dict)
    mirrors: dict[str, int] = field(default_factory=dict)
    dirty: bool = False

    def add(self, source: str, size: int, now: float | None = None) -> None:
        """Count ``size`` bytes from ``source`` (one of :data:`SOURCES`) at ``now``."""
        if source not in SOURCES or size <= 0:
            return
        now = time.time() if now is None else now
        self._roll(now)
        self.total[source] += size
        self.today[source] += size
        hour = int(now // 3600 * 3600)
        self.hours.setdefault(hour, _zero())[source] += size
        for old in sorted(self.hours)[:-HOURS_KEPT]:
            del self.hours[old]
        self.dirty = True

    def gave(self, givers: dict[str, int], who: str, size: int) -> None:
        """Count ``size`` bytes given by ``who`` in ``givers`` (:attr:`peers` or
        :attr:`mirrors`), forgetting the smallest giver when the record is full."""
        if size <= 0:
            return
        if who not in givers and len(givers) >= MAX_GIVERS:
            del givers[min(givers, key=givers.__getitem__)]
        givers[who] = givers.get(who, 0) + size
        self.dirty = True

    def _roll(self, now: float) -> None:
        day = _day(now)
        if day != self.day:
            self.day, self.today = day, _zero()

    def today_at(self, now: float) -> dict[str, int]:
        """Today's figures as of ``now`` (zero once the day has changed since the last byte)."""
        return dict(self.today) if _day(now) == self.day else _zero()

    def series(self, now: float, hours: int = 24) -> list[tuple[int, dict[str, int]]]:
        """The last ``hours`` hourly buckets up to ``now``, empty hours included."""
        last = int(now // 3600 * 3600)
        return [
            (h, dict(self.hours.get(h, _zero())))
            for h in range(last - (hours - 1) * 3600, last + 1, 3600)
        ]

    def to_json(self) -> str:
        return json.dumps(
            {
                "total": self.total,
                "today": self.today,
                "day": self.day,
                "hours": {str(h): v for h, v in self.hours.items()},
                "peers": self.peers,
                "mirrors": self.mirrors,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Traffic:
        """The record saved by :meth:`to_json`; raises ValueError if it is not one."""
        try:
            data: Any = json.loads(text)
            return cls(
                total=_counts(data["total"]),
                today=_counts(data["today"]),
                day=str(data["day"]),
                hours={int(h): _counts(v) for h, v in data["hours"].items()},
                # Records written before givers were kept have none: start them empty.
                peers=_givers(data.get("peers", {})),
                mirrors=_givers(data.get("mirrors", {})),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a traffic record: {e}") from None


def _counts(raw: Any) -> dict[str, int]:
    counts = _zero()
    for source in SOURCES:
        value = raw.get(source, 0)
        if not isinstance(value, int) or value < 0:
            raise TypeError(f"{source}: {value!r} is not a byte count")
        counts[source] = value
    return counts


def _givers(raw: Any) -> dict[str, int]:
    givers: dict[str, int] = {}
    for who, value in raw.items():
        if not isinstance(who, str) or not isinstance(value, int) or value < 0:
            raise TypeError(f"{who!r}: {value!r} is not a byte count")
        givers[who] = value
    return dict(sorted(givers.items(), key=lambda kv: -kv[1])[:MAX_GIVERS])
