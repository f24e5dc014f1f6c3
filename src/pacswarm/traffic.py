"""Bytes by source (cache, peer, mirror): in total, today, and per hour for the status chart.

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
